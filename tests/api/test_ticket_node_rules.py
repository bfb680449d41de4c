"""A ticket's node at work, through a real node on SQLite and PostgreSQL: the ticket says which
node it belongs to (`agent_id`), an install ticket names its delivery's order, the node that
sold a device (of no node) opens its tickets, and a dispatch stays on the ticket's line of nodes
(the vendor's technicians, the ticket's node's, those of the nodes above it)."""

from __future__ import annotations

from typing import Any

from aquafleet.models.tickets import Ticket
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.api.test_delivery_api import register
from tests.api.test_ticket_routing import bought, seen_by, sibling_agent
from tests.api.test_tickets_api import at, technician


async def test_an_install_ticket_names_its_delivery_order(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The install ticket a delivery opens carries the order (`order_id`; it had none)."""
    a, _ = tenants
    pid = await add_product(a.vendor)  # with install service
    buyer = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    (did,) = await register(api, a.vid, 1)
    order = await bought(a, buyer, did, pid)
    (install,) = (await a.vendor.call("GET", "/tickets", params={"type": 1})).data
    assert install["order_id"] == order["order_id"]
    read = await buyer.client.call("GET", f"/tickets/{install['ticket_id']}")
    assert read.data["order_id"] == order["order_id"]


async def test_a_ticket_says_which_node_it_belongs_to(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """`agent_id`: the node a ticket belongs to (an install's: its order's, as the device has
    none), to the admins, the technician and the member; null for a ticket of the vendor's."""
    a, _ = tenants
    pid = await add_product(a.vendor)  # with install service
    buyer = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    (did,) = await register(api, a.vid, 1)
    await bought(a, buyer, did, pid)
    (install,) = (await a.vendor.call("GET", "/tickets", params={"type": 1})).data
    tid = install["ticket_id"]
    assert install["agent_id"] == a.agent_id
    tech_id, tech = await technician(a.agent, "installer", skills=[1])
    await a.agent.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    sent = await a.agent.call("POST", f"/tickets/{tid}/dispatch", {"technician_id": tech_id})
    assert sent.data["ticket"]["agent_id"] == a.agent_id
    for reader in (a.vendor, a.agent, tech, buyer.client):
        assert (await reader.call("GET", f"/tickets/{tid}")).data["agent_id"] == a.agent_id
    by_vendor = await a.vendor.call("POST", "/tickets", {"type": 1, "detail": "展会"})
    assert by_vendor.data["agent_id"] is None


async def test_the_node_that_sold_a_device_opens_its_tickets(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A device of no node (the vendor's stock) shipped for an order of agent N1: N1 opens a
    fault ticket for it (404 before: the device is not allocated to N1), and the ticket is
    N1's. N1's dealer (the order is not its) and a sibling N2 may not; once the device is
    allocated to N2, it is N2's device and N1's ask answers 404."""
    a, _ = tenants
    n2, n2_admin = await sibling_agent(a, "aaaa-n2")
    pid = await add_product(a.vendor, install=False, install_cost=0)
    buyer = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    (did,) = await register(api, a.vid, 1)
    await bought(a, buyer, did, pid)
    body = {"type": 4, "device_id": did, "detail": "漏水"}
    opened = await a.agent.call("POST", "/tickets", body, expect=201)
    assert opened.data["user_id"] == buyer.uid
    assert (await Ticket.get(ticket_id=opened.data["ticket_id"])).agent_id == a.agent_id
    admins = {"vendor": a.vendor, "N1": a.agent, "dealer": a.dealer, "N2": n2_admin}
    assert await seen_by(admins, opened.data["ticket_id"]) == {"vendor", "N1"}
    for other in (a.dealer, n2_admin):
        await other.call("POST", "/tickets", body, expect=404)
    await a.vendor.call("PUT", f"/devices/{did}", {"agent_id": n2})
    await a.agent.call("POST", "/tickets", body, expect=404)
    await n2_admin.call("POST", "/tickets", body, expect=201)


async def test_a_dispatch_stays_on_the_tickets_line_of_nodes(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A ticket of N1's dealer: the vendor dispatches it to its own technicians, the dealer's
    or N1's, never to a sibling agent N2's (409 technician_other_node, the ticket stays
    approved); by distance, the nearest of those (N2's, nearer, is passed over)."""
    a, _ = tenants
    n2, n2_admin = await sibling_agent(a, "aaaa-n2")
    place = (22_270_000, 113_570_000)
    opened = await a.dealer.call(
        "POST", "/tickets", {"type": 4, "lat_e6": place[0], "lng_e6": place[1]}
    )
    tid = opened.data["ticket_id"]
    assert (await Ticket.get(ticket_id=tid)).agent_id == a.dealer_id
    await a.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    techs = {}
    for name, creator, where in (
        ("n2", n2_admin, place),
        ("vendor", a.vendor, (place[0] + 20_000, place[1])),
        ("n1", a.agent, (place[0] + 10_000, place[1])),
        ("dealer", a.dealer, (place[0] + 30_000, place[1])),
    ):
        techs[name], client = await technician(creator, f"{name}-tech", skills=[4])
        await at(client, where)

    path = f"/tickets/{tid}/dispatch"
    refused = await a.vendor.call("POST", path, {"technician_id": techs["n2"]}, expect=409)
    assert refused.body["code"] == "technician_other_node"
    assert refused.body["data"] == {
        "technician_id": techs["n2"], "technician_agent_id": n2, "agent_id": a.dealer_id,
    }  # fmt: skip
    ticket = (await a.vendor.call("GET", f"/tickets/{tid}")).data
    assert ticket["status"] == 2 and ticket["technician_id"] is None

    chosen = await a.vendor.call("POST", path, {"mode": "distance"})
    assert chosen.data["technician_id"] == techs["n1"]
    for name in ("vendor", "dealer", "n1"):
        sent = await a.vendor.call("POST", path, {"technician_id": techs[name]})
        assert sent.data["ticket"]["technician_id"] == techs[name]
    await a.vendor.call("POST", path, {"technician_id": techs["n2"]}, expect=409)


async def test_a_nodes_own_ticket_goes_to_no_technician_below_it_nor_beside_it(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A ticket of agent N1: its dealer's technician is below the ticket's node (the dealer
    does not see the ticket): refused, as N2's; N1's own and the vendor's take it."""
    a, _ = tenants
    _, n2_admin = await sibling_agent(a, "aaaa-n2")
    opened = await a.agent.call("POST", "/tickets", {"type": 5})
    tid = opened.data["ticket_id"]
    await a.agent.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    below, _ = await technician(a.dealer, "below-tech", skills=[5])
    beside, _ = await technician(n2_admin, "beside-tech", skills=[5])
    own, _ = await technician(a.agent, "own-tech", skills=[5])
    vendors, _ = await technician(a.vendor, "vendors-tech", skills=[5])
    path = f"/tickets/{tid}/dispatch"
    await a.agent.call("POST", path, {"technician_id": below}, expect=409)
    await a.vendor.call("POST", path, {"technician_id": beside}, expect=409)
    await a.agent.call("POST", path, {"technician_id": own})
    await a.vendor.call("POST", path, {"technician_id": vendors})
