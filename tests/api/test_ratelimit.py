"""The shared Redis rate limiter against the real Redis, on a controlled clock."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from aquafleet.models.ratelimit import (
    Backoff,
    RateLimited,
    attempt,
    hit,
    hit_all,
    peek,
    rate_key,
    reset,
)

T0 = 1_700_000_000.0


async def test_allows_up_to_the_limit_then_refuses_with_the_wait(
    redis_client: aioredis.Redis, redis_prefix: str
):
    key = rate_key(redis_prefix, "login", "13800138000")
    for n in range(1, 4):
        decision = await hit(redis_client, key, 3, 60, now=T0 + n)
        assert decision.allowed and decision.hits == n
    refused = await hit(redis_client, key, 3, 60, now=T0 + 10)
    assert not refused.allowed
    # The oldest counted hit (T0+1) leaves the window at T0+61: 51 s from T0+10.
    assert refused.retry_after_s == 51
    with pytest.raises(RateLimited) as raised:
        refused.raise_if_refused("login attempts")
    assert raised.value.retry_after_s == 51 and raised.value.code == "rate_limited"


async def test_the_window_slides_and_refused_hits_are_not_counted(
    redis_client: aioredis.Redis, redis_prefix: str
):
    key = rate_key(redis_prefix, "sms", "x")
    assert (await hit(redis_client, key, 2, 60, now=T0)).allowed
    assert (await hit(redis_client, key, 2, 60, now=T0 + 30)).allowed
    for t in range(31, 60):  # knocking while refused does not extend the wait
        assert not (await hit(redis_client, key, 2, 60, now=T0 + t)).allowed
    assert (await hit(redis_client, key, 2, 60, now=T0 + 60)).allowed  # T0 left the window
    assert not (await hit(redis_client, key, 2, 60, now=T0 + 61)).allowed  # T0+30 still in it
    assert (await hit(redis_client, key, 2, 60, now=T0 + 90)).allowed


async def test_no_burst_of_twice_the_limit_at_a_window_edge(
    redis_client: aioredis.Redis, redis_prefix: str
):
    key = rate_key(redis_prefix, "edge", "x")
    allowed = [(await hit(redis_client, key, 5, 60, now=T0 + 59.9)).allowed for _ in range(5)]
    allowed += [(await hit(redis_client, key, 5, 60, now=T0 + 60.1)).allowed for _ in range(5)]
    assert allowed.count(True) == 5


async def test_keys_are_independent_live_under_the_prefix_and_expire(
    redis_client: aioredis.Redis, redis_prefix: str
):
    a, b = rate_key(redis_prefix, "ip", "10.0.0.1"), rate_key(redis_prefix, "ip", "10.0.0.2")
    assert (await hit(redis_client, a, 1, 60)).allowed
    assert not (await hit(redis_client, a, 1, 60)).allowed
    assert (await hit(redis_client, b, 1, 60)).allowed
    assert a.startswith(f"{redis_prefix}:rl:")
    ttl_ms = await redis_client.pttl(a)
    assert 0 < ttl_ms <= 60_000
    await reset(redis_client, a)
    assert (await hit(redis_client, a, 1, 60)).allowed


async def test_concurrent_hits_never_exceed_the_limit(
    redis_client: aioredis.Redis, redis_prefix: str
):
    key = rate_key(redis_prefix, "race", "x")
    decisions = await asyncio.gather(*(hit(redis_client, key, 7, 60) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 7
    assert await redis_client.zcard(key) == 7  # bounded by the limit


async def test_bad_bounds_are_refused(redis_client: aioredis.Redis, redis_prefix: str):
    with pytest.raises(ValueError):
        await hit(redis_client, rate_key(redis_prefix, "a", "b"), 0, 60)
    with pytest.raises(ValueError):
        await hit(redis_client, rate_key(redis_prefix, "a", "b"), 1, 0)


async def test_peek_counts_nothing(redis_client: aioredis.Redis, redis_prefix: str):
    key = rate_key(redis_prefix, "peek", "x")
    for _ in range(3):
        assert (await peek(redis_client, key, 1, 60, now=T0)).allowed
    assert (await hit(redis_client, key, 1, 60, now=T0)).allowed
    refused = await peek(redis_client, key, 1, 60, now=T0 + 1)
    assert not refused.allowed and refused.retry_after_s == 59


async def test_hit_all_counts_on_every_key_or_on_none(
    redis_client: aioredis.Redis, redis_prefix: str
):
    narrow = rate_key(redis_prefix, "all", "narrow")
    wide = rate_key(redis_prefix, "all", "wide")
    limits = [(wide, 10, 3600), (narrow, 1, 60)]
    assert (await hit_all(redis_client, limits, now=T0)).allowed
    for t in range(1, 30):  # refused by the narrow limit: the wide one is not used up
        assert not (await hit_all(redis_client, limits, now=T0 + t)).allowed
    assert await redis_client.zcard(wide) == 1
    assert (await hit_all(redis_client, limits, now=T0 + 60)).allowed
    assert await redis_client.zcard(wide) == 2


GUESSES = Backoff(free=3, base_s=1, max_s=60, forget_s=900)


async def test_backoff_waits_grow_and_cap_and_reset_clears(
    redis_client: aioredis.Redis, redis_prefix: str
):
    key = rate_key(redis_prefix, "admin-login", "root|10.0.0.1")
    t = T0
    for n in range(1, 4):  # the free attempts
        decision = await attempt(redis_client, key, GUESSES, now=t)
        assert decision.allowed and decision.hits == n
    waits = []
    for _ in range(9):
        refused = await attempt(redis_client, key, GUESSES, now=t + 0.001)
        assert not refused.allowed
        waits.append(refused.retry_after_s)
        t += refused.retry_after_s
        assert (await attempt(redis_client, key, GUESSES, now=t)).allowed
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert [GUESSES.wait_after(n) for n in (2, 3, 4, 9, 50)] == [0, 1, 2, 60, 60]
    await reset(redis_client, key)
    assert (await attempt(redis_client, key, GUESSES, now=t)).hits == 1
    # Forgotten a while after the last attempt (Redis expiry, on Redis's own clock).
    assert 0 < await redis_client.pttl(key) <= 900_000


async def test_backoff_counts_attempts_made_at_once(
    redis_client: aioredis.Redis, redis_prefix: str
):
    """Guesses sent in parallel, before any is known to fail, still wait their turn."""
    key = rate_key(redis_prefix, "admin-login", "root|10.0.0.2")
    decisions = await asyncio.gather(
        *(attempt(redis_client, key, GUESSES, now=T0) for _ in range(20))
    )
    assert sum(d.allowed for d in decisions) == GUESSES.free
