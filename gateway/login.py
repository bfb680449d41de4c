"""Logins in batches: one registry lookup round trip and one presence claim round trip per tick.

The device key is derived from the master secret and the key version the registry cache holds,
so a login storm reads no database. The proof is verified before anything is claimed: a HELLO
or AUTH naming a device that is connected elsewhere disturbs nothing until it is proven.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.redis_io import ScriptCall, Scripts, round_trip
from aquafleet.gateway.registry_cache import RegistryEntry, parse_registry_entry
from aquafleet.protocol import DesiredState, ErrorCode, LoginRequested
from aquafleet.protocol.crypto import derive_device_key

if TYPE_CHECKING:
    from aquafleet.gateway.hub import DeviceLink, Hub

log = get_logger("aquafleet.login")

MAX_LOGINS_PER_ROUND = 2000


@dataclass(slots=True)
class _Verified:
    conn: DeviceLink
    did: str
    shard: int
    asked_at: float  # when its login reached us (monotonic s)


def desired_state(version: Any, lock: Any, remaining: Any, expires: Any) -> DesiredState | None:
    """The desired-state hash's fields (bytes or None) as the protocol's DesiredState."""
    if version is None:
        return None
    return DesiredState(
        version=int(version),
        locked=bool(int(lock or 0)),
        remaining_ml=None if remaining is None else int(remaining),
        rental_expires_at=None if expires is None else int(expires),
    )


class LoginBatcher:
    def __init__(
        self,
        *,
        hub: Hub,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        metrics: Metrics,
        master_secret: bytes,
        presence_ttl_ms: int,
        history_size: int,
        presence_node: str | None = None,
    ) -> None:
        """`presence_node`: the node name a login claims (default the hub's); MQTT devices
        claim one name shared by every bridge, since any node can reach them via the broker.
        `history_size`: the sessions a device's presence history lists (claim.lua keeps it)."""
        self.hub = hub
        self.client = client
        self.scripts = scripts
        self.keyspace = keyspace
        self.metrics = metrics
        self._master_secret = master_secret
        self.presence_ttl_ms = presence_ttl_ms
        self.history_size = history_size
        self.presence_node = presence_node or hub.node_id
        self.pending: list[tuple[DeviceLink, LoginRequested, float]] = []  # + its arrival
        self._wake = asyncio.Event()
        metrics.gauge("logins_pending", "Logins waiting for their round", lambda: len(self.pending))

    def submit(self, conn: DeviceLink, request: LoginRequested) -> None:
        self.pending.append((conn, request, time.monotonic()))
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                batch = self.pending[:MAX_LOGINS_PER_ROUND]
                del self.pending[:MAX_LOGINS_PER_ROUND]
                try:
                    await self.login(batch)
                except RedisUnavailable as exc:
                    self.metrics.redis_errors += 1
                    log.error("login_redis_error", error=str(exc), logins=len(batch))
                    for conn, _, asked_at in batch:
                        self._reject(
                            conn, ErrorCode.INTERNAL, "registry unavailable, retry", asked_at
                        )
                    await asyncio.sleep(0.5)

    async def login(self, batch: list[tuple[DeviceLink, LoginRequested, float]]) -> None:
        now = time.time()
        limiter = self.hub.limiter
        lookups: list[tuple[DeviceLink, str, int, float]] = []
        for conn, request, asked_at in batch:
            if conn.closed:
                continue
            # No address (MQTT: the broker authenticated the client): nothing to limit by.
            # No IP failed lately (a storm of healthy devices): none is blocked, and the
            # connection's address need not be asked for.
            if limiter.tracking and conn.peer_ip and limiter.blocked(conn.peer_ip, now):
                self.metrics.logins_rate_limited += 1
                self._reject(conn, ErrorCode.AUTH_RATE_LIMITED, "too many failed logins", asked_at)
                continue
            lookups.append((conn, request.did, self.keyspace.shard_of(request.did), asked_at))
        if not lookups:
            return
        entries = await round_trip(
            self.client,
            [(b"HGET", self.keyspace.registry(shard), did) for _, did, shard, _ in lookups],
            "looking devices up",
        )
        failed = next((e for e in entries if isinstance(e, Exception)), None)
        if failed is not None:
            raise RedisUnavailable(f"looking devices up: {failed}")
        verified = [
            v
            for (conn, did, shard, asked_at), raw in zip(lookups, entries, strict=True)
            if (v := self._verify(conn, did, shard, parse_registry_entry(raw), now, asked_at))
            is not None
        ]
        if verified:
            await self._claim(verified)

    def _verify(
        self,
        conn: DeviceLink,
        did: str,
        shard: int,
        entry: RegistryEntry | None,
        now: float,
        asked_at: float,
    ) -> _Verified | None:
        if conn.closed or conn.session is None:
            return None
        if entry is None:
            self._fail(conn, did, now, ErrorCode.AUTH_UNKNOWN_DEVICE, "unknown device", asked_at)
        elif not entry.login_allowed:
            self._fail(conn, did, now, ErrorCode.AUTH_DISABLED, "device disabled", asked_at)
        elif not conn.session.verify_login(
            derive_device_key(self._master_secret, did, entry.key_version)
        ):
            self._fail(conn, did, now, ErrorCode.AUTH_BAD_PROOF, "bad proof", asked_at)
        else:
            return _Verified(conn, did, shard, asked_at)
        return None

    def _fail(
        self, conn: DeviceLink, did: str, now: float, code: ErrorCode, reason: str, asked_at: float
    ) -> None:
        if conn.peer_ip:
            self.hub.limiter.failed(conn.peer_ip, now)
        log.info("login_failed", did=did, ip=conn.peer_ip, code=code.name)
        self._reject(conn, code, reason, asked_at)

    def _reject(self, conn: DeviceLink, code: ErrorCode, reason: str, asked_at: float) -> None:
        self.metrics.logins_failed += 1
        self.metrics.histograms.login_failed.observe(time.monotonic() - asked_at)
        if conn.session is not None and not conn.closed:
            conn.session.reject_login(code, reason)
            conn.flush()
            conn.close(code, reason)

    async def _claim(self, verified: list[_Verified]) -> None:
        now = time.time()
        now_ms = int(now * 1000)
        channel_prefix = self.keyspace.script_channels
        node_id = self.presence_node
        history_size = self.history_size

        calls: list[ScriptCall] = [
            (
                "claim",
                (
                    self.keyspace.presence(v.did),
                    self.keyspace.meter(v.did),
                ),
                (
                    node_id,
                    v.conn.conn_id,
                    now_ms,
                    self.presence_ttl_ms,
                    channel_prefix,
                    v.did,
                    history_size,
                ),
            )
            for v in verified
        ]
        replies = await self.scripts.run(self.client, calls, "claiming presence")
        hub, metrics = self.hub, self.metrics
        sender, observe = hub.sender, metrics.histograms.login_ok.observe
        answered = time.time()
        for v, reply in zip(verified, replies, strict=True):
            conn = v.conn
            if conn.closed or conn.session is None:
                hub.presence.release_link(v.did, conn)
                continue
            _old_node, _old_conn, wm_boot, wm_rec, *desired = reply
            last_acked = None if wm_boot is None else (int(wm_boot), int(wm_rec))
            state = desired_state(*desired)
            conn.session.accept_login(now=answered, last_acked=last_acked, desired=state)
            # AUTH_OK carries the state on TCP; an MQTT link gets it as a SET_STATE instead,
            # whose RESULT settles it (gateway/mqtt/link.py).
            tcp = conn.transport is not None
            if tcp and state is not None and state.version > 0 and sender is not None:
                sender.applied_at_login(v.did, state.version)
            hub.go_online(conn, v.did, v.shard)
            metrics.logins_ok += 1
            conn.flush()
            observe(time.monotonic() - v.asked_at)
