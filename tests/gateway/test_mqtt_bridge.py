"""The MQTT bridge of a whole node against the real Mosquitto (127.0.0.1:1883), Redis and SQLite.

Every test uses its own topic prefix and client ids, so parallel runs do not meet on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from aquafleet.gateway.appkeys import KEYSPACE, MQTT_BRIDGE, REDIS
from aquafleet.gateway.mqtt.bridge import MQTT_NODE
from aquafleet.gateway.mqtt.client import BrokerError, connect_broker
from aquafleet.gateway.registry_cache import write_entries
from aquafleet.models.devices import DeviceState
from aquafleet.models.usage import metered_ml_by_device
from aquafleet.protocol import Command, CommandOp
from aquafleet.protocol.crypto import mqtt_password
from aquafleet.protocol.frames import MacKey
from aquafleet.protocol.message_types import Ack
from aquafleet.protocol.messages import encode_payload
from aquafleet.protocol.mqtt import Dropped, MqttDeviceSession
from aquafleet.protocol.mqtt_envelope import Channel, MqttKey, seal
from tests.devices import register_devices, telemetry

BROKER_PORT = 1883
TIMEOUT_S = 10.0
RESEND_S = 2.0


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class MqttTestDevice:
    """A scriptable ESP8266 over the real broker: MqttDeviceSession behind an aiomqtt client."""

    __test__ = False

    def __init__(self, did: str, key: bytes, prefix: str, port: int = BROKER_PORT) -> None:
        self.did = did
        self.key = key
        self.prefix = prefix
        self.port = port
        self.session = MqttDeviceSession(prefix, did, key, clock=time.time)
        self.client: aiomqtt.Client | None = None
        self.events: list[Any] = []
        self.acked: dict[int, Ack] = {}  # seq -> ACK
        self.sent: dict[int, tuple[int, int]] = {}  # seq -> (boot, rec)
        self._stack: contextlib.AsyncExitStack | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.connected_ms = 0

    async def connect(self) -> None:
        self.connected_ms = int(time.time() * 1000)
        will_topic, will_payload = self.session.will(self.connected_ms)
        ts = int(time.time())
        client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=f"{self.prefix}-{self.did}-{uuid.uuid4().hex[:4]}",
            username=self.did,
            password=mqtt_password(self.key, self.did, ts),
            will=aiomqtt.Will(will_topic, will_payload, qos=1),
            keepalive=5,
            clean_session=True,
        )
        self._stack = contextlib.AsyncExitStack()
        await self._stack.enter_async_context(client)
        self.client = client
        await client.subscribe(self.session.topic("down/#"), qos=1)
        self._reader = asyncio.create_task(self._read(client))
        self.session.connected(self.connected_ms)
        await self.flush()

    async def _read(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                events = self.session.receive_data((message.topic.value, message.payload), 0)
                for event in events:
                    if isinstance(event, Ack):
                        self.acked[event.seq] = event
                        self._settle(event)
                    self.events.append(event)
                self._changed.set()
                await self.flush()

    def _settle(self, ack: Ack) -> None:
        self.sent.pop(ack.seq, None)
        if ack.watermark is not None and ack.rc in (0, 1):
            boot, upto = ack.watermark
            for seq, (b, rec) in list(self.sent.items()):
                if b == boot and rec <= upto:
                    del self.sent[seq]

    async def flush(self) -> None:
        assert self.client is not None
        for name, payload, qos in self.session.data_to_send():
            await self.client.publish(name, payload, qos=qos)

    async def send(self, record: Any) -> int:
        seq = self.session.send_record(record)
        self.sent[seq] = (record.boot, record.rec)
        await self.flush()
        return seq

    async def publish_raw(self, channel: str, payload: bytes, qos: int = 1) -> None:
        assert self.client is not None
        await self.client.publish(self.session.topic(channel), payload, qos=qos)

    async def settled(self, timeout: float = TIMEOUT_S) -> None:
        """Wait until every record sent is acked (alone or by a watermark)."""
        async with asyncio.timeout(timeout):
            while self.sent:
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, kind: type, timeout: float = TIMEOUT_S) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for index, event in enumerate(self.events):
                    if isinstance(event, kind):
                        return self.events.pop(index)
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        """A clean DISCONNECT (the broker does not publish the will)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._stack is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._stack.aclose()
        self._stack = None
        self.session.disconnected()

    async def vanish(self) -> None:
        """Lose the link without DISCONNECT, like a WiFi drop: the broker publishes the will."""
        assert self.client is not None
        sock = self.client._client.socket()  # aiomqtt's paho client: no public abort
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not None:  # it ends on the disconnect (and takes aiomqtt's error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TIMEOUT_S):
                    await asyncio.shield(self._reader)
        await self.close()


@pytest.fixture
async def mqtt_devices() -> AsyncIterator[list[MqttTestDevice]]:
    made: list[MqttTestDevice] = []
    yield made
    for device in made:
        await device.close()


async def mqtt_node(
    node_factory: Any, prefix: str, port: int = BROKER_PORT, **overrides: Any
) -> Any:
    node = await node_factory(
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        mqtt_topic_prefix=prefix,
        mqtt_share_group=f"g{prefix}",
        **overrides,
    )
    bridge = node.app[MQTT_BRIDGE]
    async with asyncio.timeout(TIMEOUT_S):
        while not bridge.connected:  # noqa: ASYNC110  # polled: the bridge has no event
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the subscriptions are acked before `connected`; let them settle
    return node


async def presence(node: Any, did: str) -> dict[bytes, bytes]:
    return await node.app[REDIS].hgetall(node.app[KEYSPACE].presence(did))


async def wait_until(condition: Any, timeout: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():  # noqa: ASYNC110  # Redis and the DB are polled
            await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------- tests


async def test_telemetry_is_metered_once_and_acked(node_factory: Any, mqtt_devices: list) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    boot = int(time.time())
    for rec in (1, 2, 3):
        await device.send(telemetry(rec, boot, rec * 100, epoch=boot))
    await device.settled()
    assert all(a.rc == 0 for a in device.acked.values())
    assert max(a.watermark for a in device.acked.values()) == (boot, 3)
    state = await presence(node, dev.did)
    assert state[b"node"] == b"mqtt" and state[b"conn"] == b"mqtt"
    assert node.metrics.records_stored == 3
    assert node.metrics.mqtt_uplinks_forged == 0

    async def in_ledger() -> bool:
        return (await metered_ml_by_device([dev.did], boot)).get(dev.did) == 300

    await wait_until(in_ledger)


async def test_a_resent_record_is_acked_duplicate_and_metered_once(
    node_factory: Any, mqtt_devices: list
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    boot = int(time.time())
    record = telemetry(1, boot, 250, epoch=boot)
    first = await device.send(record)
    await device.settled()
    again = await device.send(record)  # the same record: a new seq and sent_ms, as a resend is
    await device.settled()
    assert (device.acked[first].rc, device.acked[again].rc) == (0, 1)
    assert node.metrics.records_stored == 1 and node.metrics.records_duplicate == 1

    async def metered() -> bool:
        return (await metered_ml_by_device([dev.did], boot)).get(dev.did) == 250

    await wait_until(metered)


def forged_payload(device: MqttTestDevice, channel: str, body: dict[int, object]) -> bytes:
    """A well-formed message sealed with a key that is not the device's."""
    body = {**body, MqttKey.SEQ: 7, MqttKey.SENT_MS: int(time.time() * 1000)}
    return seal(MacKey(b"\x42" * 32), device.session.topic(channel), body, 0)


async def test_forged_messages_are_dropped_counted_and_never_metered(
    node_factory: Any, mqtt_devices: list
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    await device.close()  # forged messages arrive while the device is not known on the node
    await asyncio.sleep(0.3)
    attacker = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(attacker)
    boot = int(time.time())
    forged = {0: 1, 1: boot, 2: boot, 10: 99_000, 16: boot}
    await attacker.connect()  # an attacker on the (open) broker, without the key's tag
    for _ in range(3):
        await attacker.publish_raw(
            Channel.UP_TELE, forged_payload(attacker, Channel.UP_TELE, forged)
        )

    async def counted() -> bool:
        return node.metrics.mqtt_uplinks_forged >= 3

    await wait_until(counted)
    # The genuine device is online now; forged messages do not disturb it either.
    await attacker.publish_raw(Channel.UP_TELE, forged_payload(attacker, Channel.UP_TELE, forged))
    await attacker.send(telemetry(1, boot, 100, epoch=boot))
    await attacker.settled()

    async def counted_again() -> bool:
        return node.metrics.mqtt_uplinks_forged >= 4

    await wait_until(counted_again)
    assert node.metrics.records_received == 1 and node.metrics.records_stored == 1

    async def metered() -> bool:
        return (await metered_ml_by_device([dev.did], boot)).get(dev.did) == 100

    await wait_until(metered)


async def test_replayed_and_stale_messages_are_dropped_and_counted(
    node_factory: Any, mqtt_devices: list
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    boot = int(time.time())
    seq = device.session.send_record(telemetry(1, boot, 100, epoch=boot))
    device.sent[seq] = (boot, 1)
    ((name, captured, _qos),) = device.session.data_to_send()
    await device.publish_raw(Channel.UP_TELE, captured)
    await device.settled()

    def acks_received() -> int:  # every ACK that arrived (acked keeps one per seq)
        return sum(isinstance(e, Ack) for e in device.events)

    acks = acks_received()
    await device.publish_raw(Channel.UP_TELE, captured)  # the same bytes again: a replay

    async def replayed() -> bool:
        return node.metrics.mqtt_uplinks_replayed == 1

    await wait_until(replayed)
    # Sealed with the right key but sent (it says) 20 minutes ago: outside the clock window.
    old = {0: 2, 1: boot, 2: boot, 10: 5_000, 16: boot, MqttKey.SEQ: 99,
           MqttKey.SENT_MS: int(time.time() * 1000) - 1_200_000}  # fmt: skip
    await device.publish_raw(Channel.UP_TELE, seal(MacKey(dev.key), name, old, 0))

    async def stale() -> bool:
        return node.metrics.mqtt_uplinks_stale == 1

    await wait_until(stale)
    # A round trip after both: the node answers a fresh record (on the same topics, in order),
    # so an answer to either copy would have arrived before this one's.
    await device.send(telemetry(2, boot, 150, epoch=boot))
    await device.settled()
    assert acks_received() == acks + 1  # neither copy was answered
    assert node.metrics.records_received == 2  # nor metered

    async def both_stored() -> bool:
        return node.metrics.records_stored >= 2

    await wait_until(both_stored)
    assert node.metrics.records_stored == 2

    async def both_written() -> bool:  # the ledger writer lingers before it writes
        return node.metrics.ledger_records_written >= 2

    await wait_until(both_written)
    assert await metered_ml_by_device([dev.did], boot) == {dev.did: 150}


async def test_last_will_takes_the_device_offline(node_factory: Any, mqtt_devices: list) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()

    async def online() -> bool:
        return bool(await presence(node, dev.did))

    await wait_until(online)  # the connect notice alone makes it online
    assert node.hub.online[dev.did].session.connected_ms == device.connected_ms
    await device.vanish()

    async def offline() -> bool:
        return not await presence(node, dev.did)

    await wait_until(offline)
    assert node.metrics.mqtt_offline_notices == 1
    assert dev.did not in node.hub.online
    # Back on the broker: online again.
    again = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(again)
    await again.connect()
    await wait_until(online)


async def test_idle_device_goes_offline_like_a_tcp_one(
    node_factory: Any, mqtt_devices: list
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix, heartbeat_s=2, presence_flush_s=0.5)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    boot = int(time.time())
    await device.send(telemetry(1, boot, 10, epoch=boot))
    await device.settled()
    heard = time.monotonic()
    assert await presence(node, dev.did)

    async def offline() -> bool:
        return not await presence(node, dev.did)

    await wait_until(offline, timeout=10)
    # 2.5 heartbeats after the last message (the device is still on the broker, silent).
    assert 4.0 <= time.monotonic() - heard < 7.5

    async def forgotten() -> bool:  # the node's sweeper (once a second) ends the session too
        return dev.did not in node.hub.online

    await wait_until(forgotten, timeout=2)
    assert node.metrics.idle_timeouts >= 1


async def test_commands_reach_the_device_and_its_delivery_ack_comes_back(
    node_factory: Any, mqtt_devices: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    seen: list[Any] = []
    original = node.hub.device_message
    monkeypatch.setattr(node.hub, "device_message", lambda c, m: (seen.append(m), original(c, m)))
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()

    async def online() -> bool:
        return dev.did in node.hub.online

    await wait_until(online)
    link = node.hub.online[dev.did]  # the same calls a TCP connection takes
    command = Command(cid=4711, op=CommandOp.DISPENSE, exp=int(time.time()) + 60, args={1: 250})
    seq = link.session.send_command(command)
    link.flush()
    received = await device.wait_for(Command)
    assert (received.cid, received.op, dict(received.args)) == (4711, CommandOp.DISPENSE, {1: 250})

    async def delivered() -> bool:
        return any(isinstance(m, Ack) and m.seq == seq for m in seen)

    await wait_until(delivered)


async def test_unknown_devices_and_garbage_are_refused_and_counted(
    node_factory: Any, mqtt_devices: list
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    stranger = MqttTestDevice("TEST99999999ABCD", b"\x01" * 32, prefix)
    mqtt_devices.append(stranger)
    await stranger.connect()
    await stranger.send(telemetry(1, 1, 10))
    await stranger.publish_raw(Channel.UP_TELE, b"\x10garbage")
    await stranger.publish_raw("up/nonsense", b"\x10" + encode_payload({}, 0) + bytes(8))

    async def counted() -> bool:
        m = node.metrics
        return m.mqtt_uplinks_refused >= 2 and m.mqtt_uplinks_malformed >= 2

    await wait_until(counted)
    assert node.metrics.records_received == 0 and not node.hub.online


async def test_device_side_refuses_forged_downlinks() -> None:
    device = MqttDeviceSession("aq", "DEV1", b"\x01" * 32, clock=time.time)
    device.connected(1)
    body = {0: 1, 1: 0, MqttKey.SEQ: 1, MqttKey.SENT_MS: int(time.time() * 1000)}
    name = device.topic(Channel.DOWN_ACK)
    assert device.receive_data((name, seal(MacKey(b"\x02" * 32), name, body, 0)), 0) == [
        Dropped("forged")
    ]
    good = seal(MacKey(b"\x01" * 32), name, body, 0)
    assert device.receive_data((name, good), 0) == [Ack(seq=1, rc=0)]
    assert device.receive_data((name, good), 0) == [Dropped("replayed")]


# ----------------------------------------------------------------------------- broker restart


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def private_broker(port: int) -> AsyncIterator[Any]:
    """A Mosquitto of this test's own (no persistence), restartable on the same port."""
    process: asyncio.subprocess.Process | None = None

    async def start() -> None:
        nonlocal process
        process = await asyncio.create_subprocess_exec(
            "mosquitto", "-p", str(port),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                return

    async def stop() -> None:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    class Broker:
        pass

    broker = Broker()
    broker.start, broker.stop = start, stop  # type: ignore[attr-defined]
    await start()
    try:
        yield broker
    finally:
        await stop()


async def pour_through_outages(
    dev: Any, prefix: str, port: int, pour_until: float, window: int = 4
) -> tuple[int, int]:
    """Pour until `pour_until`, keeping every record until it is acked; after each outage, and
    whenever no ack came for RESEND_S (a message the broker lost while the bridge was away),
    resend whatever is unacked. Returns (poured ml, records)."""
    device = MqttTestDevice(dev.did, dev.key, prefix, port)
    boot, rec, total = int(time.time()), 0, 0
    unacked: dict[int, Any] = {}

    async def resend() -> None:
        device.sent.clear()
        for r in sorted(unacked):  # a resend: the same record, a new seq
            await device.send(unacked[r])

    async with asyncio.timeout(60):
        while True:
            try:
                await device.connect()
                await resend()
                progress = time.monotonic()
                while True:
                    waiting = {r for _, r in device.sent.values()}
                    for r in [r for r in unacked if r not in waiting]:
                        del unacked[r]
                        progress = time.monotonic()
                    if unacked and time.monotonic() - progress > RESEND_S:
                        await resend()
                        progress = time.monotonic()
                    if time.monotonic() >= pour_until and not unacked:
                        await device.close()
                        return total, rec
                    assert device._reader is not None
                    if device._reader.done():
                        raise aiomqtt.MqttError("the broker went away")
                    if time.monotonic() < pour_until and len(unacked) < window:
                        rec += 1
                        total += 30 + rec % 50
                        unacked[rec] = telemetry(rec, boot, total, epoch=boot)
                        await device.send(unacked[rec])
                    else:
                        await asyncio.sleep(0.01)
            except aiomqtt.MqttError:
                await device.close()
                await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_broker_restart_mid_flow_loses_no_acked_record(node_factory: Any) -> None:
    prefix, port = unique_prefix(), free_port()
    async with private_broker(port) as broker:
        node = await mqtt_node(node_factory, prefix, port=port)
        devices = await register_devices(node, 4)
        pour_until = time.monotonic() + 4.0
        pouring = [
            asyncio.create_task(pour_through_outages(d, prefix, port, pour_until)) for d in devices
        ]
        await asyncio.sleep(1.5)
        stored_before = node.metrics.records_stored
        await broker.stop()  # type: ignore[attr-defined]
        await asyncio.sleep(1.0)
        await broker.start()  # type: ignore[attr-defined]
        results = await asyncio.gather(*pouring)
        bridge = node.app[MQTT_BRIDGE]
        assert stored_before > 0
        assert node.metrics.mqtt_broker_connects >= 2 and bridge.connected
        boot_floor = int(time.time()) - 60

        async def all_in_ledger() -> bool:
            metered = await metered_ml_by_device([d.did for d in devices], boot_floor)
            return all(
                metered.get(d.did) == poured
                for d, (poured, _) in zip(devices, results, strict=True)
            )

        await wait_until(all_in_ledger, timeout=20)
        assert node.metrics.records_stored == sum(records for _, records in results)


async def test_bridge_shutdown_leaves_the_broker_and_keeps_device_presence(
    node_factory: Any,
    mqtt_devices: list,
    redis_client: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    boot = int(time.time())
    await device.send(telemetry(1, boot, 10, epoch=boot))
    await device.settled()
    # The node's own client closes with it: read presence afterwards with the test's client
    # (a command on the closed client would open a connection nobody closes).
    key = node.app[KEYSPACE].presence(dev.did)
    from aquafleet.gateway.appkeys import TASKS

    tasks = node.app[TASKS]
    bridge_tasks = [t for name, t in tasks.tasks.items() if name.startswith("mqtt-")]
    assert len(bridge_tasks) == 5
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        await node.stop()
    # Bound by events, not a stopwatch: the bridge left the broker within its own close grace
    # (a slow disconnect is logged as mqtt_disconnect_slow and the task is cancelled instead).
    # The logs reach stdout, or the logging module where an earlier test in this process
    # routed structlog through it: read both.
    logged = capsys.readouterr().out + caplog.text
    assert "gateway_stopping" in logged  # the node's shutdown log is what was captured
    assert "mqtt_disconnect_slow" not in logged
    assert all(t.done() for t in bridge_tasks)
    assert not node.app[MQTT_BRIDGE].connected and not node.app[MQTT_BRIDGE].devices
    # The device is still on the broker: stopping one bridge does not take it offline.
    assert await redis_client.exists(key)


async def test_the_bridge_client_takes_every_message_of_a_read_and_publishes_batches() -> None:
    """gateway/mqtt/client.py against the real broker: messages in order, however many a read
    holds; a batch of QoS 0 and QoS 1 messages in one write reaches another client."""
    prefix = unique_prefix()
    received: list[tuple[str, bytes]] = []
    conn = await connect_broker(
        "127.0.0.1", BROKER_PORT, client_id=f"{prefix}-bridge",
        on_messages=lambda messages: received.extend((m.topic, m.payload) for m in messages),
    )  # fmt: skip
    try:
        await conn.subscribe([(f"{prefix}/up/#", 0)], TIMEOUT_S)
        async with aiomqtt.Client("127.0.0.1", BROKER_PORT) as other:
            await other.subscribe(f"{prefix}/down/#", qos=1)
            for index in range(200):
                await other.publish(f"{prefix}/up/{index % 3}", str(index).encode())
            async with asyncio.timeout(TIMEOUT_S):
                while len(received) < 200:  # noqa: ASYNC110  # the callback sets no event
                    await asyncio.sleep(0.01)
            assert [p for _, p in received] == [str(i).encode() for i in range(200)]
            assert received[4] == (f"{prefix}/up/1", b"4")
            sent = conn.publish_many([(f"{prefix}/down/{i}", bytes([i]), i % 2) for i in range(20)])
            await conn.drain(TIMEOUT_S)
            assert sent == 20
            got = []
            async with asyncio.timeout(TIMEOUT_S):
                async for message in other.messages:
                    got.append((str(message.topic), message.payload))
                    if len(got) == 20:
                        break
            assert got == [(f"{prefix}/down/{i}", bytes([i])) for i in range(20)]
        async with asyncio.timeout(TIMEOUT_S):
            while conn.unacked:  # noqa: ASYNC110  # the broker's PUBACKs of the QoS 1 half
                await asyncio.sleep(0.01)
        assert conn.is_open
    finally:
        await conn.disconnect(TIMEOUT_S)
    assert not conn.is_open
    with pytest.raises(BrokerError):
        conn.publish_many([(f"{prefix}/down/x", b"x", 0)])


async def test_the_bridge_client_reports_a_broker_that_is_not_there_or_goes_away() -> None:
    port = free_port()
    with pytest.raises(BrokerError, match="cannot connect"):
        await connect_broker("127.0.0.1", port, client_id="x", on_messages=lambda messages: None)
    prefix = unique_prefix()
    async with private_broker(port) as broker:
        conn = await connect_broker(
            "127.0.0.1", port, client_id=f"{prefix}-bridge", on_messages=lambda messages: None
        )
        await conn.subscribe([(f"{prefix}/up/#", 0)], TIMEOUT_S)
        await broker.stop()  # type: ignore[attr-defined]
        with pytest.raises(BrokerError):
            async with asyncio.timeout(TIMEOUT_S):
                await conn.closed
        assert not conn.is_open


async def test_a_record_topic_route_lives_as_long_as_its_session(
    node_factory: Any, mqtt_devices: list
) -> None:
    """A device's records go from their topic straight to its session while it is online here
    (the bridge's routes); whatever ends the session (a login elsewhere, a disable, a re-issued
    key) takes its routes with it, and its next message is a login again, refused or not."""
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    bridge = node.app[MQTT_BRIDGE]
    redis, keyspace = node.app[REDIS], node.app[KEYSPACE]
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    boot = int(time.time())
    tele = device.session.topic(Channel.UP_TELE)
    for rec in (1, 2, 3):
        await device.send(telemetry(rec, boot, rec * 100, epoch=boot))
    await device.settled()
    link = bridge.devices[dev.did]
    assert bridge.routes[tele][:2] == (link, link.session)
    assert node.metrics.records_stored == 3

    async def kicked(verb: str) -> None:
        command, channel = keyspace.device_node_channel(dev.did, MQTT_NODE)
        await redis.execute_command(command, channel, f"{verb} {dev.did} *")

        async def closed() -> bool:
            return link.closed

        await wait_until(closed)
        assert tele not in bridge.routes and dev.did not in bridge.devices

    # A newer login took the device elsewhere: its next record logs in here again (held for
    # the login, it makes no route; the one after it does).
    await kicked("kick")
    for rec in (4, 5):
        await device.send(telemetry(rec, boot, rec * 100, epoch=boot))
        await device.settled()
    link = bridge.devices[dev.did]
    assert bridge.routes[tele][:2] == (link, link.session) and not link.closed
    assert node.metrics.records_stored == 5

    # Its key re-issued: the old key's messages are forged now, and never metered.
    await write_entries(redis, keyspace, [(dev.did, int(DeviceState.ACTIVE), 2)])
    await kicked("revoke")
    await device.send(telemetry(6, boot, 600, epoch=boot))

    async def forged() -> bool:
        return node.metrics.mqtt_uplinks_forged >= 1

    await wait_until(forged)
    assert tele not in bridge.routes

    # Disabled: refused at the login its next message makes.
    await write_entries(redis, keyspace, [(dev.did, int(DeviceState.DISABLED), 1)])
    await device.send(telemetry(7, boot, 700, epoch=boot))

    async def refused() -> bool:
        return node.metrics.mqtt_uplinks_refused >= 1

    await wait_until(refused)
    assert tele not in bridge.routes and dev.did not in bridge.devices
    assert node.metrics.records_received == 5 and node.metrics.records_stored == 5
    assert sorted(device.sent.values()) == [(boot, 6), (boot, 7)]  # neither acked


async def test_while_reads_are_paused_records_wait_in_the_bounded_queue(
    node_factory: Any, mqtt_devices: list
) -> None:
    """Paused (Redis or the ledger behind), the bridge takes no record, even of a device whose
    records go by a route: they wait in its queue, the newest dropped when it is full (counted,
    not acked: resent), and are metered once reads resume."""
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    bridge = node.app[MQTT_BRIDGE]
    bridge.incoming_max = 2  # mqtt_queue_max's least setting is 100
    (dev,) = await register_devices(node, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    boot = int(time.time())
    for rec in (1, 2):
        await device.send(telemetry(rec, boot, rec * 100, epoch=boot))
        await device.settled()
    assert device.session.topic(Channel.UP_TELE) in bridge.routes
    node.hub.pause_reading("test")
    for rec in (3, 4, 5):
        await device.send(telemetry(rec, boot, rec * 100, epoch=boot))

    async def queued_and_dropped() -> bool:
        return len(bridge.incoming) == 2 and node.metrics.mqtt_uplinks_dropped == 1

    await wait_until(queued_and_dropped)
    assert node.metrics.records_received == 2
    node.hub.resume_reading("test")

    async def metered() -> bool:
        return node.metrics.records_stored == 4

    await wait_until(metered)
    assert not bridge.incoming and node.metrics.records_received == 4

    async def only_the_dropped_one_unacked() -> bool:
        # the acks of 3 and 4 travel back through the broker after they are stored
        return sorted(device.sent.values()) == [(boot, 5)]  # the dropped one, to be resent

    await wait_until(only_the_dropped_one_unacked)
