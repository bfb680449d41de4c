"""What completing a ticket does, on SQLite and PostgreSQL: ending a rental (退租) opens a
dismantle ticket whose completion locks and unbinds the device and requests the deposit back;
exchange moves the member and the service to the new device; install records the installation;
device fault events open one ticket per device and fault until it is done."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from aquafleet.gateway.appkeys import DEVICE_GATEWAY, SERVICE_STORE
from aquafleet.models.devices import Device
from aquafleet.models.faults import FaultWatch
from aquafleet.models.handover import HandBack, Handover, hand_back
from aquafleet.models.money import Refund
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.service import ServiceChange
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.ticket_flow import TicketStateConflict
from aquafleet.models.ticket_work import cancel, complete
from aquafleet.models.tickets import OPEN_STATES, Ticket, TicketState, TicketType
from aquafleet.models.usage import UsageRow
from aquafleet.protocol import EventKind, FrameType
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.api.test_orders_api import order_body
from tests.api.test_tickets_api import held_device, register, technician
from tests.devices import telemetry

PARCEL = {"company": "顺丰速运", "tracking_num": "SF1234567890", "delivery_clerk": "李四"}


async def work_through(vendor: ApiClient, tech: ApiClient, tech_id: int, tid: str) -> None:
    """Approve, dispatch to the technician, start: ready to complete."""
    await vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    await vendor.call("POST", f"/tickets/{tid}/dispatch", {"technician_id": tech_id})
    await tech.call("POST", f"/tickets/{tid}/start", {})


async def test_ending_a_rental_dismantles_the_device_and_requests_the_deposit_back(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)  # deposit 50000 fen
    shopper = await make_member(api_node, api, a.vid)
    order = (
        await shopper.client.call(
            "POST", "/orders", order_body({"product_id": pid, "package": "30d"})
        )
    ).data
    oid = order["order_id"]
    (did,) = await register(api, a.vid, 1)
    body = {"device_id": did, "reason": "搬家"}
    await shopper.client.call("POST", f"/orders/{oid}/rental/end", body, expect=409)  # unpaid
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})

    stranger = await make_member(api_node, api, a.vid)
    await stranger.client.call("POST", f"/orders/{oid}/rental/end", body, expect=404)
    await a.vendor.call("POST", f"/orders/{oid}/rental/end", body, expect=403)
    (other,) = await register(api, a.vid, 1)
    await shopper.client.call("POST", f"/orders/{oid}/rental/end", {"device_id": other}, expect=404)
    asked = await shopper.client.call("POST", f"/orders/{oid}/rental/end", body, expect=201)
    ticket = asked.data
    assert (ticket["type"], ticket["status"], ticket["order_id"]) == (6, 1, oid)
    assert ticket["user_id"] == shopper.uid and ticket["device_id"] == did
    again = await shopper.client.call("POST", f"/orders/{oid}/rental/end", body, expect=201)
    assert again.data["ticket_id"] == ticket["ticket_id"]  # asked twice: one ticket

    tech_id, tech = await technician(a.vendor, "dismantler", skills=[6])
    tid = ticket["ticket_id"]
    await work_through(a.vendor, tech, tech_id, tid)
    assert await Refund.filter(order_oid=oid).count() == 0  # not before the work is done
    await b.vendor.call("POST", f"/tickets/{tid}/complete", {}, expect=404)
    done = await tech.call("POST", f"/tickets/{tid}/complete", {"note": "collected"})
    assert done.data["status"] == 6

    device = await Device.get(did=did)
    assert device.owner_id is None and device.bound_at is None
    state = await api_node.app[DEVICE_GATEWAY].read_service(did)
    assert state.lock_reasons == ["manual"]  # a person's lock: no renewal lifts it
    (refund,) = await Refund.filter(order_oid=oid)
    assert (refund.amount_fen, refund.refund_no) == (50000, f"R{tid}")
    assert refund.part == "deposit"  # the deposit back: the rent's commission stays earned
    assert did in refund.reason
    payment = (await a.vendor.call("GET", f"/orders/{oid}/payment")).data
    assert [(r["refund_no"], r["part"]) for r in payment["refunds"]] == [(f"R{tid}", "deposit")]
    # The member no longer holds the device: it cannot end the rental again.
    await shopper.client.call("POST", f"/orders/{oid}/rental/end", body, expect=409)
    moves = (await a.vendor.call("GET", f"/tickets/{tid}/moves")).data
    assert "deposit 50000 fen requested back" in moves[-1]["note"]


async def test_exchange_moves_the_member_and_the_service_to_the_new_device(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    shopper = await make_member(api_node, api, a.vid)
    old = await held_device(api, shopper, a.vid)
    gateway = api_node.app[DEVICE_GATEWAY]
    expires = int(dt.datetime.now(dt.UTC).timestamp()) + 20 * 86400
    await gateway.change_service(
        old,
        ServiceChangeRequest(op="configure", mode=2, rental_expires_at=expires, reason="t"),
        actor="test",
    )
    new, taken = await register(api, a.vid, 2)
    (foreign,) = await register(api, b.vid, 1)
    await Device.filter(did=taken).update(owner_id=(await make_member(api_node, api, a.vid)).uid)
    tech_id, tech = await technician(a.vendor, "swapper", skills=[2])
    opened = await shopper.client.call(
        "POST", "/tickets", {"type": 2, "device_id": old, "detail": "漏水, 换机"}, expect=201
    )
    tid = opened.data["ticket_id"]
    await work_through(a.vendor, tech, tech_id, tid)
    await tech.call("POST", f"/tickets/{tid}/complete", {}, expect=422)  # which device?
    await tech.call("POST", f"/tickets/{tid}/complete", {"new_device": foreign}, expect=404)
    await tech.call("POST", f"/tickets/{tid}/complete", {"new_device": taken}, expect=409)
    done = await tech.call("POST", f"/tickets/{tid}/complete", {"new_device": new})
    assert (done.data["status"], done.data["new_device_id"]) == (6, new)

    assert (await Device.get(did=new)).owner_id == shopper.uid
    assert (await Device.get(did=old)).owner_id is None
    moved = await gateway.read_service(new)
    assert (moved.mode, moved.rental_expires_at, moved.locked) == (2, expires, False)
    assert (await gateway.read_service(old)).locked
    await shopper.client.call("GET", f"/devices/{new}")
    await shopper.client.call("GET", f"/devices/{old}", expect=404)


async def exchange_ticket(api: ApiClient, vendor: ApiClient, shopper: Any, old: str) -> str:
    """An exchange ticket for `old`, approved, dispatched and started: ready to complete."""
    tech_id, tech = await technician(vendor, "swapper", skills=[2])
    opened = await shopper.client.call(
        "POST", "/tickets", {"type": 2, "device_id": old, "detail": "换机"}, expect=201
    )
    tid = str(opened.data["ticket_id"])
    await work_through(vendor, tech, tech_id, tid)
    return tid


async def member_device_that_poured_300_of_1000_ml(
    api: ApiClient, api_node: Any, tenant: Tenant, device_factory: Any, *, bought_ml: int = 1000
) -> tuple[Any, str]:
    """A member's device on volume rental that bought 1000 ml (or `bought_ml`) and poured 300
    through a real device over TCP (the live quota is 700; the database's copy still says
    1000)."""
    shopper = await make_member(api_node, api, tenant.vid)
    (issued,) = (await api.call("POST", "/devices", {"vid": tenant.vid, "count": 1})).data
    did = issued["did"]
    await Device.filter(did=did).update(owner_id=shopper.uid)
    gateway = api_node.app[DEVICE_GATEWAY]
    bought = ServiceChangeRequest(op="configure", mode=3, remaining_ml=bought_ml, reason="t")
    await gateway.change_service(did, bought, actor="test")
    device = device_factory(did, bytes.fromhex(issued["key"]), api_node.tcp_port)
    await device.login()
    await device.send(telemetry(1, int(time.time()), 300))
    await device.settled()
    assert (await gateway.read_service(did)).remaining_ml == bought_ml - 300
    return shopper, did


async def test_an_exchange_moves_the_quota_left_now_and_the_old_device_keeps_none(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The new device gets what the old one had left when it was exchanged (the live quota,
    not the copy as of the last service change): water poured since is not given again."""
    a, _ = tenants
    shopper, old = await member_device_that_poured_300_of_1000_ml(api, api_node, a, device_factory)
    gateway = api_node.app[DEVICE_GATEWAY]
    (new,) = await register(api, a.vid, 1)
    tid = await exchange_ticket(api, a.vendor, shopper, old)

    await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": new})
    moved, kept = await gateway.read_service(new), await gateway.read_service(old)
    assert (moved.mode, moved.remaining_ml, moved.locked) == (3, 700, False)
    assert (kept.remaining_ml, kept.locked) == (0, True)
    assert 300 + moved.remaining_ml + kept.remaining_ml == 1000  # no water made or lost
    shown = (await shopper.client.call("GET", f"/devices/{new}/svc")).data
    assert shown["remaining_ml"] == 700


async def test_of_two_racing_exchange_completions_only_the_winner_moves_anything(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """Two completions of one exchange with different devices, the second from a copy of the
    ticket read before the first completed: it answers 409 and changes nothing."""
    a, _ = tenants
    shopper = await make_member(api_node, api, a.vid)
    old = await held_device(api, shopper, a.vid)
    gateway = api_node.app[DEVICE_GATEWAY]
    bought = ServiceChangeRequest(op="configure", mode=3, remaining_ml=1000, reason="t")
    await gateway.change_service(old, bought, actor="test")
    first, second = await register(api, a.vid, 2)
    tid = await exchange_ticket(api, a.vendor, shopper, old)
    stale = await Ticket.get(ticket_id=tid)  # read before the first completion lands

    await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": first})
    vendor = Principal(Role.VENDOR, "racing-admin", vendor_code=a.vid)
    with pytest.raises(TicketStateConflict):
        await complete(stale, vendor, Work(gateway), new_device=second)

    assert (await Device.get(did=first)).owner_id == shopper.uid
    assert (await Device.get(did=second)).owner_id is None
    assert (await gateway.read_service(first)).remaining_ml == 1000
    assert (await gateway.read_service(second)).mode is None  # never configured
    assert not await ServiceChange.filter(did=second).exists()
    assert (await Ticket.get(ticket_id=tid)).new_device_id == first


class Work:
    """The device side of a completion, through the node's gateway facade."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    async def change_service(self, did: str, change: ServiceChangeRequest) -> object:
        return await self.gateway.change_service(did, change, actor="test")

    async def hand_over(
        self, did: str, recipient: str, request_id: str, reason: str, *, recorded: bool = False
    ) -> Handover:
        return await self.gateway.hand_over(
            did, recipient=recipient, request_id=request_id, actor="test", reason=reason,
            recorded=recorded,
        )  # fmt: skip

    async def hand_back(
        self, did: str, request_id: str, lock_request_id: str | None, reason: str, *,
        recorded: bool = False,
    ) -> HandBack:  # fmt: skip
        return await self.gateway.hand_back(
            did, request_id=request_id, lock_request_id=lock_request_id, actor="test",
            reason=reason, recorded=recorded,
        )  # fmt: skip

    async def reset_filter(self, did: str, stage: int, reason: str) -> int:
        return int(await self.gateway.reset_filter(did, stage, actor="test", reason=reason))


class FailsAfterConfiguring(Work):
    """A completion that dies after the new device is configured, before the database commits
    (say, the node stopped): the hand-over and the new device's configuration stay in Redis."""

    async def change_service(self, did: str, change: ServiceChangeRequest) -> object:
        answer = await super().change_service(did, change)
        if change.op == "configure":
            raise RuntimeError("injected failure after the hand-over")
        return answer


async def exchange_failed_after_the_hand_over(
    api: ApiClient, api_node: Any, tenant: Tenant, device_factory: Any
) -> tuple[str, str, str, str]:
    """An exchange whose first completion (to `first`) failed after the hand-over; the old
    device bought 1000 ml and poured 300 (a real device over TCP). (tid, old, first, second)"""
    shopper, old = await member_device_that_poured_300_of_1000_ml(
        api, api_node, tenant, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    first, second = await register(api, tenant.vid, 2)
    tid = await exchange_ticket(api, tenant.vendor, shopper, old)
    vendor = Principal(Role.VENDOR, "exchanger", vendor_code=tenant.vid)
    ticket = await Ticket.get(ticket_id=tid)
    with pytest.raises(RuntimeError, match="injected"):
        await complete(ticket, vendor, FailsAfterConfiguring(gateway), new_device=first)
    assert (await gateway.read_service(first)).remaining_ml == 700  # handed over, not committed
    assert (await Ticket.get(ticket_id=tid)).new_device_id is None
    return tid, old, first, second


async def test_an_exchange_retried_with_another_device_after_the_hand_over_is_refused(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The quota handed over went to the first new device: a retry naming another answers 409
    naming it, and the second device gets nothing (the quota is never on two devices)."""
    a, _ = tenants
    tid, old, first, second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]

    refused = await a.vendor.call(
        "POST", f"/tickets/{tid}/complete", {"new_device": second}, expect=409
    )
    assert refused.code == "handed_over_elsewhere"
    assert first in refused.body["message"] and old in refused.body["message"]
    assert (await gateway.read_service(first)).remaining_ml == 700  # the first keeps it
    assert (await gateway.read_service(second)).mode is None  # never configured
    assert not await ServiceChange.filter(did=second).exists()
    assert (await gateway.read_service(old)).remaining_ml == 0
    assert (await Device.get(did=second)).owner_id is None
    ticket = await Ticket.get(ticket_id=tid)
    assert ticket.new_device_id is None
    assert ticket.handed_over_to == first  # the hand-over ran: the row is not re-pointed
    assert ticket.state in OPEN_STATES  # still open: the device given the quota can complete it


async def test_an_exchange_retried_with_the_same_device_completes_with_the_same_amount(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The retry the hand-over's binding must keep working: the same new device completes the
    exchange and holds what the old device had left, neither doubled nor lost."""
    a, _ = tenants
    tid, old, first, _second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]

    done = await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": first})
    assert (done.data["status"], done.data["new_device_id"]) == (6, first)
    moved, kept = await gateway.read_service(first), await gateway.read_service(old)
    assert (moved.mode, moved.remaining_ml, moved.locked) == (3, 700, False)
    assert (kept.remaining_ml, kept.locked) == (0, True)
    assert 300 + moved.remaining_ml + kept.remaining_ml == 1000  # no water made or lost


async def test_an_exchange_moves_a_debt_to_the_new_device_as_a_debt(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """A device that poured past its quota (bought 100 ml, poured 300: -200) hands its debt
    over: the new device starts at -200 and locked, so an exchange erases no debt; a top-up
    pays it off first there, as it would have on the old device."""
    a, _ = tenants
    shopper, old = await member_device_that_poured_300_of_1000_ml(
        api, api_node, a, device_factory, bought_ml=100
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    (new,) = await register(api, a.vid, 1)
    tid = await exchange_ticket(api, a.vendor, shopper, old)

    await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": new})
    moved, kept = await gateway.read_service(new), await gateway.read_service(old)
    assert (moved.mode, moved.remaining_ml, moved.lock_reasons) == (3, -200, ["quota_exhausted"])
    assert (kept.remaining_ml, kept.locked) == (0, True)
    assert 300 + moved.remaining_ml + kept.remaining_ml == 100  # no water made or lost
    paid = ServiceChangeRequest(op="top_up", ml=500, reason="t")
    await gateway.change_service(new, paid, actor="test")
    topped = await gateway.read_service(new)
    assert (topped.remaining_ml, topped.locked) == (300, False)


async def assert_given_back(api_node: Any, old: str, first: str, member: str) -> None:
    """The cancelled exchange's water: the old device has its 700 ml back (the 300 poured stay
    poured), unlocked and still the member's; the new device has none, locked, unbound."""
    gateway = api_node.app[DEVICE_GATEWAY]
    back, emptied = await gateway.read_service(old), await gateway.read_service(first)
    assert (back.mode, back.remaining_ml, back.locked) == (3, 700, False)
    assert (emptied.remaining_ml, emptied.locked) == (0, True)
    assert 300 + back.remaining_ml + emptied.remaining_ml == 1000  # no water made or lost
    assert (await Device.get(did=old)).owner_id == member
    assert (await Device.get(did=first)).owner_id is None


async def test_cancelling_an_exchange_after_its_hand_over_gives_the_quota_back_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The exchange failed after the hand-over and is cancelled: the member keeps the old
    device with what it had left; a second cancel and a late completion change nothing."""
    a, _ = tenants
    tid, old, first, _second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    member = (await Ticket.get(ticket_id=tid)).member_uid
    assert member is not None

    done = await a.vendor.call("POST", f"/tickets/{tid}/cancel", {"note": "member keeps it"})
    assert done.data["status"] == 7
    await assert_given_back(api_node, old, first, member)
    moves = (await a.vendor.call("GET", f"/tickets/{tid}/moves")).data
    assert f"hand-over to {first} undone: 700 ml back on {old}" in moves[-1]["note"]
    (record,) = await ServiceChange.filter(did=old, op="hand_back")
    assert record.amount_ml == 700

    await a.vendor.call("POST", f"/tickets/{tid}/cancel", {}, expect=409)  # cancelled already
    await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": first}, expect=409)
    await assert_given_back(api_node, old, first, member)
    assert await ServiceChange.filter(did=old, op="hand_back").count() == 1


class FailsBeforeTheCredit:
    """The live store, failing a hand-back after the new device gave the quota back and before
    the old device is credited (say, the node stopped)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def hand_back(self, did: str, **options: Any) -> Any:
        if options["phase"] == "credit":
            raise RuntimeError("injected failure before the credit")
        return await self.store.hand_back(did, **options)


class CancelFailsHalfWay(Work):
    def __init__(self, gateway: Any, store: Any) -> None:
        super().__init__(gateway)
        self.store = FailsBeforeTheCredit(store)

    async def hand_back(
        self, did: str, request_id: str, lock_request_id: str | None, reason: str, *,
        recorded: bool = False,
    ) -> HandBack:  # fmt: skip
        return await hand_back(
            self.store, did, request_id=request_id, lock_request_id=lock_request_id,
            actor="test", reason=reason, recorded=recorded,
        )  # fmt: skip


async def test_a_cancel_failed_half_way_then_retried_and_a_completion_retry_give_nothing_twice(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """A cancel that failed after the new device gave the quota back: a completion retried then
    is refused (it would bind the emptied device), and the cancel retried credits the old
    device once."""
    a, _ = tenants
    tid, old, first, second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    member = (await Ticket.get(ticket_id=tid)).member_uid
    assert member is not None
    vendor = Principal(Role.VENDOR, "canceller", vendor_code=a.vid)
    failing = CancelFailsHalfWay(gateway, api_node.app[SERVICE_STORE])
    with pytest.raises(RuntimeError, match="injected"):
        await cancel(await Ticket.get(ticket_id=tid), vendor, failing)
    assert (await Ticket.get(ticket_id=tid)).state in OPEN_STATES  # rolled back
    assert (await gateway.read_service(first)).remaining_ml == 0  # given back, not credited
    assert (await gateway.read_service(old)).remaining_ml == 0

    for new_device in (first, second):
        refused = await a.vendor.call(
            "POST", f"/tickets/{tid}/complete", {"new_device": new_device}, expect=409
        )
        assert refused.code == "handed_back"
    assert (await Device.get(did=first)).owner_id is None
    assert (await gateway.read_service(second)).mode is None  # never configured

    await a.vendor.call("POST", f"/tickets/{tid}/cancel", {})
    await assert_given_back(api_node, old, first, member)
    await a.vendor.call("POST", f"/tickets/{tid}/cancel", {}, expect=409)
    await assert_given_back(api_node, old, first, member)


@pytest.mark.parametrize("winner", ["complete", "cancel"])
async def test_a_cancel_and_a_completion_racing_on_a_handed_over_exchange_act_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any,
    winner: str,
):  # fmt: skip
    """The loser, from a copy of the ticket read before the winner landed, answers 409 under
    the row lock and moves no water: the quota ends on exactly one device."""
    a, _ = tenants
    tid, old, first, _second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    member = (await Ticket.get(ticket_id=tid)).member_uid
    assert member is not None
    stale = await Ticket.get(ticket_id=tid)
    vendor = Principal(Role.VENDOR, "racing-admin", vendor_code=a.vid)

    if winner == "complete":
        await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": first})
        with pytest.raises(TicketStateConflict):
            await cancel(stale, vendor, Work(gateway))
        moved, kept = await gateway.read_service(first), await gateway.read_service(old)
        assert (moved.remaining_ml, moved.locked, kept.remaining_ml) == (700, False, 0)
        assert (await Device.get(did=first)).owner_id == member
        assert (await Ticket.get(ticket_id=tid)).state is TicketState.DONE
    else:
        await a.vendor.call("POST", f"/tickets/{tid}/cancel", {})
        with pytest.raises(TicketStateConflict):
            await complete(stale, vendor, Work(gateway), new_device=first)
        await assert_given_back(api_node, old, first, member)
        assert (await Ticket.get(ticket_id=tid)).state is TicketState.CANCELLED


async def test_install_records_who_installed_and_when(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    tech_id, tech = await technician(a.vendor, "installer", skills=[1])
    opened = await a.vendor.call("POST", "/tickets", {"type": 1, "device_id": did}, expect=201)
    tid = opened.data["ticket_id"]
    await work_through(a.vendor, tech, tech_id, tid)
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await tech.call("POST", f"/tickets/{tid}/complete", {})
    device = await Device.get(did=did)
    assert device.installed_at is not None and device.installed_at >= before
    assert device.installer_id == f"technician:{tech_id}:Installer"


def fault_row(did: str, rec: int, kind: EventKind) -> UsageRow:
    now = dt.datetime.now(dt.UTC)
    return UsageRow(did, 1, rec, int(FrameType.EVENT), int(kind), 0, now, 0, None, None)


async def test_device_faults_open_one_ticket_per_device_and_fault_until_done(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    (other,) = await register(api, b.vid, 1)
    watch = FaultWatch()
    rows = [
        fault_row(did, 1, EventKind.LEAK),
        fault_row(did, 2, EventKind.LEAK),  # the same fault again in the batch
        fault_row(did, 3, EventKind.DISPENSE_DONE),  # not a fault
        fault_row(other, 1, EventKind.FAULT_SET),
    ]
    assert await watch.after_batch(rows, {}) == 2
    assert await watch.after_batch(rows, {}) == 0  # the next reports of the same faults
    tickets = await Ticket.filter(type=TicketType.FAULT).order_by("id")
    assert [(t.device_id, t.vendor_id, t.member_uid) for t in tickets] == [
        (did, a.vid, shopper.uid), (other, b.vid, None),
    ]  # fmt: skip
    leak = tickets[0].ticket_id
    assert (await shopper.client.call("GET", f"/tickets/{leak}")).data["detail"].endswith("leak")
    # Done: the same fault later opens a new ticket.
    tech_id, tech = await technician(a.vendor, "plumber", skills=[4])
    await work_through(a.vendor, tech, tech_id, leak)
    await tech.call("POST", f"/tickets/{leak}/complete", {"note": "seal replaced"})
    assert await watch.after_batch([fault_row(did, 9, EventKind.LEAK)], {}) == 1
    assert await Ticket.filter(type=TicketType.FAULT, device_id=did).count() == 2


async def test_a_done_rental_is_deleted_only_once_its_devices_are_back(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """AD-15 on a done rental the member still holds: deleting it would leave 退租 (and the
    deposit it returns) answering 404 for ever."""
    from aquafleet.models.order_timers import TimerSettings, sweep

    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)  # deposit 50000 fen
    shopper = await make_member(api_node, api, a.vid)
    body = order_body({"product_id": pid, "package": "30d"})
    oid = (await shopper.client.call("POST", "/orders", body)).data["order_id"]
    (did,) = await register(api, a.vid, 1)
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    await shopper.client.call("POST", f"/orders/{oid}/status/confirm", {})
    week = dt.timedelta(days=7, seconds=1)
    await sweep(dt.datetime.now(dt.UTC) + week, TimerSettings())
    assert (await a.vendor.call("GET", f"/orders/{oid}")).data["state_name"] == "done"

    refused = await api.call("DELETE", f"/orders/{oid}?confirm={oid}", expect=409)
    assert refused.body["code"] == "rental_devices_held"
    assert refused.body["data"] == {"devices": [did]} and did in refused.body["message"]
    assert (await shopper.client.call("GET", f"/orders/{oid}")).data["order_id"] == oid

    ended = {"device_id": did, "reason": "搬家"}
    tid = (await shopper.client.call("POST", f"/orders/{oid}/rental/end", ended)).data["ticket_id"]
    await api.call("DELETE", f"/orders/{oid}?confirm={oid}", expect=409)  # not dismantled yet
    tech_id, tech = await technician(a.vendor, "dismantler", skills=[6])
    await work_through(a.vendor, tech, tech_id, tid)
    await tech.call("POST", f"/tickets/{tid}/complete", {"note": "collected"})
    (refund,) = await Refund.filter(order_oid=oid)
    assert (refund.amount_fen, refund.part) == (50000, "deposit")

    await api.call("DELETE", f"/orders/{oid}?confirm={oid}", expect=204)  # the rental is over
    await shopper.client.call("GET", f"/orders/{oid}", expect=404)


async def test_a_rental_is_ended_with_the_device_an_exchange_gave_and_its_deposit_comes_back(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """退租 after an exchange (换机), twice over: the member holds the second replacement, not
    the device the order shipped. Ending the rental of the replacement works as for a shipped
    device (the deposit comes back, AD-15 then deletes the order); the devices exchanged away
    are refused as no longer held, a device of no exchange of this order as not part of it."""
    from aquafleet.models.order_timers import TimerSettings, sweep

    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)  # deposit 50000 fen
    shopper = await make_member(api_node, api, a.vid)
    body = order_body({"product_id": pid, "package": "30d"})
    oid = (await shopper.client.call("POST", "/orders", body)).data["order_id"]
    shipped, first, second, unrelated = await register(api, a.vid, 4)
    await Device.filter(did=unrelated).update(owner_id=shopper.uid)  # held, but not this order's
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [shipped]})
    tech_id, tech = await technician(a.vendor, "swapper", skills=[2, 6])
    for old, new in ((shipped, first), (first, second)):
        opened = await shopper.client.call("POST", "/tickets", {"type": 2, "device_id": old})
        await work_through(a.vendor, tech, tech_id, opened.data["ticket_id"])
        await tech.call(
            "POST", f"/tickets/{opened.data['ticket_id']}/complete", {"new_device": new}
        )
    assert (await Device.get(did=second)).owner_id == shopper.uid
    await shopper.client.call("POST", f"/orders/{oid}/status/confirm", {})
    await sweep(dt.datetime.now(dt.UTC) + dt.timedelta(days=7, seconds=1), TimerSettings())
    refused = await api.call("DELETE", f"/orders/{oid}?confirm={oid}", expect=409)
    assert refused.body["data"] == {"devices": [second]}  # the rental goes on with `second`

    end = f"/orders/{oid}/rental/end"
    for gone in (shipped, first):
        away = await shopper.client.call("POST", end, {"device_id": gone}, expect=409)
        assert "no longer held" in away.body["message"]
    other = await shopper.client.call("POST", end, {"device_id": unrelated}, expect=404)
    assert "not part of order" in other.body["message"]
    asked = await shopper.client.call(
        "POST", end, {"device_id": second, "reason": "搬家"}, expect=201
    )
    ticket = asked.data
    assert (ticket["type"], ticket["device_id"], ticket["order_id"]) == (6, second, oid)

    await work_through(a.vendor, tech, tech_id, ticket["ticket_id"])
    await tech.call("POST", f"/tickets/{ticket['ticket_id']}/complete", {"note": "collected"})
    assert (await Device.get(did=second)).owner_id is None
    (refund,) = await Refund.filter(order_oid=oid)
    assert (refund.amount_fen, refund.part) == (50000, "deposit")
    assert second in refund.reason
    await api.call("DELETE", f"/orders/{oid}?confirm={oid}", expect=204)  # the rental is over
