"""A whole node over real TCP, Redis and SQLite: logins, presence, timers, replacement."""

from __future__ import annotations

import asyncio
import time

import pytest

from aquafleet.gateway.appkeys import KEYSPACE, REDIS
from aquafleet.protocol import ErrorCode
from aquafleet.protocol.crypto import derive_device_key
from aquafleet.protocol.message_types import Error
from tests.devices import LoginRefused, register_devices, telemetry


async def presence(node, did: str) -> dict[bytes, bytes]:
    return await node.app[REDIS].hgetall(node.app[KEYSPACE].presence(did))


async def test_login_reports_and_acks(node_factory, device_factory):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    logged_in = await device.login()
    assert logged_in.heartbeat_s == node.settings.heartbeat_s
    assert logged_in.last_acked is None  # nothing stored yet
    boot = int(time.time())
    for rec in (1, 2, 3):
        await device.send(telemetry(rec, boot, rec * 100))
        assert await device.settled() == {(boot, r): 0 for r in range(1, rec + 1)}
    assert [a.watermark for a in device.ack_frames] == [(boot, 1), (boot, 2), (boot, 3)]
    state = await presence(node, dev.did)
    assert state[b"node"].decode() == node.hub.node_id
    await device.close()


async def test_a_device_connection_has_tcp_keepalive_so_a_dead_modem_is_noticed(
    node_factory, device_factory
):
    import socket

    from aquafleet.gateway.tcp import KEEPALIVE_COUNT, KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S

    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    await device_factory(dev.did, dev.key, node.tcp_port).login()
    (conn,) = node.hub.online.values()
    sock = conn.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert (
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    ) == (KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)


async def test_the_peer_address_is_read_only_when_needed_and_then_kept(
    node_factory, device_factory
):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    await device_factory(dev.did, dev.key, node.tcp_port).login()
    (conn,) = node.hub.online.values()
    assert conn._peer_ip is None  # a healthy login never asked for it
    assert conn.peer_ip == "127.0.0.1"
    transport, conn.transport = conn.transport, None
    assert conn.peer_ip == "127.0.0.1"  # kept once read
    conn.transport = transport


async def test_records_stored_in_one_round_are_acked_by_one_watermark(node_factory, device_factory):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    boot = int(time.time())
    for rec in range(1, 17):  # one write: read, metered and acked in one round
        device.sent[device.session.send_record(telemetry(rec, boot, rec * 10))] = (boot, rec)
    await device.flush()
    assert await device.settled() == {(boot, rec): 0 for rec in range(1, 17)}
    assert [(a.rc, a.watermark) for a in device.ack_frames] == [(0, (boot, 16))]


async def test_acks_one_by_one_when_coalescing_is_off(node_factory, device_factory):
    node = await node_factory(coalesce_acks=False)
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    boot = int(time.time())
    seqs = [device.session.send_record(telemetry(rec, boot, rec * 10)) for rec in range(1, 9)]
    for seq, rec in zip(seqs, range(1, 9), strict=True):
        device.sent[seq] = (boot, rec)
    await device.flush()
    await device.settled()
    assert [a.seq for a in device.ack_frames] == seqs
    assert [a.watermark for a in device.ack_frames] == [(boot, rec) for rec in range(1, 9)]


async def test_last_acked_watermark_comes_back_at_the_next_login(node_factory, device_factory):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    first = device_factory(dev.did, dev.key, node.tcp_port)
    await first.login()
    boot = int(time.time())
    for rec in (1, 2):
        await first.send(telemetry(rec, boot, rec * 10))
    await first.settled()
    await first.close()
    again = device_factory(dev.did, dev.key, node.tcp_port)
    logged_in = await again.login()
    assert logged_in.last_acked == (boot, 2)
    await again.close()


async def test_unknown_device_is_refused(node_factory, device_factory):
    node = await node_factory()
    key = derive_device_key(node.settings.master_secret_bytes(), "NOPE00000001AAAA", 1)
    device = device_factory("NOPE00000001AAAA", key, node.tcp_port)
    with pytest.raises(LoginRefused) as refused:
        await device.login()
    assert refused.value.code == ErrorCode.AUTH_UNKNOWN_DEVICE
    await device.closed_by_server()
    assert node.metrics.logins_failed == 1


async def test_wrong_key_is_refused_and_disturbs_nothing(node_factory, device_factory):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    genuine = device_factory(dev.did, dev.key, node.tcp_port)
    await genuine.login()
    impostor = device_factory(dev.did, b"\x00" * 32, node.tcp_port)
    with pytest.raises(LoginRefused) as refused:
        await impostor.login()
    assert refused.value.code == ErrorCode.AUTH_BAD_PROOF
    # The genuine connection still works and still holds the presence.
    await genuine.send(telemetry(1, 7, 5))
    assert await genuine.settled() == {(7, 1): 0}
    assert node.hub.online[dev.did].conn_id == (await presence(node, dev.did))[b"conn"].decode()
    await genuine.close()


async def test_disabled_device_is_refused(node_factory, device_factory):
    from aquafleet.gateway.registry_cache import write_entries
    from aquafleet.models.devices import DeviceState

    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    await write_entries(node.app[REDIS], node.app[KEYSPACE], [(dev.did, DeviceState.DISABLED, 1)])
    device = device_factory(dev.did, dev.key, node.tcp_port)
    with pytest.raises(LoginRefused) as refused:
        await device.login()
    assert refused.value.code == ErrorCode.AUTH_DISABLED


async def test_failed_logins_from_one_ip_are_rate_limited(node_factory, device_factory):
    node = await node_factory(failed_logins_per_ip=3, failed_login_window_s=60)
    (dev,) = await register_devices(node, 1)
    for _ in range(3):
        with pytest.raises(LoginRefused):
            await device_factory(dev.did, b"\x01" * 32, node.tcp_port).login()
    # Now even the right key is refused from this IP until the window passes.
    with pytest.raises(LoginRefused) as refused:
        await device_factory(dev.did, dev.key, node.tcp_port).login()
    assert refused.value.code == ErrorCode.AUTH_RATE_LIMITED
    assert node.metrics.logins_rate_limited == 1


async def test_login_must_finish_in_time(node_factory):
    from aquafleet.protocol import FrameDecoder, parse_message

    node = await node_factory(login_timeout_s=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), 5)  # never says HELLO; read until closed
    writer.close()
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    assert frame is not None
    message = parse_message(frame)
    assert isinstance(message, Error) and message.code == ErrorCode.AUTH_TIMEOUT
    assert 0.9 <= time.monotonic() - started <= 3.0
    assert node.metrics.logins_timed_out == 1


async def test_silent_device_is_dropped_after_two_and_a_half_heartbeats(
    node_factory, device_factory
):
    node = await node_factory(heartbeat_s=2)
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    started = time.monotonic()
    errors = await device.closed_by_server(timeout=10)
    waited = time.monotonic() - started
    assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.IDLE_TIMEOUT]
    assert 4.0 <= waited <= 7.5  # 2.5 x 2 s, checked once a second
    assert node.metrics.idle_timeouts == 1
    await ended_and_released(node)
    assert await presence(node, dev.did) == {}


async def test_second_login_closes_the_older_connection(node_factory, device_factory):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    older = device_factory(dev.did, dev.key, node.tcp_port)
    await older.login()
    newer = device_factory(dev.did, dev.key, node.tcp_port)
    await newer.login()
    errors = await older.closed_by_server()
    assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.REPLACED]
    await ended_and_released(node)
    held = await presence(node, dev.did)
    assert held[b"conn"].decode() == node.hub.online[dev.did].conn_id
    await newer.send(telemetry(1, 1, 1))
    assert await newer.settled() == {(1, 1): 0}
    await newer.close()


async def test_second_login_on_another_node_closes_the_first(node_factory, device_factory):
    first_node = await node_factory(node_id="node-a")
    second_node = await node_factory(node_id="node-b")
    (dev,) = await register_devices(first_node, 1)
    on_a = device_factory(dev.did, dev.key, first_node.tcp_port)
    await on_a.login()
    on_b = device_factory(dev.did, dev.key, second_node.tcp_port)
    await on_b.login()
    errors = await on_a.closed_by_server()
    assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.REPLACED]
    await ended_and_released(first_node)
    assert (await presence(second_node, dev.did))[b"node"] == b"node-b"
    assert dev.did not in first_node.hub.online
    await on_b.close()


async def test_closing_releases_presence(node_factory, device_factory):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    assert await presence(node, dev.did)
    await device.close()
    for _ in range(50):
        if not await presence(node, dev.did):
            break
        await asyncio.sleep(0.05)
    assert await presence(node, dev.did) == {}
    assert dev.did not in node.hub.online


async def test_garbage_between_frames_is_skipped_and_counted(node_factory, device_factory):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    await device.write_raw(b"+CSQ: 20,0\r\nCONNECT OK\r\n")
    await device.send(telemetry(1, 3, 40))
    assert await device.settled() == {(3, 1): 0}
    await device.close()
    await ended_and_released(node)  # the decoder's counts are added as the connection ends
    assert node.metrics.garbage_bytes >= len(b"+CSQ: 20,0\r\nCONNECT OK\r\n")


async def test_event_without_mac_closes_the_connection(node_factory, device_factory):
    from aquafleet.protocol import encode_frame
    from aquafleet.protocol.message_types import Event
    from aquafleet.protocol.messages import encode_payload, message_map

    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    forged = Event(rec=1, boot=1, ts=1, kind=1, cid=1, ml=100, flow_total_ml=100)
    await device.write_raw(encode_frame(0x21, 50, encode_payload(message_map(forged), 0)))
    errors = await device.closed_by_server()
    assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.BAD_MAC]


async def ended_and_released(node, closed: int = 1) -> None:
    """A barrier: the node has seen `closed` connections end and written their releases."""
    async with asyncio.timeout(10):
        while node.metrics.connections_closed < closed:  # noqa: ASYNC110  # a counter is polled
            await asyncio.sleep(0.02)
    await node.hub.presence.flushed()
