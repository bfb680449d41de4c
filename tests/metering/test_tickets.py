"""Tickets: the seed's id rule, the state table, and automatic tickets opened exactly once,
also when two tasks or two processes open the same one at the same moment."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools

import pytest

from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.tickets import (
    OPEN_STATES,
    TRANSITIONS,
    AutomaticTicket,
    Ticket,
    TicketState,
    TicketType,
    can_transition,
    dismantle_key,
    format_ticket_id,
    maintenance_key,
    move_ticket,
    open_automatic_ticket,
    open_dismantle_ticket,
    open_ticket,
)
from tests.metering.support import race_in_processes, vendor_with_devices

NOW = dt.datetime(2026, 11, 29, 6, 30, tzinfo=dt.UTC)
S = TicketState


def maintenance(
    did: str, vendor: str = "ACME", *, stage: int = 1, cycle: int = 0
) -> AutomaticTicket:
    return AutomaticTicket(
        dedup_key=maintenance_key(did, stage, cycle),
        type=TicketType.MAINTENANCE,
        vendor_code=vendor,
        did=did,
        detail="filter stage 1: 8% life left",
    )


# ----------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    ("created_at", "vendor", "serial", "expected"),
    [
        (NOW, "ACME", 1, "20261129ACME000000000001"),
        (NOW, "A1B2", 999_999_999_999, "20261129A1B2999999999999"),
        # The date is the UTC date: 01:00 in Beijing on the 30th is still the 29th in UTC.
        (
            dt.datetime(2026, 11, 30, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))),
            "ACME",
            42,
            "20261129ACME000000000042",
        ),
    ],
)
def test_ticket_id_is_utc_date_vendor_and_twelve_digit_serial(created_at, vendor, serial, expected):
    ticket_id = format_ticket_id(created_at, vendor, serial)
    assert ticket_id == expected
    assert len(ticket_id) == 24
    assert not ticket_id.startswith("T")  # the front end adds it


@pytest.mark.parametrize(
    ("vendor", "serial"), [("acme", 1), ("ACM", 1), ("ACME", 0), ("ACME", 10**12)]
)
def test_ticket_id_refuses_bad_vendor_codes_and_serials(vendor, serial):
    with pytest.raises(InvalidInput):
        format_ticket_id(NOW, vendor, serial)


def test_seed_workflow_is_a_path_through_the_table():
    path = [S.CREATED, S.APPROVED, S.DISPATCHED, S.IN_PROGRESS, S.WAITING_REPLY, S.IN_PROGRESS,
            S.DONE]  # fmt: skip
    for current, target in itertools.pairwise(path):
        assert can_transition(current, target), (current, target)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_transitions_are_exactly_the_table(current, target):
    allowed = {
        (S.CREATED, S.APPROVED), (S.CREATED, S.CANCELLED),
        (S.APPROVED, S.DISPATCHED), (S.APPROVED, S.CANCELLED),
        (S.DISPATCHED, S.DISPATCHED), (S.DISPATCHED, S.IN_PROGRESS), (S.DISPATCHED, S.CANCELLED),
        (S.IN_PROGRESS, S.WAITING_REPLY), (S.IN_PROGRESS, S.DONE), (S.IN_PROGRESS, S.CANCELLED),
        (S.WAITING_REPLY, S.IN_PROGRESS), (S.WAITING_REPLY, S.DONE),
        (S.WAITING_REPLY, S.CANCELLED),
    }  # fmt: skip
    assert can_transition(current, target) is ((current, target) in allowed)


def test_done_and_cancelled_are_final():
    assert TRANSITIONS[S.DONE] == TRANSITIONS[S.CANCELLED] == frozenset()
    assert set(S) - {S.DONE, S.CANCELLED} == OPEN_STATES


def test_seed_ticket_types():
    assert [(t.name, t.value) for t in TicketType] == [
        ("INSTALL", 1), ("EXCHANGE", 2), ("RETURN", 3), ("FAULT", 4), ("MAINTENANCE", 5),
        ("DISMANTLE", 6),
    ]  # fmt: skip


def test_dedup_keys_name_device_stage_cycle_and_expiry():
    assert maintenance_key("ACME000000011234", 3, 2) == "maintenance:ACME000000011234:3:2"
    assert dismantle_key("ACME000000011234", 1_790_000_000) == (
        "dismantle:ACME000000011234:1790000000"
    )


# ----------------------------------------------------------------------------- database


@pytest.fixture
async def dids(db: str) -> list[str]:
    return await vendor_with_devices("ACME", 3)


async def test_automatic_ticket_is_opened_once(dids):
    first, created = await open_automatic_ticket(maintenance(dids[0]), now=NOW)
    assert created
    assert first.ticket_id == "20261129ACME000000000001"
    assert (first.type, first.state, first.device_id, first.vendor_id) == (
        TicketType.MAINTENANCE, TicketState.CREATED, dids[0], "ACME",
    )  # fmt: skip
    assert first.member_uid is None
    again, created_again = await open_automatic_ticket(maintenance(dids[0]), now=NOW)
    assert not created_again
    assert again.id == first.id
    assert await Ticket.all().count() == 1
    stored = await Ticket.get(id=first.id)
    assert stored.created_at == NOW
    assert stored.detail == "filter stage 1: 8% life left"


async def test_serials_count_per_vendor(dids):
    other = await vendor_with_devices("BETA", 1)
    ids = []
    for request in (maintenance(dids[0]), maintenance(dids[1]), maintenance(other[0], "BETA"),
                    maintenance(dids[0], stage=2)):  # fmt: skip
        ticket, created = await open_automatic_ticket(request, now=NOW)
        assert created
        ids.append(ticket.ticket_id)
    assert ids == [
        "20261129ACME000000000001",
        "20261129ACME000000000002",
        "20261129BETA000000000001",
        "20261129ACME000000000003",
    ]


async def test_a_repeat_does_not_use_up_a_serial(dids):
    await open_automatic_ticket(maintenance(dids[0]), now=NOW)
    await open_automatic_ticket(maintenance(dids[0]), now=NOW)
    ticket, _ = await open_automatic_ticket(maintenance(dids[1]), now=NOW)
    assert ticket.ticket_id.endswith("000000000002")


async def test_racing_tasks_open_one_ticket(dids):
    results = await asyncio.gather(
        *[open_automatic_ticket(maintenance(dids[0]), now=NOW) for _ in range(8)]
    )
    assert sum(created for _, created in results) == 1
    assert len({t.id for t, _ in results}) == 1
    assert await Ticket.all().count() == 1


async def test_racing_tasks_for_different_keys_get_distinct_serials(dids):
    requests = [maintenance(did, stage=stage) for did in dids for stage in (1, 2, 3)]
    results = await asyncio.gather(*[open_automatic_ticket(r, now=NOW) for r in requests])
    assert all(created for _, created in results)
    serials = sorted(int(t.ticket_id[12:]) for t, _ in results)
    assert serials == list(range(1, 10))


async def test_racing_processes_open_one_ticket(dids, database_url):
    key = maintenance_key(dids[0], 1, 0)
    results = await race_in_processes(database_url, "open_ticket", [key, "ACME", dids[0]], 3)
    assert sorted(created for _, created in results) == [False, False, True]
    assert len({ticket_id for ticket_id, _ in results}) == 1
    assert await Ticket.filter(dedup_key=key).count() == 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"vendor_code": "NOPE"}, NotFound),
        ({"did": "ACME99999999FFFF"}, NotFound),
        ({"vendor_code": "bad!"}, InvalidInput),
        ({"dedup_key": ""}, InvalidInput),
        ({"dedup_key": "k" * 129}, InvalidInput),
        ({"detail": "x" * 501}, InvalidInput),
        ({"member_uid": "U" * 21}, InvalidInput),
    ],
)
async def test_bad_requests_are_refused_and_store_nothing(dids, change, error):
    request = maintenance(dids[0])
    fields = {
        "dedup_key": request.dedup_key, "type": request.type, "vendor_code": "ACME",
        "did": dids[0], "detail": "", **change,
    }  # fmt: skip
    with pytest.raises(error):
        await open_automatic_ticket(AutomaticTicket(**fields))
    assert await Ticket.all().count() == 0


async def test_another_vendors_device_is_unknown(dids):
    (other,) = await vendor_with_devices("BETA", 1)
    with pytest.raises(NotFound):
        await open_automatic_ticket(maintenance(other, "ACME"))
    with pytest.raises(NotFound):
        await open_ticket("ACME", TicketType.FAULT, did=other)
    assert await Ticket.all().count() == 0


async def test_tickets_people_ask_for_are_each_new(dids):
    first = await open_ticket("ACME", TicketType.FAULT, did=dids[0], detail="no water", now=NOW)
    second = await open_ticket("ACME", TicketType.FAULT, did=dids[0], detail="no water", now=NOW)
    assert (first.ticket_id, second.ticket_id) == (
        "20261129ACME000000000001", "20261129ACME000000000002",
    )  # fmt: skip
    assert first.dedup_key is None and second.dedup_key is None
    install = await open_ticket("ACME", TicketType.INSTALL, member_uid="ACME0000000000000007")
    assert install.device_id is None
    with pytest.raises(NotFound):
        await open_ticket("NOPE", TicketType.FAULT)
    with pytest.raises(InvalidInput):
        await open_ticket("ACME", TicketType.FAULT, detail="x" * 501)


async def test_member_uid_is_kept_as_text(dids):
    request = AutomaticTicket(
        dedup_key="fault:x", type=TicketType.FAULT, vendor_code="ACME", did=dids[0],
        member_uid="ACME0000000000000007",
    )  # fmt: skip
    ticket, _ = await open_automatic_ticket(request)
    assert (await Ticket.get(id=ticket.id)).member_uid == "ACME0000000000000007"


async def test_dismantle_ticket_once_per_lapsed_rental(dids):
    expires = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    first, created = await open_dismantle_ticket(dids[0], "ACME", expires, now=NOW)
    assert created
    assert first.type is TicketType.DISMANTLE
    assert first.dedup_key == f"dismantle:{dids[0]}:{int(expires.timestamp())}"
    assert "2026-11-01T00:00:00Z" in first.detail
    # The scheduler may pass unix seconds: the same rental, the same ticket.
    same, created_again = await open_dismantle_ticket(dids[0], "ACME", int(expires.timestamp()))
    assert (same.id, created_again) == (first.id, False)
    # Renewed, then lapsed again: a new rental end, a new ticket.
    later, created_later = await open_dismantle_ticket(
        dids[0], "ACME", expires + dt.timedelta(days=30)
    )
    assert created_later and later.id != first.id


@pytest.mark.parametrize("expires", [dt.datetime(2026, 11, 1), "1790000000", True, 1.5])
async def test_dismantle_ticket_needs_unix_seconds_or_an_aware_time(dids, expires):
    with pytest.raises(InvalidInput):
        await open_dismantle_ticket(dids[0], "ACME", expires)


async def test_move_ticket_follows_the_table(dids):
    ticket, _ = await open_automatic_ticket(maintenance(dids[0]), now=NOW)
    for target in (S.APPROVED, S.DISPATCHED, S.IN_PROGRESS, S.DONE):
        moved = await move_ticket(ticket.ticket_id, target, now=NOW + dt.timedelta(hours=1))
        assert moved.state is target
    stored = await Ticket.get(id=ticket.id)
    assert stored.state is S.DONE
    assert stored.updated_at == NOW + dt.timedelta(hours=1)
    with pytest.raises(Conflict):
        await move_ticket(ticket.ticket_id, S.IN_PROGRESS)
    with pytest.raises(NotFound):
        await move_ticket("20261129ACME999999999999", S.APPROVED)


async def test_the_same_move_at_once_wins_once(dids):
    ticket, _ = await open_automatic_ticket(maintenance(dids[0]), now=NOW)
    results = await asyncio.gather(
        *[move_ticket(ticket.ticket_id, S.APPROVED) for _ in range(4)],
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Ticket)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Ticket))
    assert (await Ticket.get(id=ticket.id)).state is winners[0].state
