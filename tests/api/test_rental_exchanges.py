"""Rentals and exchanges (换机), on SQLite and PostgreSQL: a rental's deposit comes back at
most once per device the order shipped (ending a rental, 退租, and exchanging the device
exclude each other: models/rental_end.py), and an order's goods follow its own exchanges only
(models/returns.py goods_shipped_as)."""

from __future__ import annotations

import importlib
from typing import Any

from tortoise import connections

from aquafleet.models.devices import Device
from aquafleet.models.money import Refund
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from aquafleet.models.tickets import AutomaticTicket, Ticket, TicketType, open_automatic_ticket
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import Shopper, add_product, make_member
from tests.api.test_orders_api import order_body
from tests.api.test_ticket_work_api import PARCEL, work_through
from tests.api.test_tickets_api import register, technician

DEPOSIT = 50000  # the seed product's deposit per device rented


async def two_device_rental(
    api: ApiClient, api_node: Any, a: Tenant, shipped: list[str]
) -> tuple[Shopper, str]:
    """A member and its delivered rental order of two devices (`shipped`), deposit paid twice."""
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    line = {"product_id": pid, "package": "30d", "quantity": 2}
    oid = (await shopper.client.call("POST", "/orders", order_body(line))).data["order_id"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": shipped})
    return shopper, str(oid)


async def deposits_back(oid: str) -> int:
    return sum(r.amount_fen for r in await Refund.filter(order_oid=oid, part="deposit"))


async def attempt(client: ApiClient, method: str, path: str, body: Any) -> tuple[int, Any]:
    """A call a guard may refuse: its status and its body's data (or code when refused)."""
    headers = {"Authorization": f"Bearer {client.token}"}
    url = f"{client.base}/api/v1{path}"
    async with client.session.request(method, url, json=body, headers=headers) as answer:
        sent = await answer.json()
        assert answer.status < 300 or answer.status == 409, (path, answer.status, sent)
        return answer.status, sent["data"] if answer.status < 300 else sent["code"]


async def test_a_rental_end_asked_before_an_exchange_does_not_refund_the_deposit_twice(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The review's scenario: 退租 for A while A is the member's, then an exchange gives B for
    A, then 退租 for B. However each step is refused (409), once the member asked to end the
    rental of whatever it holds, both rentals are over and each shipped device's deposit came
    back exactly once: not A's twice (and the second device's then refused as exceeding the
    order's deposit)."""
    a, _ = tenants
    shipped, kept, replacement = await register(api, a.vid, 3)
    shopper, oid = await two_device_rental(api, api_node, a, [shipped, kept])
    tech_id, tech = await technician(a.vendor, "fixer", skills=[2, 6])
    end = f"/orders/{oid}/rental/end"

    ends = [(await shopper.client.call("POST", end, {"device_id": shipped})).data["ticket_id"]]
    status, swap = await attempt(
        shopper.client, "POST", "/tickets", {"type": 2, "device_id": shipped}
    )
    if status == 201:
        await work_through(a.vendor, tech, tech_id, swap["ticket_id"])
        path = f"/tickets/{swap['ticket_id']}/complete"
        status, _ = await attempt(tech, "POST", path, {"new_device": replacement})
        if status < 300:
            status, again = await attempt(shopper.client, "POST", end, {"device_id": replacement})
            if status == 201:
                ends.append(again["ticket_id"])
    ends.append((await shopper.client.call("POST", end, {"device_id": kept})).data["ticket_id"])
    for tid in ends:
        await work_through(a.vendor, tech, tech_id, tid)
        await attempt(tech, "POST", f"/tickets/{tid}/complete", {})
    for did in await Device.filter(owner_id=shopper.uid).values_list("did", flat=True):
        status, asked = await attempt(shopper.client, "POST", end, {"device_id": did})
        if status == 201 and asked["status"] == 1:  # a refused step left it with the member
            await work_through(a.vendor, tech, tech_id, asked["ticket_id"])
            await attempt(tech, "POST", f"/tickets/{asked['ticket_id']}/complete", {})

    stands_for = {shipped: shipped, replacement: shipped, kept: kept}
    refunds = await Refund.filter(order_oid=oid, part="deposit").order_by("id")
    slots = [stands_for[did] for r in refunds for did in stands_for if did in r.reason]
    assert sorted(slots) == sorted([shipped, kept]), [r.reason for r in refunds]
    assert [r.amount_fen for r in refunds] == [DEPOSIT, DEPOSIT]
    assert await Device.filter(owner_id=shopper.uid).count() == 0


async def test_a_device_being_given_back_is_not_exchanged_and_its_replacement_ends_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The rule: an exchange of a device whose 退租 is open is refused when it opens (the
    member's, the vendor's) and when it completes (one opened before the 退租), nothing moved;
    cancelling the 退租 lets the exchange complete, and the replacement's 退租 then returns the
    deposit of the device it replaced, once."""
    a, _ = tenants
    shipped, kept, replacement = await register(api, a.vid, 3)
    shopper, oid = await two_device_rental(api, api_node, a, [shipped, kept])
    tech_id, tech = await technician(a.vendor, "fixer", skills=[2, 6])
    end = f"/orders/{oid}/rental/end"
    swap = {"type": 2, "device_id": shipped}
    early = (await shopper.client.call("POST", "/tickets", swap, expect=201)).data["ticket_id"]
    assert (await a.vendor.call("GET", f"/tickets/{early}")).data["order_id"] == oid

    ending = (await shopper.client.call("POST", end, {"device_id": shipped})).data["ticket_id"]
    for client in (shopper.client, a.vendor):
        refused = await client.call("POST", "/tickets", swap, expect=409)
        assert refused.body["code"] == "rental_ending"
        assert refused.body["data"] == {"ticket_id": ending, "status": 1}
        assert ending in refused.body["message"]
    await work_through(a.vendor, tech, tech_id, early)
    path = f"/tickets/{early}/complete"
    refused = await tech.call("POST", path, {"new_device": replacement}, expect=409)
    assert refused.body["code"] == "rental_ending"
    assert (await Device.get(did=shipped)).owner_id == shopper.uid  # nothing moved
    assert (await Device.get(did=replacement)).owner_id is None
    assert (await Ticket.get(ticket_id=early)).handed_over_to is None

    await a.vendor.call("POST", f"/tickets/{ending}/cancel", {"note": "member swaps instead"})
    done = await tech.call("POST", path, {"new_device": replacement})
    assert (done.data["status"], done.data["order_id"]) == (6, oid)
    asked = await shopper.client.call("POST", end, {"device_id": replacement}, expect=201)
    await work_through(a.vendor, tech, tech_id, asked.data["ticket_id"])
    await tech.call("POST", f"/tickets/{asked.data['ticket_id']}/complete", {})
    (refund,) = await Refund.filter(order_oid=oid, part="deposit")
    assert refund.amount_fen == DEPOSIT and replacement in refund.reason


async def test_tickets_from_before_the_rule_give_the_deposit_back_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """What a race, or tickets left by a release without the rule, may hold: A's 退租 open
    while an exchange gave B for A. B's 退租 is refused naming A's; A's does not complete (the
    member holds B: 409 device_exchanged, nothing moved); once cancelled, B's goes through. A
    second 退租 of the same shipped device that still reaches completion dismantles without a
    second refund."""
    a, _ = tenants
    shipped, kept, replacement = await register(api, a.vid, 3)
    shopper, oid = await two_device_rental(api, api_node, a, [shipped, kept])
    tech_id, tech = await technician(a.vendor, "fixer", skills=[2, 6])
    swap = {"type": 2, "device_id": shipped}
    tid = (await shopper.client.call("POST", "/tickets", swap)).data["ticket_id"]
    await work_through(a.vendor, tech, tech_id, tid)
    await tech.call("POST", f"/tickets/{tid}/complete", {"new_device": replacement})
    order = await Order.get(oid=oid)
    stale, _ = await open_automatic_ticket(rental_end(order, shipped, shopper.uid))

    end = f"/orders/{oid}/rental/end"
    refused = await shopper.client.call("POST", end, {"device_id": replacement}, expect=409)
    assert refused.body["code"] == "rental_end_exists"
    assert refused.body["data"] == {"ticket_id": stale.ticket_id, "device_id": shipped, "status": 1}
    await work_through(a.vendor, tech, tech_id, stale.ticket_id)
    path = f"/tickets/{stale.ticket_id}/complete"
    away = await tech.call("POST", path, {}, expect=409)
    assert away.body["code"] == "device_exchanged"
    assert away.body["data"] == {"ticket_id": tid, "new_device_id": replacement}
    assert not await Refund.filter(order_oid=oid).exists()
    await a.vendor.call("POST", f"/tickets/{stale.ticket_id}/cancel", {})

    asked = await shopper.client.call("POST", end, {"device_id": replacement}, expect=201)
    twin, _ = await open_automatic_ticket(
        rental_end(order, replacement, shopper.uid, key="rental-end:legacy")
    )  # a second one, as two racing asks could leave
    for ticket_id in (asked.data["ticket_id"], twin.ticket_id):
        await work_through(a.vendor, tech, tech_id, ticket_id)
        await tech.call("POST", f"/tickets/{ticket_id}/complete", {})
    (refund,) = await Refund.filter(order_oid=oid, part="deposit")
    assert refund.amount_fen == DEPOSIT
    moves = (await a.vendor.call("GET", f"/tickets/{twin.ticket_id}/moves")).data
    assert f"already requested back with ticket {asked.data['ticket_id']}" in moves[-1]["note"]


def rental_end(order: Order, did: str, uid: str, *, key: str = "") -> AutomaticTicket:
    """The dismantle ticket end_rental opens, written as it stands (no check)."""
    return AutomaticTicket(
        dedup_key=key or f"rental-end:{order.oid}:{did}", type=TicketType.DISMANTLE,
        vendor_code=order.vendor_id, did=did, member_uid=uid, order_id=order.id,
    )  # fmt: skip


async def rental_of(
    api: ApiClient, a: Tenant, shopper: Shopper, pid: str, devices: list[str]
) -> str:
    """A delivered one-device rental order of `shopper`."""
    line = {"product_id": pid, "package": "30d"}
    oid = str((await shopper.client.call("POST", "/orders", order_body(line))).data["order_id"])
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": devices})
    return oid


async def test_an_order_follows_only_its_own_exchanges_of_a_device_shipped_twice(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """Device X shipped with order O1 and exchanged for Y there; the vendor refurbished X and
    shipped it with O2 (the same member's next rental), where it was exchanged for Z. O1's
    goods are X and Y, O2's X and Z: Z is not part of O1 (no 退租 of Z through O1, whose
    deposit is Y's to give back), Y not part of O2, and AD-15 counts each order's own."""
    from aquafleet.models.order_deletion import rental_devices_held
    from aquafleet.models.returns import goods_shipped_as

    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    x, y, z = await register(api, a.vid, 3)
    tech_id, tech = await technician(a.vendor, "swapper", skills=[2, 6])

    async def exchange(old: str, new: str) -> dict[str, Any]:
        opened = await shopper.client.call("POST", "/tickets", {"type": 2, "device_id": old})
        await work_through(a.vendor, tech, tech_id, opened.data["ticket_id"])
        path = f"/tickets/{opened.data['ticket_id']}/complete"
        return dict((await tech.call("POST", path, {"new_device": new})).data)

    first = await rental_of(api, a, shopper, pid, [x])
    assert (await exchange(x, y))["order_id"] == first
    second = await rental_of(api, a, shopper, pid, [x])  # X back in stock, shipped again
    assert (await exchange(x, z))["order_id"] == second

    o1, o2 = await Order.get(oid=first), await Order.get(oid=second)
    assert await goods_shipped_as(o1) == {x: x, y: x}
    assert await goods_shipped_as(o2) == {x: x, z: x}
    assert await rental_devices_held(o1) == [y]
    assert await rental_devices_held(o2) == [z]
    for oid, other in ((first, z), (second, y)):
        wrong = f"/orders/{oid}/rental/end"
        refused = await shopper.client.call("POST", wrong, {"device_id": other}, expect=404)
        assert "not part of order" in refused.body["message"]
    for oid, did in ((first, y), (second, z)):
        asked = await shopper.client.call("POST", f"/orders/{oid}/rental/end", {"device_id": did})
        await work_through(a.vendor, tech, tech_id, asked.data["ticket_id"])
        await tech.call("POST", f"/tickets/{asked.data['ticket_id']}/complete", {})
        (refund,) = await Refund.filter(order_oid=oid, part="deposit")
        assert refund.amount_fen == DEPOSIT and did in refund.reason

    # The migration (0028) gives exchanges opened before they carried their order the same
    # orders: O2, delivered after the first exchange was opened, is not that one's.
    migration = importlib.import_module("aquafleet.models.migrations.0028_exchange_order")
    await Ticket.filter(type=TicketType.EXCHANGE).update(order_id=None)
    assert await migration.assign_exchange_orders(connections.get("default")) == 2
    assigned = Ticket.filter(type=TicketType.EXCHANGE).order_by("id")
    assert list(await assigned.values_list("order_id", flat=True)) == [o1.id, o2.id]


async def test_an_admins_exchange_replaces_only_a_device_its_member_holds(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """An admin's exchange naming a member (user_id) who does not hold the device, another
    member's or nobody's, is refused when it opens, 409 device_not_held (`data`: the device
    and member named), and no ticket opens. One opened for the device's holder does not
    complete once the device left that member (the order returned, AD-14): nothing moves, the
    member gets no replacement with the old device's service."""
    a, _ = tenants
    shipped, kept, replacement = await register(api, a.vid, 3)
    shopper, oid = await two_device_rental(api, api_node, a, [shipped, kept])
    other = await make_member(api_node, api, a.vid)
    tech_id, tech = await technician(a.vendor, "fixer", skills=[2])
    for admin in (a.vendor, api):
        swap = {"type": 2, "device_id": shipped, "user_id": other.uid}
        refused = await admin.call("POST", "/tickets", swap, expect=409)
        assert refused.code == "device_not_held", refused
        assert refused.data == {"device_id": shipped, "user_id": other.uid}
    assert not await Ticket.filter(type=TicketType.EXCHANGE).exists()
    assert (await Device.get(did=shipped)).owner_id == shopper.uid

    swap = {"type": 2, "device_id": shipped, "user_id": shopper.uid}
    tid = (await a.vendor.call("POST", "/tickets", swap, expect=201)).data["ticket_id"]
    await shopper.client.call("POST", f"/orders/{oid}/status/confirm")
    await shopper.client.call("POST", f"/orders/{oid}/status/return", {"reason": "漏水"})
    await a.vendor.call("POST", f"/orders/{oid}/status/consent")
    await a.vendor.call("PUT", f"/orders/{oid}/status/refund")
    assert (await Device.get(did=shipped)).owner_id is None  # back with the vendor
    await work_through(a.vendor, tech, tech_id, tid)
    path = f"/tickets/{tid}/complete"
    refused = await tech.call("POST", path, {"new_device": replacement}, expect=409)
    assert refused.code == "device_not_held", refused
    assert refused.data == {"device_id": shipped, "user_id": shopper.uid}
    assert (await Device.get(did=replacement)).owner_id is None
    assert (await Ticket.get(ticket_id=tid)).handed_over_to is None
