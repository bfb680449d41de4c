"""Rate limits in Redis: a sliding window log per key, one script call per decision.

Each allowed hit is one member of a sorted set scored by its time in ms; a hit is allowed while
fewer than `limit` members lie within the last `window_s`. Exact (no burst of twice the limit at
a window edge, as a fixed window allows), one round trip, and bounded: a key never holds more
than `limit` members and expires one window after its newest hit. Refused hits are not recorded,
so a client that keeps knocking is let in again as soon as its oldest counted hit leaves the
window.

`attempt` is the other shape, for guesses of a secret: growing waits per key (an account and
an address) rather than a cap that, once reached, would refuse the right answer too.

Keys: build them with `rate_key(prefix, name, subject)` so every limit lives under the
configured Redis prefix, e.g. `aq:rl:sms-mobile:13800138000`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from aquafleet.models.errors import DomainError
from aquafleet.models.redis_boundary import redis_errors

# KEYS[1] the window's sorted set; ARGV now_ms, window_ms, limit, member, record (1/0).
# Returns {allowed 0/1, hits in the window after this one, retry after ms}.
_HIT_LUA = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  if ARGV[5] == '1' then
    redis.call('ZADD', key, now, ARGV[4])
    redis.call('PEXPIRE', key, window)
    count = count + 1
  end
  return {1, count, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local retry = window
if oldest[2] then
  retry = tonumber(oldest[2]) + window - now
end
return {0, count, retry}
"""
_HIT_SHA = hashlib.sha1(_HIT_LUA.encode()).hexdigest()

MAX_LIMIT = 100_000  # a key holds at most `limit` members: keep that small


class RateLimited(DomainError):
    """Too many attempts; try again after `retry_after_s` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: int  # 0 when allowed; else whole seconds until a hit would be allowed
    hits: int = 0  # hits counted in the window, this one included when allowed

    def raise_if_refused(self, what: str) -> None:
        if not self.allowed:
            raise RateLimited(
                f"too many {what}; try again in {self.retry_after_s} s", self.retry_after_s
            )


def rate_key(prefix: str, name: str, subject: str) -> str:
    """The Redis key of limit `name` for `subject` (an IP, a mobile, an account)."""
    return f"{prefix}:rl:{name}:{subject}"


async def hit(
    redis: aioredis.Redis,
    key: str,
    limit: int,
    window_s: float,
    *,
    now: float | None = None,
) -> RateDecision:
    """Count one attempt against `limit` per `window_s` on `key`, if it is allowed.

    now: unix seconds (tests pass a controlled clock); default the local clock.
    Raises models.errors.Unavailable when Redis does not answer.
    """
    return await _run(redis, key, limit, window_s, now, record=True)


async def peek(
    redis: aioredis.Redis,
    key: str,
    limit: int,
    window_s: float,
    *,
    now: float | None = None,
) -> RateDecision:
    """Would a hit be allowed now? Counts nothing (check several limits before hitting any)."""
    return await _run(redis, key, limit, window_s, now, record=False)


async def hit_all(
    redis: aioredis.Redis,
    limits: Sequence[tuple[str, int, float]],
    *,
    now: float | None = None,
) -> RateDecision:
    """Count one attempt on every (key, limit, window_s), or on none when any refuses.

    Keys may live on different cluster slots, so this peeks at all, then hits each; two
    racing callers may both pass the peek, and each hit still refuses beyond its limit.
    """
    at = time.time() if now is None else now
    for key, limit, window_s in limits:
        decision = await peek(redis, key, limit, window_s, now=at)
        if not decision.allowed:
            return decision
    last = RateDecision(True, 0)
    for key, limit, window_s in limits:
        last = await hit(redis, key, limit, window_s, now=at)
        if not last.allowed:
            return last
    return last


async def _run(
    redis: aioredis.Redis,
    key: str,
    limit: int,
    window_s: float,
    now: float | None,
    *,
    record: bool,
) -> RateDecision:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}")
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    now_ms = int((time.time() if now is None else now) * 1000)
    window_ms = max(1, int(window_s * 1000))
    member = f"{now_ms}-{secrets.token_hex(4)}"
    args = (now_ms, window_ms, limit, member, "1" if record else "0")
    with redis_errors(f"rate limit {key}"):
        reply = await _script(redis, _HIT_LUA, _HIT_SHA, key, args)
    allowed, hits, retry_ms = (int(v) for v in reply)
    retry_after_s = 0 if allowed else max(1, math.ceil(retry_ms / 1000))
    return RateDecision(bool(allowed), retry_after_s, hits)


# ----------------------------------------------------------------------------- back-off

# KEYS[1] a hash {n: attempts not yet cleared, at: ms the next one is allowed};
# ARGV now_ms, free, base_ms, max_ms, forget_ms. Counts the attempt when it is allowed.
# Returns {allowed 0/1, attempts, retry after ms (refused) or the wait before the next (allowed)}.
_BACKOFF_LUA = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local free = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local forget = tonumber(ARGV[5])
local state = redis.call('HMGET', key, 'n', 'at')
local n = tonumber(state[1] or '0')
local at = tonumber(state[2] or '0')
if now < at then
  return {0, n, at - now}
end
n = n + 1
local wait = 0
if n >= free then
  local doublings = math.min(n - free, 40)
  wait = math.floor(math.min(cap, base * (2 ^ doublings)))
end
redis.call('HSET', key, 'n', n, 'at', now + wait)
redis.call('PEXPIRE', key, math.max(forget, wait))
return {1, n, wait}
"""
_BACKOFF_SHA = hashlib.sha1(_BACKOFF_LUA.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Growing waits between attempts that fail: `free` attempts at once, then a wait of
    `base_s`, doubling with each further attempt up to `max_s`. Forgotten `forget_s` after the
    last attempt, or at once by `reset` (the attempt succeeded)."""

    free: int
    base_s: float
    max_s: float
    forget_s: float

    def wait_after(self, attempts: int) -> float:
        """Seconds the next attempt waits after `attempts` that have not been cleared."""
        if attempts < self.free:
            return 0.0
        return float(min(self.max_s, self.base_s * 2 ** min(attempts - self.free, 40)))


async def attempt(
    redis: aioredis.Redis, key: str, policy: Backoff, *, now: float | None = None
) -> RateDecision:
    """Count one attempt on `key` unless it comes before its wait is over (refused).

    The attempt counts as failed until `reset` clears the key, so attempts made at once, before
    any of them is known to fail, still wait their turn.
    """
    if policy.free < 1 or policy.base_s <= 0 or policy.max_s < policy.base_s:
        raise ValueError("free >= 1 and 0 < base_s <= max_s")
    now_ms = int((time.time() if now is None else now) * 1000)
    args = (
        now_ms,
        policy.free,
        max(1, int(policy.base_s * 1000)),
        int(policy.max_s * 1000),
        max(1, int(policy.forget_s * 1000)),
    )
    with redis_errors(f"back-off {key}"):
        reply = await _script(redis, _BACKOFF_LUA, _BACKOFF_SHA, key, args)
    allowed, attempts, wait_ms = (int(v) for v in reply)
    retry_after_s = 0 if allowed else max(1, math.ceil(wait_ms / 1000))
    return RateDecision(bool(allowed), retry_after_s, attempts)


async def _script(
    redis: aioredis.Redis, lua: str, sha: str, key: str, args: tuple[Any, ...]
) -> Any:
    """One script on one key, by its SHA; sent whole when Redis has lost it (a restart)."""
    try:
        return await redis.evalsha(sha, 1, key, *args)
    except NoScriptError:
        return await redis.eval(lua, 1, key, *args)


async def reset(redis: aioredis.Redis, key: str) -> None:
    """Forget every counted hit of `key` (e.g. after a successful login)."""
    with redis_errors(f"rate limit reset {key}"):
        await redis.delete(key)
