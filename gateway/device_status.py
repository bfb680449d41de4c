"""Runtime status of devices for the API: online or not, since when, when and why it went
offline, and the newest readings, for a page of devices in one Redis round trip.

Three keys per device, read in one pipeline: the presence `p:<did>` (exists exactly while a
connection holds the device), the last-session record `l:<did>` (claim, touch and release
write it: docs/devices-status.md) and the meter state `m:<did>` (meter.lua keeps the newest
telemetry's payload there, decoded here, off the hot path).

A presence that expired without a release is dated at its last seen + TTL; its reason is
"node_lost" once a live node would have released it (RELEASE_GRACE_MS), "idle_timeout" before
that, and always for MQTT devices (their presence is shared by every bridge and ends on its own).

A device's presence history (`read_sessions`) is its last-session record followed by the
sessions claim.lua pushed onto `ph:<did>` when the next login took their place: newest first,
one round trip per page.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import redis.asyncio as aioredis

from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.meter import MeterState
from aquafleet.gateway.mqtt.bridge import MQTT_NODE
from aquafleet.gateway.presence import OfflineReason
from aquafleet.gateway.redis_io import Command, round_trip
from aquafleet.protocol import ProtocolError
from aquafleet.protocol.constants import FrameType
from aquafleet.protocol.message_types import Telemetry
from aquafleet.protocol.messages import parse_record_payload

# A live node closes an idle connection within a second of its deadline (the sweeper) and
# releases it in the next batch; a presence still unreleased this long after it expired was
# held by a node that died.
RELEASE_GRACE_MS = 5_000

_PRESENCE_FIELDS = (b"node", b"since", b"seen")
_LAST_FIELDS = (b"node", b"since", b"seen", b"ttl", b"off", b"why", b"poff", b"pwhy")


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    """What the platform knows of a device now. `node` and `since_ms` are those of its current
    connection, or of its last one when offline; `offline_at_ms`/`offline_reason` say when and
    why its last connection ended (offline_at_ms < since_ms: it is online again since)."""

    online: bool
    node: str | None
    since_ms: int | None
    last_seen_ms: int | None
    offline_at_ms: int | None
    offline_reason: str | None
    signal: int | None
    state_bits: int | None
    fault_bits: int | None
    tds_in_ppm: int | None
    tds_out_ppm: int | None
    temperature_dc: int | None
    flow_total_ml: int | None


@dataclass(frozen=True, slots=True)
class _Session:
    """A presence or last-session hash's fields (None where absent)."""

    node: str | None = None
    since: int | None = None
    seen: int | None = None
    ttl: int | None = None
    off: int | None = None
    why: str | None = None
    prev_off: int | None = None  # poff/pwhy: the end of the session before (claim.lua)
    prev_why: str | None = None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _int(value: bytes | None) -> int | None:
    """A stored integer (Lua writes numbers with 14 significant digits: read "1e+15" too)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return int(float(value))


def _session(values: Sequence[bytes | None]) -> _Session:
    padded = [*values, *([None] * 8)][:8]
    node, since, seen, ttl, off, why, prev_off, prev_why = padded
    return _Session(
        _text(node), _int(since), _int(seen), _int(ttl), _int(off), _text(why), _int(prev_off),
        _text(prev_why),
    )  # fmt: skip


def _latest(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def connection_state(
    presence: _Session | None, last: _Session, now_ms: int
) -> tuple[bool, str | None, int | None, int | None, int | None, str | None]:
    """(online, node, since, seen, offline_at, reason) from the two records (pure)."""
    if presence is not None:
        # The last-session record names this connection too (claim writes both) and keeps
        # the previous one's end as poff/pwhy (records written before poff kept it in off/why).
        off, why = (last.off, last.why) if last.off is not None else (last.prev_off, last.prev_why)
        return True, presence.node, presence.since, _latest(presence.seen, last.seen), off, why
    if last.since is None:
        return False, last.node, None, last.seen, last.off, last.why
    if last.off is not None and last.off >= last.since:
        return False, last.node, last.since, last.seen, last.off, last.why
    # No release: the presence expired (or was never refreshed) without one.
    expired_at = min((last.seen or last.since) + (last.ttl or 0), now_ms)
    if last.node == MQTT_NODE or now_ms < expired_at + RELEASE_GRACE_MS:
        reason = OfflineReason.IDLE_TIMEOUT
    else:
        reason = OfflineReason.NODE_LOST
    return False, last.node, last.since, last.seen, expired_at, reason.value


def _telemetry(state: MeterState) -> Telemetry | None:
    """The newest telemetry the meter keeps (its payload as received); None if unreadable."""
    payload, encoding = state.telemetry_payload, state.telemetry_encoding
    if payload is None or encoding is None:
        return None
    try:
        message = parse_record_payload(FrameType.TELEMETRY, payload, encoding)
    except ProtocolError:
        return None
    return message if isinstance(message, Telemetry) else None


def runtime_status(
    presence: Sequence[bytes | None],
    last: Sequence[bytes | None],
    meter_raw: bytes | None,
    now_ms: int,
) -> RuntimeStatus:
    """One device's status from its three keys as Redis returned them (pure)."""
    held = _session(presence) if presence and presence[0] is not None else None
    online, node, since, seen, offline_at, reason = connection_state(held, _session(last), now_ms)
    state = MeterState.decode(meter_raw)
    telemetry = _telemetry(state)
    heard_at = state.telemetry_received_ms
    # The counter's highest reading in its current epoch (dispense events move it too).
    flow_total = state.counter_top_ml
    if flow_total is None or flow_total < 0:
        flow_total = telemetry.flow_total_ml if telemetry is not None else None
    return RuntimeStatus(
        online=online,
        node=node,
        since_ms=since,
        last_seen_ms=_latest(seen, heard_at),
        offline_at_ms=offline_at,
        offline_reason=reason,
        signal=None if telemetry is None else telemetry.signal,
        state_bits=None if telemetry is None else telemetry.state_bits,
        fault_bits=None if telemetry is None else telemetry.fault_bits,
        tds_in_ppm=None if telemetry is None else telemetry.tds_in_ppm,
        tds_out_ppm=None if telemetry is None else telemetry.tds_out_ppm,
        temperature_dc=None if telemetry is None else telemetry.temperature_dc,
        flow_total_ml=flow_total,
    )


async def read_runtime(
    client: aioredis.Redis,
    keyspace: Keyspace,
    dids: Sequence[str],
    *,
    now_ms: int | None = None,
) -> dict[str, RuntimeStatus]:
    """The runtime status of every device in `dids` (a page), in one Redis round trip.

    Raises RedisUnavailable (a GatewayError) when Redis does not answer."""
    unique = list(dict.fromkeys(dids))
    if not unique:
        return {}
    commands: list[Command] = []
    for did in unique:
        commands.append((b"HMGET", keyspace.presence(did), *_PRESENCE_FIELDS))
        commands.append((b"HMGET", keyspace.last_session(did), *_LAST_FIELDS))
        commands.append((b"GET", keyspace.meter(did)))
    replies = await round_trip(client, commands, "reading device status")
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        raise RedisUnavailable(f"reading device status: {failed}")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return {
        did: runtime_status(replies[3 * i], replies[3 * i + 1], replies[3 * i + 2], now)
        for i, did in enumerate(unique)
    }


# ----------------------------------------------------------------------------- history


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One connection of a device; `ended_at_ms` and `reason` are None while it runs."""

    node: str | None
    since_ms: int
    last_seen_ms: int | None
    ended_at_ms: int | None
    reason: str | None

    def duration_ms(self, now_ms: int) -> int:
        """From the login to its end, or to `now_ms` while it runs."""
        end = now_ms if self.ended_at_ms is None else self.ended_at_ms
        return max(end - self.since_ms, 0)


def current_session(
    presence: Sequence[bytes | None], last: Sequence[bytes | None], now_ms: int
) -> SessionRecord | None:
    """The session the last-session record holds (the current one while online), ended as the
    runtime status dates it; None when the device never logged in (pure)."""
    held = _session(presence) if presence and presence[0] is not None else None
    online, node, since, seen, off, why = connection_state(held, _session(last), now_ms)
    if since is None:
        return None
    if online:
        return SessionRecord(node, since, seen, None, None)
    return SessionRecord(node, since, seen, off, why)


def past_session(raw: bytes) -> SessionRecord | None:
    """A presence history entry (claim.lua's msgpack [node, since, seen, off, why]); None
    when unreadable."""
    try:
        node, since, seen, off, why = msgpack.unpackb(raw, raw=False)
        return SessionRecord(node or None, int(since), int(seen), int(off), why or None)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


async def read_sessions(
    client: aioredis.Redis,
    keyspace: Keyspace,
    did: str,
    *,
    limit: int,
    offset: int,
    now_ms: int | None = None,
) -> tuple[list[SessionRecord], int]:
    """A page of the device's sessions, newest first (the current one first while online),
    and how many are kept; in one Redis round trip. Raises RedisUnavailable."""
    first = max(offset - 1, 0)  # the history's index of the page's first entry or the one before
    history_key = keyspace.presence_history(did)
    commands: list[Command] = [
        (b"HMGET", keyspace.presence(did), *_PRESENCE_FIELDS),
        (b"HMGET", keyspace.last_session(did), *_LAST_FIELDS),
        (b"LRANGE", history_key, first, offset + limit - 1),
        (b"LLEN", history_key),
    ]
    replies = await round_trip(client, commands, "reading presence history")
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        raise RedisUnavailable(f"reading presence history: {failed}")
    presence, last, entries, stored = replies
    now = int(time.time() * 1000) if now_ms is None else now_ms
    current = current_session(presence, last, now)
    # Unreadable entries stay None until the page is cut: the indices hold.
    past: list[SessionRecord | None] = [past_session(raw) for raw in entries]
    if current is None:
        window, total = past[offset - first :], int(stored)
    else:
        window, total = [current, *past] if offset == 0 else past, int(stored) + 1
    return [s for s in window[:limit] if s is not None], total
