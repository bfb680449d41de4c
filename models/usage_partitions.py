"""Monthly partitions of the raw ledger (usage_record) on PostgreSQL.

The table is partitioned by range of `received_at` (UTC calendar months). The ledger writer
makes sure the months of each batch, and the month after them, have a partition before it
writes (so a new month's partition exists a month ahead, before any row needs it); pruning
drops whole months past the retention. SQLite keeps one plain table and needs none of this.

A partition is created as a plain table and then attached: ATTACH takes a SHARE UPDATE
EXCLUSIVE lock on usage_record, which inserts and reads do not wait for (CREATE TABLE ...
PARTITION OF would take an ACCESS EXCLUSIVE one). Writers of several nodes serialise the
check-and-create on one advisory lock, so racing writers create each month once.
"""

from __future__ import annotations

import datetime as dt
import re
import weakref
from collections.abc import Iterable
from typing import Any, NamedTuple

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import OperationalError

PARENT = "usage_record"
MONTHS_AHEAD = 1
# pg_advisory_xact_lock key of partition DDL (any constant of ours: "usage_pa" as an integer)
DDL_LOCK = 0x75736167655F7061
LOCK_TIMEOUT = "5s"  # a DDL step waits at most this long for a lock, then fails (retried)
DETACH_TIMEOUT_MS = 30_000  # DETACH ... CONCURRENTLY waits for older transactions at most this
_NAME = re.compile(r"^usage_record_y(\d{4})m(\d{2})$")

# Months known to have a partition, per database client (a test or tool may open another).
_known: weakref.WeakKeyDictionary[BaseDBAsyncClient, set[dt.date]] = weakref.WeakKeyDictionary()


def month_of(at: dt.datetime) -> dt.date:
    """The first day of the UTC calendar month `at` falls in."""
    utc = at.astimezone(dt.UTC)
    return dt.date(utc.year, utc.month, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months_from(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every month from `first` to `last`, both included (first days of months)."""
    months = []
    month = dt.date(first.year, first.month, 1)
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months


def partition_name(month: dt.date) -> str:
    return f"{PARENT}_y{month.year:04d}m{month.month:02d}"


def month_of_partition(name: str) -> dt.date | None:
    """The month a partition of ours holds (None: not a name we gave)."""
    found = _NAME.match(name)
    return None if found is None else dt.date(int(found[1]), int(found[2]), 1)


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end_month = next_month(month)
    return start, dt.datetime(end_month.year, end_month.month, 1, tzinfo=dt.UTC)


def attach_sql(month: dt.date) -> list[str]:
    """Statements that give `month` its partition (an empty table, then attached)."""
    name = partition_name(month)
    start, end = month_bounds(month)
    return [
        f"CREATE TABLE IF NOT EXISTS {name} (LIKE {PARENT} INCLUDING DEFAULTS)",
        f"ALTER TABLE {PARENT} ATTACH PARTITION {name} "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')",
    ]


_ATTACHED = (
    "SELECT c.relname AS name, i.inhdetachpending AS pending FROM pg_inherits i "
    "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass"
)


class Partition(NamedTuple):
    name: str
    month: dt.date
    detach_pending: bool  # a DETACH ... CONCURRENTLY that did not finish


async def attached_partitions(conn: BaseDBAsyncClient | None = None) -> list[Partition]:
    """The monthly partitions of usage_record, oldest first (names we did not give left out)."""
    from aquafleet.models.db import connection

    rows = await (conn or connection()).execute_query_dict(_ATTACHED, [PARENT])
    found = []
    for row in rows:
        month = month_of_partition(str(row["name"]))
        if month is not None:
            found.append(Partition(str(row["name"]), month, bool(row["pending"])))
    return sorted(found, key=lambda p: p.month)


def _known_months() -> set[dt.date]:
    from aquafleet.models.db import connection

    client = connection()
    known = _known.get(client)
    if known is None:
        known = _known[client] = set()
    return known


def forget_partitions() -> None:
    """Check the database again before the next write (a partition went missing)."""
    _known_months().clear()


async def ensure_months(months: Iterable[dt.date]) -> list[str]:
    """Give each of `months` a partition unless it has one; returns the partitions created.

    Known months cost a set lookup; the others one short transaction under the DDL lock.
    """
    known = _known_months()
    missing = sorted(set(months) - known)
    if not missing:
        return []
    import asyncpg
    from tortoise.transactions import in_transaction

    created = []
    try:
        async with in_transaction("default") as conn:
            await conn.execute_script(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute_query("SELECT pg_advisory_xact_lock($1)", [DDL_LOCK])
            present = {p.month for p in await attached_partitions(conn) if not p.detach_pending}
            for month in missing:
                if month in present:
                    continue
                for sql in attach_sql(month):
                    await conn.execute_script(sql)
                created.append(partition_name(month))
    except asyncpg.PostgresError as exc:  # a lock timeout: the writer retries the batch
        raise OperationalError(f"making ledger partitions: {exc}") from exc
    known.update(missing)
    return created


async def ensure_for_times(times: Iterable[dt.datetime]) -> list[str]:
    """Partitions for every month from the earliest to the latest of `times`, and
    MONTHS_AHEAD more after the latest (created ahead, before a row needs them)."""
    first = last = None
    for at in times:
        month = month_of(at)
        if first is None or month < first:
            first = month
        if last is None or month > last:
            last = month
    if first is None or last is None:
        return []
    for _ in range(MONTHS_AHEAD):
        last = next_month(last)
    return await ensure_months(months_from(first, last))


async def ensure_ahead(now: dt.datetime) -> list[str]:
    """This month's partition and the next MONTHS_AHEAD (the writer's start, the pruner)."""
    return await ensure_for_times([now])


async def drop_months_before(cutoff: dt.datetime) -> list[str]:
    """Drop every partition whose whole month is older than `cutoff`; returns their names.

    DETACH ... CONCURRENTLY (outside a transaction) lets inserts and reads go on; one that
    was interrupted is finished with FINALIZE; the detached table is then dropped.
    """
    from aquafleet.models.db import connection

    old = [p for p in await attached_partitions() if month_bounds(p.month)[1] <= cutoff]
    if not old:
        return []
    import asyncpg

    dropped = []
    client: Any = connection()
    try:
        async with client.acquire_connection() as raw:
            await raw.execute(f"SET statement_timeout = {DETACH_TIMEOUT_MS}")
            try:
                for partition in old:
                    how = "FINALIZE" if partition.detach_pending else "CONCURRENTLY"
                    await raw.execute(
                        f"ALTER TABLE {PARENT} DETACH PARTITION {partition.name} {how}"
                    )
                    await raw.execute(f"DROP TABLE IF EXISTS {partition.name}")
                    dropped.append(partition.name)
            finally:
                await raw.execute("RESET statement_timeout")
    except asyncpg.PostgresError as exc:  # retried at the next prune
        raise OperationalError(f"dropping ledger partitions: {exc}") from exc
    finally:
        forget_partitions()
    return dropped
