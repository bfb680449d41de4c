"""Counts of a fleet for the console's live overview, from presence and the meter state.

Two keys per device, read in one pipelined round trip: the presence `p:<did>` (exists exactly
while a connection holds the device) and the meter state `m:<did>` (the service state: lock
bits and mode; the records stored; the newest telemetry with its fault bits). Nothing is asked
of the devices themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.meter import meter_fields
from aquafleet.gateway.redis_io import Command, round_trip
from aquafleet.gateway.service_state import ServiceState
from aquafleet.protocol import ProtocolError
from aquafleet.protocol.constants import FrameType
from aquafleet.protocol.message_types import Telemetry
from aquafleet.protocol.messages import parse_record_payload

RENTAL_MODES = frozenset({2, 3})  # the seed's time rental and volume rental device types


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """How many of the devices asked about are online, locked, rented and raising a fault,
    and how many records the platform has stored of them in all (a rate, differenced)."""

    devices: int
    online: int
    locked: int
    in_rental: int
    alarms: int
    records_stored: int


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def fault_bits(payload: object, encoding: object) -> int:
    """The fault bits of the newest telemetry as the meter keeps it (0: none, unreadable)."""
    if not isinstance(payload, bytes) or not isinstance(encoding, int):
        return 0
    try:
        message = parse_record_payload(FrameType.TELEMETRY, payload, encoding)
    except ProtocolError:
        return 0
    if not isinstance(message, Telemetry):
        return 0
    return message.fault_bits or 0


def count_fleet(replies: Sequence[tuple[object, bytes | None]]) -> FleetCounts:
    """The counts from (presence node, meter state) per device as Redis returned them (pure)."""
    online = locked = in_rental = alarms = records = 0
    for node, raw in replies:
        fields = meter_fields(raw)
        online += node is not None
        locked += _int(fields.get("lk")) != 0
        in_rental += _int(fields.get("mode")) in RENTAL_MODES
        records += _int(fields.get("n"))
        alarms += fault_bits(fields.get("payload"), fields.get("enc")) != 0
    return FleetCounts(len(replies), online, locked, in_rental, alarms, records)


async def read_fleet(
    client: aioredis.Redis, keyspace: Keyspace, dids: Sequence[str]
) -> FleetCounts:
    """The counts over `dids` in one Redis round trip; RedisUnavailable when it fails."""
    unique = list(dict.fromkeys(dids))
    if not unique:
        return FleetCounts(0, 0, 0, 0, 0, 0)
    commands: list[Command] = []
    for did in unique:
        commands.append((b"HGET", keyspace.presence(did), b"node"))
        commands.append((b"GET", keyspace.meter(did)))
    replies = await round_trip(client, commands, "reading fleet counts")
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        raise RedisUnavailable(f"reading fleet counts: {failed}")
    pairs = [(replies[2 * i], replies[2 * i + 1]) for i in range(len(unique))]
    return count_fleet(pairs)


def _opt(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def service_from_meter(raw: bytes | None) -> ServiceState:
    """The service state as service.lua keeps it in the meter state (pure; unset: None)."""
    fields = meter_fields(raw)
    return ServiceState(
        version=_int(fields.get("ver")),
        lock_bits=_int(fields.get("lk")),
        mode=_opt(fields.get("mode")),
        remaining_ml=_opt(fields.get("rm")),
        rental_expires_at=_opt(fields.get("rx")),
        low_balance_ml=_opt(fields.get("lo")),
    )


async def read_services(
    client: aioredis.Redis, keyspace: Keyspace, dids: Sequence[str]
) -> dict[str, ServiceState]:
    """The service state of each of `dids` in one Redis round trip (a list's filter: no
    script call per device); RedisUnavailable when it fails."""
    unique = list(dict.fromkeys(dids))
    if not unique:
        return {}
    commands: list[Command] = [(b"GET", keyspace.meter(did)) for did in unique]
    replies = await round_trip(client, commands, "reading service states")
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        raise RedisUnavailable(f"reading service states: {failed}")
    return {did: service_from_meter(raw) for did, raw in zip(unique, replies, strict=True)}
