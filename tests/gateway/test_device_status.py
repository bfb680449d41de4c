"""Online status is exact: it changes when a connection authenticates or ends, and says when and
why it ended. Whole nodes over real TCP (and the real broker), Redis and SQLite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from aquafleet.gateway.device_status import (
    RELEASE_GRACE_MS,
    RuntimeStatus,
    read_runtime,
    runtime_status,
)
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.mqtt.bridge import MQTT_NODE
from aquafleet.gateway.presence import OfflineReason, offline_reason
from aquafleet.gateway.registry_cache import kick_everywhere
from aquafleet.protocol import ErrorCode, encode_frame
from aquafleet.protocol.message_types import Error, Event
from aquafleet.protocol.messages import encode_payload, message_map
from tests.devices import register_devices, telemetry
from tests.gateway import test_mqtt_bridge
from tests.gateway.test_mqtt_bridge import MqttTestDevice, mqtt_node, unique_prefix

TIMEOUT_S = 10.0
mqtt_devices = test_mqtt_bridge.mqtt_devices  # the fixture, by name


def now_ms() -> int:
    return int(time.time() * 1000)


async def status_of(client: Any, keyspace: Keyspace, did: str, **kw: Any) -> RuntimeStatus:
    return (await read_runtime(client, keyspace, [did], **kw))[did]


async def status_when(
    client: Any,
    keyspace: Keyspace,
    did: str,
    condition: Callable[[RuntimeStatus], bool],
    timeout: float = TIMEOUT_S,
) -> RuntimeStatus:
    """Poll the status until `condition` holds (bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            status = await status_of(client, keyspace, did)
            if condition(status):
                return status
            await asyncio.sleep(0.05)


def offline(status: RuntimeStatus) -> bool:
    return not status.online and status.offline_reason is not None


async def logged_in(node: Any, device_factory: Any) -> tuple[Any, Any, int, int]:
    """A registered device logged in on `node`: (registered, device, before_ms, after_ms)."""
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    before = now_ms()
    await device.login()
    return dev, device, before, now_ms()


# ----------------------------------------------------------------------------- online


async def test_online_with_its_node_and_login_time_right_after_login(
    node_factory, device_factory, redis_client, keyspace
):
    node = await node_factory()
    dev, _device, before, after = await logged_in(node, device_factory)
    status = await status_of(redis_client, keyspace, dev.did)
    assert status.online
    assert status.node == node.hub.node_id
    assert status.since_ms is not None and before <= status.since_ms <= after
    assert status.last_seen_ms is not None and status.last_seen_ms >= status.since_ms
    assert status.offline_at_ms is None and status.offline_reason is None  # never offline yet


async def test_a_device_never_seen_has_no_status(redis_client, keyspace):
    status = await status_of(redis_client, keyspace, "NEVER0000001AAAA")
    assert status == RuntimeStatus(False, *([None] * 12))


# ----------------------------------------------------------------------------- offline reasons


async def test_closed_by_the_device(node_factory, device_factory, redis_client, keyspace):
    node = await node_factory()
    dev, device, _, _ = await logged_in(node, device_factory)
    since = (await status_of(redis_client, keyspace, dev.did)).since_ms
    await device.close()
    closed = now_ms()
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert status.offline_reason == "closed_by_device"
    assert status.since_ms == since  # of the connection that ended
    assert status.offline_at_ms is not None and since <= status.offline_at_ms <= closed + 2000
    assert status.node == node.hub.node_id


async def test_idle_timeout(node_factory, device_factory, redis_client, keyspace):
    node = await node_factory(heartbeat_s=2, presence_flush_s=0.5)  # idle timeout 5 s
    dev, device, _, _ = await logged_in(node, device_factory)
    since = (await status_of(redis_client, keyspace, dev.did)).since_ms
    assert since is not None
    await device.closed_by_server(timeout=10)
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert status.offline_reason == "idle_timeout"
    assert status.offline_at_ms is not None
    assert 4500 <= status.offline_at_ms - since <= 7500
    # Once the node's release is written the reason stays the same, whatever the clock.
    await node.hub.presence.flushed()
    later = await status_of(redis_client, keyspace, dev.did, now_ms=now_ms() + 3_600_000)
    assert later.offline_reason == "idle_timeout"


async def test_a_login_elsewhere_replaces_the_connection(
    node_factory, device_factory, redis_client, keyspace
):
    node_a = await node_factory(node_id="node-a")
    node_b = await node_factory(node_id="node-b")
    (dev,) = await register_devices(node_a, 1)
    await device_factory(dev.did, dev.key, node_a.tcp_port).login()
    before = now_ms()
    await device_factory(dev.did, dev.key, node_b.tcp_port).login()
    status = await status_of(redis_client, keyspace, dev.did)
    assert status.online and status.node == "node-b"
    assert status.since_ms is not None and status.since_ms >= before
    assert status.offline_reason == "replaced"
    assert status.offline_at_ms == status.since_ms  # the older connection ended at the login
    # Node A's end of the replaced connection changes nothing: wait until node A has seen it
    # end and written whatever release it queued.
    await wait_for_metric(node_a, "connections_closed", 1)
    await node_a.hub.presence.flushed()
    after = await status_of(redis_client, keyspace, dev.did)
    assert after.online and after.node == "node-b" and after.since_ms == status.since_ms
    assert (after.offline_at_ms, after.offline_reason) == (status.offline_at_ms, "replaced")


async def test_a_connection_that_replaced_another_ends_with_its_own_reason(
    node_factory, device_factory, redis_client, keyspace
):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    await device_factory(dev.did, dev.key, node.tcp_port).login()
    newer = device_factory(dev.did, dev.key, node.tcp_port)
    await newer.login()  # replaces the first at its login
    since = (await status_of(redis_client, keyspace, dev.did)).since_ms
    await newer.close()
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert status.since_ms == since
    assert status.offline_reason == "closed_by_device"
    assert status.offline_at_ms is not None and status.offline_at_ms >= status.since_ms


async def test_gateway_shutdown(node_factory, device_factory, redis_client, keyspace):
    node = await node_factory()
    dev, _device, _, _ = await logged_in(node, device_factory)
    await node.stop()
    status = await status_of(redis_client, keyspace, dev.did)
    assert not status.online
    assert status.offline_reason == "shutdown"


async def test_disabled_and_key_revoked_while_connected(
    node_factory, device_factory, redis_client, keyspace
):
    node = await node_factory()
    dev, _device, _, _ = await logged_in(node, device_factory)
    assert await kick_everywhere(redis_client, keyspace, [dev.did]) == 1
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert status.offline_reason == "disabled"

    again = device_factory(dev.did, dev.key, node.tcp_port)
    await again.login()
    await status_when(redis_client, keyspace, dev.did, lambda s: s.online)
    # The device's node channel: a plain channel on one Redis, its slot's sharded one on a
    # cluster (tests/cluster runs this case too).
    verb, channel = keyspace.device_node_channel(dev.did, node.hub.node_id)
    await redis_client.execute_command(verb, channel, f"revoke {dev.did} *")
    errors = await again.closed_by_server()
    assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.AUTH_BAD_PROOF]
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert status.offline_reason == "key_revoked"


async def test_protocol_error(node_factory, device_factory, redis_client, keyspace):
    node = await node_factory()
    dev, device, _, _ = await logged_in(node, device_factory)
    forged = Event(rec=1, boot=1, ts=1, kind=1, cid=1, ml=100, flow_total_ml=100)  # no MAC
    await device.write_raw(encode_frame(0x21, 50, encode_payload(message_map(forged), 0)))
    await device.closed_by_server()
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert status.offline_reason == "protocol_error"


async def test_a_dead_node_shows_no_device_online_past_the_idle_timeout(
    node_factory, device_factory, redis_client, keyspace, monkeypatch
):
    node_a = await node_factory(node_id="node-a", heartbeat_s=2, presence_flush_s=0.5)
    dev, _device, _, _ = await logged_in(node_a, device_factory)
    # Node A dies: nothing it held is released, nothing refreshed any more.
    monkeypatch.setattr(node_a.hub.presence, "release_link", lambda did, conn: None)
    died = now_ms()
    await node_a.stop()
    assert (await status_of(redis_client, keyspace, dev.did)).online  # until the TTL runs out
    # Redis drops the presence by the idle timeout (5 s) after the last frame, at the latest.
    expires_at = await redis_client.execute_command("PEXPIRETIME", keyspace.presence(dev.did))
    assert died < expires_at <= died + 5000
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert now_ms() - died <= 5000 + 2500  # the same, seen from here (polling, a busy machine)
    assert status.offline_at_ms is not None
    assert abs(status.offline_at_ms - expires_at) <= 50  # claim's TTL runs on Redis' clock
    # Until a live node would have released it, it reads as an idle timeout; then node_lost.
    assert status.offline_reason == "idle_timeout"
    later = await status_of(
        redis_client, keyspace, dev.did, now_ms=status.offline_at_ms + RELEASE_GRACE_MS + 1
    )
    assert later.offline_reason == "node_lost" and later.node == "node-a"
    assert later.offline_at_ms == status.offline_at_ms

    # The device comes back through another node: online there, the lost session stays dated.
    node_b = await node_factory(node_id="node-b")
    await device_factory(dev.did, dev.key, node_b.tcp_port).login()
    back = await status_of(redis_client, keyspace, dev.did)
    assert back.online and back.node == "node-b"
    assert back.offline_reason == "node_lost"
    assert back.offline_at_ms == status.offline_at_ms


async def test_a_presence_lost_while_connected_is_restored_by_the_next_touch(
    node_factory, device_factory, redis_client, keyspace
):
    node = await node_factory()
    dev, _device, _, _ = await logged_in(node, device_factory)
    before = await status_of(redis_client, keyspace, dev.did)
    await redis_client.delete(keyspace.presence(dev.did))
    assert not (await status_of(redis_client, keyspace, dev.did)).online
    assert await node.hub.presence.touch() == 1
    after = await status_of(redis_client, keyspace, dev.did)
    assert after.online and after.since_ms == before.since_ms and after.node == before.node


async def test_a_touch_writes_the_devices_heard_from_since_and_all_after_a_failed_one(
    node_factory, device_factory, redis_client, keyspace, monkeypatch
):
    from aquafleet.gateway.errors import RedisUnavailable

    node = await node_factory(presence_flush_s=60)  # only the test's touches
    devices = []
    for dev in await register_devices(node, 2):
        devices.append(device_factory(dev.did, dev.key, node.tcp_port))
        await devices[-1].login()
    presence = node.hub.presence
    assert await presence.touch() == 2
    assert await presence.touch() == 0  # nothing heard since: nothing rewritten
    await devices[0].send(telemetry(1, int(time.time()), 100))
    await devices[0].settled()
    assert await presence.touch() == 1

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RedisUnavailable("touch: Redis is down")

    await devices[1].send(telemetry(1, int(time.time()), 100))
    await devices[1].settled()
    with monkeypatch.context() as patch:
        patch.setattr(presence.scripts, "call", unavailable)
        with pytest.raises(RedisUnavailable):
            await presence.touch()
    assert await presence.touch() == 2  # not known to be written: every device again


# ----------------------------------------------------------------------------- readings


async def test_readings_of_the_newest_telemetry(
    node_factory, device_factory, redis_client, keyspace
):
    node = await node_factory()
    dev, device, _, _ = await logged_in(node, device_factory)
    boot = int(time.time())
    await device.send(telemetry(1, boot, 900, signal=18, tds_in_ppm=410, tds_out_ppm=15))
    await device.send(
        telemetry(2, boot, 1234, signal=21, state_bits=0b101, fault_bits=0x8, tds_in_ppm=400,
                  tds_out_ppm=12, temperature_dc=215)
    )  # fmt: skip
    await device.settled()
    status = await status_of(redis_client, keyspace, dev.did)
    assert (status.signal, status.state_bits, status.fault_bits) == (21, 0b101, 0x8)
    assert (status.tds_in_ppm, status.tds_out_ppm, status.temperature_dc) == (400, 12, 215)
    assert status.flow_total_ml == 1234
    # Still readable once the device is offline.
    await device.close()
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert status.signal == 21 and status.flow_total_ml == 1234


# ----------------------------------------------------------------------------- batching


async def test_a_page_of_devices_is_read_in_one_round_trip(
    node_factory, device_factory, redis_client, keyspace, monkeypatch
):
    node = await node_factory()
    registered = await register_devices(node, 100)
    online = registered[:3]
    for dev in online:
        await device_factory(dev.did, dev.key, node.tcp_port).login()
    writes = checkouts = 0
    pool = redis_client.connection_pool
    get_connection = pool.get_connection

    async def counting_get_connection(*args: Any, **kwargs: Any) -> Any:
        nonlocal checkouts
        connection = await get_connection(*args, **kwargs)
        checkouts += 1
        send = connection.send_packed_command

        async def counting_send(*a: Any, **k: Any) -> None:
            nonlocal writes
            writes += 1
            await send(*a, **k)

        monkeypatch.setattr(connection, "send_packed_command", counting_send)
        return connection

    monkeypatch.setattr(pool, "get_connection", counting_get_connection)
    statuses = await read_runtime(redis_client, keyspace, [d.did for d in registered])
    assert (checkouts, writes) == (1, 1)
    assert len(statuses) == 100
    assert {did for did, s in statuses.items() if s.online} == {d.did for d in online}


async def test_redis_down_is_a_gateway_error(keyspace):
    import redis.asyncio as aioredis

    from aquafleet.gateway.errors import RedisUnavailable

    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    with pytest.raises(RedisUnavailable):
        await read_runtime(client, keyspace, ["X"])
    await client.aclose()


# ----------------------------------------------------------------------------- MQTT


async def test_mqtt_last_will_reads_closed_by_device(
    node_factory, mqtt_devices, redis_client, keyspace
):
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    status = await status_when(redis_client, keyspace, dev.did, lambda s: s.online)
    assert status.node == MQTT_NODE
    await device.vanish()
    status = await status_when(redis_client, keyspace, dev.did, offline)
    assert status.offline_reason == "closed_by_device"


async def test_mqtt_idle_presence_expiry_reads_idle_timeout(
    node_factory, mqtt_devices, redis_client, keyspace
):
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix, heartbeat_s=2, presence_flush_s=0.5)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    await status_when(redis_client, keyspace, dev.did, lambda s: s.online)
    status = await status_when(redis_client, keyspace, dev.did, offline)
    far = await status_of(redis_client, keyspace, dev.did, now_ms=now_ms() + 3_600_000)
    # Its presence ends on its own (every bridge shares it): never "node_lost".
    assert status.offline_reason == far.offline_reason == "idle_timeout"


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("code", "via_broker", "reason"),
    [
        (None, False, OfflineReason.CLOSED_BY_DEVICE),
        (ErrorCode.IDLE_TIMEOUT, False, OfflineReason.IDLE_TIMEOUT),
        (ErrorCode.REPLACED, False, OfflineReason.REPLACED),
        (ErrorCode.SHUTDOWN, False, OfflineReason.SHUTDOWN),
        (ErrorCode.SHUTDOWN, True, OfflineReason.CLOSED_BY_DEVICE),  # an MQTT last will
        (ErrorCode.AUTH_DISABLED, False, OfflineReason.DISABLED),
        (ErrorCode.AUTH_BAD_PROOF, False, OfflineReason.KEY_REVOKED),
        (ErrorCode.BAD_MAC, False, OfflineReason.PROTOCOL_ERROR),
        (ErrorCode.BAD_FRAME, True, OfflineReason.PROTOCOL_ERROR),
        (ErrorCode.INTERNAL, False, OfflineReason.GATEWAY_ERROR),
        (999, False, OfflineReason.PROTOCOL_ERROR),
    ],
)
def test_offline_reason_of_a_close_code(code, via_broker, reason):
    assert offline_reason(code, via_broker=via_broker) is reason


def test_an_unreleased_session_is_dated_at_its_last_seen_plus_ttl():
    last = [b"node-a", b"1000", b"4000", b"5000", None, None]
    status = runtime_status([None, None, None], last, None, now_ms=9_500)
    assert (status.online, status.offline_at_ms, status.offline_reason) == (
        False, 9_000, "idle_timeout"
    )  # fmt: skip
    status = runtime_status([None, None, None], last, None, now_ms=9_000 + RELEASE_GRACE_MS)
    assert status.offline_reason == "node_lost"
    # A later release (the node was alive) wins over the guess.
    released = [b"node-a", b"1000", b"4200", b"5000", b"9400", b"closed_by_device"]
    status = runtime_status([None, None, None], released, None, now_ms=60_000)
    assert (status.offline_at_ms, status.offline_reason, status.last_seen_ms) == (
        9_400, "closed_by_device", 4_200
    )  # fmt: skip


async def wait_for_metric(node: Any, name: str, value: int, timeout: float = 10.0) -> None:
    """Poll a counter of the node's Metrics until it reaches `value` (bounded)."""
    async with asyncio.timeout(timeout):
        while getattr(node.metrics, name) < value:  # noqa: ASYNC110  # a counter is polled
            await asyncio.sleep(0.02)
