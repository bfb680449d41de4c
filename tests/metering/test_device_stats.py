"""Device statistics from the usage ledger, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from aquafleet.models.device_stats import DeviceStatistics, device_statistics
from aquafleet.models.errors import InvalidInput
from aquafleet.models.usage import UsageRow, store_ledger_batch
from aquafleet.protocol import EventKind

DID = "STAT00000001AAAA"
OTHER = "STAT00000002AAAA"
NOW = dt.datetime(2026, 11, 20, 8, 30, tzinfo=dt.UTC)
TODAY = NOW.date()

_recs: dict[str, int] = {}


def at(days_ago: int, hour: int = 12, minute: int = 0, second: int = 0) -> dt.datetime:
    day = TODAY - dt.timedelta(days=days_ago)
    return dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=dt.UTC)


def row(did: str, delta_ml: int, received_at: dt.datetime, *, event_kind: int = 0) -> UsageRow:
    rec = _recs[did] = _recs.get(did, 0) + 1
    kind = 0x21 if event_kind else 0x20
    ts = int(received_at.timestamp())
    return UsageRow(did, 1, rec, kind, event_kind, ts, received_at, delta_ml, None, None)


async def test_water_per_day_week_and_month(db):
    dispense, fault = int(EventKind.DISPENSE_DONE), int(EventKind.FAULT_SET)
    await store_ledger_batch(
        [
            row(DID, 100, at(0, 0, 0, 0)),  # today's first second
            row(DID, 250, at(0, 8), event_kind=dispense),
            row(DID, 7, at(1, 23, 59, 59)),  # yesterday's last second
            row(DID, 40, at(6)),  # the 7th day back: in the week
            row(DID, 1000, at(7), event_kind=dispense),  # the 8th: in the month only
            row(DID, 3, at(7), event_kind=fault),
            row(DID, 5, at(29, 0, 0, 0)),  # the 30th day back: in the month
            row(DID, 90_000, at(30, 23, 59, 59)),  # a day too old
            row(DID, 777, at(-1, 0, 0, 0)),  # after `now`: not counted
            row(OTHER, 12_345, at(0)),  # another device
        ],
        [],
        [],
    )
    stats = await device_statistics(DID, now=NOW)
    assert stats.water_ml_today == 350
    assert stats.water_ml_7d == 350 + 7 + 40
    assert stats.water_ml_30d == 350 + 7 + 40 + 1000 + 3 + 5
    assert stats.dispense_count == 2  # dispense_done events only
    assert len(stats.daily) == 30
    assert stats.daily[0] == (TODAY - dt.timedelta(days=29), 5)
    assert stats.daily[-1] == (TODAY, 350)
    assert stats.daily[-2] == (TODAY - dt.timedelta(days=1), 7)
    assert stats.daily[-8] == (TODAY - dt.timedelta(days=7), 1003)
    assert stats.daily[-3] == (TODAY - dt.timedelta(days=2), 0)  # zero-filled
    assert [d for d, _ in stats.daily] == [TODAY - dt.timedelta(days=n) for n in range(29, -1, -1)]
    assert all(type(ml) is int for _, ml in stats.daily)
    assert sum(ml for _, ml in stats.daily) == stats.water_ml_30d
    assert stats.uptime_s is None


async def test_a_day_is_a_utc_day(db):
    beijing = dt.timezone(dt.timedelta(hours=8))
    # 07:00 in Beijing on the 20th is 23:00 UTC on the 19th.
    await store_ledger_batch([row(DID, 60, dt.datetime(2026, 11, 20, 7, tzinfo=beijing))], [], [])
    stats = await device_statistics(DID, now=NOW.astimezone(beijing))
    assert stats.water_ml_today == 0
    assert stats.daily[-2] == (TODAY - dt.timedelta(days=1), 60)


async def test_a_device_without_records(db):
    stats = await device_statistics("STAT00000009AAAA", now=NOW)
    assert stats == DeviceStatistics(0, 0, 0, stats.daily, 0, None)
    assert stats.daily == [(TODAY - dt.timedelta(days=n), 0) for n in range(29, -1, -1)]


async def test_uptime_counts_from_the_current_login(db):
    since_ms = int(NOW.timestamp() * 1000) - 3_725_500
    stats = await device_statistics(DID, now=NOW, online_since_ms=since_ms)
    assert stats.uptime_s == 3725


async def test_now_must_be_aware(db):
    with pytest.raises(InvalidInput):
        await device_statistics(DID, now=dt.datetime(2026, 11, 20))
