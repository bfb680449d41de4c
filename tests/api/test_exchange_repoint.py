"""An exchange whose row recorded a hand-over to one replacement that the live store never did
(the completion failed in between), completed onto another replacement, on SQLite and
PostgreSQL with a real Redis: the row is re-pointed and the quota handed over once, to the
device named last; a hand-over that did run (its marker in Redis) still binds the retry to
its device; one older than the markers' life stays refused; of two racing retries naming the
two devices exactly one hands over."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from aquafleet.gateway.appkeys import DEVICE_GATEWAY, SERVICE_STORE
from aquafleet.models.devices import Device
from aquafleet.models.errors import Conflict
from aquafleet.models.handover import HandedOverElsewhere, Handover
from aquafleet.models.service import ServiceChange
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.ticket_work import complete
from aquafleet.models.tickets import OPEN_STATES, Ticket, TicketState
from tests.api.conftest import ApiClient, Tenant
from tests.api.test_ticket_work_api import (
    Work,
    exchange_ticket,
    member_device_that_poured_300_of_1000_ml,
)
from tests.api.test_tickets_api import register


class FailsBeforeTheHandOver(Work):
    """A completion that dies after the row recorded the hand-over and before the live store
    did it (the node stopped, Redis unreachable)."""

    async def hand_over(self, *args: Any, **options: Any) -> Any:
        raise RuntimeError("injected failure before the hand-over")


async def exchange_failed_before_the_hand_over(
    api: ApiClient, api_node: Any, tenant: Tenant, device_factory: Any
) -> tuple[str, str, str, str]:
    """An exchange whose first completion recorded `first` on the row and failed before the
    live store moved anything: the old device still has its 700 ml (it bought 1000 and
    poured 300 through a real device). (tid, old, first, second)"""
    shopper, old = await member_device_that_poured_300_of_1000_ml(
        api, api_node, tenant, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    first, second = await register(api, tenant.vid, 2)
    tid = await exchange_ticket(api, tenant.vendor, shopper, old)
    vendor = Principal(Role.VENDOR, "exchanger", vendor_code=tenant.vid)
    with pytest.raises(RuntimeError, match="injected"):
        await complete(
            await Ticket.get(ticket_id=tid), vendor, FailsBeforeTheHandOver(gateway),
            new_device=first,
        )  # fmt: skip
    assert (await Ticket.get(ticket_id=tid)).handed_over_to == first
    assert (await gateway.read_service(old)).remaining_ml == 700
    return tid, old, first, second


async def hand_over_marker(api_node: Any, old: str, tid: str) -> bytes | None:
    store = api_node.app[SERVICE_STORE]
    marker: bytes | None = await store.client.get(store.keyspace.service_request(old, tid))
    return marker


async def assert_exchanged_once(api_node: Any, tid: str, old: str, to: str, other: str) -> None:
    """The 700 ml are on `to` only (the 300 poured stay poured), `other` never got anything,
    and the ticket is done naming `to` as the replacement and the hand-over's recipient."""
    gateway = api_node.app[DEVICE_GATEWAY]
    moved, kept = await gateway.read_service(to), await gateway.read_service(old)
    assert (moved.mode, moved.remaining_ml, moved.locked) == (3, 700, False)
    assert (kept.remaining_ml, kept.locked) == (0, True)
    assert 300 + moved.remaining_ml + kept.remaining_ml == 1000  # no water made or lost
    assert (await gateway.read_service(other)).mode is None  # never configured
    assert not await ServiceChange.filter(did=other).exists()
    assert await hand_over_marker(api_node, old, tid) == f"700|{to}".encode()
    ticket = await Ticket.get(ticket_id=tid)
    assert ticket.state is TicketState.DONE
    assert (ticket.new_device_id, ticket.handed_over_to) == (to, to)
    member = ticket.member_uid
    assert (await Device.get(did=to)).owner_id == member
    assert (await Device.get(did=other)).owner_id is None


async def test_a_retry_naming_another_device_completes_when_the_hand_over_never_ran(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """`first` turned out faulty before the live store moved anything: the retry naming
    `second` re-points the row and hands the 700 ml over to `second`, once; the ticket and its
    move say so, and a late retry naming `first` is refused."""
    a, _ = tenants
    tid, old, first, second = await exchange_failed_before_the_hand_over(
        api, api_node, a, device_factory
    )
    assert await hand_over_marker(api_node, old, tid) is None

    done = await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": second})
    assert (done.data["status"], done.data["new_device_id"]) == (6, second)
    assert done.data["handed_over_to"] == second
    await assert_exchanged_once(api_node, tid, old, second, first)
    moves = (await a.vendor.call("GET", f"/tickets/{tid}/moves")).data
    assert (
        f"exchanged for {second}; the hand-over recorded for {first} had not run"
        in (moves[-1]["note"])
    )

    await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": first}, expect=409)
    await assert_exchanged_once(api_node, tid, old, second, first)


async def test_a_retry_naming_another_device_than_a_recorded_hand_over_past_the_markers_life(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """Recorded eight days ago with no marker in Redis: it may have run and its marker
    expired, so the row's device stays the only one; nothing moves, the row is unchanged."""
    a, _ = tenants
    tid, old, first, second = await exchange_failed_before_the_hand_over(
        api, api_node, a, device_factory
    )
    aged = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
    await Ticket.filter(ticket_id=tid).update(handed_over_at=aged)
    gateway = api_node.app[DEVICE_GATEWAY]

    refused = await a.vendor.call(
        "POST", f"/tickets/{tid}/complete", {"new_device": second}, expect=409
    )
    assert refused.code == "handed_over_elsewhere"
    assert first in refused.body["message"]
    expired = await a.vendor.call(
        "POST", f"/tickets/{tid}/complete", {"new_device": first}, expect=409
    )
    assert expired.code == "handover_expired"
    assert (await gateway.read_service(old)).remaining_ml == 700
    for untouched in (first, second):
        assert (await gateway.read_service(untouched)).mode is None
    ticket = await Ticket.get(ticket_id=tid)
    assert (ticket.handed_over_to, ticket.handed_over_at) == (first, aged)
    assert ticket.state in OPEN_STATES


@pytest.mark.parametrize("named_first", ["recorded", "other"])
async def test_two_racing_retries_naming_the_two_devices_hand_over_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any,
    named_first: str,
):  # fmt: skip
    """The row recorded `first`, the live store did nothing; a retry naming `first` and one
    naming `second` run at once, each from its own copy of the ticket: exactly one completes,
    the other answers 409, and the 700 ml are on the winner only."""
    a, _ = tenants
    tid, old, first, second = await exchange_failed_before_the_hand_over(
        api, api_node, a, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    order = [first, second] if named_first == "recorded" else [second, first]

    async def retry(did: str) -> Ticket:
        vendor = Principal(Role.VENDOR, f"racer-{did}", vendor_code=a.vid)
        return await complete(
            await Ticket.get(ticket_id=tid), vendor, Work(gateway), new_device=did
        )

    answers = await asyncio.gather(*(retry(did) for did in order), return_exceptions=True)
    won = [did for did, answer in zip(order, answers, strict=True) if isinstance(answer, Ticket)]
    lost = [answer for answer in answers if not isinstance(answer, Ticket)]
    assert len(won) == 1 and len(lost) == 1, answers
    assert isinstance(lost[0], Conflict), lost
    (winner,) = won
    await assert_exchanged_once(api_node, tid, old, winner, second if winner == first else first)


class AHandOverLandsLate(Work):
    """A hand-over to `late` sent by a completion that died (its row lock gone with it) lands
    in Redis between this retry's look at the markers and its own hand-over."""

    def __init__(self, gateway: Any, store: Any, late: str) -> None:
        super().__init__(gateway)
        self.store, self.late = store, late

    async def hand_over(
        self, did: str, recipient: str, request_id: str, reason: str, *, recorded: bool = False
    ) -> Handover:
        if not recorded and recipient != self.late:
            await self.store.hand_over(did, request_id=request_id, recipient=self.late)
        return await super().hand_over(did, recipient, request_id, reason, recorded=recorded)


async def test_a_hand_over_landing_after_the_row_was_re_pointed_keeps_the_quota_on_one_device(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The live store is the arbiter: the retry naming `second` re-pointed the row, then the
    late hand-over to `first` took the 700 ml; the retry's own hand-over is refused naming
    `first`, `second` gets nothing, the row follows the live store, and a retry naming
    `first` completes with the 700 ml."""
    a, _ = tenants
    tid, old, first, second = await exchange_failed_before_the_hand_over(
        api, api_node, a, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    vendor = Principal(Role.VENDOR, "exchanger", vendor_code=a.vid)
    late = AHandOverLandsLate(gateway, api_node.app[SERVICE_STORE], first)

    with pytest.raises(HandedOverElsewhere) as refused:
        await complete(await Ticket.get(ticket_id=tid), vendor, late, new_device=second)
    assert refused.value.received_by == first
    assert (await gateway.read_service(second)).mode is None
    assert not await ServiceChange.filter(did=second).exists()
    assert (await gateway.read_service(old)).remaining_ml == 0
    ticket = await Ticket.get(ticket_id=tid)
    assert (ticket.handed_over_to, ticket.state in OPEN_STATES) == (first, True)

    done = await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": first})
    assert (done.data["status"], done.data["new_device_id"]) == (6, first)
    await assert_exchanged_once(api_node, tid, old, first, second)
