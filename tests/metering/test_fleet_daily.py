"""The fleet's water chart from per-group day rollups (fleet_daily): written with the ledger,
equal to the devices' own water in every caller's scope, a retried batch counted once, a
moved device's past water left with its old dealer, and filled from an existing ledger by the
migration and by `aquafleet fleet rebuild-water`, on SQLite and PostgreSQL. (The migration
itself runs from scratch on both each session: the test databases' templates.)"""

from __future__ import annotations

import datetime as dt
import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tortoise.transactions import in_transaction

from aquafleet.models.agents import Agent, create_agent
from aquafleet.models.db import close_database, connection, database, dialect
from aquafleet.models.devices import Device, visible_devices
from aquafleet.models.fleet_history import FleetDaily, rebuild_fleet_daily, water_per_day
from aquafleet.models.registry import create_vendor, register_devices
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.usage import UsageDaily, UsageRecord, UsageRow, store_ledger_batch
from aquafleet.protocol import EventKind

TODAY = dt.datetime.now(dt.UTC).date()
YESTERDAY = TODAY - dt.timedelta(days=1)


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC)


def draw(did: str, rec: int, when: dt.datetime, ml: int) -> UsageRow:
    return UsageRow(did, 1, rec, 0x20, 0, int(when.timestamp()), when, ml, None, None)


def pour_done(did: str, rec: int, when: dt.datetime) -> UsageRow:
    event = int(EventKind.DISPENSE_DONE)
    return UsageRow(did, 1, rec, 0x21, event, int(when.timestamp()), when, 0, None, None)


class Fleet:
    """Vendor AAAA: an agent with two dealers; devices at each dealer and one at no node.
    Vendor BBBB: one device."""

    def __init__(self, dids: dict[str, str], nodes: dict[str, Agent]) -> None:
        self.dids = dids
        self.nodes = nodes

    def principals(self) -> dict[str, Principal]:
        n = self.nodes
        return {
            "platform": Principal(Role.PLATFORM, "p"),
            "vendor": Principal(Role.VENDOR, "v", vendor_code="AAAA"),
            "other vendor": Principal(Role.VENDOR, "w", vendor_code="BBBB"),
            "agent": Principal(Role.AGENT, "a", vendor_code="AAAA", agent_path=n["agent"].path),
            "dealer 1": Principal(Role.DEALER, "d1", vendor_code="AAAA", agent_path=n["d1"].path),
            "dealer 2": Principal(Role.DEALER, "d2", vendor_code="AAAA", agent_path=n["d2"].path),
            "member": Principal(Role.MEMBER, "m"),
        }


async def build_fleet() -> Fleet:
    vendor = await create_vendor("AAAA", "A")
    await create_vendor("BBBB", "B")
    agent = await create_agent(vendor, None, {"name": "agent"}, "fd-agent", "0" * 32)
    d1 = await create_agent(vendor, agent, {"name": "d1"}, "fd-dealer-1", "0" * 32)
    d2 = await create_agent(vendor, agent, {"name": "d2"}, "fd-dealer-2", "0" * 32)
    mine = [d.did for d in await register_devices("AAAA", 4, lambda d, v: b"k" * 32)]
    (theirs,) = [d.did for d in await register_devices("BBBB", 1, lambda d, v: b"k" * 32)]
    await Device.filter(did=mine[0]).update(agent_id=d1.id)
    await Device.filter(did=mine[1]).update(agent_id=d2.id)
    await Device.filter(did=mine[3]).update(agent_id=agent.id)
    dids = {"at d1": mine[0], "at d2": mine[1], "no node": mine[2], "at agent": mine[3]}
    return Fleet({**dids, "other vendor": theirs}, {"agent": agent, "d1": d1, "d2": d2})


def ledger(fleet: Fleet) -> list[UsageRow]:
    """Two days of draws and pours of every device (a batch as the writer stores it)."""
    rows = []
    for n, did in enumerate(fleet.dids.values()):
        rows += [
            draw(did, 1, at(YESTERDAY, 23), 100 + n),
            pour_done(did, 2, at(YESTERDAY, 23)),
            draw(did, 3, at(TODAY, 0), 1000 * (n + 1)),
            draw(did, 4, at(TODAY, 1), 7),
        ]
    return rows


async def devices_water(principal: Principal, rows: list[UsageRow]) -> dict[dt.date, int]:
    """Water per day of the devices in the caller's device list (GET /devices)."""
    if principal.role is Role.MEMBER:
        return {}
    scope = set(await visible_devices(principal).values_list("did", flat=True))
    water: dict[dt.date, int] = {}
    for row in rows:
        if row.did in scope:
            day = row.received_at.date()
            water[day] = water.get(day, 0) + row.delta_ml
    return water


async def chart(principal: Principal) -> dict[dt.date, int]:
    return {day: ml for day, ml in await water_per_day(principal, TODAY) if ml}


async def test_the_chart_is_the_devices_water_in_every_scope_and_a_retry_adds_nothing(db):
    fleet = await build_fleet()
    rows = ledger(fleet)
    await store_ledger_batch(rows[:9], [], [])
    await store_ledger_batch(rows, [], [])  # a retried batch, with more records after it
    await store_ledger_batch(rows[4:12], [], [])  # redelivered again, part of it
    for who, principal in fleet.principals().items():
        assert await chart(principal) == await devices_water(principal, rows), who
    assert await chart(fleet.principals()["vendor"]) == {
        YESTERDAY: 100 + 101 + 102 + 103,
        TODAY: 1000 + 2000 + 3000 + 4000 + 4 * 7,
    }
    # Pours and records per group and day add up to the devices' own.
    groups = await FleetDaily.all().values_list("dispenses", "records")
    assert sum(d for d, _ in groups) == 5 and sum(r for _, r in groups) == len(rows)
    if dialect() == "postgres":  # and to usage_daily, day by day
        days = await UsageDaily.all().values_list("day", "water_ml", "dispenses", "records")
        for day in (YESTERDAY, TODAY):
            mine = await FleetDaily.filter(day=day).values_list("water_ml", "dispenses", "records")
            theirs = [(w, d, r) for when, w, d, r in days if when == day]
            assert [sum(col) for col in zip(*mine, strict=True)] == [
                sum(col) for col in zip(*theirs, strict=True)
            ]
    # A few rows per day whatever the fleet's size: one per (day, vendor, node) that poured.
    assert await FleetDaily.filter(day=TODAY).count() == 5


async def test_a_moved_device_leaves_its_past_water_with_its_old_dealer(db):
    fleet = await build_fleet()
    did, dealers = fleet.dids["at d1"], fleet.principals()
    await store_ledger_batch(
        [draw(did, 1, at(YESTERDAY), 300), draw(did, 2, at(TODAY, 0), 40)], [], []
    )
    await Device.filter(did=did).update(agent_id=fleet.nodes["d2"].id)  # moved to dealer 2
    await store_ledger_batch(
        [draw(did, 3, at(TODAY, 2), 5), draw(did, 2, at(TODAY, 0), 40)], [], []
    )
    assert await chart(dealers["dealer 1"]) == {YESTERDAY: 300, TODAY: 40}
    assert await chart(dealers["dealer 2"]) == {TODAY: 5}
    assert await chart(dealers["vendor"]) == {YESTERDAY: 300, TODAY: 45}  # the vendor's total
    assert await chart(dealers["agent"]) == {YESTERDAY: 300, TODAY: 45}

    # A rebuild gives each device's days to its present group: all of it to dealer 2 now.
    async with in_transaction("default") as conn:
        assert await rebuild_fleet_daily(conn, YESTERDAY) == 2
    assert await chart(dealers["dealer 1"]) == {}
    assert await chart(dealers["dealer 2"]) == {YESTERDAY: 300, TODAY: 45}
    assert await chart(dealers["vendor"]) == {YESTERDAY: 300, TODAY: 45}


async def test_a_rebuild_of_recent_days_keeps_the_others_and_the_writer_adds_on(db):
    fleet = await build_fleet()
    rows = ledger(fleet)
    await store_ledger_batch(rows[:10], [], [])
    async with in_transaction("default") as conn:
        await rebuild_fleet_daily(conn, TODAY)  # only today's rows are recomputed
    await store_ledger_batch(rows, [], [])
    for who, principal in fleet.principals().items():
        assert await chart(principal) == await devices_water(principal, rows), who


async def test_the_upgrade_fills_the_chart_from_the_existing_ledger(db):
    """What migration 0018 does to a database an older version wrote (its RunPython step, run
    here on the migrated database as it was before: no rollups), then 0021 (SQLite: 0018's
    trigger dropped again, the writer adds to the rollups itself)."""
    upgrade = importlib.import_module("aquafleet.models.migrations.0018_fleet_daily")
    without_trigger = importlib.import_module(
        "aquafleet.models.migrations.0021_fleet_daily_without_trigger"
    )
    fleet = await build_fleet()
    rows = ledger(fleet)
    # What a writer of the previous version left: the raw ledger (SQLite), the per-device day
    # rollups (PostgreSQL; the raw rows of a pruned month are gone there).
    if dialect() == "postgres":
        for row in rows:
            day = row.received_at.date()
            done = int(row.kind == 0x21 and row.event_kind == int(EventKind.DISPENSE_DONE))
            found = await UsageDaily.get_or_none(did=row.did, day=day)
            if found is None:
                await UsageDaily.create(
                    did=row.did, day=day, water_ml=row.delta_ml, dispenses=done, records=1,
                    first_at=row.received_at, last_at=row.received_at,
                )  # fmt: skip
            else:
                found.water_ml += row.delta_ml
                found.dispenses += done
                found.records += 1
                await found.save()
    else:
        await store_ledger_batch(rows, [], [])
        await FleetDaily.all().delete()  # the raw ledger only
    assert await FleetDaily.all().count() == 0
    async with in_transaction("default") as tx:
        await upgrade.backfill(None, SimpleNamespace(client=tx))
        await without_trigger.drop_trigger(None, SimpleNamespace(client=tx))
    for who, principal in fleet.principals().items():
        assert await chart(principal) == await devices_water(principal, rows), who
    # The writer adds to the filled rollups from now on; a replay of old rows adds nothing.
    more = [draw(fleet.dids["at d2"], 9, at(TODAY, 3), 11)]
    if dialect() != "postgres":
        more += rows[:4]
    await store_ledger_batch(more, [], [])
    assert await chart(fleet.principals()["dealer 2"]) == {YESTERDAY: 101, TODAY: 2000 + 7 + 11}


async def test_the_rebuild_from_the_shell(tmp_path: Path, migrated_sqlite: Any):
    from tests.conftest import MASTER_SECRET
    from tests.platform.test_cli import aquafleet, clean_env

    url = migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")
    async with database(url, run_migrations=False):
        fleet = await build_fleet()
        rows = ledger(fleet)
        await store_ledger_batch(rows, [], [])
        await FleetDaily.all().delete()  # an upgrade beside an older writer: rollups missed
    await close_database()
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=url)
    code, out = await aquafleet(env, "fleet", "rebuild-water", "--since", str(TODAY), "--json")
    assert code == 0, out
    assert json.loads(out[out.index("{") :]) == {"since": str(TODAY), "rows": 5}
    code, out = await aquafleet(env, "fleet", "rebuild-water")
    assert code == 0 and "fleet water rebuilt from the first day: 10 (day, vendor" in out, out
    code, out = await aquafleet(env, "fleet", "rebuild-water", "--since", "yesterday")
    assert code == 2 and "'yesterday' is not a day: use 2026-12-01" in out, out
    async with database(url, run_migrations=False):
        for who, principal in fleet.principals().items():
            assert await chart(principal) == await devices_water(principal, rows), who
    await close_database()


# ----------------------------------------------------------------------------- only new records

STRANGER = "UNREGISTERED0001"  # a device the device table does not know


Rollups = dict[tuple[dt.date, str, int], tuple[int, int, int]]


async def rollups() -> Rollups:
    """fleet_daily: (day, vendor, agent node) -> (water, pours, records)."""
    rows = await FleetDaily.all().values_list(
        "day", "vendor_id", "agent_id", "water_ml", "dispenses", "records"
    )
    return {(day, vendor, node): (w, p, r) for day, vendor, node, w, p, r in rows}


async def rollups_of(rows: list[UsageRow]) -> Rollups:
    """What the rollups must hold once `rows` are stored: each record once (by did, boot,
    rec), in its device's present group; records of a device not registered nowhere."""
    groups = {
        did: (vendor, node or 0)
        for did, vendor, node in await Device.all().values_list("did", "vendor_id", "agent_id")
    }
    done = int(EventKind.DISPENSE_DONE)
    sums: dict[tuple[dt.date, str, int], list[int]] = {}
    for row in {(r.did, r.boot, r.rec): r for r in rows}.values():
        if row.did not in groups:
            continue
        day_sums = sums.setdefault((row.received_at.date(), *groups[row.did]), [0, 0, 0])
        day_sums[0] += row.delta_ml
        day_sums[1] += int(row.kind == 0x21 and row.event_kind == done)
        day_sums[2] += 1
    return {key: (w, p, r) for key, (w, p, r) in sums.items()}


async def test_a_replayed_batch_adds_nothing(db):
    fleet = await build_fleet()
    rows = ledger(fleet)
    await store_ledger_batch(rows, [], [])
    stored = await rollups()
    assert stored == await rollups_of(rows)
    await store_ledger_batch(rows, [], [])  # redelivered whole
    await store_ledger_batch(rows[::-1], [], [])  # and again, in another order
    assert await rollups() == stored


async def test_a_batch_of_stored_and_new_records_adds_the_new_ones_only(db):
    fleet = await build_fleet()
    rows = ledger(fleet)
    stored, new = rows[::2], rows[1::2]
    await store_ledger_batch(stored, [], [])
    assert await rollups() == await rollups_of(stored)
    # New records before, between and after stored ones: the rows the insert added are not the
    # batch's last ones, nor as many as the batch has.
    batch = new[:3] + stored[:5] + new[3:7] + stored[5:] + new[7:]
    await store_ledger_batch(batch, [], [])
    assert await rollups() == await rollups_of(rows)


async def test_records_of_a_device_not_registered_add_nothing(db):
    fleet = await build_fleet()
    known = ledger(fleet)
    strangers = [draw(STRANGER, rec, at(TODAY, 2), 500) for rec in range(1, 5)]
    strangers.append(pour_done(STRANGER, 5, at(TODAY, 2)))
    await store_ledger_batch(known[:6] + strangers[:3] + known[6:] + strangers[3:], [], [])
    assert await rollups() == await rollups_of(known)
    assert await UsageRecord.filter(did=STRANGER).count() == 5  # in the ledger all the same
    # A later batch: its one new record after the stranger's, all of them replayed.
    late = draw(fleet.dids["no node"], 9, at(TODAY, 4), 3)
    await store_ledger_batch(known[:4] + strangers + [late] + known[-2:], [], [])
    assert await rollups() == await rollups_of([*known, late])
    assert (await rollups())[(TODAY, "AAAA", 0)] == (3000 + 7 + 3, 0, 3)


def batches_of(fleet: Fleet) -> list[list[UsageRow]]:
    """Batches as a writer meets them: retried, redelivered in part, mixed with records of a
    device not registered, a new record twice in one batch, pours, two days."""
    rows = ledger(fleet)
    strangers = [draw(STRANGER, rec, at(TODAY, 2), 500 + rec) for rec in range(1, 4)]
    more = [draw(did, 10 + n, at(TODAY, 5), 17 * n) for n, did in enumerate(fleet.dids.values())]
    more.append(pour_done(fleet.dids["at d2"], 20, at(TODAY, 5)))
    twice = draw(fleet.dids["at agent"], 30, at(TODAY, 6), 29)
    return [
        rows[:9],
        rows,
        rows[4:12],
        strangers[:2] + rows[10:14] + more[:2],
        more + strangers + rows[::3],
        more[::-1],
        [twice, *rows[:2], twice],
    ]


async def test_sqlite_the_writer_adds_what_the_old_trigger_added(sqlite_url, monkeypatch):
    """SQLite: the same batches give the same rollups through the writer's statement as
    through the trigger of migration 0018 (0021's backward step makes it again)."""
    from tortoise.transactions import in_transaction as transaction

    from aquafleet.models import usage
    from aquafleet.models.usage import SQLITE_INSERT_USAGE

    without_trigger = importlib.import_module(
        "aquafleet.models.migrations.0021_fleet_daily_without_trigger"
    )
    async with database(sqlite_url):
        fleet = await build_fleet()
        for batch in batches_of(fleet):
            await store_ledger_batch(batch, [], [])
        ours = await rollups()

        await UsageRecord.all().delete()
        await FleetDaily.all().delete()
        async with transaction("default") as tx:
            await without_trigger.create_trigger(None, SimpleNamespace(client=tx))

        async def insert_only(conn: Any, rows: list[Any]) -> int:  # the writer before 0021
            await conn.execute_many(SQLITE_INSERT_USAGE, rows)
            return 0

        monkeypatch.setattr(usage, "sqlite_insert_usage", insert_only)
        for batch in batches_of(fleet):
            await store_ledger_batch(batch, [], [])
        assert await rollups() == ours
        all_rows = [row for batch in batches_of(fleet) for row in batch]
        assert ours == await rollups_of(all_rows)
    await close_database()


async def test_sqlite_nothing_else_runs_on_the_connection_while_a_batch_counts(
    sqlite_url, monkeypatch
):
    """SQLite: the writer counts the rows its insert added by the connection's change counter,
    read before and after it. Tortoise's transaction holds the client's lock for its whole
    block: a statement from elsewhere started between the two readings waits for the commit
    (were it to run there, its row would be counted, and rolled up, as the batch's)."""
    import asyncio
    import contextvars

    from tortoise.backends.sqlite.client import SqliteTransactionWrapper

    from aquafleet.models.usage import SQLITE_INSERT_USAGE

    async with database(sqlite_url):
        fleet = await build_fleet()
        rows = ledger(fleet)
        did = fleet.dids["at d1"]
        client = connection()  # outside the transaction: what any other coroutine uses
        outside = contextvars.copy_context()
        elsewhere: list[asyncio.Task[Any]] = []
        insert_many = SqliteTransactionWrapper.execute_many

        async def insert_then_start_another(self: Any, query: str, values: list[Any]) -> None:
            await insert_many(self, query, values)
            if query == SQLITE_INSERT_USAGE and not elsewhere:
                assert client._lock.locked()  # type: ignore[attr-defined]
                other = UsageRecord.create(
                    did=did, boot=2, rec=1, kind=0x20, event_kind=0, device_ts=0,
                    received_at=at(TODAY, 6), delta_ml=900_000,
                )  # fmt: skip
                loop = asyncio.get_running_loop()
                elsewhere.append(loop.create_task(other, context=outside))
                for _ in range(20):  # as far as it gets: to the lock
                    await asyncio.sleep(0)
                assert not elsewhere[0].done()

        monkeypatch.setattr(SqliteTransactionWrapper, "execute_many", insert_then_start_another)
        await store_ledger_batch(rows, [], [])
        await elsewhere[0]
        assert await UsageRecord.filter(did=did, boot=2).count() == 1
        assert await rollups() == await rollups_of(rows)  # without the other row's 900 l
    await close_database()
