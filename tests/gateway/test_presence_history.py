"""A device's presence history: every connection from its login to its end, newest first, with
when and why it ended, written by the login that follows it (claim.lua) and capped. Whole nodes
over real TCP and Redis (tests/cluster runs these cases on a Redis Cluster too)."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest

from aquafleet.gateway.device_status import SessionRecord, read_sessions
from aquafleet.gateway.keys import LAST_SESSION_TTL_MS, Keyspace
from tests.devices import register_devices
from tests.gateway.test_device_status import now_ms, offline, status_of, status_when


async def sessions_of(
    client: Any, keyspace: Keyspace, did: str, *, limit: int = 100, offset: int = 0
) -> tuple[list[SessionRecord], int]:
    return await read_sessions(client, keyspace, did, limit=limit, offset=offset)


async def test_each_session_is_kept_in_order_with_why_it_ended(
    node_factory, device_factory, redis_client, keyspace, monkeypatch
):
    node_a = await node_factory(node_id="node-a")
    node_b = await node_factory(node_id="node-b")
    (dev,) = await register_devices(node_a, 1)
    assert await sessions_of(redis_client, keyspace, dev.did) == ([], 0)  # never connected

    def device(node: Any) -> Any:
        return device_factory(dev.did, dev.key, node.tcp_port)

    async def since() -> int:
        status = await status_of(redis_client, keyspace, dev.did)
        assert status.online and status.since_ms is not None
        return status.since_ms

    # 1: on node A, closed by the device.
    first = device(node_a)
    await first.login()
    logins = [await since()]
    sessions, total = await sessions_of(redis_client, keyspace, dev.did)
    assert total == 1 and sessions[0].ended_at_ms is None and sessions[0].node == "node-a"
    await first.close()
    await status_when(redis_client, keyspace, dev.did, offline)
    (ended,), total = await sessions_of(redis_client, keyspace, dev.did)
    assert (total, ended.reason, ended.since_ms) == (1, "closed_by_device", logins[0])
    # 2: back on node A; 3: a login on node B replaces it.
    await device(node_a).login()
    logins.append(await since())
    await device(node_b).login()
    logins.append(await since())
    # 3 ends when node B stops; 4: on node C, which dies (no release, no touch).
    await node_b.stop()
    node_c = await node_factory(node_id="node-c", heartbeat_s=2, presence_flush_s=0.5)
    await device(node_c).login()
    logins.append(await since())
    monkeypatch.setattr(node_c.hub.presence, "release_link", lambda did, conn: None)
    await node_c.stop()
    lost = await status_when(redis_client, keyspace, dev.did, offline)  # its presence expired
    # 5: the device comes back on node A.
    await device(node_a).login()
    logins.append(await since())

    sessions, total = await sessions_of(redis_client, keyspace, dev.did)
    assert total == 5
    assert [s.since_ms for s in sessions] == logins[::-1]  # newest first
    assert [(s.node, s.reason) for s in sessions] == [
        ("node-a", None),  # the current one
        ("node-c", "node_lost"),
        ("node-b", "shutdown"),
        ("node-a", "replaced"),
        ("node-a", "closed_by_device"),
    ]
    current, node_lost, shutdown, replaced, closed = sessions
    assert current.ended_at_ms is None and current.last_seen_ms is not None
    assert node_lost.ended_at_ms == lost.offline_at_ms  # its last seen + TTL
    assert node_lost.last_seen_ms is not None
    assert node_lost.last_seen_ms < node_lost.ended_at_ms <= logins[4]
    assert shutdown.ended_at_ms is not None and logins[2] <= shutdown.ended_at_ms <= logins[3]
    assert replaced.ended_at_ms == logins[2]  # at the login that replaced it
    assert closed.ended_at_ms is not None and logins[0] <= closed.ended_at_ms <= logins[1]
    for s in sessions[1:]:
        assert s.ended_at_ms is not None and s.duration_ms(now_ms()) == s.ended_at_ms - s.since_ms
    assert 0 <= current.duration_ms(now_ms()) < 10_000

    # Paged: the same list, a window at a time, whatever the offset.
    for offset in range(6):
        page, total = await sessions_of(redis_client, keyspace, dev.did, limit=2, offset=offset)
        assert total == 5 and page == sessions[offset : offset + 2], offset
    # Kept as long as the last-session record.
    ttl = await redis_client.pttl(keyspace.presence_history(dev.did))
    assert LAST_SESSION_TTL_MS - 60_000 < ttl <= LAST_SESSION_TTL_MS


@pytest.mark.parametrize("size", [1, 3])
async def test_the_history_is_capped(node_factory, device_factory, redis_client, keyspace, size):
    node = await node_factory(presence_history_size=size)
    (dev,) = await register_devices(node, 1)
    logins = []
    for _ in range(size + 3):  # each login replaces the one before
        await device_factory(dev.did, dev.key, node.tcp_port).login()
        status = await status_of(redis_client, keyspace, dev.did)
        logins.append(status.since_ms)
    sessions, total = await sessions_of(redis_client, keyspace, dev.did)
    assert total == size
    assert [s.since_ms for s in sessions] == logins[::-1][:size]
    assert [s.reason for s in sessions] == [None] + ["replaced"] * (size - 1)
    assert await redis_client.llen(keyspace.presence_history(dev.did)) == size - 1


async def test_a_page_reads_the_last_session_and_the_history_alone(redis_client, keyspace):
    """Without a login: the last-session record and history entries as the scripts write them;
    an unreadable entry is left out, the others keep their places."""
    did = "HIST0000000100AA"
    entries = [
        msgpack.packb(["node-a", 3_000, 3_500, 3_900, "closed_by_device"]),
        b"\xc1 not msgpack",
        msgpack.packb(["node-b", 1_000, 1_500, 2_000, "replaced"]),
    ]
    await redis_client.rpush(keyspace.presence_history(did), *entries)
    # No last-session record (it expired): the history alone.
    sessions, total = await read_sessions(redis_client, keyspace, did, limit=10, offset=0)
    assert total == 3
    assert [(s.node, s.since_ms, s.ended_at_ms, s.reason) for s in sessions] == [
        ("node-a", 3_000, 3_900, "closed_by_device"),
        ("node-b", 1_000, 2_000, "replaced"),
    ]
    page, _ = await read_sessions(redis_client, keyspace, did, limit=1, offset=2)
    assert page == sessions[1:]
    # The last session ended and was released: first, as it was.
    await redis_client.hset(
        keyspace.last_session(did),
        mapping={"node": "node-c", "conn": "c1", "since": 5_000, "seen": 6_000, "ttl": 5_000,
                 "off": 6_100, "why": "shutdown"},
    )  # fmt: skip
    sessions, total = await read_sessions(redis_client, keyspace, did, limit=10, offset=0)
    assert total == 4
    assert [(s.since_ms, s.ended_at_ms, s.reason) for s in sessions] == [
        (5_000, 6_100, "shutdown"), (3_000, 3_900, "closed_by_device"), (1_000, 2_000, "replaced"),
    ]  # fmt: skip
    last, newer, older = sessions
    for offset, expected in enumerate([[last], [newer], [], [older], []]):  # [] at 2: unreadable
        page, _ = await read_sessions(redis_client, keyspace, did, limit=1, offset=offset)
        assert page == expected, offset
    # Not released, long expired: dated at its last seen + TTL, its node lost.
    await redis_client.hdel(keyspace.last_session(did), "off", "why")
    (first, *_), _ = await read_sessions(redis_client, keyspace, did, limit=1, offset=0)
    assert (first.ended_at_ms, first.reason) == (11_000, "node_lost")
    assert first.duration_ms(int(time.time() * 1000)) == 6_000
