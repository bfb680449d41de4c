"""The ledger at scale on PostgreSQL: the writer's insert rate into the monthly-partitioned
usage_record, COPY against the multi-row (unnest) insert, device statistics over a year of
minute-level history, and pruning by dropping a month.

In a scratch database (created, migrated, dropped):
1. one device's year of minute-level records (525,600, 13 calendar months) written through
   `store_ledger_batch` (the ledger writer's own path: the batch's monthly partitions made
   sure of, COPY into a staging table, then rows and per-day rollups in one statement, one
   transaction a batch) in batches of --batch rows: rows/s;
2. --compare rows of more devices through raw asyncpg: the writer's unnest statement, COPY
   into a temporary table and the same INSERT ... SELECT, interleaved batch by batch with the
   same COPY path into a plain (unpartitioned) table with the old (did, boot, rec) key (the
   reference for partitioning), and the unnest insert without rollups: rows/s;
3. `device_statistics` for the year-long device, --queries times: p50/p99 (from the rollups),
   and the same 30 days summed from the raw rows (the query statistics ran before the
   rollups) as the reference, with the partitions that raw query reads;
4. removing raw rows: dropping the oldest month's partition against deleting as many rows
   by id range from the plain table: rows/s.

  python benchmarks/ledger_pg.py --postgres postgres://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import time
import uuid
from typing import Any

import asyncpg

from aquafleet.models.usage import (
    PG_CREATE_STAGE,
    PG_INSERT_STAGED_AND_ROLLUP,
    PG_INSERT_USAGE,
    PG_INSERT_USAGE_AND_ROLLUP,
    PRUNE_BATCH,
    UsageRow,
)
from aquafleet.models.usage_partitions import attached_partitions
from aquafleet.protocol import EventKind

MINUTES_A_YEAR = 365 * 24 * 60
NOW = dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.UTC)
_RAW_DAILY = (
    "SELECT (received_at AT TIME ZONE 'UTC')::date AS day, SUM(delta_ml)::bigint AS water_ml, "
    "COUNT(*) FILTER (WHERE kind = $1 AND event_kind = $2) AS dispenses "
    "FROM usage_record WHERE did = $3 AND received_at >= $4 AND received_at < $5 GROUP BY 1"
)
_COLUMNS = list(UsageRow._fields)
# The reference table: usage_record as it was before partitions (one table, id key, the
# dedupe key without the receive time), fed by the writer's own statement.
_CREATE_PLAIN = (
    "CREATE TABLE usage_record_plain (LIKE usage_record INCLUDING DEFAULTS, "
    "PRIMARY KEY (id), UNIQUE (did, boot, rec))"
)
_PLAIN_INSERT = PG_INSERT_STAGED_AND_ROLLUP.replace(
    "INSERT INTO usage_record ", "INSERT INTO usage_record_plain "
).replace("ON CONFLICT (did, boot, rec, received_at)", "ON CONFLICT (did, boot, rec)")
assert _PLAIN_INSERT.count("usage_record_plain") == 1 and "received_at) DO" not in _PLAIN_INSERT


def minute_rows(did: str, minutes: int, first_rec: int = 1) -> list[UsageRow]:
    """A device reporting every minute up to NOW: telemetry, every 20th record a pour."""
    start = NOW - dt.timedelta(minutes=minutes)
    rows = []
    total = 0
    for i in range(minutes):
        received = start + dt.timedelta(minutes=i)
        pour = i % 20 == 19
        delta = 250 if pour else 3
        total += delta
        rows.append(UsageRow(
            did, 1, first_rec + i, 0x21 if pour else 0x20,
            int(EventKind.DISPENSE_DONE) if pour else 0, int(received.timestamp()), received,
            delta, total, 1,
        ))  # fmt: skip
    return rows


async def write_year(did: str, batch: int) -> dict[str, float]:
    from aquafleet.models.usage import store_ledger_batch

    rows = minute_rows(did, MINUTES_A_YEAR)
    started = time.perf_counter()
    for offset in range(0, len(rows), batch):
        await store_ledger_batch(rows[offset : offset + batch], [], [])
    elapsed = time.perf_counter() - started
    return {
        "rows": len(rows),
        "seconds": round(elapsed, 2),
        "rows_per_s": round(len(rows) / elapsed),
    }


async def compare_copy(url: str, count: int, batch: int) -> dict[str, dict[str, float]]:
    """The writer's statement fed by unnest arrays, against COPY into a temporary table."""
    connection = await asyncpg.connect(url)
    results = {}
    await connection.execute(_CREATE_PLAIN)
    try:
        kind = int(EventKind.DISPENSE_DONE)
        rows = minute_rows("BNCHUNNEST000001", count)
        started = time.perf_counter()
        for offset in range(0, count, batch):
            chunk = rows[offset : offset + batch]
            async with connection.transaction():
                columns = [list(col) for col in zip(*chunk, strict=True)]
                await connection.execute(PG_INSERT_USAGE_AND_ROLLUP, *columns, kind)
        elapsed = time.perf_counter() - started
        results["unnest"] = {"rows": count, "rows_per_s": round(count / elapsed)}

        rows = minute_rows("BNCHNOROLLUP0001", count)  # the reference: rows without rollups
        started = time.perf_counter()
        for offset in range(0, count, batch):
            chunk = rows[offset : offset + batch]
            async with connection.transaction():
                columns = [list(col) for col in zip(*chunk, strict=True)]
                await connection.execute(PG_INSERT_USAGE, *columns)
        elapsed = time.perf_counter() - started
        results["unnest_without_rollups"] = {"rows": count, "rows_per_s": round(count / elapsed)}

        # Partitioned and plain batch by batch in turn: the machine's load drifts over a run,
        # and both then see the same drift.
        runs = {
            "copy": ("BNCHCOPY00000001", PG_INSERT_STAGED_AND_ROLLUP),
            "copy_into_plain_table": ("BNCHPLAIN0000001", _PLAIN_INSERT),
        }
        all_rows = {label: minute_rows(did, count) for label, (did, _) in runs.items()}
        spent = dict.fromkeys(runs, 0.0)
        for offset in range(0, count, batch):
            for label, (_did, statement) in runs.items():
                chunk = all_rows[label][offset : offset + batch]
                started = time.perf_counter()
                async with connection.transaction():
                    await connection.execute(PG_CREATE_STAGE)
                    await connection.copy_records_to_table(
                        "ledger_stage", records=chunk, columns=_COLUMNS
                    )
                    await connection.execute(statement, kind)
                spent[label] += time.perf_counter() - started
        for label, elapsed in spent.items():
            results[label] = {"rows": count, "rows_per_s": round(count / elapsed)}
    finally:
        await connection.close()
    return results


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def time_statistics(did: str, queries: int) -> dict[str, dict[str, float]]:
    from aquafleet.models.db import connection
    from aquafleet.models.device_stats import device_statistics

    now = NOW - dt.timedelta(seconds=1)
    rollups, raw = [], []
    for _ in range(queries):
        started = time.perf_counter()
        stats = await device_statistics(did, now=now)
        rollups.append(time.perf_counter() - started)
    first = now.date() - dt.timedelta(days=29)
    start = dt.datetime.combine(first, dt.time(), dt.UTC)
    end = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    kind = int(EventKind.DISPENSE_DONE)
    for _ in range(max(1, queries // 10)):
        started = time.perf_counter()
        rows = await connection().execute_query_dict(_RAW_DAILY, [0x21, kind, did, start, end])
        raw.append(time.perf_counter() - started)
    raw_30d = sum(int(r["water_ml"]) for r in rows)
    assert raw_30d == stats.water_ml_30d, (raw_30d, stats.water_ml_30d)
    return {
        "from_rollups": percentiles(rollups),
        "from_raw_rows": percentiles(raw),
        "partitions_the_raw_query_reads": await partitions_read(
            _RAW_DAILY, [0x21, kind, did, start, end]
        ),
        "partitions_in_the_table": len(await attached_partitions()),
    }


async def partitions_read(sql: str, params: list[object]) -> list[str]:
    """The partitions of usage_record a query's plan reads (the others pruned)."""
    from aquafleet.models.db import connection

    client: Any = connection()
    async with client.acquire_connection() as raw:
        plan = json.loads(await raw.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params))
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        name = node.get("Relation Name", "")
        if name.startswith("usage_record_y"):
            found.add(name)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return sorted(found)


async def removal(url: str) -> dict[str, dict[str, float]]:
    """Dropping the oldest month's partition against deleting as many plain-table rows."""
    from aquafleet.models.db import connection
    from aquafleet.models.usage_partitions import drop_months_before, month_bounds

    oldest = (await attached_partitions())[0]
    (row,) = await connection().execute_query_dict(f"SELECT count(*) AS n FROM {oldest.name}")
    month_rows = int(row["n"])
    started = time.perf_counter()
    dropped = await drop_months_before(month_bounds(oldest.month)[1])
    drop_s = time.perf_counter() - started
    assert dropped == [oldest.name], dropped

    raw = await asyncpg.connect(url)
    try:  # the same number of rows, oldest first, by id range as prune_usage_records does
        first = await raw.fetchval("SELECT min(id) FROM usage_record_plain")
        last = await raw.fetchval(
            "SELECT id FROM usage_record_plain ORDER BY id OFFSET $1 LIMIT 1", month_rows - 1
        )
        deleted = 0
        started = time.perf_counter()
        while first <= last:
            end = min(first + PRUNE_BATCH, last + 1)
            status = await raw.execute(
                "DELETE FROM usage_record_plain WHERE id >= $1 AND id < $2", first, end
            )
            deleted += int(status.split()[-1])
            first = end
        delete_s = time.perf_counter() - started
        assert deleted == month_rows, (deleted, month_rows)
    finally:
        await raw.close()
    return {
        "drop_month_partition": {
            "rows": month_rows, "seconds": round(drop_s, 3),
            "rows_per_s": round(month_rows / drop_s),
        },
        "delete_by_id_range_plain_table": {
            "rows": month_rows, "seconds": round(delete_s, 3),
            "rows_per_s": round(month_rows / delete_s),
        },
    }  # fmt: skip


async def bytes_per_row() -> dict[str, float]:
    """Disk per row, indexes included, of the raw ledger and of the rollups."""
    from aquafleet.models.db import connection

    out = {}
    for table in ("usage_record", "usage_record_plain", "usage_daily"):
        (row,) = await connection().execute_query_dict(
            # a partitioned table holds nothing itself: its partitions do
            f"SELECT pg_total_relation_size('{table}') + COALESCE((SELECT "
            f"sum(pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = "
            f"'{table}'::regclass), 0) AS size, (SELECT count(*) FROM {table}) AS n"
        )
        out[table] = round(int(row["size"]) / max(1, int(row["n"])), 1)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--batch", type=int, default=2000, help="rows per transaction")
    parser.add_argument("--compare", type=int, default=100_000, help="rows per COPY/unnest run")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    from aquafleet.models.db import database, migrate

    admin_dsn = args.postgres.replace("postgres://", "postgresql://")
    name = f"aquafleet_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.postgres.rsplit('/', 1)[0]}/{name}"
    report: dict[str, object] = {"batch_rows": args.batch}
    try:
        await migrate(url)
        async with database(url, run_migrations=False):
            report["year_of_minutes_through_store_ledger_batch"] = await write_year(
                "BNCHYEAR00000001", args.batch
            )
            raw_url = url.replace("postgres://", "postgresql://")
            report["copy_vs_unnest"] = await compare_copy(raw_url, args.compare, args.batch)
            report["statistics_one_device_year"] = await time_statistics(
                "BNCHYEAR00000001", args.queries
            )
            report["bytes_per_row"] = await bytes_per_row()
            report["removing_a_month_of_raw_rows"] = await removal(raw_url)
    finally:
        from tortoise import Tortoise

        await Tortoise.close_connections()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
