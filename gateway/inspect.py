"""Read-only views for operators: one device, or the platform as a whole."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import redis.asyncio as aioredis

from aquafleet.gateway.config import Settings
from aquafleet.gateway.device_status import SessionRecord, read_sessions
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.meter import MeterState
from aquafleet.gateway.redis_io import mget_any
from aquafleet.gateway.registry_cache import parse_registry_entry
from aquafleet.models.devices import Device
from aquafleet.models.usage import (
    DeviceSnapshot,
    UsageRecord,
    ledger_row_count,
    metered_ml_by_device,
)
from aquafleet.protocol import FrameType, ProtocolError
from aquafleet.protocol.message_types import Telemetry
from aquafleet.protocol.messages import parse_record_payload

FILTER_FIELDS = ("stage", "work_h", "power_on_h", "reset_count")


def _iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as the REST API writes times."""
    if value is None:
        return None
    when = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ms_to_iso(value: bytes | int | None) -> str | None:
    if value is None:
        return None
    return _iso(dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC))


def _labelled_filters(rows: Any) -> list[dict[str, int]] | None:
    """[stage, work_h, power_on_h, reset_count] rows as named fields."""
    if rows is None:
        return None
    return [dict(zip(FILTER_FIELDS, row, strict=False)) for row in rows]


def _session_fields(session: SessionRecord, now_ms: int) -> dict[str, Any]:
    """A session as GET /api/v1/devices/{did}/sessions answers it to an admin."""
    return {
        "online": session.ended_at_ms is None,
        "node": session.node,
        "since": _ms_to_iso(session.since_ms),
        "last_seen": _ms_to_iso(session.last_seen_ms),
        "ended_at": _ms_to_iso(session.ended_at_ms),
        "reason": session.reason,
        "duration_s": session.duration_ms(now_ms) // 1000,
    }


async def device_status(
    settings: Settings, client: aioredis.Redis | None, did: str, *, sessions: int = 0
) -> dict[str, Any]:
    """Everything known of one device; with `sessions`, its latest that many connections
    (newest first, the current one first while online) and how many are kept."""
    device = await Device.get_or_none(did=did)
    status: dict[str, Any] = {"did": did, "registered": device is not None}
    if device is None:
        return status
    status.update(
        vendor=device.vendor_id,
        type=int(device.type),
        model=device.model,
        state=device.state.name.lower(),
        key_version=device.key_version,
        activated_at=_iso(device.activated_at),
        ledger_metered_ml=(await metered_ml_by_device([did]))[did],
        ledger_records=await UsageRecord.filter(did=did).count(),
    )
    snapshot = await DeviceSnapshot.get_or_none(did=did)
    if snapshot is not None:
        status["latest_report"] = {
            "boot": snapshot.boot,
            "rec": snapshot.rec,
            "received_at": _iso(snapshot.received_at),
            "flow_total_ml": snapshot.flow_total_ml,
            "tds_in_ppm": snapshot.tds_in_ppm,
            "tds_out_ppm": snapshot.tds_out_ppm,
            "temperature_dc": snapshot.temperature_dc,
            "filters": _labelled_filters(snapshot.filters),
            "fault_bits": snapshot.fault_bits,
            "signal": snapshot.signal,
            "state_bits": snapshot.state_bits,
        }
    if client is None:
        status["redis"] = "not reachable (is `aquafleet serve` running?)"
        return status
    keyspace = Keyspace.for_url(settings.redis_prefix, settings.redis_shards, settings.redis_url)
    pipe = client.pipeline(transaction=False)
    pipe.hget(keyspace.registry(keyspace.shard_of(did)), did)
    pipe.hgetall(keyspace.presence(did))
    pipe.get(keyspace.meter(did))
    registry, presence, raw_meter = await pipe.execute()
    m = MeterState.decode(raw_meter)
    entry = parse_registry_entry(registry)
    status["login_allowed"] = entry is not None and entry.login_allowed
    status["online"] = bool(presence)
    if presence:
        status["presence"] = {
            "node": presence[b"node"].decode(),
            "since": _ms_to_iso(presence.get(b"since")),
            "last_seen": _ms_to_iso(presence.get(b"seen")),
        }
    if m.known:
        status["meter"] = {
            "metered_ml": m.metered_ml,
            "records": m.records,
            "highest_counter_ml": m.counter_top_ml,
            "cnt_epoch": m.counter_epoch,
            "watermark": list(m.watermark) if m.watermark is not None else None,
        }
    if m.telemetry_payload is not None and m.telemetry_encoding is not None:
        try:
            message = parse_record_payload(
                FrameType.TELEMETRY, m.telemetry_payload, m.telemetry_encoding
            )
        except ProtocolError:
            message = None
        if isinstance(message, Telemetry):
            status["live_report"] = {
                "received_at": _ms_to_iso(m.telemetry_received_ms),
                "flow_total_ml": message.flow_total_ml,
                "tds_in_ppm": message.tds_in_ppm,
                "tds_out_ppm": message.tds_out_ppm,
                "temperature_dc": message.temperature_dc,
                "filters": _labelled_filters(
                    [(f.index, f.work_h, f.power_on_h, f.reset_count) for f in message.filters]
                ),
                "fault_bits": message.fault_bits,
                "signal": message.signal,
                "state_bits": message.state_bits,
            }
    if sessions > 0:
        now_ms = int(time.time() * 1000)
        history, kept = await read_sessions(
            client, keyspace, did, limit=sessions, offset=0, now_ms=now_ms
        )
        status["sessions"] = [_session_fields(s, now_ms) for s in history]
        status["sessions_total"] = kept
    return status


async def platform_status(settings: Settings, client: aioredis.Redis | None) -> dict[str, Any]:
    records, estimated = await ledger_row_count()
    status: dict[str, Any] = {
        "devices": await Device.all().count(),
        "ledger_records": records,
        "ledger_records_estimated": estimated,
    }
    if client is None:
        status["redis"] = "not reachable (is `aquafleet serve` running?)"
        return status
    keyspace = Keyspace.for_url(settings.redis_prefix, settings.redis_shards, settings.redis_url)
    backlog = await mget_any(client, [keyspace.ledger_backlog(s) for s in keyspace.all_shards()])
    status["ledger_backlog_records"] = sum(int(v or 0) for v in backlog)
    keys = [key async for key in client.scan_iter(match=f"{keyspace.prefix}:{{*}}:p:*", count=1000)]
    nodes: dict[str, int] = {}
    for start in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 1000]:
            pipe.hget(key, "node")
        for node in await pipe.execute():
            if node is not None:
                nodes[node.decode()] = nodes.get(node.decode(), 0) + 1
    status["online"] = sum(nodes.values())
    status["online_by_node"] = nodes
    return status
