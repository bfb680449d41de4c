"""Who earns from a renewal (docs/commissions.md), through a real node on SQLite and
PostgreSQL: the referrer and the agent node of the order that brought the device to the member
(followed through exchanges, 换机), never the member's own of the moment, so a referral code at
checkout, a referrer set or changed later, or a member moved to another node does not move the
commission stream of a rental someone else sold. A device the member got otherwise earns as any
order of the member without a code."""

from __future__ import annotations

from typing import Any

from aquafleet.models.commission_check import check_commissions
from aquafleet.models.money import GUARDED_PREFIXES, check_ledger
from aquafleet.models.order_payment import mark_paid
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import Shopper, add_product, make_member
from tests.api.test_delivery_api import PARCEL, register
from tests.api.test_orders_api import order_body
from tests.api.test_renewals_api import applier
from tests.api.test_ticket_work_api import exchange_ticket


async def rented(tenant: Tenant, buyer: Shopper, did: str, pid: str, code: str) -> dict[str, Any]:
    """`did` rented by `buyer` (30 days) with the referral code `code`, paid and delivered."""
    body = {**order_body({"product_id": pid, "package": "30d"}), "referral_code": code}
    order = (await buyer.client.call("POST", "/orders", body)).data
    await mark_paid(order["order_id"], admin=PLATFORM_USER, reason="test")
    await tenant.vendor.call(
        "POST", f"/orders/{order['order_id']}/delivery", {**PARCEL, "devices": [did]}
    )
    return dict(order)


async def renewed(node: Any, buyer: Shopper, did: str) -> dict[str, Any]:
    """`did` renewed by `buyer` for 60 days (12000 fen of rent), paid: the renewal is done."""
    body = {"did": did, "package": "60d"}
    order = (await buyer.client.call("POST", "/orders/renewals", body)).data
    paid = await mark_paid(
        order["order_id"], admin=PLATFORM_USER, reason="test", apply_service=applier(node)
    )
    assert paid.state.name == "DONE"
    return dict(order)


async def earners(tenant: Tenant, oid: str) -> list[tuple[int, str, int]]:
    """The order's levels as its vendor reads them (AE-01)."""
    params = {"order_id": oid, "sort": "level", "order": "asc"}
    listed = await tenant.vendor.call("GET", "/commission", params=params)
    return [(c["level"], c["earner"], c["amount"]) for c in listed.data]


async def test_a_renewal_pays_the_referrer_of_the_rental_not_the_members_own_of_the_moment(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The buyer, referred by `own` under the dealer, rented with `seller`'s code (a member
    under the agent): every renewal of that device, also after its referrer is changed and after
    an exchange gave it another device, pays `seller` and the agent, as the rental did."""
    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)  # commis [21, 9, 0]
    seller = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    own = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    later = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    buyer = await make_member(api_node, api, a.vid, agent_id=a.dealer_id, referrer_id=own.uid)
    shipped, replacement, bound = await register(api, a.vid, 3)
    rental = await rented(a, buyer, shipped, pid, seller.uid)
    assert (rental["rid"], rental["agent_id"]) == (seller.uid, a.agent_id)
    sold = [(1, f"member:{seller.uid}", 1260), (2, f"agent:{a.agent_id}", 540)]  # of 6000
    assert await earners(a, rental["order_id"]) == sold
    by_seller = [(1, f"member:{seller.uid}", 2520), (2, f"agent:{a.agent_id}", 1080)]  # of 12000

    first = await renewed(api_node, buyer, shipped)
    assert (first["rid"], first["agent_id"]) == (seller.uid, a.agent_id)
    assert await earners(a, first["order_id"]) == by_seller  # was own's and the dealer's

    # The buyer's referrer changes (an admin, AA-04): the rental's stream stays the seller's.
    await a.vendor.call("PUT", f"/users/{buyer.uid}", {"rid": later.uid})
    second = await renewed(api_node, buyer, shipped)  # a renewal of a renewal
    assert await earners(a, second["order_id"]) == by_seller

    # An exchange (换机) gives the buyer another device for the one the rental shipped.
    tid = await exchange_ticket(api, a.vendor, buyer, shipped)
    await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": replacement})
    third = await renewed(api_node, buyer, replacement)
    assert await earners(a, third["order_id"]) == by_seller

    # A device another member rented with the seller's code, let go (AB-13) and the buyer
    # bound (AB-11): no order of the buyer brought it, so the buyer's own referrer and node earn,
    # as from an order of the buyer without a code.
    neighbour = await make_member(api_node, api, a.vid)
    await rented(a, neighbour, bound, pid, seller.uid)
    await neighbour.client.call("DELETE", f"/devices/{bound}/bind")
    await buyer.client.call("POST", f"/devices/{bound}/bind", {})
    own_renewal = await renewed(api_node, buyer, bound)
    assert (own_renewal["rid"], own_renewal["agent_id"]) == (later.uid, a.dealer_id)
    assert await earners(a, own_renewal["order_id"]) == [
        (1, f"member:{later.uid}", 2520), (2, f"agent:{a.dealer_id}", 1080),
    ]  # fmt: skip
    assert await check_commissions() == []
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []


async def test_a_renewal_pays_the_node_that_sold_the_rental_not_the_members_own(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A member of the dealer rented with the agent's own code (`A<id>`): its renewals pay the
    agent alone, as the rental did, not the dealer (and the agent above it), also after an admin
    moved the member to another node."""
    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)  # commis [21, 9, 0]
    buyer = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    (did,) = await register(api, a.vid, 1)
    rental = await rented(a, buyer, did, pid, f"A{a.agent_id}")
    assert (rental["rid"], rental["agent_id"]) == (None, a.agent_id)
    assert await earners(a, rental["order_id"]) == [(1, f"agent:{a.agent_id}", 1260)]

    renewal = await renewed(api_node, buyer, did)
    assert (renewal["rid"], renewal["agent_id"]) == (None, a.agent_id)
    by_agent = [(1, f"agent:{a.agent_id}", 2520)]
    assert await earners(a, renewal["order_id"]) == by_agent  # was the dealer's, then the agent's
    await a.vendor.call("PUT", f"/users/{buyer.uid}", {"agent_id": a.agent_id})
    await a.vendor.call("PUT", f"/users/{buyer.uid}", {"agent_id": a.dealer_id})
    again = await renewed(api_node, buyer, did)
    assert await earners(a, again["order_id"]) == by_agent
    # The renewals are the agent's as the rental is (AD-01 scopes by the order's node): the
    # dealer sees none of them.
    seen = await a.agent.call("GET", "/orders", params={"type": 3})
    assert {o["order_id"] for o in seen.data} == {renewal["order_id"], again["order_id"]}
    assert (await a.dealer.call("GET", "/orders")).body["total"] == 0
    assert await check_commissions() == []
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []
