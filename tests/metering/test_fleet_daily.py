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
from aquafleet.models.usage import UsageDaily, UsageRow, store_ledger_batch
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
    here on the migrated database as it was before: no rollups, no SQLite trigger)."""
    upgrade = importlib.import_module("aquafleet.models.migrations.0018_fleet_daily")
    conn = connection()
    if dialect() != "postgres":
        await conn.execute_query("DROP TRIGGER usage_record_fleet_daily")
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
    assert await FleetDaily.all().count() == 0
    async with in_transaction("default") as tx:
        await upgrade.backfill(None, SimpleNamespace(client=tx))
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
