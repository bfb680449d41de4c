"""Ending a rental (退租) again after a cancel, exchanges of a device whose rental ended, and a
device exchanged away and back (A -> B -> A) within one order, on SQLite and PostgreSQL:
whatever the path, the deposit of each device the order shipped comes back exactly once, for
the right device (models/rental_end.py, models/returns.py goods_shipped_as)."""

from __future__ import annotations

from typing import Any

from aquafleet.gateway.appkeys import DEVICE_GATEWAY
from aquafleet.models.devices import Device
from aquafleet.models.money import Refund
from aquafleet.models.orders import Order
from aquafleet.models.returns import goods_shipped_as
from aquafleet.models.tickets import Ticket, TicketType, open_ticket
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import Shopper, add_product, make_member
from tests.api.test_rental_exchanges import DEPOSIT, rental_of
from tests.api.test_ticket_work_api import work_through
from tests.api.test_tickets_api import register, technician
from tests.payments.shops import assert_ledger_clean


async def a_rental(
    api: ApiClient, api_node: Any, a: Tenant, count: int = 1
) -> tuple[Shopper, str, list[str]]:
    """A member, its delivered one-device rental order, and `count` devices of the vendor (the
    first one shipped with the order)."""
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    dids = await register(api, a.vid, count)
    return shopper, await rental_of(api, a, shopper, pid, dids[:1]), dids


async def deposit_refunds(oid: str) -> list[Refund]:
    return list(await Refund.filter(order_oid=oid, part="deposit").order_by("id"))


async def test_a_cancelled_rental_end_does_not_stop_the_member_asking_again(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A 退租 cancelled (the member changed its mind, or the vendor cancelled it) is not the
    answer to the next one: asking again opens a new ticket, a retry of that ask answers the
    new one, and it works through to the deposit back exactly once. Cancelled twice over (by
    the member, then by the vendor), the third ask is new again."""
    a, _ = tenants
    shopper, oid, (did,) = await a_rental(api, api_node, a)
    tech_id, tech = await technician(a.vendor, "collector", skills=[6])
    end, body = f"/orders/{oid}/rental/end", {"device_id": did, "reason": "搬家"}

    first = (await shopper.client.call("POST", end, body, expect=201)).data
    await shopper.client.call("POST", f"/tickets/{first['ticket_id']}/cancel", {})
    second = (await shopper.client.call("POST", end, body, expect=201)).data
    assert second["ticket_id"] != first["ticket_id"] and second["status"] == 1
    retried = (await shopper.client.call("POST", end, body, expect=201)).data
    assert retried["ticket_id"] == second["ticket_id"]
    await a.vendor.call("POST", f"/tickets/{second['ticket_id']}/cancel", {"note": "not yet"})

    third = (await shopper.client.call("POST", end, body, expect=201)).data
    assert third["ticket_id"] not in (first["ticket_id"], second["ticket_id"])
    assert (await shopper.client.call("POST", end, body)).data["ticket_id"] == third["ticket_id"]
    await work_through(a.vendor, tech, tech_id, third["ticket_id"])
    done = await tech.call("POST", f"/tickets/{third['ticket_id']}/complete", {})
    assert done.data["status"] == 6
    (refund,) = await deposit_refunds(oid)
    assert (refund.refund_no, refund.amount_fen) == (f"R{third['ticket_id']}", DEPOSIT)
    assert did in refund.reason

    # Given back: asking again is refused (the member no longer holds it), and the tickets
    # are as they were left: two cancelled, one done.
    await shopper.client.call("POST", end, body, expect=409)
    states = {
        t["ticket_id"]: t["status"]
        for t in (await a.vendor.call("GET", "/tickets", params={"type": 6})).data
    }
    assert states == {first["ticket_id"]: 7, second["ticket_id"]: 7, third["ticket_id"]: 6}
    assert len(await deposit_refunds(oid)) == 1
    await assert_ledger_clean()


async def test_a_device_whose_rental_ended_is_not_exchanged(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A device whose 退租 is done went back with its deposit: it is no longer rented under its
    order, and no order accounts for it. An admin's exchange of it (naming its former member
    or not) is refused (409 rental_ended, naming the 退租), and so is completing one opened
    before the 退租 (with the order) or one left without an order: the former member is given
    no replacement, with a live service, for a rental whose deposit came back."""
    a, _ = tenants
    shopper, oid, (did, replacement, other) = await a_rental(api, api_node, a, 3)
    tech_id, tech = await technician(a.vendor, "swapper", skills=[2, 6])
    swap = {"type": 2, "device_id": did}
    early = (await shopper.client.call("POST", "/tickets", swap, expect=201)).data["ticket_id"]
    asked = await shopper.client.call("POST", f"/orders/{oid}/rental/end", {"device_id": did})
    ended = asked.data["ticket_id"]
    await work_through(a.vendor, tech, tech_id, ended)
    await tech.call("POST", f"/tickets/{ended}/complete", {})
    assert [r.amount_fen for r in await deposit_refunds(oid)] == [DEPOSIT]

    for body in ({**swap, "user_id": shopper.uid}, swap):
        refused = await a.vendor.call("POST", "/tickets", body, expect=409)
        assert refused.code == "rental_ended", refused
        assert refused.data == {"ticket_id": ended, "order_id": oid}
        assert ended in refused.body["message"]
    order = await Order.get(oid=oid)
    legacy = await open_ticket(a.vid, TicketType.EXCHANGE, did=did, member_uid=shopper.uid)
    for tid, new in ((early, replacement), (legacy.ticket_id, other)):
        await work_through(a.vendor, tech, tech_id, tid)
        refused = await tech.call(
            "POST", f"/tickets/{tid}/complete", {"new_device": new}, expect=409
        )
        assert refused.code == "rental_ended", refused
        assert (await Device.get(did=new)).owner_id is None  # nothing moved
        assert (await Ticket.get(ticket_id=tid)).handed_over_to is None
    assert (await Ticket.get(ticket_id=early)).order_id == order.id
    assert await goods_shipped_as(order) == {did: did}
    assert [r.amount_fen for r in await deposit_refunds(oid)] == [DEPOSIT]
    await assert_ledger_clean()


async def test_a_device_exchanged_away_and_back_ends_once_in_its_order(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A -> B -> A within one order (the replacement failed too, the member's own device came
    back repaired), then A -> C: every exchange belongs to the order, its goods are A, B and C,
    each standing for A; the device back with the member runs (not left locked by the
    exchange that took it away); and the 退租 of the device the member holds returns A's
    deposit once, while the devices it no longer holds are not ended."""
    a, _ = tenants
    shopper, oid, (first, second, third) = await a_rental(api, api_node, a, 3)
    tech_id, tech = await technician(a.vendor, "swapper", skills=[2, 6])
    gateway = api_node.app[DEVICE_GATEWAY]
    rented = await gateway.read_service(first)
    assert rented.mode == 2 and not rented.locked  # a time rental, running

    async def exchange(old: str, new: str) -> dict[str, Any]:
        opened = await shopper.client.call("POST", "/tickets", {"type": 2, "device_id": old})
        assert opened.data["order_id"] == oid, opened
        await work_through(a.vendor, tech, tech_id, opened.data["ticket_id"])
        path = f"/tickets/{opened.data['ticket_id']}/complete"
        return dict((await tech.call("POST", path, {"new_device": new})).data)

    assert (await exchange(first, second))["order_id"] == oid
    assert (await exchange(second, first))["order_id"] == oid
    order = await Order.get(oid=oid)
    assert await goods_shipped_as(order) == {first: first, second: first}
    back = await gateway.read_service(first)
    assert (back.mode, back.rental_expires_at, back.locked) == (2, rented.rental_expires_at, False)
    assert (await gateway.read_service(second)).locked
    assert (await Device.get(did=first)).owner_id == shopper.uid

    assert (await exchange(first, third))["order_id"] == oid
    assert await goods_shipped_as(order) == {first: first, second: first, third: first}
    end = f"/orders/{oid}/rental/end"
    for gone in (first, second):
        refused = await shopper.client.call("POST", end, {"device_id": gone}, expect=409)
        assert "no longer held" in refused.body["message"]
    asked = (await shopper.client.call("POST", end, {"device_id": third}, expect=201)).data
    await work_through(a.vendor, tech, tech_id, asked["ticket_id"])
    await tech.call("POST", f"/tickets/{asked['ticket_id']}/complete", {})
    (refund,) = await deposit_refunds(oid)
    assert refund.amount_fen == DEPOSIT and third in refund.reason
    assert await Device.filter(owner_id=shopper.uid).count() == 0
    await assert_ledger_clean()


async def test_a_device_back_from_an_exchange_ends_and_returns_its_deposit_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A -> B -> A, then the 退租 of A: A's deposit back once, named for A; B (with the
    vendor) is not ended through the order."""
    a, _ = tenants
    shopper, oid, (first, second) = await a_rental(api, api_node, a, 2)
    tech_id, tech = await technician(a.vendor, "swapper", skills=[2, 6])
    for old, new in ((first, second), (second, first)):
        opened = await shopper.client.call("POST", "/tickets", {"type": 2, "device_id": old})
        await work_through(a.vendor, tech, tech_id, opened.data["ticket_id"])
        path = f"/tickets/{opened.data['ticket_id']}/complete"
        await tech.call("POST", path, {"new_device": new})
    end = f"/orders/{oid}/rental/end"
    await shopper.client.call("POST", end, {"device_id": second}, expect=409)
    asked = (await shopper.client.call("POST", end, {"device_id": first}, expect=201)).data
    await work_through(a.vendor, tech, tech_id, asked["ticket_id"])
    await tech.call("POST", f"/tickets/{asked['ticket_id']}/complete", {})
    (refund,) = await deposit_refunds(oid)
    assert (refund.refund_no, refund.amount_fen) == (f"R{asked['ticket_id']}", DEPOSIT)
    assert first in refund.reason and second not in refund.reason
    await shopper.client.call("POST", end, {"device_id": first}, expect=409)
    assert len(await deposit_refunds(oid)) == 1
    await assert_ledger_clean()
