"""Presence in Redis: which node holds each device, since when, last seen.

A login claims the presence (claim.lua); a connection's end releases it unless a newer login
took it (release.lua, batched per tick); every `presence_flush_s` the node refreshes last-seen
and the time to live of its devices (touch.lua, one call per shard). The presence expires one
idle timeout after the device was last heard from (by any node), so a node that dies stops
showing its devices online within that time, and an MQTT device whose messages several nodes
share is offline exactly when a TCP device would be.
Kicks from other nodes (a newer login elsewhere, a disabled device) arrive on the node's
pub/sub channel.

Every connection also has a last-session record (`l:<did>`, kept for 90 days): the scripts
above write its node, connection, since and last seen, and when and why it ended
(`OfflineReason`, from the code the connection was closed with), in the same calls. The next
login pushes it, complete, onto the device's presence history (`ph:<did>`, capped at
`presence_history_size`), in its claim. gateway/device_status.py reads both.
"""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

import msgpack
import redis.asyncio as aioredis

from aquafleet.gateway.errors import GatewayError, RedisUnavailable
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import ScriptCall, Scripts
from aquafleet.protocol import ErrorCode

if TYPE_CHECKING:
    from aquafleet.gateway.hub import DeviceLink, Hub

log = get_logger("aquafleet.presence")


class OfflineReason(StrEnum):
    """Why a device's last connection ended (docs/devices-status.md)."""

    IDLE_TIMEOUT = "idle_timeout"  # nothing heard for the idle timeout (2.5 heartbeats)
    CLOSED_BY_DEVICE = "closed_by_device"  # it closed or lost its link (FIN, reset, MQTT will)
    REPLACED = "replaced"  # a newer login of the device, on any node
    DISABLED = "disabled"  # disabled or deregistered while connected
    KEY_REVOKED = "key_revoked"  # its key was re-issued while connected
    SHUTDOWN = "shutdown"  # the gateway node holding it stopped
    PROTOCOL_ERROR = "protocol_error"  # bad frames, MAC or messages: the server closed it
    GATEWAY_ERROR = "gateway_error"  # the server failed (internal error, overload)
    NODE_LOST = "node_lost"  # its node died: the presence expired without a release


_REASON_OF_CODE = {
    ErrorCode.IDLE_TIMEOUT: OfflineReason.IDLE_TIMEOUT,
    ErrorCode.REPLACED: OfflineReason.REPLACED,
    ErrorCode.SHUTDOWN: OfflineReason.SHUTDOWN,
    ErrorCode.AUTH_DISABLED: OfflineReason.DISABLED,
    # Online sessions are only closed with this code by a "revoke" kick.
    ErrorCode.AUTH_BAD_PROOF: OfflineReason.KEY_REVOKED,
    ErrorCode.INTERNAL: OfflineReason.GATEWAY_ERROR,
    ErrorCode.OVERLOADED: OfflineReason.GATEWAY_ERROR,
}


def offline_reason(close_code: int | None, *, via_broker: bool = False) -> OfflineReason:
    """Why a connection ended, from the code the server closed it with (None: the device did).

    On MQTT the only released SHUTDOWN is the device's last will (a stopping bridge keeps the
    presence: the device is still at the broker)."""
    if close_code is None:
        return OfflineReason.CLOSED_BY_DEVICE
    if via_broker and close_code == ErrorCode.SHUTDOWN:
        return OfflineReason.CLOSED_BY_DEVICE
    try:
        return _REASON_OF_CODE.get(ErrorCode(close_code), OfflineReason.PROTOCOL_ERROR)
    except ValueError:
        return OfflineReason.PROTOCOL_ERROR


class Release(NamedTuple):
    """A connection's end, as release.lua takes it."""

    did: str
    conn_id: str
    reason: str
    ended_ms: int
    seen_ms: int


TOUCH_BATCH = 256  # devices per touch.lua call (about a millisecond of Redis time)


class Presence:
    def __init__(
        self,
        *,
        hub: Hub,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        ttl_ms: int,
        flush_interval_s: float,
    ) -> None:
        self.hub = hub
        self.client = client
        self.scripts = scripts
        self.keyspace = keyspace
        self.ttl_ms = ttl_ms
        self.flush_interval_s = flush_interval_s
        self._releases: list[Release] = []
        self._release_wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def release(
        self,
        did: str,
        conn_id: str,
        reason: OfflineReason = OfflineReason.CLOSED_BY_DEVICE,
        *,
        seen_ms: int = 0,
    ) -> None:
        """Queue the end of `conn_id`: its presence goes (unless a newer login has it) and its
        last-session record gets the time and `reason` (written with the next batch)."""
        self._releases.append(Release(did, conn_id, reason.value, now_ms(), seen_ms))
        self._idle.clear()
        self._release_wake.set()

    def release_link(self, did: str, conn: DeviceLink) -> None:
        """Release an ended link, with the reason its close code gives and its last frame."""
        session = conn.session
        code = getattr(session, "close_code", None)
        seen_ms = int(session.last_rx * 1000) if session is not None else 0
        reason = offline_reason(code, via_broker=conn.transport is None)
        self.release(did, conn.conn_id, reason, seen_ms=seen_ms)

    async def run_releases(self) -> None:
        while True:
            await self._release_wake.wait()
            self._release_wake.clear()
            while self._releases:
                batch, self._releases = self._releases, []
                try:
                    await self._release(batch)
                except RedisUnavailable as exc:
                    log.warning("presence_release_failed", error=str(exc), count=len(batch))
                    self._releases[:0] = batch
                    await asyncio.sleep(0.5)
            self._idle.set()

    async def flushed(self) -> None:
        """Return once every queued release is written."""
        await self._idle.wait()

    async def _release(self, batch: list[Release]) -> None:
        by_shard: dict[int, list[Release]] = {}
        for item in batch:
            by_shard.setdefault(self.keyspace.shard_of(item.did), []).append(item)

        calls: list[ScriptCall] = [
            (
                "release",
                (self.keyspace.registry(shard),),
                (self.keyspace.shard_prefix(shard), msgpack.packb(items, use_bin_type=False)),
            )
            for shard, items in by_shard.items()
        ]
        await self.scripts.run(self.client, calls, "releasing presence")

    async def touch(self) -> int:
        """Refresh last-seen and TTL of the devices online here that were heard from since
        their last touch (for the others it would write what is there); returns how many.

        The calls go one at a time, at most TOUCH_BATCH devices each: a pipeline of every
        shard's call would hold Redis for tens of milliseconds with 10,000 devices, and every
        other client (a command on its way, a login) would wait behind it.
        """
        by_shard: dict[int, list[tuple[str, str, int]]] = {}
        # What each link's last touch wrote is kept on the link (`touched_rx`), not in a dict
        # of every device here: a dict entry and its tuple cost ~130 bytes per device online,
        # twice while the next round's dict was built.
        written: list[tuple[DeviceLink, float]] = []
        for did, conn in self.hub.online.items():
            session = conn.session
            if session is None or conn.closed:
                continue
            last_rx = session.last_rx
            if conn.touched_rx != last_rx:
                by_shard.setdefault(conn.shard, []).append((did, conn.conn_id, int(last_rx * 1000)))
                written.append((conn, last_rx))
        refreshed = 0
        try:
            for shard, items in by_shard.items():
                for start in range(0, len(items), TOUCH_BATCH):
                    refreshed += int(
                        await self.scripts.call(
                            self.client, "touch", (self.keyspace.registry(shard),),
                            (self.keyspace.shard_prefix(shard), self.ttl_ms,
                             msgpack.packb(items[start : start + TOUCH_BATCH],
                                           use_bin_type=False)),
                        )
                    )  # fmt: skip
        except GatewayError:
            for conn in self.hub.online.values():
                conn.touched_rx = None  # not known to be written: all of them next time
            raise
        for conn, last_rx in written:
            conn.touched_rx = last_rx
        return refreshed

    async def run_touch(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.touch()
            except RedisUnavailable as exc:
                log.warning("presence_touch_failed", error=str(exc))


def presence_ttl_ms(heartbeat_s: int, idle_factor: float = 2.5) -> int:
    return int(heartbeat_s * idle_factor * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)
