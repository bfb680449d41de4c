"""Minimum consumption (保底消费): per device and billing period, metered water vs the plan's
minimum, and the amount due, recorded once per (device, period).

Money is integer fen and water integer ml throughout: a price is `price_fen` per
`price_unit_ml` millilitres (per litre: unit 1000), so no fraction of a fen is ever stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import Q
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.vendors import Vendor

MAX_FEN = 10**12  # 100 million yuan: anything above is a typo
MAX_UNIT_ML = 10**9
MAX_PERIOD = dt.timedelta(days=366)
_INSERT_CHUNK = 500
# pg_advisory_xact_lock key of closing billing periods (any constant of ours: "billclos")
CLOSE_LOCK = 0x62696C6C636C6F73


class PeriodOverlaps(Conflict):
    """A billing period overlapping one already closed with other bounds."""

    code = "period_overlaps"


class BillingMode(IntEnum):
    """How a plan's water is paid, which decides what falls due at period end."""

    POSTPAID = 1  # water is billed at period end: due = max(water charge, minimum)
    PREPAID = 2  # water was paid in advance (volume top-ups): due = what the water fell short


class BillingPlan(Model):
    """A vendor's price and minimum consumption per billing period."""

    id = fields.IntField(primary_key=True)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="billing_plans", on_delete=fields.RESTRICT
    )
    name = fields.CharField(max_length=64)
    mode = fields.IntEnumField(BillingMode)
    minimum_fen = fields.BigIntField(description="minimum charge per period, fen")
    price_fen = fields.BigIntField(description="price of price_unit_ml of water, fen")
    price_unit_ml = fields.BigIntField(description="the volume price_fen buys, ml")
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    vendor_id: str

    class Meta:
        table = "billing_plan"


class DeviceBillingPlan(Model):
    """The plan a device is billed on, since when."""

    did = fields.CharField(primary_key=True, max_length=16)
    plan: fields.ForeignKeyRelation[BillingPlan] = fields.ForeignKeyField(
        "models.BillingPlan", related_name="devices", on_delete=fields.RESTRICT
    )
    since = fields.DatetimeField()

    plan_id: int

    class Meta:
        table = "device_billing_plan"


class BillingRecord(Model):
    """What one device owes for one period, with the plan terms it was computed from."""

    id = fields.BigIntField(primary_key=True)
    did = fields.CharField(max_length=16)
    vendor_code = fields.CharField(max_length=4, db_index=True)
    plan_id = fields.IntField()
    mode = fields.IntEnumField(BillingMode)
    period_start = fields.DatetimeField(db_index=True)
    period_end = fields.DatetimeField()
    covered_from = fields.DatetimeField(description="later of period_start and the plan's since")
    usage_ml = fields.BigIntField()
    usage_fen = fields.BigIntField(description="usage_ml at the plan's price, rounded half up")
    minimum_fen = fields.BigIntField(description="the plan's minimum, prorated to the coverage")
    amount_due_fen = fields.BigIntField()
    price_fen = fields.BigIntField()
    price_unit_ml = fields.BigIntField()
    created_at = fields.DatetimeField()

    class Meta:
        table = "billing_record"
        unique_together = (("did", "period_start"),)


# ----------------------------------------------------------------------------- pure rules


@dataclass(frozen=True, slots=True)
class Terms:
    mode: BillingMode
    minimum_fen: int
    price_fen: int
    price_unit_ml: int


@dataclass(frozen=True, slots=True)
class Bill:
    usage_ml: int
    usage_fen: int
    minimum_fen: int
    amount_due_fen: int


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} must be an integer {low}..{high}")
    return value


def check_terms(mode: Any, minimum_fen: Any, price_fen: Any, price_unit_ml: Any) -> Terms:
    if mode not in {m.value for m in BillingMode}:
        raise InvalidInput("mode must be 1 (postpaid) or 2 (prepaid)")
    return Terms(
        BillingMode(mode),
        _int_in(minimum_fen, 0, MAX_FEN, "minimum_fen"),
        _int_in(price_fen, 0, MAX_FEN, "price_fen"),
        _int_in(price_unit_ml, 1, MAX_UNIT_ML, "price_unit_ml"),
    )


def usage_charge_fen(usage_ml: int, price_fen: int, price_unit_ml: int) -> int:
    """usage_ml * price_fen / price_unit_ml, rounded half up to whole fen (四舍五入)."""
    return (2 * max(0, usage_ml) * price_fen + price_unit_ml) // (2 * price_unit_ml)


def prorated_minimum_fen(minimum_fen: int, covered_s: int, period_s: int) -> int:
    """The minimum for the covered part of a period, rounded down (never over the minimum)."""
    covered_s = min(max(0, covered_s), period_s)
    return minimum_fen * covered_s // period_s


def compute_bill(terms: Terms, usage_ml: int, covered_s: int, period_s: int) -> Bill:
    """The amount a device owes for a period on these terms."""
    usage_fen = usage_charge_fen(usage_ml, terms.price_fen, terms.price_unit_ml)
    minimum = prorated_minimum_fen(terms.minimum_fen, covered_s, period_s)
    if terms.mode is BillingMode.POSTPAID:
        due = max(usage_fen, minimum)
    else:
        due = max(0, minimum - usage_fen)
    return Bill(max(0, usage_ml), usage_fen, minimum, due)


def check_period(start: dt.datetime, end: dt.datetime, now: dt.datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None or now.tzinfo is None:
        raise InvalidInput("period bounds and now must be timezone-aware")
    if not start < end:
        raise InvalidInput("period_start must be before period_end")
    if end - start > MAX_PERIOD:
        raise InvalidInput("a billing period is at most 366 days")
    if end > now:
        raise InvalidInput("a billing period can be closed only after it has ended")


_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


def parse_period(text: str) -> tuple[dt.datetime, dt.datetime]:
    """`YYYY-MM` (a UTC calendar month) or `START/END` (ISO 8601 with a zone) -> bounds."""
    month = _MONTH_RE.match(text.strip())
    if month:
        year, number = int(month[1]), int(month[2])
        if not 1 <= number <= 12:
            raise InvalidInput(f"period {text!r}: month must be 01..12")
        start = dt.datetime(year, number, 1, tzinfo=dt.UTC)
        end = dt.datetime(year + number // 12, number % 12 + 1, 1, tzinfo=dt.UTC)
        return start, end
    parts = text.split("/")
    if len(parts) != 2:
        raise InvalidInput(f"period {text!r}: expected YYYY-MM or START/END")
    try:
        start, end = (dt.datetime.fromisoformat(p.strip()) for p in parts)
    except ValueError:
        raise InvalidInput(f"period {text!r}: START and END must be ISO 8601") from None
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput(f"period {text!r}: START and END need a zone (Z or +08:00)")
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


# ----------------------------------------------------------------------------- services


async def create_billing_plan(
    vendor_code: str,
    name: str,
    *,
    mode: Any,
    minimum_fen: Any,
    price_fen: Any,
    price_unit_ml: Any,
) -> BillingPlan:
    terms = check_terms(mode, minimum_fen, price_fen, price_unit_ml)
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 64:
        raise InvalidInput("plan name must be 1..64 characters")
    if not await Vendor.exists(code=vendor_code):
        raise NotFound(f"vendor {vendor_code} does not exist")
    return await BillingPlan.create(
        vendor_id=vendor_code,
        name=name.strip(),
        mode=terms.mode,
        minimum_fen=terms.minimum_fen,
        price_fen=terms.price_fen,
        price_unit_ml=terms.price_unit_ml,
    )


async def assign_billing_plan(did: str, plan_id: int, since: dt.datetime) -> DeviceBillingPlan:
    """Bill `did` on the plan from `since` on (replaces its previous plan)."""
    from aquafleet.models.devices import Device

    if since.tzinfo is None:
        raise InvalidInput("since must be timezone-aware")
    device = await Device.get_or_none(did=did)
    if device is None:
        raise NotFound(f"device {did} does not exist")
    plan = await BillingPlan.get_or_none(id=plan_id)
    if plan is None or plan.vendor_id != device.vendor_id:  # another vendor's plan: not found
        raise NotFound(f"billing plan {plan_id} does not exist")
    assignment, _ = await DeviceBillingPlan.update_or_create(
        defaults={"plan_id": plan_id, "since": since.astimezone(dt.UTC)}, did=did
    )
    return assignment


@dataclass(frozen=True, slots=True)
class PeriodSummary:
    """What closing a period left in the database (the same after a second run)."""

    period_start: dt.datetime
    period_end: dt.datetime
    devices: int  # billing records of the period
    created: int  # of which this run wrote (0 on a repeat; closes take turns, so two runs
    # racing count each record once)
    usage_ml: int
    amount_due_fen: int

    def as_json(self) -> dict[str, Any]:
        return {
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "devices": self.devices,
            "created": self.created,
            "usage_ml": self.usage_ml,
            "amount_due_fen": self.amount_due_fen,
        }


_USAGE_SQL = (  # SQLite: the raw rows
    "SELECT u.did AS did, SUM(u.delta_ml) AS total FROM usage_record u "
    "JOIN device_billing_plan p ON p.did = u.did "
    "WHERE p.since < {end} AND u.received_at >= {start} AND u.received_at < {end} "
    "AND u.received_at >= p.since GROUP BY u.did"
)


# PostgreSQL: whole UTC days from the per-day rollups (usage_daily, 30 rows a device a month
# instead of a month of raw rows), raw rows only for the partial days at the ends: the day
# a device joined its plan part way through, a period bound that is not midnight. `$1`/`$2`
# also bound the raw rows' receive time, so only the period's monthly partitions are read.
_PG_USAGE_SQL = (
    "WITH plan AS (SELECT did, GREATEST(since, $1::timestamptz) AS since "
    "FROM device_billing_plan WHERE since < $2), "
    "edges AS (SELECT did, since, whole_from, "
    "GREATEST(date_trunc('day', $2::timestamptz, 'UTC'), whole_from) AS whole_to FROM ("
    "SELECT did, since, date_trunc('day', since, 'UTC') + CASE WHEN "
    "date_trunc('day', since, 'UTC') = since THEN interval '0 days' ELSE interval '1 day' END "
    "AS whole_from FROM plan) p) "
    "SELECT did, SUM(ml) AS total FROM ("
    "SELECT e.did, d.water_ml AS ml FROM edges e JOIN usage_daily d ON d.did = e.did "
    "AND d.day >= (e.whole_from AT TIME ZONE 'UTC')::date "
    "AND d.day < (e.whole_to AT TIME ZONE 'UTC')::date "
    "UNION ALL "
    # per device with a part day, its own rows by index (never a hash of a month's partition)
    "SELECT e.did, r.ml FROM edges e CROSS JOIN LATERAL (SELECT SUM(u.delta_ml) AS ml "
    "FROM usage_record u WHERE u.did = e.did AND u.received_at >= $1 AND u.received_at < $2 "
    "AND ((u.received_at >= e.since AND u.received_at < e.whole_from) "
    "OR u.received_at >= e.whole_to)) r "
    "WHERE (e.since < e.whole_from OR e.whole_to < $2) AND r.ml IS NOT NULL"
    ") x GROUP BY did"
)


# SQLite, a close's water in two reads (`read_water_early`, `water_to_bill`). Before its turn,
# not holding the writer lock: every billed device with its plan's start and its water, in one
# statement (one snapshot), with the last usage row id that snapshot held (ids only grow:
# AUTOINCREMENT). In its turn: only the rows written since, by that id (a rowid range).
_SQLITE_EARLY_SQL = (
    "SELECT p.did AS did, p.since AS since, SUM(u.delta_ml) AS total, "
    "(SELECT MAX(id) FROM usage_record) AS last_id "
    "FROM device_billing_plan p LEFT JOIN usage_record u ON u.did = p.did "
    "AND u.received_at >= ?1 AND u.received_at < ?2 AND u.received_at >= p.since "
    "WHERE p.since < ?2 GROUP BY p.did"
)
_SQLITE_PLANS_SQL = "SELECT did, since FROM device_billing_plan WHERE since < ?1"
_SQLITE_SINCE_SQL = (
    "SELECT u.did AS did, SUM(u.delta_ml) AS total FROM usage_record u NOT INDEXED "
    "JOIN device_billing_plan p ON p.did = u.did WHERE u.id > ?3 AND p.since < ?2 "
    "AND u.received_at >= ?1 AND u.received_at < ?2 AND u.received_at >= p.since "
    "GROUP BY u.did"
)


@dataclass(frozen=True, slots=True)
class EarlyWater:
    """A close's water read before its turn (SQLite): per billed device its plan's start as
    stored and its water, from the usage rows up to `last_id`."""

    last_id: int
    plans: dict[str, str]
    ml: dict[str, int]


def _sqlite_bounds(start: dt.datetime, end: dt.datetime) -> list[Any]:
    """SQLite compares the stored text: Tortoise's isoformat(" ") of UTC times."""
    return [str(start.astimezone(dt.UTC)), str(end.astimezone(dt.UTC))]


async def read_water_early(start: dt.datetime, end: dt.datetime) -> EarlyWater | None:
    """SQLite: the period's water as far as it is written, read without the writer lock (a
    close's turn holds it, and the ledger writer would wait out the read); None elsewhere."""
    from aquafleet.models.db import connection, dialect

    if dialect() == "postgres":  # a close's turn locks no writer out there
        return None
    rows = await connection().execute_query_dict(_SQLITE_EARLY_SQL, _sqlite_bounds(start, end))
    return EarlyWater(
        last_id=int(rows[0]["last_id"] or 0) if rows else 0,
        plans={row["did"]: str(row["since"]) for row in rows},
        ml={row["did"]: int(row["total"] or 0) for row in rows if row["total"] is not None},
    )


async def water_to_bill(
    start: dt.datetime, end: dt.datetime, early: EarlyWater | None
) -> dict[str, int]:
    """In a close's turn: the period's water per billed device, as it is now. With what was
    read early, only the rows written since are read (the plans' starts unchanged: else, and
    without, the whole period again)."""
    from aquafleet.models.db import connection

    if early is None:
        return await metered_ml_in_period(start, end)
    conn = connection()
    bounds = _sqlite_bounds(start, end)
    plans = await conn.execute_query_dict(_SQLITE_PLANS_SQL, bounds[1:])
    if {row["did"]: str(row["since"]) for row in plans} != early.plans:
        return await metered_ml_in_period(start, end)
    usage = dict(early.ml)
    for row in await conn.execute_query_dict(_SQLITE_SINCE_SQL, [*bounds, early.last_id]):
        usage[row["did"]] = usage.get(row["did"], 0) + int(row["total"] or 0)
    return usage


async def metered_ml_in_period(start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    """Water metered per billed device in [start, end) by the time the gateway received it."""
    from aquafleet.models.db import connection, dialect

    if dialect() == "postgres":
        sql = _PG_USAGE_SQL
        params: list[Any] = [start, end]
    else:
        sql = _USAGE_SQL.format(start="?1", end="?2")
        params = _sqlite_bounds(start, end)
    rows = await connection().execute_query_dict(sql, params)
    return {row["did"]: int(row["total"] or 0) for row in rows}


async def quality_check_devices(dids: list[str]) -> set[str]:
    """Those of `dids` that are test (quality-check) devices, the seed's type 8 (FAQ 4), by
    their registered type or their service mode: they are never billed."""
    from aquafleet.models.devices import Device, DeviceType
    from aquafleet.models.service import DeviceService, ServiceMode

    found: set[str] = set()
    for first in range(0, len(dids), _INSERT_CHUNK):
        chunk = dids[first : first + _INSERT_CHUNK]
        found.update(
            str(did)
            for did in await Device.filter(did__in=chunk, type=DeviceType.TEST).values_list(
                "did", flat=True
            )
        )
        found.update(
            str(did)
            for did in await DeviceService.filter(did__in=chunk, mode=ServiceMode.TEST).values_list(
                "did", flat=True
            )
        )
    return found


@contextlib.asynccontextmanager
async def closing_turn() -> AsyncIterator[BaseDBAsyncClient]:
    """One transaction in which closes of billing periods take turns, whatever the periods
    (the overlap rule spans them all), in any process: the next waits until this commits."""
    from aquafleet.models.db import dialect

    async with in_transaction("default") as conn:
        if dialect() == "postgres":
            await conn.execute_query("SELECT pg_advisory_xact_lock($1)", [CLOSE_LOCK])
        else:
            # SQLite: a write as the first statement takes the database's writer lock (and
            # the snapshot) now; a read first would let two closes read, and the second to
            # write would then fail instead of waiting.
            await conn.execute_query("UPDATE billing_record SET id = id WHERE 0")
        yield conn


async def refuse_overlap(start: dt.datetime, end: dt.datetime) -> None:
    """PeriodOverlaps when a period overlapping [start, end) with other bounds was closed."""
    closed = (
        await BillingRecord.filter(period_start__lt=end, period_end__gt=start)
        .filter(Q(period_start__not=start) | Q(period_end__not=end))
        .order_by("period_start")
        .first()
    )
    if closed is not None:
        raise PeriodOverlaps(
            f"billing period {_iso(start)}..{_iso(end)} overlaps the closed period "
            f"{_iso(closed.period_start)}..{_iso(closed.period_end)}"
        )


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


async def close_billing_period(
    period_start: dt.datetime, period_end: dt.datetime, now: dt.datetime | None = None
) -> PeriodSummary:
    """Record what every billed device owes for [period_start, period_end), once.

    Run it after the period has ended and the ledger has drained (water received after the
    close is not added to a closed period). Running it again, or twice at once, writes
    nothing more: records are unique per (device, period_start). The overlap check and the
    records are one transaction, and closes take turns (`closing_turn`): of two closes of
    overlapping periods, the second is refused (PeriodOverlaps) even when they race. On SQLite
    the period's water is read before the turn, which holds the writer lock (only the rows
    written since are read in it: `water_to_bill`).
    """
    now = now or dt.datetime.now(dt.UTC)
    check_period(period_start, period_end, now)
    start, end = period_start.astimezone(dt.UTC), period_end.astimezone(dt.UTC)
    early = await read_water_early(start, end)  # SQLite: the long read, before the turn
    async with closing_turn():
        await refuse_overlap(start, end)
        known_before = await _record_period(start, end, now, early)
        return await _summary(start, end, known_before=known_before)


async def _record_period(
    start: dt.datetime, end: dt.datetime, now: dt.datetime, early: EarlyWater | None
) -> int:
    """Write the period's missing records (in the close's turn); how many it had before."""
    assignments = await DeviceBillingPlan.filter(since__lt=end).select_related("plan")
    unbilled = await quality_check_devices([a.did for a in assignments])
    already: set[str] = {
        str(did)
        for did in await BillingRecord.filter(period_start=start).values_list("did", flat=True)
    }
    usage = await water_to_bill(start, end, early)
    period_s = int((end - start).total_seconds())
    records = []
    for assignment in assignments:
        if assignment.did in already or assignment.did in unbilled:
            continue
        plan = assignment.plan
        terms = Terms(plan.mode, plan.minimum_fen, plan.price_fen, plan.price_unit_ml)
        covered_from = max(start, assignment.since)
        bill = compute_bill(
            terms,
            usage.get(assignment.did, 0),
            int((end - covered_from).total_seconds()),
            period_s,
        )
        records.append(
            BillingRecord(
                did=assignment.did,
                vendor_code=plan.vendor_id,
                plan_id=plan.id,
                mode=terms.mode,
                period_start=start,
                period_end=end,
                covered_from=covered_from,
                usage_ml=bill.usage_ml,
                usage_fen=bill.usage_fen,
                minimum_fen=bill.minimum_fen,
                amount_due_fen=bill.amount_due_fen,
                price_fen=terms.price_fen,
                price_unit_ml=terms.price_unit_ml,
                created_at=now,
            )
        )
    for first in range(0, len(records), _INSERT_CHUNK):
        await BillingRecord.bulk_create(
            records[first : first + _INSERT_CHUNK], ignore_conflicts=True
        )
    return len(already)


async def _summary(start: dt.datetime, end: dt.datetime, *, known_before: int) -> PeriodSummary:
    from tortoise.functions import Count, Sum

    rows = (
        await BillingRecord.filter(period_start=start, period_end=end)
        .annotate(n=Count("id"), ml=Sum("usage_ml"), due=Sum("amount_due_fen"))
        .values("n", "ml", "due")
    )
    row = rows[0] if rows else {}
    devices = int(row.get("n") or 0)
    return PeriodSummary(
        period_start=start,
        period_end=end,
        devices=devices,
        created=max(0, devices - known_before),
        usage_ml=int(row.get("ml") or 0),
        amount_due_fen=int(row.get("due") or 0),
    )


async def check_billing() -> list[Any]:
    """The billing records' invariant over all data, for `aquafleet money check`: no two
    closed periods overlap (a device is billed once for any instant). Empty when it holds;
    otherwise a `LedgerProblem` (models/money.py) per period overlapping an earlier one."""
    from aquafleet.models.money import LedgerProblem

    bounds = await BillingRecord.all().distinct().values_list("period_start", "period_end")
    problems: list[Any] = []
    furthest: tuple[dt.datetime, dt.datetime] | None = None  # the period reaching latest
    for start, end in sorted(set(bounds)):
        if furthest is not None and start < furthest[1]:
            problems.append(
                LedgerProblem(
                    "billing_periods_overlap",
                    f"{_iso(start)}..{_iso(end)}",
                    f"overlaps {_iso(furthest[0])}..{_iso(furthest[1])}",
                )
            )
        if furthest is None or end > furthest[1]:
            furthest = (start, end)
    return problems


async def close_billing_period_command(
    database_url: str, period: str, *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """For the CLI: open the database, close `period` (see parse_period), return a summary."""
    from aquafleet.models.db import database

    start, end = parse_period(period)
    async with database(database_url):
        summary = await close_billing_period(start, end, now)
    return summary.as_json()


async def why_period_billed_little(summary: PeriodSummary) -> str | None:
    """Why a closed period billed no device or no water (for the operator), or None."""
    if summary.devices == 0:
        if not await BillingPlan.exists():
            return "no billing plan exists: create one, then assign devices to it"
        if not await DeviceBillingPlan.exists():
            return "no device is assigned to a billing plan"
        return "no device was assigned to a billing plan before the period ended"
    if summary.usage_ml == 0:
        return "no water was metered in the period on the billed devices (by receive time)"
    return None
