"""The fleet's history for the console's charts: online devices sampled over time, and water
poured per UTC day, each summed over the caller's scope (the device list's).

Online history is a sample of the online count per (vendor, agent node) taken every
`fleet_sample_interval_s` by the one node holding the sampler's lease (gateway/fleet_history.py):
a scope's count is the sum over the nodes of its subtree, so a dealer's chart counts its own
devices only. Samples are keyed by (bucket, vendor, node): a second writer of the same bucket (a
lease handover mid-sample) adds nothing. Every sample is kept FINE_KEEP (the 24 h chart); the
one on each hour is kept HOURLY_KEEP (the 30 day chart); older ones are deleted as samples are
taken, so the table holds at most about (FINE_KEEP / interval + HOURLY_KEEP / 1 h) rows per node.

Water per day comes from the per-group day rollups (fleet_daily): water, pours and records per
(UTC day, vendor, agent node), the grouping of the online samples, so a scope's 30 days are a
few rows per day whatever the fleet's size. The ledger writer adds each record new to the
ledger to the group its device belongs to when the record is written, in the transaction that
adds it to the device's day (usage_daily, PostgreSQL: one statement, models/usage.py) or to the
ledger (SQLite: one statement per batch after its insert, over the rows it added; a trigger on
usage_record until migration 0021); a replayed record adds nothing. A device moved to
another dealer leaves its past water with the old one, as its online samples do. Like
usage_daily the rollups are kept for good (raw pruning leaves them). `rebuild_fleet_daily`
fills them from what the database holds (migration 0018, `aquafleet fleet rebuild-water`),
each day to its devices' present groups.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tortoise import fields
from tortoise.expressions import Subquery
from tortoise.functions import Sum
from tortoise.models import Model
from tortoise.queryset import QuerySet

from aquafleet.models.agents import visible_agents
from aquafleet.models.devices import Device, DeviceState
from aquafleet.models.tenancy import Principal, Role

DAYS = 30
FINE_KEEP = dt.timedelta(hours=26)
HOURLY_KEEP = dt.timedelta(days=DAYS + 1)
NO_NODE = 0  # agent_id of the vendor's devices that belong to no agent or dealer
GROUP_SCAN_CHUNK = 5000  # devices read per query while sampling


class FleetOnlineSample(Model):
    """Devices of one (vendor, agent node) online at a sample time (the bucket's start)."""

    id = fields.BigIntField(primary_key=True)
    at = fields.DatetimeField(db_index=True, description="the sample's bucket start (UTC)")
    vendor_id = fields.CharField(max_length=4)
    agent_id = fields.IntField(description="the devices' agent or dealer node, 0: none")
    online = fields.IntField()
    devices = fields.IntField(description="registered, not deregistered")
    hourly = fields.BooleanField(default=False, description="taken on the hour: kept 31 days")

    class Meta:
        table = "fleet_online_sample"
        unique_together = (("at", "vendor_id", "agent_id"),)


class FleetDaily(Model):
    """Water of one (vendor, agent node) per UTC day (of `received_at`): what the fleet's water
    chart sums, a few rows a day whatever the fleet's size. Written by the ledger writer in the
    transaction of the records it adds up (only records new to the ledger count, as in
    usage_daily), to the group the device belongs to when its record is written."""

    id = fields.BigIntField(primary_key=True)
    day = fields.DateField()
    vendor_id = fields.CharField(max_length=4)
    agent_id = fields.IntField(description="the devices' agent or dealer node, 0: none")
    water_ml = fields.BigIntField(default=0)
    dispenses = fields.IntField(default=0, description="dispense_done events (pours)")
    records = fields.IntField(default=0)

    class Meta:
        table = "fleet_daily"
        unique_together = (("day", "vendor_id", "agent_id"),)


Group = tuple[str, int]  # (vendor code, agent id or NO_NODE)


@dataclass(frozen=True, slots=True)
class GroupCount:
    online: int
    devices: int


# ----------------------------------------------------------------------------- pure rules


def bucket_start(now_s: int, interval_s: int) -> int:
    """The start (unix seconds) of the sampling bucket holding `now_s`."""
    return now_s - now_s % interval_s


def is_hourly(bucket_s: int) -> bool:
    return bucket_s % 3600 == 0


def count_groups(
    devices: Iterable[tuple[str, str, int | None]], online: set[str]
) -> dict[Group, GroupCount]:
    """Online and registered devices per (vendor, node) from (did, vendor, agent id) rows."""
    total: Counter[Group] = Counter()
    up: Counter[Group] = Counter()
    for did, vendor, agent in devices:
        group = (vendor, agent or NO_NODE)
        total[group] += 1
        up[group] += did in online
    return {g: GroupCount(up[g], n) for g, n in total.items()}


def fill_days(rows: Mapping[dt.date, int], today: dt.date) -> list[tuple[dt.date, int]]:
    """The last DAYS UTC days, oldest first, days without water at 0."""
    days = [today - dt.timedelta(days=n) for n in range(DAYS - 1, -1, -1)]
    return [(day, int(rows.get(day, 0))) for day in days]


# ----------------------------------------------------------------------------- sampling


async def sampled_devices(after: str, limit: int) -> list[tuple[str, str, int | None]]:
    """A chunk of (did, vendor, agent id) of devices that may connect, by did after `after`."""
    qs = Device.filter(did__gt=after).exclude(state=DeviceState.DEREGISTERED).order_by("did")
    rows = await qs.limit(limit).values_list("did", "vendor_id", "agent_id")
    return [(str(d), str(v), None if a is None else int(a)) for d, v, a in rows]


async def store_sample(at: dt.datetime, counts: Mapping[Group, GroupCount]) -> int:
    """Write one bucket's counts; a bucket already written keeps its first counts. The rows
    written."""
    from aquafleet.models.db import connection, dialect

    if not counts:
        return 0
    hourly = is_hourly(int(at.timestamp()))
    conn = connection()
    written = 0
    groups = sorted(counts.items())
    for start in range(0, len(groups), 500):
        chunk = groups[start : start + 500]
        if dialect() == "postgres":
            sql = (
                "INSERT INTO fleet_online_sample (at, vendor_id, agent_id, online, devices, "
                "hourly) SELECT $1, * , $2 FROM unnest($3::varchar[], $4::int[], $5::int[], "
                "$6::int[]) ON CONFLICT (at, vendor_id, agent_id) DO NOTHING"
            )
            params: list[Any] = [
                at, hourly, [g[0] for g, _ in chunk], [g[1] for g, _ in chunk],
                [c.online for _, c in chunk], [c.devices for _, c in chunk],
            ]  # fmt: skip
            await conn.execute_query(sql, params)
        else:
            values = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in chunk)
            sql = (
                "INSERT INTO fleet_online_sample (at, vendor_id, agent_id, online, devices, "
                f"hourly) VALUES {values} ON CONFLICT (at, vendor_id, agent_id) DO NOTHING"
            )
            text = str(at.astimezone(dt.UTC))  # Tortoise's text: its filters compare with it
            params = [
                x for (vendor, agent), c in chunk
                for x in (text, vendor, agent, c.online, c.devices, hourly)
            ]  # fmt: skip
            await conn.execute_query(sql, params)
        written += len(chunk)
    return written


async def prune_samples(now: dt.datetime) -> int:
    """Delete samples past their retention (every one after FINE_KEEP, hourly after
    HOURLY_KEEP); how many."""
    fine = await FleetOnlineSample.filter(at__lt=now - FINE_KEEP, hourly=False).delete()
    old = await FleetOnlineSample.filter(at__lt=now - HOURLY_KEEP).delete()
    return int(fine) + int(old)


# ----------------------------------------------------------------------------- reading


GroupRow = TypeVar("GroupRow", FleetOnlineSample, FleetDaily)


def _scoped(model: type[GroupRow], principal: Principal, vid: str | None) -> QuerySet[GroupRow]:
    """Rows kept per (vendor, agent node) of the caller's subtree: the scope of GET /devices
    (a member sees none)."""
    qs = model.all() if vid is None else model.filter(vendor_id=vid)
    if principal.role is Role.PLATFORM:
        return qs
    if principal.role is Role.MEMBER or principal.vendor_code is None:
        return qs.filter(id__in=[])
    qs = qs.filter(vendor_id=principal.vendor_code)
    if principal.role is Role.VENDOR:
        return qs
    nodes = visible_agents(principal).values_list("id", flat=True)
    return qs.filter(agent_id__in=Subquery(nodes))


def scoped_samples(principal: Principal, vid: str | None = None) -> QuerySet[FleetOnlineSample]:
    """Online samples of the caller's subtree."""
    return _scoped(FleetOnlineSample, principal, vid)


async def online_history(
    principal: Principal, since: dt.datetime, *, hourly: bool, vid: str | None = None
) -> list[tuple[dt.datetime, int, int]]:
    """(sample time, online, devices) of the caller's scope since `since`, oldest first."""
    qs = scoped_samples(principal, vid).filter(at__gte=since)
    if hourly:
        qs = qs.filter(hourly=True)
    rows = (
        await qs.annotate(up=Sum("online"), total=Sum("devices"))
        .group_by("at")
        .order_by("at")
        .values("at", "up", "total")
    )
    return [(_aware(r["at"]), int(r["up"] or 0), int(r["total"] or 0)) for r in rows]


def _aware(value: Any) -> dt.datetime:
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _day(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def scoped_days(principal: Principal, vid: str | None = None) -> QuerySet[FleetDaily]:
    """Group day rollups of the caller's subtree: the samples' scope."""
    return _scoped(FleetDaily, principal, vid)


async def water_per_day(
    principal: Principal, today: dt.date, vid: str | None = None
) -> list[tuple[dt.date, int]]:
    """Water (ml) poured per UTC day over the last DAYS days by the caller's groups
    (deregistered devices' included: their water was poured), oldest first."""
    first = today - dt.timedelta(days=DAYS - 1)
    rows = (
        await scoped_days(principal, vid)
        .filter(day__gte=first, day__lte=today)
        .annotate(water=Sum("water_ml"))
        .group_by("day")
        .values("day", "water")
    )
    return fill_days({_day(r["day"]): int(r["water"] or 0) for r in rows}, today)


# ----------------------------------------------------------------------------- rebuilding

# From the per-device day rollups (PostgreSQL keeps them for good) or the raw ledger (SQLite
# keeps no usage_daily), each device's days to its present group.
_PG_REBUILD = (
    "INSERT INTO fleet_daily (day, vendor_id, agent_id, water_ml, dispenses, records) "
    "SELECT u.day, d.vendor_id, COALESCE(d.agent_id, 0), SUM(u.water_ml), SUM(u.dispenses), "
    "SUM(u.records) FROM usage_daily u JOIN device d ON d.did = u.did WHERE u.day >= $1 "
    "GROUP BY 1, 2, 3"
)
_SQLITE_REBUILD = (
    "INSERT INTO fleet_daily (day, vendor_id, agent_id, water_ml, dispenses, records) "
    "SELECT date(u.received_at), d.vendor_id, COALESCE(d.agent_id, 0), SUM(u.delta_ml), "
    "SUM(CASE WHEN u.kind = {event} AND u.event_kind = {done} THEN 1 ELSE 0 END), COUNT(*) "
    "FROM usage_record u JOIN device d ON d.did = u.did WHERE date(u.received_at) >= ? "
    "GROUP BY 1, 2, 3"
)
EARLIEST = dt.date(1970, 1, 1)


async def rebuild_fleet_daily(conn: Any, since: dt.date = EARLIEST) -> int:
    """Recompute the group day rollups of `since` and after from the database; how many rows.

    Run in the caller's transaction (`conn`), exact beside a running ledger writer: on
    PostgreSQL the table is locked against writes first (a writer's batch waits, then adds
    to the rebuilt rows; one already committed is in the sums), SQLite has one writer at a
    time. Each day goes to its devices' present groups: a device moved since leaves its past
    water to the new group here. On SQLite, days whose raw records were pruned come back
    short: rebuild only days the ledger still holds whole.
    """
    from aquafleet.models.usage import RecordKind
    from aquafleet.protocol import EventKind

    if conn.capabilities.dialect == "postgres":
        await conn.execute_script("LOCK TABLE fleet_daily IN EXCLUSIVE MODE")
        await conn.execute_query("DELETE FROM fleet_daily WHERE day >= $1", [since])
        # counted by the statement: Tortoise reads an INSERT's status ("INSERT 0 n") as 0
        sql = f"WITH rebuilt AS ({_PG_REBUILD} RETURNING 1) SELECT count(*) AS n FROM rebuilt"
        (row,) = await conn.execute_query_dict(sql, [since])
        return int(row["n"])
    await conn.execute_query("DELETE FROM fleet_daily WHERE day >= ?", [since.isoformat()])
    sql = _SQLITE_REBUILD.format(event=int(RecordKind.EVENT), done=int(EventKind.DISPENSE_DONE))
    count, _ = await conn.execute_query(sql, [since.isoformat()])
    return int(count)
