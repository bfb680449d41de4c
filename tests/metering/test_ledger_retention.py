"""The ledger over years: per-day rollups that a replayed batch does not inflate, statistics
that survive pruning raw records past the retention (both backends; rollups and monthly
partitions on PostgreSQL)."""

from __future__ import annotations

import datetime as dt

from tortoise.functions import Sum

from aquafleet.gateway.config import Settings
from aquafleet.models.db import dialect
from aquafleet.models.device_stats import device_statistics
from aquafleet.models.usage import (
    LedgerPruner,
    UsageDaily,
    UsageRecord,
    UsageRow,
    prune_ledger,
    prune_usage_records,
    store_ledger_batch,
)
from aquafleet.models.usage_partitions import (
    attached_partitions,
    month_bounds,
    month_of,
    months_from,
    next_month,
    partition_name,
)
from aquafleet.protocol import EventKind

DID = "KEEP00000001AAAA"
NOW = dt.datetime(2026, 11, 20, 8, 30, tzinfo=dt.UTC)


def rows_on(day: dt.date, first_rec: int, count: int, ml: int) -> list[UsageRow]:
    """`count` records of `ml` each on `day`, one a minute from 10:00; every 10th a pour."""
    start = dt.datetime(day.year, day.month, day.day, 10, tzinfo=dt.UTC)
    out = []
    for i in range(count):
        received = start + dt.timedelta(minutes=i)
        pour = i % 10 == 9
        out.append(UsageRow(
            DID, 1, first_rec + i, 0x21 if pour else 0x20,
            int(EventKind.DISPENSE_DONE) if pour else 0, int(received.timestamp()), received,
            ml, None, None,
        ))  # fmt: skip
    return out


async def test_a_replayed_batch_counts_once_in_the_rollups_and_the_statistics(db):
    today = NOW.date()
    batch = rows_on(today, 1, 30, 100) + rows_on(today - dt.timedelta(days=1), 31, 20, 10)
    await store_ledger_batch(batch, [], [])
    await store_ledger_batch(batch[10:], [], [])  # a writer died before XACK: written again
    stats = await device_statistics(DID, now=NOW)
    assert (stats.water_ml_today, stats.water_ml_7d) == (3000, 3200)
    assert stats.dispense_count == 5
    assert await UsageRecord.filter(did=DID).count() == 50
    if dialect() == "postgres":
        day = await UsageDaily.get(did=DID, day=today)
        assert (day.water_ml, day.dispenses, day.records) == (3000, 3, 30)
        assert (day.last_at - day.first_at) == dt.timedelta(minutes=29)


async def test_pruning_deletes_only_old_raw_records_and_the_statistics_stay(db):
    today = NOW.date()
    old_day = today - dt.timedelta(days=440)  # a month wholly older than the retention
    await store_ledger_batch(rows_on(old_day, 1, 40, 5), [], [])
    await store_ledger_batch(rows_on(today, 41, 30, 100), [], [])
    before = await device_statistics(DID, now=NOW)

    pruner = LedgerPruner(400)
    pruned = await pruner.maybe_prune(NOW)
    if dialect() == "postgres":  # the whole month goes
        assert pruned.partitions == (partition_name(month_of(at_ten(old_day))),)
    else:
        assert pruned.rows == 40
    assert not await pruner.maybe_prune(NOW)  # not again within the hour
    assert await UsageRecord.filter(did=DID).count() == 30
    assert await device_statistics(DID, now=NOW) == before
    if dialect() == "postgres":  # the old day's rollup is kept
        kept = await UsageDaily.get(did=DID, day=old_day)
        assert (kept.water_ml, kept.records) == (200, 40)
    assert not await prune_ledger(NOW, dt.timedelta(days=400))


def at_ten(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, 10, tzinfo=dt.UTC)


def every_six_hours(days: int) -> list[UsageRow]:
    """Four records a day (6 ml each, every 4th a pour) for `days` days up to NOW."""
    first = NOW - dt.timedelta(days=days)
    out = []
    for i in range(days * 4):
        at = first + dt.timedelta(hours=6 * i)
        pour = i % 4 == 3
        out.append(UsageRow(
            DID, 1, i + 1, 0x21 if pour else 0x20, int(EventKind.DISPENSE_DONE) if pour else 0,
            int(at.timestamp()), at, 6, None, None,
        ))  # fmt: skip
    return out


async def test_fifteen_months_pruned_past_the_retention_keep_rollups_and_newer_rows(db):
    rows = every_six_hours(460)  # 2025-08-17 .. 2026-11-20: 16 calendar months
    await store_ledger_batch(rows, [], [])
    before = await device_statistics(DID, now=NOW)
    cutoff = NOW - dt.timedelta(days=400)  # 2025-10-16 08:30
    cutoff_month = month_bounds(month_of(cutoff))[0]  # 2025-10-01

    pruned = await prune_ledger(NOW, dt.timedelta(days=400))

    left = (
        await UsageRecord.filter(did=DID)
        .order_by("received_at")
        .values_list("received_at", flat=True)
    )
    assert await device_statistics(DID, now=NOW) == before
    if dialect() == "postgres":
        # Whole months older than the retention are gone; the month holding the cutoff stays
        # whole until it is all past it; rollups of every day stay.
        assert pruned.partitions == ("usage_record_y2025m08", "usage_record_y2025m09")
        assert left == [r.received_at for r in rows if r.received_at >= cutoff_month]
        months = [p.month for p in await attached_partitions()]
        assert months[0] == month_of(cutoff)
        assert set(months_from(month_of(cutoff), next_month(month_of(NOW)))) <= set(months)
        days = await UsageDaily.filter(did=DID).count()
        assert days == len({r.received_at.date() for r in rows})
        (total,) = (
            await UsageDaily.filter(did=DID)
            .annotate(ml=Sum("water_ml"))
            .values_list("ml", flat=True)
        )
        assert total == 6 * len(rows)
    else:
        assert pruned.rows == sum(1 for r in rows if r.received_at < cutoff)
        assert left == [r.received_at for r in rows if r.received_at >= cutoff]
    assert left[-1] == rows[-1].received_at  # newer rows all stay
    assert not await prune_ledger(NOW, dt.timedelta(days=400))


async def test_pruning_goes_in_bounded_steps(db):
    today = NOW.date()
    await store_ledger_batch(rows_on(today - dt.timedelta(days=500), 1, 25, 5), [], [])
    await store_ledger_batch(rows_on(today, 26, 5, 5), [], [])
    cutoff = NOW - dt.timedelta(days=400)
    assert await prune_usage_records(cutoff, max_rows=10) == 10
    assert await prune_usage_records(cutoff, max_rows=10) == 10
    assert await prune_usage_records(cutoff, max_rows=10) == 5
    assert await UsageRecord.filter(did=DID).count() == 5


async def test_the_platform_status_counts_the_ledger_without_reading_every_row(db):
    """`aquafleet status`: SQLite counts; PostgreSQL sums the planner's estimate over the
    monthly partitions (exact once they are analysed), never a count(*) of years of rows."""
    from aquafleet.gateway.inspect import platform_status
    from aquafleet.models.db import connection
    from aquafleet.models.usage import ledger_row_count

    today = NOW.date()
    await store_ledger_batch(
        rows_on(today, 1, 40, 100) + rows_on(today - dt.timedelta(days=40), 41, 25, 10), [], []
    )
    if dialect() == "postgres":
        await connection().execute_script("ANALYZE usage_record")
        assert await ledger_row_count() == (65, True)
    else:
        assert await ledger_row_count() == (65, False)
    status = await platform_status(Settings(), None)
    assert status["ledger_records"] == 65
    assert status["ledger_records_estimated"] is (dialect() == "postgres")
