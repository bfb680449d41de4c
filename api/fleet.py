"""The console's live fleet overview: counts of the caller's devices now (online, offline,
locked, in rental, raising a fault) and the records stored per second, as one answer or, with
`Accept: text/event-stream`, as server-sent events every `console_feed_interval_s`.

The counts come from the gateway's presence and meter state in Redis (one pipelined round trip
per tick over the caller's devices, never a message to a device); the caller's scope is the
device list's (AB-01). A stream lasts at most FEED_MAX_S: the client reconnects, and is
authenticated again, with the access token it holds then (a refreshed one after a refresh).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field
from tortoise.exceptions import BaseORMException

from aquafleet.api.devices.schemas import MAX_ONLINE_SCAN, DailyWaterOut
from aquafleet.api.list_filters import named_vendor
from aquafleet.api.routing import Call, RouteTable, accepts, envelope
from aquafleet.api.schemas import UNSET, Query, UtcDateTime, VendorCode
from aquafleet.gateway.appkeys import DEVICE_GATEWAY, SETTINGS
from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.fleet import FleetCounts
from aquafleet.gateway.logs import get_logger
from aquafleet.models.devices import DeviceState, visible_devices
from aquafleet.models.fleet_history import DAYS, online_history, water_per_day
from aquafleet.models.tenancy import ADMIN_ROLES, Principal

log = get_logger("aquafleet.api.fleet")

EVENT_STREAM = "text/event-stream"
FEED_MAX_S = 300  # a stream ends after this; the client reconnects (re-authenticated)
STOPPING: web.AppKey[asyncio.Event] = web.AppKey("fleet_feed_stopping", asyncio.Event)

routes = RouteTable(
    "fleet",
    "The console's live overview of the caller's fleet and its history (docs/console.md).",
)


class FleetOverviewOut(BaseModel):
    devices: int  # registered and not deregistered, in the caller's subtree
    online: int
    offline: int
    locked: int  # any lock bit: quota exhausted, rental expired, locked by a person
    in_rental: int  # mode time rental or volume rental
    alarms: int  # the newest telemetry reports a fault
    records_stored: int  # every record ever stored of these devices (difference it for a rate)
    records_per_s: float | None  # since the previous event of a stream; null in the first
    truncated: bool  # more than MAX_ONLINE_SCAN devices: the counts cover the first of them
    at: UtcDateTime


async def scoped_dids(principal: Principal) -> tuple[list[str], bool]:
    """The caller's devices that may still connect (at most MAX_ONLINE_SCAN), and whether
    there were more."""
    qs = visible_devices(principal).exclude(state=DeviceState.DEREGISTERED).order_by("did")
    dids = [str(d) for d in await qs.limit(MAX_ONLINE_SCAN + 1).values_list("did", flat=True)]
    return dids[:MAX_ONLINE_SCAN], len(dids) > MAX_ONLINE_SCAN


def overview(
    counts: FleetCounts, truncated: bool, *, rate: float | None, now: dt.datetime
) -> FleetOverviewOut:
    return FleetOverviewOut(
        devices=counts.devices,
        online=counts.online,
        offline=counts.devices - counts.online,
        locked=counts.locked,
        in_rental=counts.in_rental,
        alarms=counts.alarms,
        records_stored=counts.records_stored,
        records_per_s=rate,
        truncated=truncated,
        at=now,
    )


def wants_stream(request: web.Request) -> bool:
    """An event stream only when the Accept header names it (a plain client gets JSON)."""
    header = ",".join(request.headers.getall("Accept", []))
    return EVENT_STREAM in header.lower() and accepts(header, EVENT_STREAM)


async def read_overview(
    call: Call, previous: tuple[float, int] | None
) -> tuple[FleetOverviewOut, tuple[float, int]]:
    dids, truncated = await scoped_dids(call.principal)
    counts = await call.app[DEVICE_GATEWAY].fleet_counts(dids)
    now = time.monotonic()
    rate = None
    if previous is not None and now > previous[0]:
        rate = round(max(0, counts.records_stored - previous[1]) / (now - previous[0]), 1)
    out = overview(counts, truncated, rate=rate, now=dt.datetime.now(dt.UTC))
    return out, (now, counts.records_stored)


@routes.get(
    "/fleet/overview",
    summary="The caller's fleet now: online, offline, locked, in rental, alarms, records/s",
    roles=ADMIN_ROLES,
    response=FleetOverviewOut,
    errors=(503,),
    stream=EVENT_STREAM,
    description="Counts over the caller's devices (the scope of GET /devices) from the "
    "gateway's presence and meter state. With `Accept: text/event-stream` the answer is a "
    "stream of server-sent events, one `overview` event every `console_feed_interval_s` "
    "whose data is this same envelope; `records_per_s` is the difference between two events. "
    f"A stream ends after {FEED_MAX_S} s (reconnect with the current access token).",
)
async def fleet_overview(call: Call) -> FleetOverviewOut | web.StreamResponse:
    if not wants_stream(call.request):
        return (await read_overview(call, None))[0]
    return await stream_overview(call)


class FleetStatisticsQuery(Query):
    vid: VendorCode = Field(UNSET, description="only this vendor's devices (the platform)")


class OnlineSampleOut(BaseModel):
    at: UtcDateTime = Field(description="when the sample was taken (its bucket's start)")
    online: int
    devices: int = Field(description="registered, not deregistered, at that time")


class FleetStatisticsOut(BaseModel):
    online_24h: list[OnlineSampleOut] = Field(description="every sample of the last 24 h")
    online_30d: list[OnlineSampleOut] = Field(description="the hourly samples of 30 days")
    sample_interval_s: int = Field(description="the sampling interval in force")
    water_daily: list[DailyWaterOut] = Field(description="30 UTC days, oldest first")
    water_ml_today: int
    water_ml_30d: int
    at: UtcDateTime


@routes.get(
    "/fleet/statistics",
    summary="The caller's fleet over time: online devices (24 h, 30 days), water per day",
    roles=ADMIN_ROLES,
    query=FleetStatisticsQuery,
    response=FleetStatisticsOut,
    description="Over the caller's devices (the scope of GET /devices). Online counts are "
    "samples taken every `fleet_sample_interval_s` per vendor and agent node (exact at that "
    "moment, summed over the caller's subtree); a time with no sample (no node sampling) is "
    "absent, not zero. Water per UTC day (of when the platform metered it) over 30 days, "
    "from per-day rollups per vendor and agent node, deregistered devices' included; a "
    "device moved to another node leaves its past water with the old one.",
)
async def fleet_statistics(call: Call) -> FleetStatisticsOut:
    query: FleetStatisticsQuery = call.query
    principal = call.principal
    await named_vendor(principal, query.vid)
    now = dt.datetime.now(dt.UTC)
    recent = await online_history(principal, now - dt.timedelta(hours=24), hourly=False,
                                  vid=query.vid)  # fmt: skip
    month = await online_history(principal, now - dt.timedelta(days=DAYS), hourly=True,
                                 vid=query.vid)  # fmt: skip
    water = await water_per_day(principal, now.date(), vid=query.vid)
    return FleetStatisticsOut(
        online_24h=[OnlineSampleOut(at=a, online=o, devices=d) for a, o, d in recent],
        online_30d=[OnlineSampleOut(at=a, online=o, devices=d) for a, o, d in month],
        sample_interval_s=call.app[SETTINGS].fleet_sample_interval_s,
        water_daily=[DailyWaterOut(date=day, water_ml=ml) for day, ml in water],
        water_ml_today=water[-1][1],
        water_ml_30d=sum(ml for _, ml in water),
        at=now,
    )


UNAVAILABLE = envelope(
    None, total=0, ok=False, code="service_unavailable", message="a backing service did not "
    "answer; reconnect"
)  # fmt: skip


def sse(name: str, body: dict[str, Any]) -> bytes:
    """One server-sent event whose data is an envelope (JSON has no raw newline)."""
    return f"event: {name}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


async def stream_overview(call: Call) -> web.StreamResponse:
    request = call.request
    interval = request.app[SETTINGS].console_feed_interval_s
    stopping = request.app[STOPPING]
    first, previous = await read_overview(call, None)  # errors before the stream: an envelope
    response = web.StreamResponse(
        headers={
            "Content-Type": EVENT_STREAM,
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a buffering proxy would hold the events back
        }
    )
    await response.prepare(request)
    deadline = time.monotonic() + FEED_MAX_S
    current = first
    try:
        while True:
            await response.write(sse("overview", envelope(current.model_dump(mode="json"))))
            if time.monotonic() >= deadline:
                break
            try:
                await asyncio.wait_for(stopping.wait(), interval)
                break  # the node is stopping
            except TimeoutError:
                pass
            try:
                current, previous = await read_overview(call, previous)
            except (GatewayError, BaseORMException) as exc:
                # The answer has begun: the failure is the stream's last event, not a status.
                log.warning("fleet_feed_failed", error=str(exc))
                await response.write(sse("error", UNAVAILABLE))
                break
        # Inside the guard: the client may have gone while the stream waited (for the node's
        # stop, say), and aiohttp's ClientConnectionResetError is a ConnectionResetError.
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away: nothing more to send
    return response


def setup_feed(app: web.Application) -> None:
    """Streams end when the node stops (before aiohttp waits for open requests)."""
    app[STOPPING] = asyncio.Event()

    async def stop_streams(app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(stop_streams)
