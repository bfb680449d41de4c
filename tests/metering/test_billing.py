"""Minimum consumption: the integer rules, and closing a period once per device, also when
the close runs twice, in two tasks or in two processes at the same moment."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aquafleet.models import billing
from aquafleet.models.billing import (
    BillingMode,
    BillingRecord,
    Terms,
    assign_billing_plan,
    check_period,
    check_terms,
    close_billing_period,
    close_billing_period_command,
    compute_bill,
    create_billing_plan,
    metered_ml_in_period,
    parse_period,
    prorated_minimum_fen,
    usage_charge_fen,
)
from aquafleet.models.db import database
from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.usage import store_ledger_batch
from tests.conftest import MASTER_SECRET
from tests.metering.support import race_in_processes, usage_row, vendor_with_devices
from tests.platform.test_cli import aquafleet, clean_env

NOV = (dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
AFTER = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
MONTH_S = 30 * 86400

# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("usage_ml", "price_fen", "unit_ml", "fen"),
    [
        (1500, 150, 1000, 225),  # 1.5 l at 1.50 yuan per litre
        (0, 150, 1000, 0),
        (499, 1, 1000, 0),  # 0.499 fen rounds down
        (500, 1, 1000, 1),  # 0.5 fen rounds up (四舍五入)
        (1499, 1, 1000, 1),
        (1500, 1, 1000, 2),
        (333, 1, 1, 333),  # priced per ml
        (10**13, 10**6, 1, 10**19),  # big numbers stay exact
        (1000, 0, 1000, 0),
        (-5, 100, 1, 0),  # never a negative charge
    ],
)
def test_usage_charge_is_rounded_half_up(usage_ml, price_fen, unit_ml, fen):
    assert usage_charge_fen(usage_ml, price_fen, unit_ml) == fen


@pytest.mark.parametrize(
    ("minimum", "covered_s", "period_s", "fen"),
    [
        (3000, MONTH_S, MONTH_S, 3000),
        (3000, MONTH_S // 2, MONTH_S, 1500),
        (3000, 10 * 86400, MONTH_S, 1000),
        (1000, 86400, MONTH_S, 33),  # 33.3 rounds down
        (3000, MONTH_S * 2, MONTH_S, 3000),  # never more than the minimum
        (3000, -1, MONTH_S, 0),
    ],
)
def test_minimum_is_prorated_and_rounded_down(minimum, covered_s, period_s, fen):
    assert prorated_minimum_fen(minimum, covered_s, period_s) == fen


POSTPAID = Terms(BillingMode.POSTPAID, minimum_fen=3000, price_fen=150, price_unit_ml=1000)
PREPAID = Terms(BillingMode.PREPAID, minimum_fen=3000, price_fen=150, price_unit_ml=1000)


@pytest.mark.parametrize(
    ("terms", "usage_ml", "usage_fen", "due"),
    [
        (POSTPAID, 0, 0, 3000),  # nothing drawn: the minimum
        (POSTPAID, 10_000, 1500, 3000),  # 15 yuan of water: the minimum
        (POSTPAID, 20_000, 3000, 3000),  # exactly the minimum
        (POSTPAID, 30_000, 4500, 4500),  # above the minimum: the water
        (PREPAID, 0, 0, 3000),  # water was prepaid: the shortfall
        (PREPAID, 10_000, 1500, 1500),
        (PREPAID, 20_000, 3000, 0),
        (PREPAID, 30_000, 4500, 0),
    ],
)
def test_amount_due_per_mode(terms, usage_ml, usage_fen, due):
    bill = compute_bill(terms, usage_ml, MONTH_S, MONTH_S)
    assert (bill.usage_ml, bill.usage_fen, bill.minimum_fen, bill.amount_due_fen) == (
        usage_ml, usage_fen, 3000, due,
    )  # fmt: skip


@given(
    mode=st.sampled_from(BillingMode),
    minimum=st.integers(0, 10**9),
    price=st.integers(0, 10**6),
    unit=st.integers(1, 10**6),
    usage=st.integers(0, 10**12),
    covered=st.integers(0, 400 * 86400),
    period=st.integers(1, 366 * 86400),
)
def test_bill_properties(mode, minimum, price, unit, usage, covered, period):
    bill = compute_bill(Terms(mode, minimum, price, unit), usage, covered, period)
    exact = Fraction(usage * price, unit)
    assert abs(bill.usage_fen - exact) <= Fraction(1, 2)
    assert bill.usage_fen - exact < Fraction(1, 2) or exact.denominator == 2
    assert 0 <= bill.minimum_fen <= minimum
    assert bill.amount_due_fen >= 0
    if mode is BillingMode.POSTPAID:
        assert bill.amount_due_fen == max(bill.usage_fen, bill.minimum_fen)
    else:
        assert bill.amount_due_fen + bill.usage_fen >= bill.minimum_fen
        assert bill.amount_due_fen <= bill.minimum_fen


@pytest.mark.parametrize(
    ("mode", "minimum", "price", "unit"),
    [(3, 0, 0, 1), (1, -1, 0, 1), (1, 1.5, 0, 1), (1, 0, True, 1), (1, 0, 0, 0), (1, 0, "1", 1),
     (1, 10**13, 0, 1)],
)  # fmt: skip
def test_bad_terms_are_refused(mode, minimum, price, unit):
    with pytest.raises(InvalidInput):
        check_terms(mode, minimum, price, unit)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2026-11", NOV[0], NOV[1]),
        (
            "2026-12",
            dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
            dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
        ),
        (
            "2026-11-01T00:00:00+08:00/2026-11-08T00:00:00+08:00",
            dt.datetime(2026, 10, 31, 16, tzinfo=dt.UTC),
            dt.datetime(2026, 11, 7, 16, tzinfo=dt.UTC),
        ),
        ("2026-11-01T00:00:00Z/2026-11-02T00:00:00Z", NOV[0], NOV[0] + DAY),
    ],
)
def test_parse_period(text, start, end):
    assert parse_period(text) == (start, end)


@pytest.mark.parametrize(
    "text", ["2026-13", "2026-00", "2026", "", "a/b", "2026-11-01/2026-12-01", "x/y/z"]
)
def test_bad_periods_are_refused(text):
    with pytest.raises(InvalidInput):
        parse_period(text)


@pytest.mark.parametrize(
    ("start", "end", "now"),
    [
        (NOV[1], NOV[0], AFTER),  # backwards
        (NOV[0], NOV[0], AFTER),  # empty
        (NOV[0], NOV[1], NOV[1] - dt.timedelta(seconds=1)),  # not over yet
        (NOV[0], NOV[0] + 367 * DAY, NOV[0] + 400 * DAY),  # too long
        (NOV[0].replace(tzinfo=None), NOV[1], AFTER),  # naive
    ],
)
def test_bad_period_bounds_are_refused(start, end, now):
    with pytest.raises(InvalidInput):
        check_period(start, end, now)


# ----------------------------------------------------------------------------- database


@pytest.fixture
async def fleet(db: str) -> dict[str, str]:
    """Devices a, b, c of ACME on a postpaid plan, d prepaid, e on no plan; x of another vendor."""
    a, b, c, d, e = await vendor_with_devices("ACME", 5)
    (x,) = await vendor_with_devices("BETA", 1)
    postpaid = await create_billing_plan(
        "ACME", "min 30 yuan", mode=1, minimum_fen=3000, price_fen=150, price_unit_ml=1000
    )
    prepaid = await create_billing_plan(
        "ACME", "prepaid, min 30 yuan", mode=2, minimum_fen=3000, price_fen=150, price_unit_ml=1000
    )
    start = NOV[0]
    await assign_billing_plan(a, postpaid.id, start - 40 * DAY)
    await assign_billing_plan(b, postpaid.id, start - DAY)
    await assign_billing_plan(c, postpaid.id, start + 15 * DAY)  # joined half way
    await assign_billing_plan(d, prepaid.id, start - DAY)
    in_nov = start + 3 * DAY
    await store_ledger_batch(
        [
            usage_row(a, 1, 30_000, in_nov),  # 45 yuan of water
            usage_row(a, 2, 999, start - dt.timedelta(microseconds=1)),  # October
            usage_row(a, 3, 777, NOV[1]),  # December (the end is excluded)
            usage_row(a, 4, 1_000, NOV[1] - dt.timedelta(microseconds=1)),  # last instant
            usage_row(b, 1, 2_000, start),  # first instant
            usage_row(c, 1, 5_000, start + 14 * DAY),  # before c joined the plan
            usage_row(c, 2, 4_000, start + 20 * DAY),
            usage_row(d, 1, 10_000, in_nov),
            usage_row(e, 1, 50_000, in_nov),
            usage_row(x, 1, 50_000, in_nov),
        ],
        [],
        [],
    )
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "x": x}


async def records() -> dict[str, tuple[int, int, int, int]]:
    rows = await BillingRecord.filter(period_start=NOV[0]).order_by("did")
    return {r.did: (r.usage_ml, r.usage_fen, r.minimum_fen, r.amount_due_fen) for r in rows}


EXPECTED = {
    "a": (31_000, 4650, 3000, 4650),  # water above the minimum
    "b": (2_000, 300, 3000, 3000),  # the minimum
    "c": (4_000, 600, 1500, 1500),  # half the month on the plan: half the minimum
    "d": (10_000, 1500, 3000, 1500),  # prepaid: the shortfall
}


async def test_usage_in_period_counts_what_was_received_in_it(fleet):
    usage = await metered_ml_in_period(*NOV)
    assert usage == {fleet[k]: EXPECTED[k][0] for k in "abcd"}


async def test_usage_counts_part_days_at_both_ends_of_a_plan_and_a_period(db: str):
    """A plan joined at noon and a period ending at 06:00: the part days count only the water
    received inside them (PostgreSQL adds whole days from the rollups, the ends from rows)."""
    (f,) = await vendor_with_devices("ACME", 1)
    plan = await create_billing_plan(
        "ACME", "postpaid", mode=1, minimum_fen=0, price_fen=150, price_unit_ml=1000
    )
    joined = NOV[0] + 9 * DAY + dt.timedelta(hours=12)  # Nov 10 12:00
    await assign_billing_plan(f, plan.id, joined)
    second = dt.timedelta(seconds=1)
    await store_ledger_batch(
        [
            usage_row(f, 1, 1, joined - second),  # before the plan: not billed
            usage_row(f, 2, 20, joined),
            usage_row(f, 3, 300, joined + 12 * dt.timedelta(hours=1) - second),  # Nov 10 23:59
            usage_row(f, 4, 4_000, NOV[0] + 15 * DAY),  # a whole day
            usage_row(f, 5, 50_000, NOV[0] + 24 * DAY + dt.timedelta(hours=5)),  # Nov 25 05:00
            usage_row(f, 6, 600_000, NOV[0] + 24 * DAY + dt.timedelta(hours=6)),  # 06:00
        ],
        [],
        [],
    )
    assert await metered_ml_in_period(*NOV) == {f: 654_320}
    ends_at_six = NOV[0] + 24 * DAY + dt.timedelta(hours=6)
    assert await metered_ml_in_period(NOV[0], ends_at_six) == {f: 54_320}
    within_a_day = (joined - DAY / 2, joined + dt.timedelta(hours=6))  # Nov 10 00:00-18:00
    assert await metered_ml_in_period(*within_a_day) == {f: 20}
    assert await metered_ml_in_period(joined + DAY, NOV[1]) == {f: 654_000}


async def test_close_records_what_each_billed_device_owes(fleet):
    summary = await close_billing_period(*NOV, AFTER)
    assert await records() == {fleet[k]: v for k, v in EXPECTED.items()}
    assert (summary.devices, summary.created) == (4, 4)
    assert summary.amount_due_fen == 4650 + 3000 + 1500 + 1500
    assert summary.usage_ml == 31_000 + 2_000 + 4_000 + 10_000
    c = await BillingRecord.get(did=fleet["c"])
    assert c.covered_from == NOV[0] + 15 * DAY
    assert (c.period_start, c.period_end, c.vendor_code, c.mode) == (*NOV, "ACME", 1)
    assert (c.price_fen, c.price_unit_ml, c.created_at) == (150, 1000, AFTER)
    assert summary.as_json() == {
        "period_start": "2026-11-01T00:00:00Z", "period_end": "2026-12-01T00:00:00Z",
        "devices": 4, "created": 4, "usage_ml": 47_000, "amount_due_fen": 10_650,
    }  # fmt: skip


async def test_closing_twice_records_once(fleet):
    first = await close_billing_period(*NOV, AFTER)
    # Water that arrives after the close does not change a closed period.
    await store_ledger_batch([usage_row(fleet["b"], 9, 50_000, NOV[0] + DAY)], [], [])
    second = await close_billing_period(*NOV, AFTER + DAY)
    assert await BillingRecord.all().count() == 4
    assert (second.devices, second.created) == (4, 0)
    assert second.amount_due_fen == first.amount_due_fen
    assert await records() == {fleet[k]: v for k, v in EXPECTED.items()}


async def test_racing_closes_record_once(fleet):
    await asyncio.gather(*[close_billing_period(*NOV, AFTER) for _ in range(4)])
    assert await BillingRecord.all().count() == 4
    assert await records() == {fleet[k]: v for k, v in EXPECTED.items()}


async def test_racing_processes_record_once(fleet, database_url):
    args = [NOV[0].isoformat(), NOV[1].isoformat(), AFTER.isoformat()]
    results = await race_in_processes(database_url, "close_period", args, 2)
    assert all(r["devices"] == 4 and r["amount_due_fen"] == 10_650 for r in results)
    assert await BillingRecord.all().count() == 4
    assert await records() == {fleet[k]: v for k, v in EXPECTED.items()}


async def test_an_overlapping_period_is_refused(fleet):
    await close_billing_period(*NOV, AFTER)
    with pytest.raises(Conflict):
        await close_billing_period(NOV[0] + 10 * DAY, NOV[1] + 10 * DAY, AFTER + 10 * DAY)
    with pytest.raises(Conflict):
        await close_billing_period(NOV[0], NOV[1] - DAY, AFTER)
    # The next period is fine.
    december = await close_billing_period(NOV[1], NOV[1] + 31 * DAY, NOV[1] + 32 * DAY)
    assert december.devices == 4


async def test_overlapping_closes_racing_book_once(fleet, db, monkeypatch, tmp_path: Path):
    """The second close of an overlapping period starts while the first is between its overlap
    check and its records (a hook where the first reads the period's water in its turn holds it
    until the second has passed its own check, or is waiting for its turn). The first books,
    the second is refused with the period it overlaps; `aquafleet money check` holds."""
    overlapping = (NOV[0] + 10 * DAY, NOV[1] + 10 * DAY)
    tasks: dict[str, asyncio.Task[Any]] = {}
    first_checked, second_went_on = asyncio.Event(), asyncio.Event()
    usage, turn = billing.water_to_bill, getattr(billing, "closing_turn", None)

    async def water(*args: Any) -> dict[str, int]:
        if asyncio.current_task() is tasks["first"]:
            first_checked.set()
            await second_went_on.wait()
        else:
            second_went_on.set()  # the second passed its check while the first had not booked
        return await usage(*args)

    early = billing.read_water_early

    async def early_water(*args: Any) -> Any:
        if asyncio.current_task() is tasks["second"]:
            second_went_on.set()  # SQLite: this process' one connection is the first's turn's
        return await early(*args)

    @contextlib.asynccontextmanager
    async def waiting_turn() -> AsyncIterator[Any]:
        assert turn is not None
        if asyncio.current_task() is tasks["second"]:
            second_went_on.set()  # the first holds the turn: the second waits for it
        async with turn() as conn:
            yield conn

    async def second() -> Any:
        await first_checked.wait()
        return await close_billing_period(*overlapping, AFTER + 10 * DAY)

    monkeypatch.setattr(billing, "water_to_bill", water)
    monkeypatch.setattr(billing, "read_water_early", early_water)
    monkeypatch.setattr(billing, "closing_turn", waiting_turn, raising=False)
    tasks["first"] = asyncio.create_task(close_billing_period(*NOV, AFTER))
    tasks["second"] = asyncio.create_task(second())
    first, refused = await asyncio.gather(*tasks.values(), return_exceptions=True)

    assert isinstance(refused, Conflict), refused
    assert refused.code == "period_overlaps"
    assert "2026-11-01T00:00:00Z..2026-12-01T00:00:00Z" in refused.message
    assert (first.devices, first.created, first.amount_due_fen) == (4, 4, 10_650)
    assert await BillingRecord.all().count() == 4  # booked once: November's only
    assert await records() == {fleet[k]: v for k, v in EXPECTED.items()}
    assert await billing.check_billing() == []
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=db)
    code, out = await aquafleet(env, "money", "check", "--json")
    assert code == 0 and json.loads(out)["problems"] == [], out


async def test_a_close_reads_the_water_without_locking_the_ledger_writer_out(
    sqlite_fleet_path: Path, fleet, monkeypatch
):
    """SQLite: a close read the period's water holding the writer lock (its turn), and the
    ledger writer of another process waited out the read (up to its 5 s busy timeout, then
    failed). Once the close has read the water, another connection writes a record of the
    period: it is not locked out, and the close, in its turn, counts it too (what it bills is
    the water as it is when it records the period closed)."""
    reads = [
        name for name in ("read_water_early", "metered_ml_in_period") if hasattr(billing, name)
    ]
    written: list[bool] = []

    def write_a_record() -> bool:
        other = sqlite3.connect(sqlite_fleet_path, timeout=0.2, isolation_level=None)
        try:
            other.execute(
                "INSERT INTO usage_record (did, boot, rec, kind, event_kind, device_ts, "
                "received_at, delta_ml) VALUES (?, 1, 99, 32, 0, 1790000099, ?, 7000)",
                (fleet["a"], str(NOV[0] + 5 * DAY)),
            )
            return True
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return False
        finally:
            other.close()

    def then_write(read: Any) -> Any:
        async def reading(*args: Any) -> Any:
            water = await read(*args)
            if not written:  # once the close has read the water, before it records
                written.append(write_a_record())
            return water

        return reading

    for name in reads:
        monkeypatch.setattr(billing, name, then_write(getattr(billing, name)))
    summary = await close_billing_period(*NOV, AFTER)
    assert written == [True]
    a = 31_000 + 7_000  # the record written after the close read the water is billed too
    assert (await records())[fleet["a"]] == (a, a * 150 // 1000, 3000, a * 150 // 1000)
    assert (summary.devices, summary.usage_ml) == (4, 47_000 + 7_000)
    assert (await close_billing_period(*NOV, AFTER)).usage_ml == 47_000 + 7_000  # once


async def test_a_plan_changed_while_a_close_reads_the_water_is_billed_as_it_is_then(
    fleet, monkeypatch
):
    """A device's plan start moves between the close's read of the water (before its turn on
    SQLite) and its records: the water it bills is counted from the start it records."""
    read = getattr(billing, "read_water_early", None)
    plan_id = (await billing.DeviceBillingPlan.get(did=fleet["c"])).plan_id
    moved = NOV[0] + 10 * DAY  # c joined on Nov 16; now on Nov 11: its Nov 15 water counts

    async def then_move(*args: Any) -> Any:
        water = await read(*args) if read is not None else None
        await assign_billing_plan(fleet["c"], plan_id, moved)
        return water

    monkeypatch.setattr(billing, "read_water_early", then_move, raising=False)
    await close_billing_period(*NOV, AFTER)
    c = await BillingRecord.get(did=fleet["c"])
    assert c.covered_from == moved
    assert (c.usage_ml, c.usage_fen, c.minimum_fen, c.amount_due_fen) == (9_000, 1350, 2000, 2000)
    assert (await records())[fleet["a"]] == EXPECTED["a"]


@pytest.fixture
def sqlite_fleet_path(db: str) -> Path:
    if not db.startswith("sqlite://"):
        pytest.skip("SQLite's writer lock: PostgreSQL's close locks no writer out")
    return Path(db.removeprefix("sqlite://"))


async def test_a_close_holds_its_turn_against_other_processes(db):
    """While a close holds its turn, another connection (another process's close) cannot take
    it: PostgreSQL's advisory lock is held, SQLite's writer lock taken by the first statement
    (a read first would let two closes in, and the second to write would fail, not wait)."""

    async def other_takes_a_turn() -> bool:
        if db.startswith("sqlite://"):
            other = sqlite3.connect(db.removeprefix("sqlite://"), timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                return True
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc)
                return False
            finally:
                other.close()
        other_pg = await asyncpg.connect(db.replace("postgres://", "postgresql://"))
        try:
            async with other_pg.transaction():
                taken = await other_pg.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1)", billing.CLOSE_LOCK
                )
            return bool(taken)
        finally:
            await other_pg.close()

    assert await other_takes_a_turn()
    async with billing.closing_turn():
        assert not await other_takes_a_turn()
    assert await other_takes_a_turn()


async def test_the_money_check_finds_overlapping_periods(fleet, db, tmp_path: Path):
    await close_billing_period(*NOV, AFTER)
    await close_billing_period(NOV[1], NOV[1] + 31 * DAY, NOV[1] + 32 * DAY)
    assert await billing.check_billing() == []
    # What two closes racing without taking turns left behind: one device billed twice.
    template = await BillingRecord.get(did=fleet["a"], period_start=NOV[0])
    await BillingRecord.create(
        **{
            **{f: getattr(template, f) for f in BillingRecord._meta.db_fields if f != "id"},
            "did": fleet["e"],
            "period_start": NOV[0] + 10 * DAY,
            "period_end": NOV[1] + 10 * DAY,
        }
    )
    found = [(p.what, p.subject, p.detail) for p in await billing.check_billing()]
    assert found == [
        (
            "billing_periods_overlap",
            "2026-11-11T00:00:00Z..2026-12-11T00:00:00Z",
            "overlaps 2026-11-01T00:00:00Z..2026-12-01T00:00:00Z",
        ),
        (
            "billing_periods_overlap",
            "2026-12-01T00:00:00Z..2027-01-01T00:00:00Z",
            "overlaps 2026-11-11T00:00:00Z..2026-12-11T00:00:00Z",
        ),
    ]
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=db)
    code, out = await aquafleet(env, "money", "check")
    assert code == 1 and "billing_periods_overlap: 2026-11-11T00:00:00Z" in out, out


async def test_an_open_period_cannot_be_closed(fleet):
    with pytest.raises(InvalidInput):
        await close_billing_period(*NOV, NOV[1] - DAY)
    assert await BillingRecord.all().count() == 0


async def test_a_device_that_joined_after_the_period_is_not_billed(fleet):
    october = (NOV[0] - 31 * DAY, NOV[0])
    summary = await close_billing_period(*october, AFTER)
    billed = {r.did for r in await BillingRecord.all()}
    assert billed == {fleet["a"], fleet["b"], fleet["d"]}  # c joined in November
    a = await BillingRecord.get(did=fleet["a"])
    assert (a.usage_ml, a.amount_due_fen) == (999, 3000)
    b = await BillingRecord.get(did=fleet["b"])  # on the plan for the last day only
    assert (b.minimum_fen, b.amount_due_fen) == (3000 // 31, 3000 // 31)
    assert summary.devices == 3


async def test_plan_services_check_their_input(fleet):
    with pytest.raises(NotFound):
        await create_billing_plan("NOPE", "x", mode=1, minimum_fen=0, price_fen=0, price_unit_ml=1)
    with pytest.raises(InvalidInput):
        await create_billing_plan("ACME", " ", mode=1, minimum_fen=0, price_fen=0, price_unit_ml=1)
    with pytest.raises(InvalidInput):
        await create_billing_plan(
            "ACME", "x", mode=1, minimum_fen=0.5, price_fen=0, price_unit_ml=1
        )
    beta = await create_billing_plan(
        "BETA", "beta", mode=1, minimum_fen=0, price_fen=0, price_unit_ml=1
    )
    with pytest.raises(NotFound):  # another vendor's plan
        await assign_billing_plan(fleet["a"], beta.id, NOV[0])
    with pytest.raises(NotFound):
        await assign_billing_plan("ACME99999999FFFF", beta.id, NOV[0])
    with pytest.raises(InvalidInput):
        await assign_billing_plan(fleet["x"], beta.id, NOV[0].replace(tzinfo=None))


async def test_command_entry_point(database_url):
    async with database(database_url):
        (a,) = await vendor_with_devices("ACME", 1)
        plan = await create_billing_plan(
            "ACME", "min", mode=1, minimum_fen=3000, price_fen=150, price_unit_ml=1000
        )
        await assign_billing_plan(a, plan.id, NOV[0])
    summary = await close_billing_period_command(database_url, "2026-11", now=AFTER)
    assert summary["devices"] == 1 and summary["amount_due_fen"] == 3000
    again = await close_billing_period_command(database_url, "2026-11", now=AFTER)
    assert again == {**summary, "created": 0}
    with pytest.raises(InvalidInput):
        await close_billing_period_command(database_url, "2026-13")


async def test_test_devices_are_never_billed(fleet):
    """The seed's type 8 (test, quality-check; FAQ 4), by registered type or service mode."""
    from aquafleet.models.devices import Device, DeviceType
    from aquafleet.models.service import DeviceService, ServiceMode

    await Device.filter(did=fleet["a"]).update(type=DeviceType.TEST)
    await DeviceService.create(did=fleet["d"], mode=ServiceMode.TEST)
    summary = await close_billing_period(*NOV, AFTER)
    assert await records() == {fleet[k]: EXPECTED[k] for k in "bc"}
    assert (summary.devices, summary.amount_due_fen) == (2, 3000 + 1500)
