"""The rest of the shop (issue 13) through a real node on SQLite and PostgreSQL: referral codes
at checkout, trial and quality-check devices, AD-01's filters, refused returns, renewals whose
device left, and the state conflicts' code."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aquafleet.models.agents import Agent, AgentState
from aquafleet.models.devices import Device, DeviceType
from aquafleet.models.members import Member, MemberState
from aquafleet.models.orders import Order, OrderState, agent_referral_code, mark_paid
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import add_product, make_member, seed_product
from tests.api.test_delivery_api import PARCEL, register
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


# ----------------------------------------------------------------------------- trial, test devices


async def test_a_trial_product_starts_each_rental_with_its_free_days(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    free_week = {"name": "7天试用", "key": "trial", "value": 0, "days": 7}
    month = {"name": "30天", "key": "30d", "value": 6000, "days": 30}
    rent = {"deposit": 0, "config": [free_week, month], "trial_days": 7}
    pid = await add_product(a.vendor, billing=2, install=False, install_cost=0, rent=rent)
    read = (await a.vendor.call("GET", f"/products/{pid}")).data
    assert read["rent"]["trial_days"] == 7
    # Trial days only on time rentals, 0..365.
    for bad, status in (({"billing": 1, "rent": {"trial_days": 3}}, 422),
                        ({"rent": {**rent, "trial_days": 366}}, 422)):  # fmt: skip
        await a.vendor.call("POST", "/products", seed_product(**bad), expect=status)
    shopper = await make_member(api_node, api, a.vid)
    oid = (
        await shopper.client.call(
            "POST",
            "/orders",
            order_body(
                {"product_id": pid, "package": "30d"}, {"product_id": pid, "package": "trial"}
            ),
        )
    ).data["order_id"]
    order = (await shopper.client.call("GET", f"/orders/{oid}")).data
    assert order["amounts"]["rent"] == 6000 and order["amounts"]["total"] == 6000 + 2 * 1000
    # The trial days are kept with the order: a later change does not shorten its devices'.
    await a.vendor.call("PUT", f"/products/{pid}", {"rent": {**rent, "trial_days": 0}}, expect=201)
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    paid_month, free = await register(api, a.vid, 2)
    before = int(dt.datetime.now(dt.UTC).timestamp())
    await a.vendor.call(
        "POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [paid_month, free]}, expect=201
    )
    for did, days in ((paid_month, 30 + 7), (free, 7 + 7)):
        svc = (await shopper.client.call("GET", f"/devices/{did}/svc")).data
        assert (svc["mode"], svc["locked"]) == (2, False)
        expires = dt.datetime.strptime(svc["rental_expires_at"], "%Y-%m-%dT%H:%M:%SZ")
        at = int(expires.replace(tzinfo=dt.UTC).timestamp())
        assert before + days * 86_400 - 5 <= at <= before + days * 86_400 + 60, (did, days)


async def test_a_quality_check_device_is_never_shipped_locked_for_quota_or_billed(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    oid = (await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))).data[
        "order_id"
    ]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    (qc,) = await register(api, a.vid, 1)
    await Device.filter(did=qc).update(type=DeviceType.TEST)
    refused = await a.vendor.call(
        "POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [qc]}, expect=409
    )
    assert "type 8" in refused.body["message"]
    assert (await Order.get(oid=oid)).state is OrderState.PAID
