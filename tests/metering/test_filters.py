"""Filter life: the rules per timer_mode (table-driven and as properties), spec storage, the
ledger hook that opens one maintenance ticket per filter cycle, and the same through a node."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aquafleet.models.errors import InvalidInput, NotFound
from aquafleet.models.filters import (
    DeviceFilters,
    FilterStage,
    MaintenanceWatch,
    Timer,
    TimerMode,
    filter_life,
    filters_of_devices,
    is_worn,
    maintenance_requests,
    parse_filter_spec,
    set_device_filter_spec,
    set_model_filter_spec,
    stage_life,
)
from aquafleet.models.tickets import Ticket, TicketType
from aquafleet.models.usage import DeviceSnapshot
from aquafleet.protocol.message_types import FilterReading
from tests.devices import register_devices, telemetry
from tests.metering.support import (
    SEED_FILTERS,
    snapshot,
    store_snapshots,
    vendor_with_devices,
)

PPC = FilterStage(1, "PPC", TimerMode.BOTH, lifetime=4320, worklife=540)
POWER_ONLY = FilterStage(2, "CPP", TimerMode.POWER_ON, lifetime=4320, worklife=540)
WORK_ONLY = FilterStage(3, "RO", TimerMode.WORK, lifetime=17280, worklife=2160)


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("stage", "work_h", "power_on_h", "timer", "remaining_h", "pct", "below"),
    [
        # timer_mode 1: power-on hours against lifetime; working hours do not matter.
        (POWER_ONLY, 0, 0, Timer.POWER_ON, 4320, 100, False),
        (POWER_ONLY, 540, 3888, Timer.POWER_ON, 432, 10, False),  # exactly 10% left
        (POWER_ONLY, 540, 3889, Timer.POWER_ON, 431, 9, True),  # 9.98%: floored to 9
        (POWER_ONLY, 99_999, 100, Timer.POWER_ON, 4220, 97, False),
        (POWER_ONLY, 0, 9000, Timer.POWER_ON, 0, 0, True),  # overdue: nothing left, not less
        # timer_mode 2: working hours against worklife; power-on hours do not matter.
        (WORK_ONLY, 1944, 99_999, Timer.WORK, 216, 10, False),
        (WORK_ONLY, 1945, 0, Timer.WORK, 215, 9, True),
        (WORK_ONLY, 2160, 0, Timer.WORK, 0, 0, True),
        # timer_mode 0: the timer with the smaller share of life left wins.
        (PPC, 500, 1000, Timer.WORK, 40, 7, True),  # work 7.4% vs power-on 76.9%
        (PPC, 10, 4000, Timer.POWER_ON, 320, 7, True),  # power-on 7.4% vs work 98.1%
        (PPC, 270, 2160, Timer.POWER_ON, 2160, 50, False),  # a tie goes to power-on
        (PPC, 0, 0, Timer.POWER_ON, 4320, 100, False),
        (PPC, 541, 0, Timer.WORK, 0, 0, True),
    ],
)
def test_stage_life(stage, work_h, power_on_h, timer, remaining_h, pct, below):
    life = stage_life(stage, work_h, power_on_h, reset_count=4, threshold_pct=10)
    assert (life.timer, life.remaining_h, life.remaining_pct, life.below_threshold) == (
        timer, remaining_h, pct, below,
    )  # fmt: skip
    assert life.reset_count == 4
    assert life.life_h == (stage.lifetime if timer is Timer.POWER_ON else stage.worklife)


@pytest.mark.parametrize(
    ("lifetime", "power_on_h", "pct"),
    [(3, 1, 66), (3, 2, 33), (7, 0, 100), (7, 6, 14), (1000, 999, 0), (1000, 990, 1)],
)
def test_percent_is_rounded_down(lifetime, power_on_h, pct):
    stage = FilterStage(1, "", TimerMode.POWER_ON, lifetime, 0)
    assert stage_life(stage, 0, power_on_h, 0, 10).remaining_pct == pct


@pytest.mark.parametrize(
    ("threshold", "power_on_h", "below"),
    [(0, 4320, False), (0, 9999, False), (100, 0, False), (100, 1, True), (50, 2160, False),
     (50, 2161, True)],
)  # fmt: skip
def test_threshold_bounds(threshold, power_on_h, below):
    assert stage_life(POWER_ONLY, 0, power_on_h, 0, threshold).below_threshold is below


hours = st.integers(min_value=0, max_value=2**32 - 1)
lives = st.integers(min_value=1, max_value=1_000_000)


@given(
    mode=st.sampled_from(TimerMode), lifetime=lives, worklife=lives, work_h=hours,
    power_on_h=hours, threshold=st.integers(0, 100),
)  # fmt: skip
def test_life_properties(mode, lifetime, worklife, work_h, power_on_h, threshold):
    stage = FilterStage(1, "", mode, lifetime, worklife)
    life = stage_life(stage, work_h, power_on_h, 0, threshold)
    share = Fraction(life.remaining_h, life.life_h)
    assert 0 <= life.remaining_h <= life.life_h
    assert life.remaining_pct == int(share * 100)  # floor, exactly
    assert life.below_threshold is (share * 100 < threshold)
    assert life.below_threshold is (life.remaining_pct < threshold)
    assert is_worn(stage, work_h, power_on_h, threshold) is life.below_threshold  # the fast check
    power_share = Fraction(max(0, lifetime - power_on_h), lifetime)
    work_share = Fraction(max(0, worklife - work_h), worklife)
    expected = {
        TimerMode.POWER_ON: power_share,
        TimerMode.WORK: work_share,
        TimerMode.BOTH: min(power_share, work_share),
    }[mode]
    assert share == expected
    # More hours never mean more life.
    older = stage_life(stage, work_h + 1, power_on_h + 1, 0, threshold)
    assert Fraction(older.remaining_h, older.life_h) <= share


def test_filter_life_matches_readings_to_stages_by_order():
    readings = [[3, 1945, 0, 1], [9, 1, 1, 0], [1, 10, 4000, 2]]  # stage 9 is not in the spec
    lives = filter_life(readings, (PPC, POWER_ONLY, WORK_ONLY), 10)
    assert [(x.order, x.remaining_pct, x.reset_count) for x in lives] == [(3, 9, 1), (1, 7, 2)]


def test_the_seed_spec_parses():
    stages = parse_filter_spec(SEED_FILTERS)
    assert [(s.order, s.timer_mode, s.lifetime, s.worklife) for s in stages] == [
        (1, TimerMode.BOTH, 4320, 540),
        (2, TimerMode.BOTH, 4320, 540),
        (3, TimerMode.BOTH, 17280, 2160),
    ]
    assert [s.as_json() for s in stages] == SEED_FILTERS


def stage(**change: Any) -> dict[str, Any]:
    return {"order": 1, "name": "PPC", "timer_mode": 0, "lifetime": 100, "worklife": 10, **change}


@pytest.mark.parametrize(
    "raw",
    [
        None, {}, [], "filters", [stage()] * 2, [stage(order=i) for i in range(17)],
        [stage(order=-1)], [stage(order=256)], [stage(order="1")], [stage(order=True)],
        [stage(timer_mode=3)], [stage(timer_mode=None)], [stage(lifetime=1.5)],
        [stage(lifetime=-1)], [stage(lifetime=10**7)], [stage(worklife=0)],
        [stage(timer_mode=1, lifetime=0)], [stage(timer_mode=2, worklife=0)],
        [stage(name=7)], [stage(name="x" * 65)], [stage(colour="blue")], ["stage"],
    ],
)  # fmt: skip
def test_bad_specs_are_refused(raw):
    with pytest.raises(InvalidInput):
        parse_filter_spec(raw)


def test_a_single_timer_may_leave_the_other_life_out():
    (only,) = parse_filter_spec([{"order": 1, "timer_mode": 1, "lifetime": 100}])
    assert (only.worklife, only.name) == (0, "")


def spec_of(
    vendor: str, *stages: FilterStage, at: tuple[int, int] | None = (1, 5)
) -> DeviceFilters:
    return DeviceFilters(vendor, stages, at)


def test_maintenance_requests_one_per_worn_stage_and_cycle():
    specs = {"D1": spec_of("ACME", PPC, WORK_ONLY), "D2": spec_of("ACME", PPC)}
    readings = [
        ("D1", 1, 5, [[1, 500, 1000, 2], [3, 0, 0, 0]]),  # stage 1 worn, stage 3 new
        ("D2", 1, 5, [[1, 0, 0, 0]]),
        ("D3", 1, 5, [[1, 540, 4320, 0]]),  # no spec: nothing to judge by
    ]
    due = maintenance_requests(readings, specs, 10)
    assert [(t.dedup_key, t.type, t.vendor_code, t.did) for t in due] == [
        ("maintenance:D1:1:2", TicketType.MAINTENANCE, "ACME", "D1"),
    ]
    assert due[0].detail == ("filter stage 1 PPC: 7% life left (40 of 540 working hours), cycle 2")


def test_a_reading_that_is_not_the_stored_snapshot_opens_nothing():
    worn = [[1, 540, 4320, 0]]
    assert maintenance_requests([("D1", 1, 4, worn)], {"D1": spec_of("ACME", PPC)}, 10) == []
    assert (
        maintenance_requests([("D1", 1, 5, worn)], {"D1": spec_of("ACME", PPC, at=None)}, 10) == []
    )


# ----------------------------------------------------------------------------- storage


@pytest.fixture
async def dids(db: str) -> list[str]:
    return await vendor_with_devices("ACME", 3, model="AQ-100")


async def test_model_spec_and_device_override(dids):
    a, b, c = dids
    await set_model_filter_spec("ACME", "AQ-100", SEED_FILTERS)
    await set_device_filter_spec(b, [stage()])
    await store_snapshots(snapshot(a, 1, 5, [[1, 0, 0, 0]]))
    found = await filters_of_devices([a, b, c, "ACME99999999FFFF"])
    assert set(found) == {a, b, c}
    assert found[a].stages == parse_filter_spec(SEED_FILTERS)
    assert found[a].snapshot_at == (1, 5)
    assert found[b].stages == parse_filter_spec([stage()])
    assert found[b].snapshot_at is None
    await set_device_filter_spec(b, None)  # back to the model's spec
    assert (await filters_of_devices([b]))[b].stages == parse_filter_spec(SEED_FILTERS)
    # Replacing the model's spec replaces it for every device of the model.
    await set_model_filter_spec("ACME", "AQ-100", [stage(order=7)])
    assert [s.order for s in (await filters_of_devices([c]))[c].stages] == [7]


async def test_devices_without_a_spec_are_left_out(dids):
    await set_model_filter_spec("ACME", "OTHER", SEED_FILTERS)
    assert await filters_of_devices(dids) == {}


async def test_spec_services_refuse_unknown_vendors_devices_and_bad_specs(dids):
    with pytest.raises(NotFound):
        await set_model_filter_spec("NOPE", "AQ-100", SEED_FILTERS)
    with pytest.raises(NotFound):
        await set_device_filter_spec("ACME99999999FFFF", SEED_FILTERS)
    with pytest.raises(InvalidInput):
        await set_model_filter_spec("ACME", "x" * 33, SEED_FILTERS)
    with pytest.raises(InvalidInput):
        await set_model_filter_spec("ACME", "AQ-100", [stage(timer_mode=9)])
    assert await filters_of_devices(dids) == {}


async def test_specs_of_many_devices_take_one_query_per_500(db, monkeypatch):
    from aquafleet.models.db import connection

    dids = await vendor_with_devices("ACME", 1001, model="AQ-100")
    await set_model_filter_spec("ACME", "AQ-100", SEED_FILTERS)
    client = connection()
    calls = []
    original = client.execute_query_dict

    async def counted(sql: str, values: Any = None) -> Any:
        calls.append(sql)
        return await original(sql, values)

    monkeypatch.setattr(client, "execute_query_dict", counted)
    found = await filters_of_devices(dids)
    assert len(found) == 1001
    assert len(calls) == 3


# ----------------------------------------------------------------------------- the ledger hook


async def tickets() -> list[tuple[str, int]]:
    rows = await Ticket.filter(type=TicketType.MAINTENANCE).order_by("id")
    return [(t.dedup_key or "", t.state) for t in rows]


async def test_watch_opens_one_ticket_per_stage_and_cycle(dids):
    a, b, _ = dids
    await set_model_filter_spec("ACME", "AQ-100", SEED_FILTERS)
    watch = MaintenanceWatch(10)
    healthy = [[1, 100, 400, 0], [2, 100, 400, 0], [3, 100, 400, 0]]
    assert await watch.after_batch(await store_snapshots(snapshot(a, 1, 1, healthy))) == 0

    worn = [[1, 500, 1000, 0], [2, 100, 400, 0], [3, 1945, 2000, 3]]
    batch = await store_snapshots(snapshot(a, 1, 2, worn), snapshot(b, 1, 2, healthy))
    assert await watch.after_batch(batch) == 2
    assert [k for k, _ in await tickets()] == [f"maintenance:{a}:1:0", f"maintenance:{a}:3:3"]
    ticket = await Ticket.get(dedup_key=f"maintenance:{a}:1:0")
    assert (ticket.device_id, ticket.vendor_id) == (a, "ACME")

    # Worn filters are reported again and again: still one ticket each, from a watch that
    # remembers and from one that does not (another process, a restart).
    more = [[1, 510, 1010, 0], [2, 100, 400, 0], [3, 1950, 2010, 3]]
    assert await watch.after_batch(await store_snapshots(snapshot(a, 1, 3, more))) == 0
    fresh = MaintenanceWatch(10)
    assert await fresh.after_batch(await store_snapshots(snapshot(a, 1, 4, more))) == 0
    assert len(await tickets()) == 2

    # Stage 1 is replaced (reset_count 1): a new cycle, no ticket while it is new ...
    replaced = [[1, 0, 0, 1], [2, 100, 400, 0], [3, 1950, 2010, 3]]
    assert await watch.after_batch(await store_snapshots(snapshot(a, 1, 5, replaced))) == 0
    # ... and one when it wears out in turn.
    worn_again = [[1, 530, 600, 1], [2, 100, 400, 0], [3, 1950, 2010, 3]]
    assert await watch.after_batch(await store_snapshots(snapshot(a, 1, 6, worn_again))) == 1
    assert [k for k, _ in await tickets()][-1] == f"maintenance:{a}:1:1"
    assert len(await tickets()) == 3


async def test_a_late_report_of_a_finished_cycle_opens_nothing(dids):
    a = dids[0]
    await set_model_filter_spec("ACME", "AQ-100", SEED_FILTERS)
    watch = MaintenanceWatch(10)
    await store_snapshots(snapshot(a, 2, 1, [[1, 0, 0, 1]]))  # new boot, filter replaced
    late = snapshot(a, 1, 90, [[1, 540, 4320, 0]])  # from before, arriving after a reconnect
    assert await watch.after_batch(await store_snapshots(late)) == 0
    assert (await DeviceSnapshot.get(did=a)).boot == 2
    assert await tickets() == []


async def test_watch_opens_a_bounded_number_per_batch(dids):
    await set_model_filter_spec("ACME", "AQ-100", SEED_FILTERS)
    worn = [[1, 540, 4320, 0], [2, 540, 4320, 0], [3, 2160, 17280, 0]]
    rows = await store_snapshots(*[snapshot(d, 1, 1, worn) for d in dids])
    watch = MaintenanceWatch(10, max_new_per_batch=4)
    assert await watch.after_batch(rows) == 4
    assert await watch.after_batch(rows) == 4  # the next reports open the rest
    assert await watch.after_batch(rows) == 1
    assert await watch.after_batch(rows) == 0
    assert len(await tickets()) == 9


async def test_threshold_zero_opens_nothing(dids):
    await set_model_filter_spec("ACME", "AQ-100", SEED_FILTERS)
    rows = await store_snapshots(snapshot(dids[0], 1, 1, [[1, 540, 4320, 0]]))
    assert await MaintenanceWatch(0).after_batch(rows) == 0
    assert await tickets() == []
    with pytest.raises(InvalidInput):
        MaintenanceWatch(101)


async def test_a_broken_stored_spec_is_logged_not_raised(dids, monkeypatch):
    from aquafleet.models.filters import FilterSpec

    await FilterSpec.create(vendor_id="ACME", model="AQ-100", stages=[{"order": "bad"}])
    rows = await store_snapshots(snapshot(dids[0], 1, 1, [[1, 540, 4320, 0]]))
    watch = MaintenanceWatch(10)
    assert await watch.after_batch(rows) == 0
    assert watch.errors == 1


# ----------------------------------------------------------------------------- through a node


async def wait_until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_device_wears_a_filter_through_a_node(node_factory, device_factory, database_url):
    """Telemetry of a real device session drives the ticket; a reset starts a new cycle."""
    node = await node_factory(database_url=database_url, filter_threshold_pct=10)
    (dev,) = await register_devices(node, 1)
    await set_model_filter_spec("TEST", "", SEED_FILTERS)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    boot = int(time.time())
    rec = 0

    async def report(*stages: tuple[int, int, int, int]) -> None:
        nonlocal rec
        rec += 1
        await device.send(
            telemetry(rec, boot, None, filters=tuple(FilterReading(*s) for s in stages))
        )
        await device.settled()
        last = rec
        await wait_until(
            lambda: DeviceSnapshot.filter(did=dev.did, boot=boot, rec=last).exists(),
            f"the ledger to store record {last}",
        )

    async def keys() -> list[str]:
        return [k for k, _ in await tickets()]

    async def checked() -> None:
        """A barrier: a record without filter readings, stored after the ones before. The one
        ledger writer runs a batch's filter check before it writes the next batch, so once this
        record is stored every earlier report has been checked for tickets."""
        await report()

    ro_new = (3, 0, 0, 0)
    await report((1, 100, 400, 0), (2, 100, 400, 0), ro_new)
    await report((1, 480, 900, 0), (2, 100, 400, 0), ro_new)  # 11% left: not yet
    await checked()
    assert await keys() == []

    await report((1, 490, 910, 0), (2, 100, 400, 0), ro_new)  # 9% left
    await wait_until(lambda: Ticket.filter(type=TicketType.MAINTENANCE).exists(), "a ticket")
    for hour in range(3):  # still worn, reported again
        await report((1, 495 + hour, 915, 0), (2, 100, 400, 0), ro_new)
    await checked()
    assert await keys() == [f"maintenance:{dev.did}:1:0"]

    await report((1, 0, 0, 1), (2, 100, 400, 0), ro_new)  # replaced: reset_count 1
    await report((1, 300, 400, 1), (2, 100, 400, 0), ro_new)
    await checked()
    assert len(await keys()) == 1
    await report((1, 500, 700, 1), (2, 100, 400, 0), ro_new)  # worn again
    await wait_until(
        lambda: Ticket.filter(dedup_key=f"maintenance:{dev.did}:1:1").exists(), "a second ticket"
    )
    assert await keys() == [f"maintenance:{dev.did}:1:0", f"maintenance:{dev.did}:1:1"]
    second = await Ticket.get(dedup_key=f"maintenance:{dev.did}:1:1")
    assert (second.device_id, second.vendor_id, second.type) == (
        dev.did,
        "TEST",
        TicketType.MAINTENANCE,
    )
    assert "7% life left" in second.detail
