"""A node's lease (gateway/lease.py) on the real Redis: one holder at a time, and a stale holder
(its lease expired and another node took it) can neither renew nor release the new holder's."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.lease import NodeLease
from aquafleet.gateway.redis_io import Scripts

SHORT_MS = 200


def _lease(client: aioredis.Redis, keyspace: Keyspace, node_id: str, lease_ms: int) -> NodeLease:
    return NodeLease(
        client=client, scripts=Scripts(), key=keyspace.rental_owner, node_id=node_id,
        lease_ms=lease_ms, job="test",
    )  # fmt: skip


async def _holder(client: aioredis.Redis, keyspace: Keyspace) -> bytes | None:
    holder: bytes | None = await client.get(keyspace.rental_owner)
    return holder


async def test_one_node_holds_the_lease_and_hands_it_over(
    redis_client: aioredis.Redis, keyspace: Keyspace
) -> None:
    a = _lease(redis_client, keyspace, "node-a", 10_000)
    b = _lease(redis_client, keyspace, "node-b", 10_000)
    assert await a.acquire() is True and a.held
    assert await b.acquire() is False and not b.held
    assert await a.acquire() is True  # the holder keeps it
    assert await b.renew() is False  # renewing never takes
    assert await _holder(redis_client, keyspace) == b"node-a"
    assert await b.release() is False  # b never held it: nothing sent, a's lease stands
    assert await _holder(redis_client, keyspace) == b"node-a"
    assert await a.release() is True and not a.held
    assert await _holder(redis_client, keyspace) is None
    assert await b.acquire() is True


async def test_renew_extends_only_the_holders_lease(
    redis_client: aioredis.Redis, keyspace: Keyspace
) -> None:
    a = _lease(redis_client, keyspace, "node-a", 10_000)
    assert await a.renew() is False  # free: renew does not take it
    assert await _holder(redis_client, keyspace) is None
    await a.acquire()
    await redis_client.pexpire(keyspace.rental_owner, 1_000)
    assert await a.renew() is True
    assert await redis_client.pttl(keyspace.rental_owner) > 1_000


async def _taken_over(client: aioredis.Redis, keyspace: Keyspace) -> tuple[NodeLease, NodeLease]:
    """node-a took the lease, then stalled past its lease time; node-b took it over. node-a
    has not looked since: it still believes it holds the lease."""
    stale = _lease(client, keyspace, "node-a", SHORT_MS)
    assert await stale.acquire() is True
    new = _lease(client, keyspace, "node-b", 10_000)
    async with asyncio.timeout(5):
        while not await new.acquire():  # noqa: ASYNC110  # the lease's expiry is polled
            await asyncio.sleep(SHORT_MS / 4000)
    assert stale.held and new.held
    return stale, new


async def test_a_stale_holder_cannot_release_the_new_holders_lease(
    redis_client: aioredis.Redis, keyspace: Keyspace
) -> None:
    stale, new = await _taken_over(redis_client, keyspace)
    assert await stale.release() is False and not stale.held  # its shutdown
    assert await _holder(redis_client, keyspace) == b"node-b"
    assert await stale.acquire() is False
    assert await new.acquire() is True


async def test_a_stale_holder_cannot_renew_the_new_holders_lease(
    redis_client: aioredis.Redis, keyspace: Keyspace
) -> None:
    stale, new = await _taken_over(redis_client, keyspace)
    assert await stale.renew() is False and not stale.held
    assert await _holder(redis_client, keyspace) == b"node-b"
    assert await redis_client.pttl(keyspace.rental_owner) > SHORT_MS  # still node-b's lease time
    assert await new.renew() is True
