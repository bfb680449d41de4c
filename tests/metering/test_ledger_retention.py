"""The ledger over years: per-day rollups that a replayed batch does not inflate, statistics
that survive pruning raw records past the retention (both backends; rollups on PostgreSQL)."""

from __future__ import annotations

import datetime as dt

from aquafleet.models.db import dialect
from aquafleet.models.device_stats import device_statistics
from aquafleet.models.usage import (
    LedgerPruner,
    UsageDaily,
    UsageRecord,
    UsageRow,
    prune_usage_records,
    store_ledger_batch,
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
    old_day = today - dt.timedelta(days=401)
    await store_ledger_batch(rows_on(old_day, 1, 40, 5), [], [])
    await store_ledger_batch(rows_on(today, 41, 30, 100), [], [])
    before = await device_statistics(DID, now=NOW)

    pruner = LedgerPruner(400)
    assert await pruner.maybe_prune(NOW) == 40
    assert await pruner.maybe_prune(NOW) == 0  # not again within the hour
    assert await UsageRecord.filter(did=DID).count() == 30
    assert await device_statistics(DID, now=NOW) == before
    if dialect() == "postgres":  # the old day's rollup is kept
        kept = await UsageDaily.get(did=DID, day=old_day)
        assert (kept.water_ml, kept.records) == (200, 40)
    assert await prune_usage_records(NOW - dt.timedelta(days=400)) == 0


async def test_pruning_goes_in_bounded_steps(db):
    today = NOW.date()
    await store_ledger_batch(rows_on(today - dt.timedelta(days=500), 1, 25, 5), [], [])
    await store_ledger_batch(rows_on(today, 26, 5, 5), [], [])
    cutoff = NOW - dt.timedelta(days=400)
    assert await prune_usage_records(cutoff, max_rows=10) == 10
    assert await prune_usage_records(cutoff, max_rows=10) == 10
    assert await prune_usage_records(cutoff, max_rows=10) == 5
    assert await UsageRecord.filter(did=DID).count() == 5
