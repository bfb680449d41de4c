"""A device's statistics from the usage ledger: water per UTC day over the last 30 days (today,
7 and 30 days), pours, and the uptime of its current connection.

One query per call, by UTC day of `received_at` (when the platform metered the record: a device
clock can be wrong, and a resent record belongs to the day it was counted): on PostgreSQL it
reads the per-day rollups (usage_daily, kept when raw records are pruned), on SQLite it adds up
the ledger's rows.
`dispense_count` counts the ledger's `dispense_done` events in the same 30 days: one per pour the
device reported, deduplicated like every record, whatever started it (a vending session, a
remote `dispense` command); vending sessions would miss the others and count failed ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aquafleet.models.errors import InvalidInput
from aquafleet.models.usage import RecordKind
from aquafleet.protocol import EventKind

DAYS = 30
WEEK = 7

_SQLITE_DAILY = (
    "SELECT date(received_at) AS day, SUM(delta_ml) AS water_ml, "
    "SUM(CASE WHEN kind = ? AND event_kind = ? THEN 1 ELSE 0 END) AS dispenses "
    "FROM usage_record WHERE did = ? AND date(received_at) BETWEEN ? AND ? "
    "GROUP BY date(received_at)"
)
# PostgreSQL: the per-day rollups the ledger writer keeps (usage_daily), at most 30 rows by
# their unique (did, day) index, however many records the device sends or how old its ledger.
_PG_DAILY = (
    "SELECT day, water_ml, dispenses FROM usage_daily WHERE did = $1 AND day BETWEEN $2 AND $3"
)


@dataclass(frozen=True, slots=True)
class DeviceStatistics:
    """Water in ml per window ending today (UTC, today included); `daily` is the last 30 UTC
    days, oldest first, days without records at 0; `uptime_s` is None when offline."""

    water_ml_today: int
    water_ml_7d: int
    water_ml_30d: int
    daily: list[tuple[dt.date, int]]
    dispense_count: int
    uptime_s: int | None


def _day(value: Any) -> dt.date:
    """A day as the database returns it (a date on PostgreSQL, text on SQLite)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def summarize(
    rows: Iterable[tuple[dt.date, int, int]], today: dt.date, uptime_s: int | None
) -> DeviceStatistics:
    """Statistics from per-day rows (day, water_ml, dispenses) (pure)."""
    water = {day: 0 for day in (today - dt.timedelta(days=n) for n in range(DAYS))}
    dispenses = 0
    for day, water_ml, count in rows:
        if day in water:
            water[day] += int(water_ml)
            dispenses += int(count)
    daily = sorted(water.items())
    return DeviceStatistics(
        water_ml_today=water[today],
        water_ml_7d=sum(ml for _, ml in daily[-WEEK:]),
        water_ml_30d=sum(ml for _, ml in daily),
        daily=daily,
        dispense_count=dispenses,
        uptime_s=uptime_s,
    )


def uptime_seconds(online_since_ms: int | None, now: dt.datetime) -> int | None:
    """Whole seconds since the current connection's login (None: offline)."""
    if online_since_ms is None:
        return None
    return max(0, (int(now.timestamp() * 1000) - online_since_ms) // 1000)


async def _daily_rows(did: str, first: dt.date, today: dt.date) -> list[tuple[dt.date, int, int]]:
    from aquafleet.models.db import connection, dialect

    kind, dispense_done = int(RecordKind.EVENT), int(EventKind.DISPENSE_DONE)
    if dialect() == "postgres":
        rows = await connection().execute_query_dict(_PG_DAILY, [did, first, today])
    else:
        rows = await connection().execute_query_dict(
            _SQLITE_DAILY, [kind, dispense_done, did, first.isoformat(), today.isoformat()]
        )
    return [(_day(r["day"]), int(r["water_ml"] or 0), int(r["dispenses"] or 0)) for r in rows]


async def device_statistics(
    did: str, *, now: dt.datetime, online_since_ms: int | None = None
) -> DeviceStatistics:
    """The device's statistics at `now` (an aware datetime). `online_since_ms`: when its current
    connection logged in (gateway.device_status RuntimeStatus.since_ms when online), for uptime.
    """
    if now.tzinfo is None:
        raise InvalidInput("now must be an aware datetime")
    today = now.astimezone(dt.UTC).date()
    rows = await _daily_rows(did, today - dt.timedelta(days=DAYS - 1), today)
    return summarize(rows, today, uptime_seconds(online_since_ms, now))
