"""Which node a ticket belongs to (models/tickets.py ticket_node), through a real node on SQLite
and PostgreSQL: the device's own node, else the node of the order that sold the device, else the
member's. A member moved to another node after buying keeps its device's tickets (fault, 退租,
a return's dismantle, the install) with the node that sold it: that node's admins see and work
them and its team is dispatched; the member's new node sees none of them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aquafleet.models.devices import Device
from aquafleet.models.order_payment import mark_paid
from tests.api.conftest import PASSWORD, PLATFORM_USER, ApiClient, Tenant, md5
from tests.api.shop import Shopper, add_product, make_member
from tests.api.test_delivery_api import PARCEL, register
from tests.api.test_orders_api import order_body
from tests.api.test_tickets_api import technician


async def sibling_agent(a: Tenant, name: str) -> tuple[int, ApiClient]:
    """Another agent of the vendor, beside `a.agent` (neither sees the other's subtree)."""
    body = {"name": name.title(), "user": name, "pwd": md5(PASSWORD)}
    answer = await a.vendor.call("POST", "/agents", body, expect=201)
    return int(answer.data["id"]), a.vendor.as_(await a.vendor.login(name))


async def bought(a: Tenant, buyer: Shopper, did: str, pid: str, **line: Any) -> dict[str, Any]:
    """`did` bought (or rented: `package`) by `buyer`, paid and delivered by the vendor."""
    order = await buyer.client.call("POST", "/orders", order_body({"product_id": pid, **line}))
    await mark_paid(order.data["order_id"], admin=PLATFORM_USER, reason="test")
    await a.vendor.call(
        "POST", f"/orders/{order.data['order_id']}/delivery", {**PARCEL, "devices": [did]}
    )
    return dict(order.data)


async def moved(a: Tenant, member: Shopper, node: int) -> None:
    """An admin puts the member under another node (AA-04)."""
    await a.vendor.call("PUT", f"/users/{member.uid}", {"agent_id": node})


async def seen_by(clients: dict[str, ApiClient], tid: str) -> set[str]:
    """Which of `clients` see the ticket: list it (AE-01) and read it; the others read 404,
    as for an unknown id."""
    seen = set()
    for name, client in clients.items():
        listed = {t["ticket_id"] for t in (await client.call("GET", "/tickets")).data}
        if tid in listed:
            seen.add(name)
            await client.call("GET", f"/tickets/{tid}")
        else:
            await client.call("GET", f"/tickets/{tid}", expect=404)
    return seen


async def test_tickets_of_a_device_stay_with_the_node_that_sold_it_when_its_member_moves(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A member of agent N1 rents a device (the vendor's stock: no node of its own) and is then
    moved to agent N2. Its fault ticket and its 退租 are N1's: N1 sees them, works them and its
    team is dispatched; N2 and N2's technician see neither (404) nor may move them."""
    a, _ = tenants
    n2, n2_admin = await sibling_agent(a, "aaaa-n2")
    pid = await add_product(a.vendor)  # with install service
    buyer = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    (did,) = await register(api, a.vid, 1)
    rental = await bought(a, buyer, did, pid, package="30d")
    assert rental["agent_id"] == a.agent_id
    n1_tech, n1_tech_client = await technician(
        a.agent, "n1-tech", skills=[1, 4, 6], is_default=True
    )
    n2_tech, n2_tech_client = await technician(
        n2_admin, "n2-tech", skills=[1, 4, 6], is_default=True
    )
    for client in (n1_tech_client, n2_tech_client):
        await client.call("PUT", "/technicians/me", {"work_state": 1})
    admins = {"vendor": a.vendor, "N1": a.agent, "N2": n2_admin}

    # The install ticket the delivery opened is N1's.
    (install,) = (await a.vendor.call("GET", "/tickets", params={"type": 1})).data
    assert await seen_by(admins, install["ticket_id"]) == {"vendor", "N1"}

    await moved(a, buyer, n2)
    fault = await buyer.client.call(
        "POST", "/tickets", {"type": 4, "device_id": did, "detail": "漏水"}, expect=201
    )
    tid = fault.data["ticket_id"]
    assert await seen_by(admins, tid) == {"vendor", "N1"}
    await n2_admin.call("POST", f"/tickets/{tid}/approve", {"check_result": True}, expect=404)
    await a.agent.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    chosen = await a.agent.call("POST", f"/tickets/{tid}/dispatch", {"mode": "hierarchy"})
    assert chosen.data["technician_id"] == n1_tech  # N1's team, not N2's (nor the vendor's)
    await n1_tech_client.call("POST", f"/tickets/{tid}/start", {})
    await n2_tech_client.call("GET", f"/tickets/{tid}", expect=404)
    assert n2_tech != n1_tech

    # 退租 (seed FAQ 1): the dismantle ticket is N1's too.
    end = await buyer.client.call(
        "POST", f"/orders/{rental['order_id']}/rental/end", {"device_id": did}, expect=201
    )
    assert await seen_by(admins, end.data["ticket_id"]) == {"vendor", "N1"}
    assert (await n2_admin.call("GET", "/tickets")).body["total"] == 0


async def test_a_returned_devices_dismantle_goes_to_the_node_that_sold_it(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """AD-14 after the member moved: the dismantle ticket of the installed device it gave back
    is the node of the returned order (N1), not the member's new node (N2)."""
    a, _ = tenants
    n2, n2_admin = await sibling_agent(a, "aaaa-n2")
    pid = await add_product(a.vendor, install=False, install_cost=0)
    buyer = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    (did,) = await register(api, a.vid, 1)
    order = await bought(a, buyer, did, pid)
    oid = order["order_id"]
    await buyer.client.call("POST", f"/orders/{oid}/status/confirm", expect=201)
    await Device.filter(did=did).update(installed_at=dt.datetime.now(dt.UTC))
    await moved(a, buyer, n2)
    await buyer.client.call("POST", f"/orders/{oid}/status/return", {"reason": "漏水"}, expect=201)
    await a.vendor.call("POST", f"/orders/{oid}/status/consent", expect=201)
    await a.vendor.call("PUT", f"/orders/{oid}/status/refund", expect=201)
    (dismantle,) = (await a.vendor.call("GET", "/tickets", params={"type": 6})).data
    assert dismantle["device_id"] == did
    admins = {"vendor": a.vendor, "N1": a.agent, "N2": n2_admin}
    assert await seen_by(admins, dismantle["ticket_id"]) == {"vendor", "N1"}


async def test_a_device_no_order_sold_is_its_members_node_and_its_own_node_comes_first(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """No order brought the device (the member bound it, AB-11): its tickets are the member's
    node's, the node it is under when the ticket opens. A device the vendor sold itself (the
    order has no node) stays the vendor's, whatever node its member is under later. A device
    allocated to a node is that node's, whoever sold it."""
    a, _ = tenants
    n2, n2_admin = await sibling_agent(a, "aaaa-n2")
    admins = {"vendor": a.vendor, "N1": a.agent, "dealer": a.dealer, "N2": n2_admin}
    pid = await add_product(a.vendor, install=False, install_cost=0)
    member = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    bound, by_vendor = await register(api, a.vid, 2)
    await member.client.call("POST", f"/devices/{bound}/bind", {}, expect=201)
    await moved(a, member, n2)
    opened = await member.client.call("POST", "/tickets", {"type": 4, "device_id": bound})
    assert await seen_by(admins, opened.data["ticket_id"]) == {"vendor", "N2"}

    # Sold by the vendor itself (the member was under no node): its tickets stay the vendor's.
    walk_in = await make_member(api_node, api, a.vid)
    assert (await bought(a, walk_in, by_vendor, pid))["agent_id"] is None
    await moved(a, walk_in, n2)
    opened = await walk_in.client.call("POST", "/tickets", {"type": 4, "device_id": by_vendor})
    assert await seen_by(admins, opened.data["ticket_id"]) == {"vendor"}

    # Allocated to N1's dealer: the dealer's (N1 above it sees it too), not the member's N2.
    await a.vendor.call("PUT", f"/devices/{bound}", {"agent_id": a.dealer_id})
    opened = await member.client.call("POST", "/tickets", {"type": 3, "device_id": bound})
    assert await seen_by(admins, opened.data["ticket_id"]) == {"vendor", "N1", "dealer"}


async def test_a_ticket_about_no_device_nor_member_is_the_node_that_opened_it(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """An agent or dealer opens a ticket naming neither a device nor a member (AE-03): it is
    that node's, so the node sees and works what it opened (it was the vendor's, out of sight
    of the node that opened it)."""
    a, _ = tenants
    _, n2_admin = await sibling_agent(a, "aaaa-n2")
    admins = {"vendor": a.vendor, "N1": a.agent, "dealer": a.dealer, "N2": n2_admin}
    by_agent = await a.agent.call("POST", "/tickets", {"type": 1, "detail": "展会安装"})
    assert await seen_by(admins, by_agent.data["ticket_id"]) == {"vendor", "N1"}
    by_dealer = await a.dealer.call("POST", "/tickets", {"type": 5, "detail": "巡检"})
    assert await seen_by(admins, by_dealer.data["ticket_id"]) == {"vendor", "N1", "dealer"}
    await a.dealer.call(
        "POST", f"/tickets/{by_dealer.data['ticket_id']}/approve", {"check_result": True}
    )
    by_vendor = await a.vendor.call("POST", "/tickets", {"type": 1})
    assert await seen_by(admins, by_vendor.data["ticket_id"]) == {"vendor"}
