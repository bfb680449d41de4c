"""Bearer tokens: short-lived access tokens, rotating refresh tokens, revocation. State in Redis.

A login opens a session: one Redis hash `{prefix}:api:sess:{sid}` holding the principal and the
SHA-256 of the current access and refresh tokens with their expiry times. Tokens are opaque:
`a.{sid}.{random}` and `r.{sid}.{random}` (the sid finds the session in one read; only hashes
are stored, so a Redis dump holds nothing a client could send).

- authenticate: the session's access hash must match and not be expired (one HMGET).
- refresh: the refresh token must match the session's current one; it is then replaced (rotated)
  together with the access token, in one script call. Presenting any other refresh token of a
  live session (an old, already rotated one: a sign it was stolen and used by someone else)
  ends the session for everyone.
- revoke: logout deletes the session; `revoke_subject` ends every session of an account
  (password change, disabling, deregistration), through a set of sids per account, which every
  login and refresh keeps alive as long as the session it extends.

Verified access tokens are kept in memory for `cache_s` (default 5 s, within the token's
lifetime) so that a busy client's requests do not each read Redis (a round trip on every
command's path, docs/benchmarks.md). Revocation stays immediate: whatever ends or rotates a
session publishes its sid on the revocation channel in the same pipeline, every node's
`follow_revocations` drops it, and the node that made the change drops it at once. The cache
is used only while that channel is followed (subscription confirmed); a lost subscription
empties it, and an answer read from Redis is cached only if no revocation arrived meanwhile.
On Redis Cluster (no plain pub/sub channel here) the cache stays off.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict

import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import redis_errors
from aquafleet.models.tenancy import Principal, Role

log = get_logger("aquafleet.api.tokens")

PRUNE_SESSIONS_OVER = 32  # an account's set of sids is pruned of expired ones past this
CACHE_MAX = 10_000  # verified tokens kept in memory; when full, emptied (they are re-read)
FOLLOW_RETRY_S = 1.0
TOKEN_RE = re.compile(r"^([ar])\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})$")

# KEYS[1] session; ARGV: presented refresh hash, now ms, new access hash, access exp ms,
# new refresh hash, refresh exp ms, session ttl ms, principal json.
# Returns 1 rotated, 0 no such session, -1 wrong or expired refresh token (session ended).
_ROTATE_LUA = """
local current = redis.call('HMGET', KEYS[1], 'rt', 'rt_exp')
if not current[1] then return 0 end
if current[1] ~= ARGV[1] or tonumber(current[2]) < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return -1
end
redis.call('HSET', KEYS[1], 'at', ARGV[3], 'at_exp', ARGV[4], 'rt', ARGV[5], 'rt_exp', ARGV[6],
  'principal', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
"""


class TokenPair(TypedDict):
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token lives
    refresh_expires_in: int
    token_type: str  # "Bearer"


class TokenRejected(Exception):
    """A token that is malformed, unknown, expired, revoked or reused (answered 401)."""


# Reloads a principal from the database at refresh time; None when it may no longer log in.
PrincipalLoader = Callable[[Principal], Awaitable[Principal | None]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def principal_to_json(principal: Principal) -> str:
    return json.dumps(
        {
            "role": str(principal.role),
            "subject": principal.subject,
            "vendor_code": principal.vendor_code,
            "agent_path": principal.agent_path,
        },
        separators=(",", ":"),
    )


def principal_from_json(raw: bytes | str) -> Principal:
    data: dict[str, Any] = json.loads(raw)
    return Principal(
        role=Role(data["role"]),
        subject=data["subject"],
        vendor_code=data.get("vendor_code"),
        agent_path=data.get("agent_path"),
    )


class _Verified(NamedTuple):
    """An access token read from Redis and found good: whom it names, until when."""

    token: str
    principal: Principal
    expires_ms: int  # the token's own expiry
    until: float  # monotonic: kept no longer than this


@dataclass
class TokenService:
    redis: aioredis.Redis
    prefix: str  # the configured redis_prefix; keys live under "{prefix}:api:"
    access_ttl_s: int = 900
    refresh_ttl_s: int = 14 * 86400
    cache_s: float = 0.0  # 0: no cache (it also needs follow_revocations running)

    def __post_init__(self) -> None:
        self._loaders: dict[Role, PrincipalLoader] = {}
        self._rotate = self.redis.register_script(_ROTATE_LUA)
        self.revoked_channel = f"{self.prefix}:api:revoked"
        self._verified: dict[str, _Verified] = {}  # sid -> its access token, verified
        self._following = False  # the revocation channel's subscription is confirmed
        self._revocations = 0  # revocations seen: a read that overlapped one is not cached

    # ------------------------------------------------------------------ the cache

    def _forget(self, sid: str) -> None:
        self._revocations += 1
        self._verified.pop(sid, None)

    def _remember(self, sid: str, token: str, principal: Principal, expires_ms: int) -> None:
        if len(self._verified) >= CACHE_MAX:
            self._verified.clear()
        until = time.monotonic() + self.cache_s
        self._verified[sid] = _Verified(token, principal, expires_ms, until)

    async def follow_revocations(self) -> None:
        """Follow the revocation channel until cancelled (the cache is used only meanwhile);
        on a Redis failure, empty the cache and subscribe again."""
        if self.cache_s <= 0 or isinstance(self.redis, RedisCluster):
            return  # no cache wanted, or a cluster client (no plain pub/sub here)
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.revoked_channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._verified.clear()  # whatever was cached before is unknown
                        self._following = True
                    elif message["type"] == "message":
                        self._forget(_text(message["data"]))
            except (RedisError, OSError) as exc:
                log.warning("token_revocations_reconnecting", error=str(exc))
                self._stop_following()
                await asyncio.sleep(FOLLOW_RETRY_S)
            finally:
                self._stop_following()
                await pubsub.aclose()

    def _stop_following(self) -> None:
        self._following = False
        self._revocations += 1
        self._verified.clear()

    def register_loader(self, roles: Iterable[Role], loader: PrincipalLoader) -> None:
        """At refresh, `loader` re-reads the principal (None: the account may not log in)."""
        for role in roles:
            self._loaders[role] = loader

    def _session_key(self, sid: str) -> str:
        return f"{self.prefix}:api:sess:{sid}"

    def _subject_key(self, role: Role | str, subject: str) -> str:
        return f"{self.prefix}:api:subj:{role}:{subject}"

    def _new_pair(self, sid: str, now_ms: int) -> tuple[str, str, dict[Any, Any]]:
        access = f"a.{sid}.{secrets.token_urlsafe(32)}"
        refresh = f"r.{sid}.{secrets.token_urlsafe(32)}"
        fields: dict[Any, Any] = {
            "at": _hash(access),
            "at_exp": now_ms + self.access_ttl_s * 1000,
            "rt": _hash(refresh),
            "rt_exp": now_ms + self.refresh_ttl_s * 1000,
        }
        return access, refresh, fields

    def _pair(self, access: str, refresh: str) -> TokenPair:
        return TokenPair(
            access_token=access,
            refresh_token=refresh,
            expires_in=self.access_ttl_s,
            refresh_expires_in=self.refresh_ttl_s,
            token_type="Bearer",
        )

    async def issue(self, principal: Principal) -> TokenPair:
        """Open a session for `principal` (a successful login)."""
        sid = secrets.token_hex(16)
        access, refresh, fields = self._new_pair(sid, int(time.time() * 1000))
        fields["principal"] = principal_to_json(principal)
        key = self._session_key(sid)
        subject_key = self._subject_key(principal.role, principal.subject)
        ttl_ms = self.refresh_ttl_s * 1000
        with redis_errors("token issue"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, ttl_ms)
                pipe.sadd(subject_key, sid)
                pipe.pexpire(subject_key, ttl_ms)
                pipe.scard(subject_key)
                *_, tracked = await pipe.execute()
            if int(tracked) > PRUNE_SESSIONS_OVER:
                await self._prune(subject_key)
        return self._pair(access, refresh)

    async def _prune(self, subject_key: str) -> None:
        """Forget the sids of sessions that expired (the set would only grow otherwise)."""
        sids = [_text(s) for s in await self.redis.smembers(subject_key)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.exists(self._session_key(sid))
            alive = await pipe.execute()
        dead = [sid for sid, exists in zip(sids, alive, strict=True) if not exists]
        if dead:
            await self.redis.srem(subject_key, *dead)

    async def authenticate(self, access_token: str) -> Principal:
        """The principal of a live access token; TokenRejected otherwise."""
        sid = self._sid(access_token, "a")
        if self._following:
            known = self._verified.get(sid)
            if (
                known is not None
                and hmac.compare_digest(known.token, access_token)
                and time.monotonic() < known.until
                and time.time() * 1000 <= known.expires_ms
            ):
                return known.principal
        revocations = self._revocations
        with redis_errors("token check"):
            at, at_exp, raw = await self.redis.hmget(
                self._session_key(sid), ["at", "at_exp", "principal"]
            )
        if at is None or raw is None or at_exp is None:
            raise TokenRejected("the token is unknown, expired or revoked")
        if not hmac.compare_digest(_text(at), _hash(access_token)):
            raise TokenRejected("the token is unknown, expired or revoked")
        expires_ms = int(at_exp)
        if expires_ms < time.time() * 1000:
            raise TokenRejected("the token has expired; refresh it")
        principal = principal_from_json(raw)
        if self._following and revocations == self._revocations:
            self._remember(sid, access_token, principal, expires_ms)
        return principal

    async def refresh(self, refresh_token: str) -> tuple[TokenPair, Principal]:
        """Rotate: a new access and refresh token for a current refresh token."""
        sid = self._sid(refresh_token, "r")
        key = self._session_key(sid)
        with redis_errors("token refresh"):
            raw = await self.redis.hget(key, "principal")
        if raw is None:
            raise TokenRejected("the refresh token is unknown, expired or revoked")
        principal = principal_from_json(raw)
        loader = self._loaders.get(principal.role)
        if loader is not None:
            reloaded = await loader(principal)
            if reloaded is None:
                await self.end_session(sid, principal)
                raise TokenRejected("the account can no longer log in")
            principal = reloaded
        now_ms = int(time.time() * 1000)
        access, refresh, fields = self._new_pair(sid, now_ms)
        args: list[str | int] = [
            _hash(refresh_token),
            now_ms,
            fields["at"],
            fields["at_exp"],
            fields["rt"],
            fields["rt_exp"],
            self.refresh_ttl_s * 1000,
            principal_to_json(principal),
        ]
        self._forget(sid)  # the access token changes (or the session ends) here
        with redis_errors("token refresh"):
            result = int(await self._rotate(keys=[key], args=args))
            if result > 0:
                subject_key = self._subject_key(principal.role, principal.subject)
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.publish(self.revoked_channel, sid)  # the old access token: void now
                    # The session now outlives the login's expiry of the account's set of sids:
                    # keep the set as long, or revoke_subject would no longer find this session.
                    pipe.sadd(subject_key, sid)
                    pipe.pexpire(subject_key, self.refresh_ttl_s * 1000)
                    await pipe.execute()
        if result == 0:
            raise TokenRejected("the refresh token is unknown, expired or revoked")
        if result < 0:
            await self.end_session(sid, principal)
            raise TokenRejected("the refresh token was already used; the session is ended")
        return self._pair(access, refresh), principal

    async def revoke(self, access_token: str) -> None:
        """Logout: end the session of this access token (refresh token included)."""
        principal = await self.authenticate(access_token)
        await self.end_session(self._sid(access_token, "a"), principal)

    async def end_session(self, sid: str, principal: Principal) -> None:
        self._forget(sid)
        with redis_errors("token revoke"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._session_key(sid))
                pipe.srem(self._subject_key(principal.role, principal.subject), sid)
                pipe.publish(self.revoked_channel, sid)
                await pipe.execute()

    async def revoke_subject(self, role: Role | str, subject: str) -> int:
        """End every session of one account; the number ended."""
        subject_key = self._subject_key(role, subject)
        with redis_errors("token revoke"):
            sids = [_text(s) for s in await self.redis.smembers(subject_key)]
            if not sids:
                return 0
            for sid in sids:
                self._forget(sid)
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.delete(self._session_key(sid))
                for sid in sids:
                    pipe.publish(self.revoked_channel, sid)
                pipe.delete(subject_key)
                results = await pipe.execute()
        return sum(int(r) for r in results[: len(sids)])

    @staticmethod
    def _sid(token: str, kind: str) -> str:
        match = TOKEN_RE.match(token)
        if match is None or match.group(1) != kind:
            raise TokenRejected("the token is malformed")
        return match.group(2)


TOKENS: web.AppKey[TokenService] = web.AppKey("api_tokens", TokenService)


async def revoke_accounts(app: web.Application, accounts: Iterable[tuple[str, str]]) -> None:
    """End every session of these (role, account id) pairs."""
    tokens = app[TOKENS]
    for role, account_id in accounts:
        await tokens.revoke_subject(role, account_id)
