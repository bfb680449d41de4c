"""AB-07..10: a device's service state (mode, quota, rental, locks), runtime status and
statistics, through the gateway's facade; its presence history; and its ledger's latest
records."""

from __future__ import annotations

import datetime as dt
import time

from aquafleet.api.devices.access import runtime_of, visible_device
from aquafleet.api.devices.schemas import (
    DailyWaterOut,
    DevicePath,
    DeviceRecordOut,
    DeviceRecordsQuery,
    DeviceRuntimeOut,
    DeviceServiceIn,
    DeviceServiceOut,
    DeviceSessionOut,
    DeviceSessionsQuery,
    DeviceStatisticsOut,
)
from aquafleet.api.devices.shaping import (
    NEVER_SEEN,
    check_service_fields,
    runtime_out,
    service_out,
    session_out,
    utc_from_s,
)
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.gateway.appkeys import DEVICE_GATEWAY, SETTINGS
from aquafleet.models.device_stats import device_statistics
from aquafleet.models.devices import check_changeable
from aquafleet.models.filters import filter_life, filters_of_devices
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import ADMIN_ROLES, ANY_ROLE, PLATFORM_OR_VENDOR
from aquafleet.models.usage import DeviceSnapshot, RecordKind, UsageRecord, latest_records

routes = RouteTable("devices")


@routes.get(
    "/devices/{did}/svc",
    seed="AB-07",
    summary="Read a device's service state (mode, quota, rental, locks)",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceServiceOut,
    errors=(503,),
)
async def read_device_service(call: Call) -> DeviceServiceOut:
    device = await visible_device(call.principal, call.params.did)
    return service_out(device.did, await call.app[DEVICE_GATEWAY].read_service(device.did))


@routes.put(
    "/devices/{did}/svc",
    seed="AB-08",
    summary="Change a device's service state",
    roles=PLATFORM_OR_VENDOR,
    params=DevicePath,
    body=DeviceServiceIn,
    response=DeviceServiceOut,
    errors=(409, 503),
    description="`op`: configure (mode, remaining_ml, rental_expires_at, low_balance_ml), "
    "top_up (ml), extend (package or days), set_expiry (rental_expires_at), lock, unlock. "
    "The device gets the new state at once when connected, else at its next login. With a "
    "request_id a retried change is applied once (`applied: false` the second time); another "
    "change under an id the device used answers 409 idempotency_key_reused, applied nowhere.",
)
async def change_device_service(call: Call) -> DeviceServiceOut:
    body: DeviceServiceIn = call.body
    principal = call.principal
    device = await visible_device(principal, call.params.did)
    check_changeable(device)
    check_service_fields(body)
    actor = f"{principal.role}:{principal.subject}"[:64]
    expires_s = None if body.rental_expires_at is None else int(body.rental_expires_at.timestamp())
    change = ServiceChangeRequest(
        op=body.op, mode=body.mode, remaining_ml=body.remaining_ml,
        low_balance_ml=body.low_balance_ml, rental_expires_at=expires_s, ml=body.ml,
        package=body.package, days=body.days, reason=body.reason, request_id=body.request_id,
    )  # fmt: skip
    gateway = call.app[DEVICE_GATEWAY]
    outcome, state = await gateway.change_service(device.did, change, actor=actor)
    return service_out(device.did, state, applied=outcome.applied)


@routes.get(
    "/devices/{did}/stat",
    seed="AB-09",
    summary="Read a device's runtime status",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceRuntimeOut,
    errors=(503,),
    description="Online since, last seen, when and why it last went offline (from the "
    "gateway, exact to the login and the connection's end), the latest report (signal, state "
    "and fault bits, TDS, temperature, flow) and the life left in each filter stage.",
)
async def read_device_runtime(call: Call) -> DeviceRuntimeOut:
    principal = call.principal
    device = await visible_device(principal, call.params.did)
    status = (await runtime_of(call.app, [device.did])).get(device.did, NEVER_SEEN)
    snapshot = await DeviceSnapshot.get_or_none(did=device.did)
    spec = (await filters_of_devices([device.did])).get(device.did)
    lives = []
    if spec is not None and snapshot is not None and snapshot.filters:
        threshold = call.app[SETTINGS].filter_threshold_pct
        lives = filter_life(snapshot.filters, spec.stages, threshold)
    return runtime_out(device.did, status, lives, admin=principal.role in ADMIN_ROLES)


@routes.get(
    "/devices/{did}/sessions",
    summary="A device's presence history: its connections, newest first",
    roles=ANY_ROLE,
    params=DevicePath,
    query=DeviceSessionsQuery,
    response=DeviceSessionOut,
    many=True,
    errors=(503,),
    description="Not in the seed: each connection from its login to its end, with when and why "
    "it ended, newest first, the current one first while the device is online. The gateway "
    "keeps the last `presence_history_size` sessions (default 50) for 90 days after the "
    "device's last login; `total` counts those kept. `node` is for admins only.",
)
async def read_device_sessions(call: Call) -> Page:
    principal = call.principal
    device = await visible_device(principal, call.params.did)
    query: DeviceSessionsQuery = call.query
    now_ms = int(time.time() * 1000)
    sessions, total = await call.app[DEVICE_GATEWAY].sessions(
        device.did, limit=query.limit, offset=query.offset, now_ms=now_ms
    )
    admin = principal.role in ADMIN_ROLES
    return Page([session_out(s, now_ms, admin=admin) for s in sessions], total)


@routes.get(
    "/devices/{did}/statistics",
    seed="AB-10",
    summary="Read a device's statistics (water per day, week, month; dispenses; uptime)",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceStatisticsOut,
    description="The seed gives AB-09 and AB-10 the same path (/stat); statistics are served "
    "at /statistics. Water comes from the usage ledger (UTC days); uptime is the current "
    "connection's (null while offline).",
)
async def read_device_statistics(call: Call) -> DeviceStatisticsOut:
    device = await visible_device(call.principal, call.params.did)
    status = (await runtime_of(call.app, [device.did])).get(device.did)
    since_ms = status.since_ms if status is not None and status.online else None
    stats = await device_statistics(
        device.did, now=dt.datetime.now(dt.UTC), online_since_ms=since_ms
    )
    return DeviceStatisticsOut(
        did=device.did,
        water_ml_today=stats.water_ml_today,
        water_ml_7d=stats.water_ml_7d,
        water_ml_30d=stats.water_ml_30d,
        daily=[DailyWaterOut(date=day, water_ml=ml) for day, ml in stats.daily],
        dispense_count=stats.dispense_count,
        uptime_s=stats.uptime_s,
    )


MAX_UNIX_S = 253_402_300_800  # 10000-01-01: a device clock beyond is not a time


def record_out(row: UsageRecord) -> DeviceRecordOut:
    event = row.kind is RecordKind.EVENT
    return DeviceRecordOut(
        boot=row.boot, rec=row.rec, kind="event" if event else "telemetry",
        event_kind=row.event_kind if event else None,
        device_tms=utc_from_s(row.device_ts) if 0 <= row.device_ts < MAX_UNIX_S else None,
        received_tms=row.received_at,
        delta_ml=row.delta_ml, flow_total_ml=row.flow_total_ml, cnt_epoch=row.cnt_epoch,
    )  # fmt: skip


@routes.get(
    "/devices/{did}/records",
    summary="A device's latest ledger records (newest first)",
    roles=ADMIN_ROLES,
    params=DevicePath,
    query=DeviceRecordsQuery,
    response=DeviceRecordOut,
    many=True,
    description="Not in the seed: the usage ledger of the device, every metered record once, "
    "newest first by (boot, rec), paged by limit (at most 100) and offset. Raw records are "
    "kept `ledger_retention_days`; `total` counts those kept.",
)
async def read_device_records(call: Call) -> Page:
    device = await visible_device(call.principal, call.params.did)
    query: DeviceRecordsQuery = call.query
    rows, total = await latest_records(device.did, limit=query.limit, offset=query.offset)
    return Page([record_out(r) for r in rows], total)
