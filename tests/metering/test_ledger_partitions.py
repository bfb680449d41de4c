"""The raw ledger's monthly partitions on PostgreSQL: made once when writers race, without
waiting for open writes or reads, made again when one went missing, a retryable error when the
partition lock cannot be had, and an existing ledger moved into them by the migration."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import pytest
from tortoise.exceptions import OperationalError
from tortoise.migrations.api import migrate as tortoise_migrate

from aquafleet.models import usage_partitions
from aquafleet.models.db import close_database, connection, migrate, tortoise_config
from aquafleet.models.usage import UsageDaily, UsageRecord, UsageRow, store_ledger_batch
from aquafleet.models.usage_partitions import (
    attached_partitions,
    drop_months_before,
    ensure_months,
    forget_partitions,
    month_of,
    months_from,
    next_month,
    partition_name,
)
from tests.conftest import POSTGRES_URL, _admin_dsn

pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

DID = "PART00000001AAAA"


def row(rec: int, at: dt.datetime, ml: int = 10) -> UsageRow:
    return UsageRow(DID, 1, rec, 0x20, 0, int(at.timestamp()), at, ml, None, None)


async def test_racing_writers_create_each_month_once(db):
    months = months_from(dt.date(2030, 1, 1), dt.date(2030, 6, 1))
    created = await asyncio.gather(*(ensure_months(months) for _ in range(4)))
    # Each ensure_months call had its own pooled connection; the advisory lock let one create.
    names = sorted(name for names in created for name in names)
    assert names == [partition_name(m) for m in months]
    present = [p.month for p in await attached_partitions()]
    assert set(months) <= set(present)
    forget_partitions()  # what another node would see: each month there once, nothing to do
    assert await ensure_months(months) == []


async def test_making_a_month_waits_for_no_open_write_or_read(db):
    at = dt.datetime(2032, 1, 10, tzinfo=dt.UTC)
    await ensure_months([month_of(at)])
    raw = await asyncpg.connect(db.replace("postgres://", "postgresql://"))
    try:
        async with raw.transaction():  # a writer's transaction, open, and a reader's lock
            await raw.execute(
                "INSERT INTO usage_record (did, boot, rec, kind, event_kind, device_ts, "
                "received_at, delta_ml) VALUES ($1, 1, 1, 32, 0, 0, $2, 5)",
                DID,
                at,
            )
            await raw.fetchval("SELECT count(*) FROM usage_record WHERE did = $1", DID)
            # ATTACH needs no lock that inserts or reads hold (CREATE ... PARTITION OF would
            # wait for this transaction); lock_timeout would fail it after LOCK_TIMEOUT.
            created = await asyncio.wait_for(ensure_months([next_month(month_of(at))]), 10)
            assert created == [partition_name(next_month(month_of(at)))]
    finally:
        await raw.close()
    assert await UsageRecord.filter(did=DID).count() == 1


async def test_a_month_that_cannot_be_made_now_fails_the_batch_as_a_retryable_error(
    db, monkeypatch
):
    monkeypatch.setattr(usage_partitions, "LOCK_TIMEOUT", "200ms")
    at = dt.datetime(2033, 5, 1, tzinfo=dt.UTC)
    other = await asyncpg.connect(db.replace("postgres://", "postgresql://"))
    try:  # another node holds the partition lock (stuck in its DDL)
        await other.execute("SELECT pg_advisory_lock($1)", usage_partitions.DDL_LOCK)
        with pytest.raises(OperationalError):  # what the ledger writer backs off and retries
            await store_ledger_batch([row(1, at)], [], [])
        await other.execute("SELECT pg_advisory_unlock($1)", usage_partitions.DDL_LOCK)
        await store_ledger_batch([row(1, at)], [], [])
    finally:
        await other.close()
    assert await UsageRecord.filter(did=DID).count() == 1


async def test_a_month_dropped_behind_the_writers_back_is_made_again(db):
    at = dt.datetime(2031, 3, 5, 12, tzinfo=dt.UTC)
    await store_ledger_batch([row(1, at)], [], [])
    # Another node's pruner (or a person) drops the month this process believes is there.
    await connection().execute_script(f"DROP TABLE {partition_name(month_of(at))}")
    await store_ledger_batch([row(2, at + dt.timedelta(minutes=1))], [], [])
    assert await UsageRecord.filter(did=DID).count() == 1  # the dropped month took rec 1
    day = await UsageDaily.get(did=DID, day=at.date())
    assert (day.records, day.water_ml) == (2, 20)  # the rollups stay across the drop


async def test_a_drop_cut_short_is_finished_by_the_next_prune(db, monkeypatch):
    at = dt.datetime(2020, 2, 10, tzinfo=dt.UTC)
    await store_ledger_batch([row(1, at)], [], [])
    name = partition_name(month_of(at))
    monkeypatch.setattr(usage_partitions, "DETACH_TIMEOUT_MS", 300)
    reader = await asyncpg.connect(db.replace("postgres://", "postgresql://"))
    try:
        async with reader.transaction():  # a long report, reading the ledger
            await reader.fetchval("SELECT count(*) FROM usage_record")
            with pytest.raises(OperationalError):  # DETACH ... CONCURRENTLY waited for it
                await drop_months_before(dt.datetime(2020, 3, 1, tzinfo=dt.UTC))
    finally:
        await reader.close()
    # left half detached: still a partition, marked pending, its rows no longer read
    assert [p.detach_pending for p in await attached_partitions() if p.name == name] == [True]
    assert await drop_months_before(dt.datetime(2020, 3, 1, tzinfo=dt.UTC)) == [name]
    assert name not in [p.name for p in await attached_partitions()]
    assert await UsageRecord.filter(did=DID).count() == 0
    assert (await UsageDaily.get(did=DID, day=at.date())).records == 1


async def test_the_migration_moves_an_existing_ledger_into_monthly_partitions(db):
    await close_database()  # this test works on a database of its own, from empty
    name = f"aquafleet_partmig_{uuid.uuid4().hex[:10]}"
    url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    admin = await asyncpg.connect(_admin_dsn())
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await tortoise_migrate(config=tortoise_config(url), target="models.0014_shop_more")
        await close_database()
        raw = await asyncpg.connect(url.replace("postgres://", "postgresql://"))
        try:
            await raw.execute(
                "INSERT INTO usage_record (did, boot, rec, kind, event_kind, device_ts, "
                "received_at, delta_ml) SELECT $1, 1, g, 32, 0, 0, "
                "timestamptz '2025-01-31 23:00+00' + (g - 1) * interval '1 hour', g FROM "
                "generate_series(1, 50) g",
                DID,
            )
            before = await raw.fetch("SELECT * FROM usage_record ORDER BY id")
            await migrate(url)
            after = await raw.fetch("SELECT * FROM usage_record ORDER BY id")
            assert [tuple(r) for r in after] == [tuple(r) for r in before]
            kind = await raw.fetchval("SELECT relkind FROM pg_class WHERE relname = 'usage_record'")
            assert kind == b"p"  # partitioned
            homes = await raw.fetch(
                "SELECT tableoid::regclass::text AS name, count(*) AS n FROM usage_record "
                "GROUP BY 1 ORDER BY 1"
            )
            assert [(r["name"], r["n"]) for r in homes] == [
                ("usage_record_y2025m01", 1), ("usage_record_y2025m02", 49),
            ]  # fmt: skip
            names = {
                r["name"]
                for r in await raw.fetch(
                    "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c "
                    "ON c.oid = i.inhrelid WHERE i.inhparent = 'usage_record'::regclass"
                )
            }
            now = month_of(dt.datetime.now(dt.UTC))
            expected = months_from(dt.date(2025, 1, 1), next_month(now))
            assert names == {partition_name(m) for m in expected}
            # New rows take ids after the moved ones; a replay of a moved row adds nothing.
            await raw.execute(
                "INSERT INTO usage_record (did, boot, rec, kind, event_kind, device_ts, "
                "received_at, delta_ml) VALUES ($1, 1, 2, 32, 0, 0, "
                "timestamptz '2025-02-01 00:00+00', 1) "
                "ON CONFLICT (did, boot, rec, received_at) DO NOTHING",
                DID,
            )
            assert await raw.fetchval("SELECT count(*) FROM usage_record") == 50
            new_id = await raw.fetchval(
                "INSERT INTO usage_record (did, boot, rec, kind, event_kind, device_ts, "
                "received_at, delta_ml) VALUES ($1, 2, 1, 32, 0, 0, now(), 1) RETURNING id",
                DID,
            )
            assert new_id > max(r["id"] for r in before)
        finally:
            await raw.close()
    finally:
        await close_database()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
