"""An order's goods follow its own exchanges only (换机: models/returns.py goods_shipped_as),
on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib
from typing import Any

from tortoise import connections

from aquafleet.models.money import Refund
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from aquafleet.models.tickets import Ticket, TicketType
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import Shopper, add_product, make_member
from tests.api.test_orders_api import order_body
from tests.api.test_ticket_work_api import PARCEL, work_through
from tests.api.test_tickets_api import register, technician

DEPOSIT = 50000  # the seed product's deposit per device rented


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
