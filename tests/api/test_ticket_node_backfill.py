"""Migration 0031 on SQLite and PostgreSQL: tickets opened before tickets took the node that sold
their device (rows shaped as the old rule left them: no node where the device had none, no
order on an install ticket) get the node ticket_node's rule gives, and install tickets their
order; a ticket with a node keeps it, and running it again changes nothing."""

from __future__ import annotations

import importlib
from typing import Any

from tortoise import connections

from aquafleet.models.tickets import Ticket
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.api.test_delivery_api import register
from tests.api.test_ticket_routing import bought, moved, seen_by, sibling_agent
from tests.api.test_tickets_api import technician

migration = importlib.import_module("aquafleet.models.migrations.0031_ticket_node_backfill")


async def fault(client: ApiClient, did: str) -> str:
    opened = await client.call("POST", "/tickets", {"type": 4, "device_id": did}, expect=201)
    return str(opened.data["ticket_id"])


async def test_old_tickets_get_the_node_that_sold_their_device(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    n2, n2_admin = await sibling_agent(a, "aaaa-n2")
    admins = {"vendor": a.vendor, "N1": a.agent, "dealer": a.dealer, "N2": n2_admin}
    with_install = await add_product(a.vendor)
    plain = await add_product(a.vendor, install=False, install_cost=0)
    sold, by_hand, by_vendor, allocated = await register(api, a.vid, 4)

    # N1 sold `sold` (install ticket; then a fault, worked to done, and an open one), and the
    # member moved to N2 since.
    buyer = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    order = await bought(a, buyer, sold, with_install)
    closed = await fault(buyer.client, sold)
    tech_id, tech = await technician(a.vendor, "fixer", skills=[4])
    await a.vendor.call("POST", f"/tickets/{closed}/approve", {"check_result": True})
    await a.vendor.call("POST", f"/tickets/{closed}/dispatch", {"technician_id": tech_id})
    await tech.call("POST", f"/tickets/{closed}/start", {})
    await tech.call("POST", f"/tickets/{closed}/complete", {})
    await moved(a, buyer, n2)
    still_open = await fault(buyer.client, sold)
    (install,) = await Ticket.filter(type=1).values_list("ticket_id", flat=True)

    # No order brought `by_hand` (bound with AB-11): its member's node, N1.
    binder = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    await binder.client.call("POST", f"/devices/{by_hand}/bind", {}, expect=201)
    bound = await fault(binder.client, by_hand)
    # The vendor sold `by_vendor` itself: the vendor's, though its member is under N2 now.
    walk_in = await make_member(api_node, api, a.vid)
    await bought(a, walk_in, by_vendor, plain)
    await moved(a, walk_in, n2)
    vendors = await fault(walk_in.client, by_vendor)
    # `allocated` was the dealer's when its ticket opened: the ticket keeps the dealer.
    await a.vendor.call("PUT", f"/devices/{allocated}", {"agent_id": a.dealer_id})
    holder = await make_member(api_node, api, a.vid)
    await holder.client.call("POST", f"/devices/{allocated}/bind", {}, expect=201)
    dealers = await fault(holder.client, allocated)
    await a.vendor.call("PUT", f"/devices/{allocated}", {"agent_id": n2})

    # As the old rule left them: the device's node (none here), and installs without order.
    old_shaped = [install, closed, still_open, bound, vendors]
    await Ticket.filter(ticket_id__in=old_shaped).update(agent_id=None)
    await Ticket.filter(ticket_id=install).update(order_id=None)
    assert await seen_by(admins, still_open) == {"vendor"}  # what N1 saw: nothing

    client = connections.get("default")
    assert await migration.assign_install_orders(client) == 1
    assert await migration.assign_ticket_nodes(client) == 4
    nodes = dict(await Ticket.all().values_list("ticket_id", "agent_id"))
    assert {tid: nodes[tid] for tid in [*old_shaped, dealers]} == {
        install: a.agent_id, closed: a.agent_id, still_open: a.agent_id, bound: a.agent_id,
        vendors: None, dealers: a.dealer_id,
    }  # fmt: skip
    read = await a.agent.call("GET", f"/tickets/{install}")
    assert read.data["order_id"] == order["order_id"]
    assert await seen_by(admins, still_open) == {"vendor", "N1"}
    assert await seen_by(admins, closed) == {"vendor", "N1"}
    assert await seen_by(admins, dealers) == {"vendor", "N1", "dealer"}

    assert await migration.assign_install_orders(client) == 0
    assert await migration.assign_ticket_nodes(client) == 0
    assert dict(await Ticket.all().values_list("ticket_id", "agent_id")) == nodes


def test_the_keys_that_name_an_order():
    """An install's and an AD-14 return's key name the order the ticket is about."""
    assert migration._keyed_oid("install:20261207AAAA000000000001:AAAA00000001") == (
        "20261207AAAA000000000001"
    )
    assert migration._keyed_oid("return:20261207AAAA000000000002:AAAA00000001") == (
        "20261207AAAA000000000002"
    )
    for other in (None, "", "fault:AAAA00000001:2", "rental-end:X:Y", "install:", "maintenance:x"):
        assert migration._keyed_oid(other) is None


async def test_an_old_rental_end_takes_its_orders_node(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A 退租 names its order: its node is that order's (N1's), not the member's new node
    (N2)."""
    a, _ = tenants
    n2, _ = await sibling_agent(a, "aaaa-n2")
    pid = await add_product(a.vendor, install=False, install_cost=0)
    renter = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    (did,) = await register(api, a.vid, 1)
    rental = await bought(a, renter, did, pid, package="30d")
    await moved(a, renter, n2)
    end = await renter.client.call(
        "POST", f"/orders/{rental['order_id']}/rental/end", {"device_id": did}, expect=201
    )
    tid = end.data["ticket_id"]
    await Ticket.filter(ticket_id=tid).update(agent_id=None)
    assert await migration.assign_ticket_nodes(connections.get("default")) == 1
    assert (await Ticket.get(ticket_id=tid)).agent_id == a.agent_id
