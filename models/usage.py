"""The usage ledger (every metered record, once) and the latest report of each device."""

from __future__ import annotations

import datetime as dt
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import asyncpg
from tortoise import fields
from tortoise.exceptions import OperationalError
from tortoise.models import Model

from aquafleet.protocol import EventKind


class RecordKind(IntEnum):
    TELEMETRY = 0x20
    EVENT = 0x21


class UsageRecord(Model):
    """One metered record: `delta_ml` is the water it added to the device's total."""

    id = fields.BigIntField(primary_key=True)
    did = fields.CharField(max_length=16)
    boot = fields.BigIntField()
    rec = fields.BigIntField()
    kind = fields.IntEnumField(RecordKind)
    event_kind = fields.SmallIntField(default=0)
    device_ts = fields.BigIntField(description="device clock, unix seconds")
    received_at = fields.DatetimeField()
    delta_ml = fields.BigIntField()
    flow_total_ml = fields.BigIntField(null=True)
    cnt_epoch = fields.BigIntField(null=True)

    class Meta:
        table = "usage_record"
        unique_together = (("did", "boot", "rec"),)


class UsageDaily(Model):
    """One device's ledger per UTC day (of `received_at`): what device statistics read, kept
    for good while raw records are pruned after `ledger_retention_days`. Written by the ledger
    writer on PostgreSQL in the transaction of the rows it adds up (only rows new to the
    ledger count, so a replayed batch adds nothing)."""

    id = fields.BigIntField(primary_key=True)
    did = fields.CharField(max_length=16)
    day = fields.DateField()
    water_ml = fields.BigIntField(default=0)
    dispenses = fields.IntField(default=0, description="dispense_done events (pours)")
    records = fields.IntField(default=0)
    first_at = fields.DatetimeField(description="first record received that day")
    last_at = fields.DatetimeField(description="last record received that day")

    class Meta:
        table = "usage_daily"
        unique_together = (("did", "day"),)


class DeviceSnapshot(Model):
    """The newest telemetry of a device (by boot, rec), kept by the ledger writer."""

    did = fields.CharField(primary_key=True, max_length=16)
    boot = fields.BigIntField()
    rec = fields.BigIntField()
    device_ts = fields.BigIntField()
    received_at = fields.DatetimeField()
    flow_total_ml = fields.BigIntField(null=True)
    tds_in_ppm = fields.IntField(null=True)
    tds_out_ppm = fields.IntField(null=True)
    temperature_dc = fields.IntField(null=True)
    filters: list[list[int]] | None = fields.JSONField(null=True)
    fault_bits = fields.BigIntField(null=True)
    signal = fields.IntField(null=True)
    state_bits = fields.BigIntField(null=True)

    class Meta:
        table = "device_snapshot"


async def latest_records(did: str, *, limit: int, offset: int) -> tuple[list[UsageRecord], int]:
    """A page of the device's ledger, newest first (by boot, then record number: the device's
    own order), and how many records the ledger keeps of it (raw rows are pruned after
    `ledger_retention_days`)."""
    qs = UsageRecord.filter(did=did)
    rows = await qs.order_by("-boot", "-rec").offset(offset).limit(limit)
    return list(rows), await qs.count()


# ----------------------------------------------------------------------------- ledger storage


class UsageRow(NamedTuple):
    """One metered record: a usage_record row, its fields in the table's column order."""

    did: str
    boot: int
    rec: int
    kind: int  # the record's FrameType
    event_kind: int
    device_ts: int
    received_at: dt.datetime
    delta_ml: int
    flow_total_ml: int | None
    cnt_epoch: int | None


class SnapshotRow(NamedTuple):
    """A device's newest telemetry: a device_snapshot row, in the table's column order."""

    did: str
    boot: int
    rec: int
    device_ts: int
    received_at: dt.datetime
    flow_total_ml: int | None
    tds_in_ppm: int | None
    tds_out_ppm: int | None
    temperature_dc: int | None
    filters: list[list[int]] | None  # [stage, work_h, power_on_h, reset_count] per stage
    fault_bits: int | None
    signal: int | None
    state_bits: int | None


_RECEIVED_AT = {row: row._fields.index("received_at") for row in (UsageRow, SnapshotRow)}
_received_at = operator.itemgetter(_RECEIVED_AT[UsageRow])
_snapshot_received_at = operator.itemgetter(_RECEIVED_AT[SnapshotRow])
# asyncpg's error for a row whose month has no partition (SQLSTATE 23514, check_violation)
_NO_PARTITION = asyncpg.exceptions.CheckViolationError
_SNAPSHOT_FILTERS = SnapshotRow._fields.index("filters")

_USAGE_COLUMNS = (
    "did, boot, rec, kind, event_kind, device_ts, received_at, delta_ml, flow_total_ml, cnt_epoch"
)
_SNAPSHOT_COLUMNS = (
    "did, boot, rec, device_ts, received_at, flow_total_ml, tds_in_ppm, tds_out_ppm, "
    "temperature_dc, filters, fault_bits, signal, state_bits"
)
_SNAPSHOT_UPDATE = ", ".join(
    f"{c} = excluded.{c}" for c in _SNAPSHOT_COLUMNS.split(", ") if c != "did"
)
_SNAPSHOT_NEWER = (
    "excluded.boot > device_snapshot.boot OR "
    "(excluded.boot = device_snapshot.boot AND excluded.rec > device_snapshot.rec)"
)

_FLEET_DAILY_ADD = (
    "water_ml = fleet_daily.water_ml + excluded.water_ml, "
    "dispenses = fleet_daily.dispenses + excluded.dispenses, "
    "records = fleet_daily.records + excluded.records"
)
# SQLite adds the records a batch's INSERT ... ON CONFLICT DO NOTHING below really inserted
# (a replay inserts none) to their groups' days in one statement after it, in the writer's
# transaction (`sqlite_insert_usage`): the `?` newest rows of usage_record, `?` being how many
# the insert added. They are its rows: usage_record's id is AUTOINCREMENT (a new row's id is
# above every id the table ever had) and the transaction holds SQLite's write lock from the
# insert to the commit (no other writer's rows come after them). Not an id range: a row that
# met a conflict used up an id too (AUTOINCREMENT's counter moves on), so the ids have gaps.
# A record of a device the device table does not know adds nothing (the join). CROSS JOIN
# keeps those newest rows the outer loop whatever the planner's statistics say (the other
# order would read every device's records through the (did, boot, rec) key). `WHERE true`:
# SQLite's rule for an upsert fed by a SELECT (its ON CONFLICT is no join's ON).
SQLITE_ROLLUP_INSERTED = (
    "INSERT INTO fleet_daily (day, vendor_id, agent_id, water_ml, dispenses, records) "
    "SELECT date(u.received_at), d.vendor_id, COALESCE(d.agent_id, 0), SUM(u.delta_ml), "
    f"SUM(u.kind = {int(RecordKind.EVENT)} AND u.event_kind = {int(EventKind.DISPENSE_DONE)}), "
    "COUNT(*) FROM (SELECT did, received_at, delta_ml, kind, event_kind FROM usage_record "
    "ORDER BY id DESC LIMIT ?) u CROSS JOIN device d ON d.did = u.did WHERE true "
    "GROUP BY 1, 2, 3 "
    f"ON CONFLICT (day, vendor_id, agent_id) DO UPDATE SET {_FLEET_DAILY_ADD}"
)
# What SQLite did before (issue 20): a trigger adding each inserted row on its own, more than
# half of the ledger's SQLite cost per record (measured with sqlite3 on 2,000-row batches:
# ~9 us a row with it, 2.5-4.4 us without). Created by migration 0018, dropped by 0021; kept
# here for those two (0021's backward step creates it again), not used by the writer. With it
# in place the writer would add each record twice: migrations run before the writer starts.
SQLITE_FLEET_DAILY_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS usage_record_fleet_daily AFTER INSERT ON usage_record "
    "BEGIN INSERT INTO fleet_daily (day, vendor_id, agent_id, water_ml, dispenses, records) "
    "SELECT date(NEW.received_at), d.vendor_id, COALESCE(d.agent_id, 0), NEW.delta_ml, "
    f"NEW.kind = {int(RecordKind.EVENT)} AND NEW.event_kind = {int(EventKind.DISPENSE_DONE)}, "
    "1 FROM device d WHERE d.did = NEW.did "
    f"ON CONFLICT (day, vendor_id, agent_id) DO UPDATE SET {_FLEET_DAILY_ADD}; END"
)

SQLITE_INSERT_USAGE = (
    f"INSERT INTO usage_record ({_USAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (did, boot, rec) DO NOTHING"
)
SQLITE_UPSERT_SNAPSHOT = (
    f"INSERT INTO device_snapshot ({_SNAPSHOT_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT (did) DO UPDATE SET {_SNAPSHOT_UPDATE} WHERE {_SNAPSHOT_NEWER}"
)
# PostgreSQL partitions usage_record by month of received_at (models/usage_partitions.py), and
# a unique key there must hold the partition key: a record is unique by (did, boot, rec,
# received_at). A redelivered stream entry carries the same receive time (the metering round's
# `at`, set once by meter.lua), so a replay still conflicts, in the same month's partition.
PG_INSERT_USAGE = (
    f"INSERT INTO usage_record ({_USAGE_COLUMNS}) "
    "SELECT * FROM unnest($1::varchar[], $2::bigint[], $3::bigint[], $4::smallint[], "
    "$5::smallint[], $6::bigint[], $7::timestamptz[], $8::bigint[], $9::bigint[], $10::bigint[]) "
    "ON CONFLICT (did, boot, rec, received_at) DO NOTHING"
)
# The new rows (a replay inserts none) added in the same statement to their devices' days
# (usage_daily) and to their groups' days (fleet_daily: the device's vendor and agent node as
# they are now), each ordered by its key so concurrent writers lock rollup rows in one order
# (no deadlock).
PG_INSERT_USAGE_AND_ROLLUP = (
    f"WITH new AS ({PG_INSERT_USAGE} RETURNING did, received_at, delta_ml, kind, event_kind), "
    "daily AS (INSERT INTO usage_daily (did, day, water_ml, dispenses, records, first_at, "
    "last_at) SELECT did, (received_at AT TIME ZONE 'UTC')::date, SUM(delta_ml), "
    f"COUNT(*) FILTER (WHERE kind = {int(RecordKind.EVENT)} AND event_kind = $11), COUNT(*), "
    "MIN(received_at), MAX(received_at) FROM new GROUP BY 1, 2 ORDER BY 1, 2 "
    "ON CONFLICT (did, day) DO UPDATE SET water_ml = usage_daily.water_ml + excluded.water_ml, "
    "dispenses = usage_daily.dispenses + excluded.dispenses, "
    "records = usage_daily.records + excluded.records, "
    "first_at = LEAST(usage_daily.first_at, excluded.first_at), "
    "last_at = GREATEST(usage_daily.last_at, excluded.last_at)) "
    "INSERT INTO fleet_daily (day, vendor_id, agent_id, water_ml, dispenses, records) "
    "SELECT (n.received_at AT TIME ZONE 'UTC')::date, d.vendor_id, COALESCE(d.agent_id, 0), "
    "SUM(n.delta_ml), "
    f"COUNT(*) FILTER (WHERE n.kind = {int(RecordKind.EVENT)} AND n.event_kind = $11), "
    "COUNT(*) FROM new n JOIN device d ON d.did = n.did GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
    f"ON CONFLICT (day, vendor_id, agent_id) DO UPDATE SET {_FLEET_DAILY_ADD}"
)
# The writer's path: COPY the batch into a per-connection temporary table, then the statement
# above fed from it (COPY measured 2-14% faster than the unnest arrays: docs/benchmarks.md).
PG_CREATE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS ledger_stage (LIKE usage_record INCLUDING DEFAULTS) "
    "ON COMMIT DELETE ROWS"
)
_UNNEST = PG_INSERT_USAGE[
    PG_INSERT_USAGE.index("SELECT * FROM unnest") : PG_INSERT_USAGE.index(" ON CONFLICT")
]
PG_INSERT_STAGED_AND_ROLLUP = PG_INSERT_USAGE_AND_ROLLUP.replace(
    _UNNEST, f"SELECT {_USAGE_COLUMNS} FROM ledger_stage"
).replace("$11", "$1")
PG_UPSERT_SNAPSHOT = (
    f"INSERT INTO device_snapshot ({_SNAPSHOT_COLUMNS}) "
    "SELECT * FROM unnest($1::varchar[], $2::bigint[], $3::bigint[], $4::bigint[], "
    "$5::timestamptz[], $6::bigint[], $7::int[], $8::int[], $9::int[], $10::jsonb[], "
    "$11::bigint[], $12::int[], $13::bigint[]) "
    f"ON CONFLICT (did) DO UPDATE SET {_SNAPSHOT_UPDATE} WHERE {_SNAPSHOT_NEWER}"
)


class ServiceEvent(NamedTuple):
    """A meter event of a device's service state (quota lock, low balance)."""

    did: str
    kind: str
    version: int
    remaining_ml: int
    at_ms: int


INSERT_SERVICE_EVENT = (
    "INSERT INTO service_change (did, op, remaining_ml, version, actor, reason, request_id, "
    "created_at) VALUES ({}) ON CONFLICT (did, request_id) DO NOTHING"
)
SERVICE_EVENT_REASONS = {
    "quota_lock": "quota exhausted",
    "low_balance": "balance below the low-balance threshold",
}


def _service_event_rows(events: Sequence[ServiceEvent]) -> list[list[Any]]:
    """One service_change row per meter event; its request id makes a replayed entry a no-op."""
    return [
        [did, kind, remaining, version, "meter", SERVICE_EVENT_REASONS.get(kind, kind),
         f"{kind}:v{version}:{remaining}", dt.datetime.fromtimestamp(at / 1000, dt.UTC)]
        for did, kind, version, remaining, at in events
    ]  # fmt: skip


class DispenseDone(NamedTuple):
    """A device's report that a dispense command finished: closes its vending session."""

    did: str
    cid: int
    poured_ml: int
    received_at: dt.datetime


def _dispense_statements(
    dispenses: Sequence[DispenseDone], placeholder: Any
) -> list[tuple[str, list[Any]]]:
    """Close each vending session its dispense_done names (guarded by state: replays no-op)."""
    from aquafleet.models.vending import CLOSE_SESSION_SQL, LATE_POUR_SQL, DispenseState

    p = [placeholder(i) for i in range(1, 7)]
    close = CLOSE_SESSION_SQL.format(p1=p[0], p2=p[1], p3=p[2], p4=p[3], p5=p[4], p6=p[5])
    late = LATE_POUR_SQL.format(p1=p[0], p2=p[1], p3=p[2], p4=p[3])
    statements = []
    for did, cid, ml, at in dispenses:
        statements.append(
            (close, [int(DispenseState.DONE), ml, at, did, cid, int(DispenseState.PENDING)])
        )
        statements.append((late, [ml, did, cid, int(DispenseState.FAILED)]))
    return statements


async def prepare_ledger_storage(now: dt.datetime) -> list[str]:
    """The ledger writer's start: on PostgreSQL, this month's partition of the raw ledger and
    the next (created ahead); returns those it created. Nothing to do on SQLite."""
    from aquafleet.models.db import dialect

    if dialect() != "postgres":
        return []
    from aquafleet.models.usage_partitions import ensure_ahead

    return await ensure_ahead(now)


async def store_ledger_batch(
    usage: list[UsageRow],
    snapshots: list[SnapshotRow],
    activated: list[str],
    service_events: Sequence[ServiceEvent] = (),
    dispenses: Sequence[DispenseDone] = (),
) -> None:
    """Write a batch of metered records in one transaction; replays insert nothing twice.

    `snapshots` holds at most one (the newest) telemetry per device; `activated` names devices
    that reported and may still be INACTIVE. On PostgreSQL the months of the rows, and the
    next, get their partitions first.
    """
    from aquafleet.models.db import dialect

    if dialect() == "postgres" and usage:
        from aquafleet.models.usage_partitions import ensure_for_times, forget_partitions

        # One receive time per metering round: a set of a few values, however many rows.
        await ensure_for_times(set(map(_received_at, usage)))
        try:
            try:
                await _store(usage, snapshots, activated, service_events, dispenses)
            except _NO_PARTITION:  # a month dropped behind our back (pruned): check, once
                forget_partitions()
                await ensure_for_times(set(map(_received_at, usage)))
                await _store(usage, snapshots, activated, service_events, dispenses)
        except asyncpg.PostgresError as exc:  # the COPY path's own connection: not Tortoise's
            raise OperationalError(f"writing the ledger: {exc}") from exc
        return
    await _store(usage, snapshots, activated, service_events, dispenses)


async def _store(
    usage: list[UsageRow],
    snapshots: list[SnapshotRow],
    activated: list[str],
    service_events: Sequence[ServiceEvent],
    dispenses: Sequence[DispenseDone],
) -> None:
    from tortoise.transactions import in_transaction

    from aquafleet.models.db import dialect
    from aquafleet.models.devices import DeviceState

    now = dt.datetime.now(dt.UTC)
    async with in_transaction("default") as conn:
        if dialect() == "postgres":
            if snapshots:
                columns = [list(col) for col in zip(*snapshots, strict=True)]
                columns[_SNAPSHOT_FILTERS] = list(map(_filters_json, columns[_SNAPSHOT_FILTERS]))
                await conn.execute_query(PG_UPSERT_SNAPSHOT, columns)
            if activated:
                await conn.execute_query(
                    "UPDATE device SET state = $1, activated_at = $2, updated_at = $2 "
                    "WHERE did = ANY($3::varchar[]) AND state = $4",
                    [int(DeviceState.ACTIVE), now, activated, int(DeviceState.INACTIVE)],
                )
            if service_events:
                sql = INSERT_SERVICE_EVENT.format(", ".join(f"${i}" for i in range(1, 9)))
                await conn.execute_many(sql, _service_event_rows(service_events))
            for sql, values in _dispense_statements(dispenses, lambda i: f"${i}"):
                await conn.execute_query(sql, values)
            if usage:  # last: every writer updates the same few fleet_daily rows, and holds
                # their locks from this statement to the commit (writers queue for that span)
                async with conn.acquire_connection() as raw:
                    await raw.execute(PG_CREATE_STAGE)
                    await raw.copy_records_to_table(
                        "ledger_stage", records=usage, columns=UsageRow._fields
                    )
                    await raw.execute(PG_INSERT_STAGED_AND_ROLLUP, int(EventKind.DISPENSE_DONE))
        else:
            as_text = _DatetimeText()
            if usage:
                await sqlite_insert_usage(conn, _sqlite_usage(usage, as_text))
            if snapshots:
                await conn.execute_many(
                    SQLITE_UPSERT_SNAPSHOT, _sqlite_snapshots(snapshots, as_text)
                )
            if activated:
                placeholders = ", ".join("?" * len(activated))
                await conn.execute_query(
                    "UPDATE device SET state = ?, activated_at = ?, updated_at = ? "
                    f"WHERE did IN ({placeholders}) AND state = ?",
                    [
                        int(DeviceState.ACTIVE),
                        str(now),
                        str(now),
                        *activated,
                        int(DeviceState.INACTIVE),
                    ],
                )
            if service_events:
                await conn.execute_many(
                    INSERT_SERVICE_EVENT.format(", ".join("?" * 8)),
                    [[*row[:7], as_text(row[7])] for row in _service_event_rows(service_events)],
                )
            for sql, values in _dispense_statements(dispenses, lambda i: f"?{i}"):
                values = [as_text(v) if isinstance(v, dt.datetime) else v for v in values]
                await conn.execute_query(sql, values)
        if service_events:  # the owner hears of a low or exhausted balance (消息推送)
            from aquafleet.models.outbox import enqueue_service_events

            await enqueue_service_events(conn, service_events)


async def sqlite_insert_usage(conn: Any, rows: list[Any]) -> int:
    """Insert usage rows on SQLite in the caller's transaction, adding those new to the ledger
    to their groups' days (fleet_daily); returns how many were new (a replay: 0).

    The connection's change counter says how many rows the insert added (a conflict that did
    nothing counts none; usage_record has no trigger since migration 0021). Nothing else runs
    on the connection between the two readings: Tortoise's SQLite transaction holds the
    connection's lock for its whole block, and every statement outside it waits for that lock.
    """
    async with conn.acquire_connection() as raw:
        before: int = raw.total_changes
    await conn.execute_many(SQLITE_INSERT_USAGE, rows)
    async with conn.acquire_connection() as raw:
        inserted: int = raw.total_changes - before
    if inserted:
        await conn.execute_query(SQLITE_ROLLUP_INSERTED, [inserted])
    return inserted


def _sqlite_usage(usage: list[UsageRow], as_text: _DatetimeText) -> list[Any]:
    """Usage rows for SQLite (tuples: sqlite3 binds any sequence), the receive time as
    Tortoise's text; unpacked in the comprehension, not copied and patched row by row."""
    times = as_text.of(usage, _received_at)
    return [
        (did, boot, rec, kind, event_kind, ts, times[at], delta, total, epoch)
        for did, boot, rec, kind, event_kind, ts, at, delta, total, epoch in usage
    ]


def _sqlite_snapshots(snapshots: list[SnapshotRow], as_text: _DatetimeText) -> list[Any]:
    """Snapshot rows for SQLite: the receive time as text, the filters as JSON."""
    times = as_text.of(snapshots, _snapshot_received_at)
    return [
        (did, boot, rec, ts, times[at], total, tds_in, tds_out, temp, _filters_json(filters),
         faults, signal, state)
        for did, boot, rec, ts, at, total, tds_in, tds_out, temp, filters, faults, signal, state
        in snapshots
    ]  # fmt: skip


def _filters_json(filters: list[list[int]] | None) -> str | None:
    """A snapshot's filter readings as JSON text. Made for every snapshot: a per-device cache
    of the last text (kept while the readings stay the same) saved under 1 µs a record but
    held ~0.8 KB a device in the gateway process, 36 MB for 45,000 devices (docs/benchmarks.md,
    "After this session's merges")."""
    return None if filters is None else json.dumps(filters)


class _DatetimeText(dict[dt.datetime, str]):
    """Tortoise's SQLite datetime text, made once per distinct time (one per metering round)."""

    def __call__(self, value: dt.datetime) -> str:
        text = self.get(value)
        if text is None:
            text = self[value] = str(value)
        return text

    def of(self, rows: Sequence[Any], time_of: Any) -> _DatetimeText:
        """Itself, holding the text of every receive time of `rows` (a few: one a round)."""
        for value in set(map(time_of, rows)):
            self(value)
        return self


_PARTITION_ROWS = """
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint AS n, bool_or(c.reltuples < 0) AS unknown
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'usage_record'::regclass
"""


async def ledger_row_count() -> tuple[int, bool]:
    """How many raw ledger rows there are, and whether that is an estimate. On PostgreSQL it is
    the planner's estimate summed over the monthly partitions (a count(*) reads every row:
    minutes at production size), exact where every partition was analysed and has no rows
    since; on SQLite an exact count."""
    from aquafleet.models.db import connection, dialect

    if dialect() != "postgres":
        return await UsageRecord.all().count(), False
    rows = await connection().execute_query_dict(_PARTITION_ROWS)
    if not rows or rows[0]["unknown"] is None:  # not partitioned (yet): count it
        return await UsageRecord.all().count(), False
    if rows[0]["unknown"]:  # a partition never analysed: no estimate for it
        return await UsageRecord.all().count(), False
    return int(rows[0]["n"]), True


async def metered_ml_by_device(dids: list[str], min_boot: int = 0) -> dict[str, int]:
    """Water the ledger holds per device (records of boots >= min_boot)."""
    from tortoise.functions import Sum

    totals: dict[str, int] = {did: 0 for did in dids}
    for start in range(0, len(dids), 500):
        chunk = dids[start : start + 500]
        rows = (
            await UsageRecord.filter(did__in=chunk, boot__gte=min_boot)
            .group_by("did")
            .annotate(total=Sum("delta_ml"))
            .values_list("did", "total")
        )
        for did, total in rows:
            totals[did] = int(total or 0)
    return totals


# ----------------------------------------------------------------------------- retention

PRUNE_BATCH = 50_000  # rows per DELETE: short transactions beside the live ledger writer


async def _received_at_of_first(from_id: int) -> dt.datetime | None:
    row = await UsageRecord.filter(id__gte=from_id).order_by("id").first().only("received_at")
    return None if row is None else row.received_at


async def prune_usage_records(cutoff: dt.datetime, *, max_rows: int = 1_000_000) -> int:
    """Delete raw ledger rows received before `cutoff`, oldest first, at most `max_rows` in
    one call; returns how many. The per-day rollups (usage_daily) stay. SQLite's way:
    PostgreSQL drops whole monthly partitions instead (prune_ledger).

    Ids grow with the time rows are written, so the rows to go are an id range found by a
    binary search over the primary key (no index on received_at, no scan of the table).
    """
    first = await UsageRecord.all().order_by("id").first().only("id", "received_at")
    if first is None or first.received_at >= cutoff:
        return 0
    last = await UsageRecord.all().order_by("-id").first().only("id")
    assert last is not None
    low, high = first.id, last.id + 1  # the first id received at or after cutoff is in here
    while low < high:
        middle = (low + high) // 2
        at = await _received_at_of_first(middle)
        if at is not None and at < cutoff:
            low = middle + 1
        else:
            high = middle
    deleted = 0
    start = first.id
    while start < low and deleted < max_rows:
        end = min(low, start + PRUNE_BATCH, start + max_rows - deleted)
        deleted += await UsageRecord.filter(id__gte=start, id__lt=end).delete()
        start = end
    return deleted


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one prune removed: raw rows deleted (SQLite) or monthly partitions dropped
    (PostgreSQL)."""

    rows: int = 0
    partitions: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rows or self.partitions)


async def prune_ledger(now: dt.datetime, retention: dt.timedelta) -> Pruned:
    """Remove raw ledger rows past the retention; the per-day rollups stay.

    PostgreSQL drops each monthly partition once its whole month is older than the retention
    (rows live between `retention` and `retention` + one month: no row-by-row DELETE of
    144 M rows a day), and makes sure the months ahead have theirs. SQLite deletes rows.
    """
    from aquafleet.models.db import dialect

    cutoff = now - retention
    if dialect() == "postgres":
        from aquafleet.models.usage_partitions import drop_months_before, ensure_ahead

        await ensure_ahead(now)
        return Pruned(partitions=tuple(await drop_months_before(cutoff)))
    return Pruned(rows=await prune_usage_records(cutoff))


class LedgerPruner:
    """Prunes raw ledger rows past the retention, at most once per PRUNE_EVERY_S (run by the
    scheduler's owner: one per cluster)."""

    PRUNE_EVERY_S = 3600

    def __init__(self, retention_days: int) -> None:
        self.retention = dt.timedelta(days=retention_days)
        self.next_at = 0.0

    async def maybe_prune(self, now: dt.datetime) -> Pruned:
        if not self.retention or now.timestamp() < self.next_at:
            return Pruned()
        self.next_at = now.timestamp() + self.PRUNE_EVERY_S
        return await prune_ledger(now, self.retention)
