"""The rest of the shop (issue 13) through a real node on SQLite and PostgreSQL: referral codes
at checkout, trial and quality-check devices, AD-01's filters, refused returns, renewals whose
device left, and the state conflicts' code."""

from __future__ import annotations

from typing import Any

from aquafleet.models.agents import Agent, AgentState
from aquafleet.models.members import Member, MemberState
from aquafleet.models.orders import Order, agent_referral_code
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.api.test_orders_api import order_body


async def test_a_referral_code_at_checkout_attributes_the_order(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    pid = await add_product(a.vendor)
    referrer = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    own_referrer = await make_member(api_node, api, a.vid)
    buyer = await make_member(api_node, api, a.vid, referrer_id=own_referrer.uid)
    other_vendors = await make_member(api_node, api, b.vid, agent_id=b.agent_id)

    async def checkout(code: str | None, expect: int = 201) -> Any:
        body = order_body({"product_id": pid})
        if code is not None:
            body["referral_code"] = code
        return await buyer.client.call("POST", "/orders", body, expect=expect)

    plain = (await checkout(None)).data  # the member's own node and referrer
    assert (plain["agent_id"], plain["rid"]) == (None, own_referrer.uid)
    by_member = (await checkout(referrer.uid)).data  # the referrer's node
    assert (by_member["agent_id"], by_member["rid"]) == (a.dealer_id, referrer.uid)
    by_agent = (await checkout(agent_referral_code(a.agent_id))).data
    assert (by_agent["agent_id"], by_agent["rid"]) == (a.agent_id, None)
    by_dealer = (await checkout(f"a{a.dealer_id}")).data  # case does not matter
    assert by_dealer["agent_id"] == a.dealer_id
    stored = await Order.get(oid=by_member["order_id"])
    assert (stored.agent_id, stored.referrer_uid) == (a.dealer_id, referrer.uid)

    # The attributed node sees the order: the dealer those referred to it, the agent its
    # whole subtree.
    listed = await a.dealer.call("GET", "/orders")
    assert {o["order_id"] for o in listed.data} == {by_member["order_id"], by_dealer["order_id"]}
    listed = await a.agent.call("GET", "/orders")
    assert {o["order_id"] for o in listed.data} == {
        by_member["order_id"], by_dealer["order_id"], by_agent["order_id"]
    }  # fmt: skip

    disabled = await make_member(api_node, api, a.vid, state=MemberState.DISABLED)
    stopped = await Agent.create(vendor_id=a.vid, level=1, name="stopped", path="/x/",
                                 state=AgentState.DISABLED)  # fmt: skip
    before = await Order.filter(member_id=buyer.uid).count()
    for code in (
        "nonsense",
        buyer.uid,  # itself
        other_vendors.uid,  # another vendor's member
        agent_referral_code(b.agent_id),  # another vendor's agent
        "A999999",
        "A0",
        disabled.uid,
        agent_referral_code(stopped.id),
        referrer.uid[:-1] + ("0" if referrer.uid[-1] != "0" else "1"),  # a check digit wrong
    ):
        refused = await checkout(code, expect=400)
        assert refused.code == "referral_invalid", (code, refused)
        assert "referral" in refused.body["message"]
    await checkout("", expect=422)  # an empty code is a schema error
    assert await Order.filter(member_id=buyer.uid).count() == before
    assert (await Member.get(uid=buyer.uid)).referrer_id == own_referrer.uid  # not changed
