"""Commissions through a real node on SQLite and PostgreSQL (docs/api-commissions.md): AE-01
list and AE-02 summary scoped to the caller (every earner its own, a vendor its own, nobody
another vendor's), AE-03 withdrawals with their rules, the agents' 佣金列表 with its totals and
CSV; the invariants hold after the scenario."""

from __future__ import annotations

import csv
import io
from typing import Any

from aquafleet.models.commission_check import check_commissions
from aquafleet.models.money import GUARDED_PREFIXES, check_ledger
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.order_states import SYSTEM, fire
from aquafleet.models.orders import Order, OrderEvent
from aquafleet.models.tenancy import Role
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import Shopper, add_product, make_member

COMMIS = {"enabled": True, "config": [21, 9, 3]}
RECEIVER = {"name": "张三", "phone": "13800138000", "address": "珠海"}


async def chain(node: Any, api: ApiClient, tenant: Tenant) -> tuple[Shopper, Shopper, Shopper]:
    """m1 <- m2 <- buyer (referrers), all three under the tenant's dealer."""
    m1 = await make_member(node, api, tenant.vid, agent_id=tenant.dealer_id)
    m2 = await make_member(node, api, tenant.vid, agent_id=tenant.dealer_id, referrer_id=m1.uid)
    buyer = await make_member(node, api, tenant.vid, agent_id=tenant.dealer_id, referrer_id=m2.uid)
    return m1, m2, buyer


async def bought_and_done(tenant: Tenant, buyer: Shopper, pid: str) -> str:
    body = {"content": [{"product_id": pid, "quantity": 1}], "receiver": RECEIVER}
    oid = str((await buyer.client.call("POST", "/orders", body)).data["order_id"])
    order = await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    for event, role in (
        (OrderEvent.DELIVER, Role.VENDOR.value),
        (OrderEvent.CONFIRM, Role.MEMBER.value),
        (OrderEvent.FINISH, SYSTEM),
    ):
        order = await fire(order, event, actor_role=role, actor_id="test")
    return oid


async def test_earners_see_their_own_vendors_theirs_and_withdrawals_keep_the_rules(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    pid = await add_product(a.vendor, commis=COMMIS)  # goods 298000 (+ freight, install)
    m1, m2, buyer = await chain(api_node, api, a)
    other_member = await make_member(api_node, api, b.vid)
    body = {"content": [{"product_id": pid, "quantity": 1}], "receiver": RECEIVER}
    oid = str((await buyer.client.call("POST", "/orders", body)).data["order_id"])
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")

    # AE-01: the vendor sees every level; each earner its own; the buyer earns nothing.
    listed = await a.vendor.call("GET", "/commission", params={"sort": "level", "order": "asc"})
    assert listed.body["total"] == 3
    assert [(c["level"], c["earner"], c["amount"], c["state_name"]) for c in listed.data] == [
        (1, f"member:{m2.uid}", 62580, "pending"),
        (2, f"member:{m1.uid}", 26820, "pending"),
        (3, f"agent:{a.dealer_id}", 8940, "pending"),
    ]
    assert all(c["order_id"] == oid and c["base"] == 298000 for c in listed.data)
    mine = await m2.client.call("GET", "/commission")
    assert [(c["level"], c["amount"]) for c in mine.data] == [(1, 62580)]
    assert (await a.dealer.call("GET", "/commission")).data[0]["earner"] == f"agent:{a.dealer_id}"
    assert (await a.agent.call("GET", "/commission")).body["total"] == 0
    assert (await buyer.client.call("GET", "/commission")).body["total"] == 0
    # Nobody of vendor B sees any of it, even naming the order; naming the earner is 404.
    for client in (b.vendor, b.agent, b.dealer, other_member.client):
        for params in ({}, {"order_id": oid}):
            assert (await client.call("GET", "/commission", params=params)).body["total"] == 0
        await client.call("GET", "/commission", params={"earner": f"member:{m2.uid}"}, expect=404)
    assert (await api.call("GET", "/commission", params={"vid": "AAAA"})).body["total"] == 3

    # AE-02: pending until the order is done.
    summary = (await m2.client.call("GET", "/commission/summary")).data
    assert (summary["pending"], summary["available"], summary["earner"]) == (
        62580, 0, f"member:{m2.uid}",
    )  # fmt: skip
    vendor_sum = (await a.vendor.call("GET", "/commission/summary")).data
    assert (vendor_sum["pending"], vendor_sum["earned"]) == (98340, 98340)
    b_sum = (await b.vendor.call("GET", "/commission/summary")).data
    assert (b_sum["pending"], b_sum["earned"]) == (0, 0)
    # Another vendor's earner, or another earner, is not found (never zeros under its name).
    for client in (b.vendor, m1.client):
        await client.call(
            "GET", "/commission/summary", params={"earner": f"member:{m2.uid}"}, expect=404
        )

    order = await Order.get(oid=oid)
    for event, role in (
        (OrderEvent.DELIVER, Role.VENDOR.value),
        (OrderEvent.CONFIRM, Role.MEMBER.value),
        (OrderEvent.FINISH, SYSTEM),
    ):
        order = await fire(order, event, actor_role=role, actor_id="test")
    summary = (await m2.client.call("GET", "/commission/summary")).data
    assert (summary["pending"], summary["available"]) == (0, 62580)

    # AE-03: withdraw; the same request id answers the first; the 30 s rule; the minimum; the
    # balance; vendors earn nothing to withdraw.
    first = await m2.client.call("POST", "/commission", {"amount": 50000, "request_id": "w-1"})
    assert first.status == 201 and first.data["state_name"] == "requested", first
    again = await m2.client.call("POST", "/commission", {"amount": 50000, "request_id": "w-1"})
    assert again.data["id"] == first.data["id"]
    soon = await m2.client.call(
        "POST", "/commission", {"amount": 1000, "request_id": "w-2"}, expect=429
    )
    assert soon.code == "rate_limited" and 1 <= int(soon.headers["Retry-After"]) <= 30
    small = await m1.client.call(
        "POST", "/commission", {"amount": 99, "request_id": "s"}, expect=422
    )
    assert small.code == "invalid_input"
    broke = await m1.client.call(
        "POST", "/commission", {"amount": 26821, "request_id": "x"}, expect=409
    )
    assert broke.code == "insufficient_funds"
    await a.vendor.call("POST", "/commission", {"amount": 100, "request_id": "v"}, expect=403)
    dealer_w = await a.dealer.call("POST", "/commission", {"amount": 8940, "request_id": "d-1"})
    assert dealer_w.data["earner"] == f"agent:{a.dealer_id}"
    summary = (await m2.client.call("GET", "/commission/summary")).data
    assert (summary["available"], summary["payout"], summary["withdrawn"]) == (12580, 50000, 0)

    # Withdrawals, scoped as AE-01.
    assert (await m2.client.call("GET", "/commission/withdrawals")).body["total"] == 1
    assert (await a.vendor.call("GET", "/commission/withdrawals")).body["total"] == 2
    assert (await b.vendor.call("GET", "/commission/withdrawals")).body["total"] == 0
    assert (await api.call("GET", "/commission/withdrawals")).body["total"] == 2

    assert await check_commissions() == []
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []


async def test_a_withdrawals_request_id_again_answers_the_first_and_another_request_is_refused(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The same request_id with the same request is a retry: the first withdrawal, nothing
    moved twice. With another amount or channel it is idempotency_key_reused, as an order's
    Idempotency-Key is: answering the first would tell the earner its new request was made."""
    a, _ = tenants
    pid = await add_product(a.vendor, commis=COMMIS)
    _m1, m2, buyer = await chain(api_node, api, a)
    await bought_and_done(a, buyer, pid)  # m2 earns 62580, available
    body = {"amount": 50000, "request_id": "w-1"}
    first = await m2.client.call("POST", "/commission", body)
    assert first.status == 201 and first.data["channel"] == "manual", first  # no WeChat bound
    for retry in (body, {**body, "channel": "manual"}):
        again = await m2.client.call("POST", "/commission", retry)
        assert (again.status, again.data) == (201, first.data), retry
    for other, differs in (
        ({**body, "amount": 60000}, "amount 50000 fen, not 60000"),
        ({**body, "amount": 100}, "amount 50000 fen, not 100"),
        ({**body, "channel": "weixin"}, "channel manual, not weixin"),
    ):
        refused = await m2.client.call("POST", "/commission", other, expect=409)
        assert refused.code == "idempotency_key_reused", (other, refused)
        assert differs in refused.body["message"], refused
        assert refused.body["data"] == {"withdrawal_id": first.data["id"]}
    # One withdrawal of 50000, moved once.
    summary = (await m2.client.call("GET", "/commission/summary")).data
    assert (summary["available"], summary["payout"]) == (12580, 50000)
    listed = await m2.client.call("GET", "/commission/withdrawals")
    assert [(w["id"], w["amount"]) for w in listed.data] == [(first.data["id"], 50000)]
    assert await check_commissions() == []
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []


async def test_an_agents_commission_list_covers_its_subtree_with_totals_and_csv(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    pid = await add_product(a.vendor, commis={"enabled": True, "config": [10, 5, 3]})
    # A buyer without a referrer under the dealer: the dealer is level 1, its agent level 2.
    buyer = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    await bought_and_done(a, buyer, pid)
    await bought_and_done(a, buyer, pid)
    answer = await a.vendor.call("GET", f"/agents/{a.agent_id}/commissions")
    data = answer.data
    assert data["totals"] == {"count": 4, "amount": 2 * (29800 + 14900), "reversed": 0,
                              "kept": 2 * (29800 + 14900)}  # fmt: skip
    assert [(lv["level"], lv["amount"]) for lv in data["by_level"]] == [(1, 59600), (2, 29800)]
    assert len(data["by_month"]) == 1 and data["by_month"][0]["count"] == 4
    assert {e["earner"]: e["kept"] for e in data["by_earner"]} == {
        f"agent:{a.agent_id}": 29800,
        f"agent:{a.dealer_id}": 59600,
    }
    # The agent sees the same; its dealer only its own part; another vendor nothing.
    assert (await a.agent.call("GET", f"/agents/{a.agent_id}/commissions")).data == data
    dealer_view = await a.dealer.call("GET", f"/agents/{a.dealer_id}/commissions")
    assert dealer_view.data["totals"]["kept"] == 59600
    await a.dealer.call("GET", f"/agents/{a.agent_id}/commissions", expect=404)
    await b.vendor.call("GET", f"/agents/{a.agent_id}/commissions", expect=404)
    await b.agent.call("GET", f"/agents/{a.dealer_id}/commissions", expect=404)

    async with api.session.get(
        f"{api.base}/api/v1/agents/{a.agent_id}/commissions",
        params={"format": "csv"},
        headers={"Authorization": f"Bearer {a.vendor.token}"},
    ) as response:
        assert response.status == 200 and response.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert len(rows) == 4
    assert sorted(int(r["kept"]) for r in rows) == [14900, 14900, 29800, 29800]
    assert {r["earner"] for r in rows} == {f"agent:{a.agent_id}", f"agent:{a.dealer_id}"}
    assert all(r["create_tms"].endswith("Z") for r in rows)


async def test_an_agent_keeps_earning_from_a_rental_it_sold_when_it_is_renewed(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    from tests.api.test_delivery_api import register
    from tests.api.test_renewals_api import applier, delivered

    a, _ = tenants
    pid = await add_product(a.vendor, commis={"enabled": True, "config": [10, 5]})
    renter = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    (did,) = await register(api, a.vid, 1)
    first = await delivered(api_node, a, renter, did, {"product_id": pid, "package": "30d"})
    # The rental: 10 % and 5 % of the rent (6000), none of the deposit, freight or install fee.
    rows = (await a.vendor.call("GET", "/commission", params={"order_id": first})).data
    assert sorted((c["earner"], c["amount"], c["state_name"]) for c in rows) == [
        (f"agent:{a.agent_id}", 300, "pending"),
        (f"agent:{a.dealer_id}", 600, "pending"),
    ]
    body = {"did": did, "package": "60d"}
    renewal = (await renter.client.call("POST", "/orders/renewals", body)).data["order_id"]
    order = await mark_paid(
        renewal, admin=PLATFORM_USER, reason="test", apply_service=applier(api_node)
    )
    assert order.state.name == "DONE"  # a paid renewal is done at once: available at once
    rows = (await a.dealer.call("GET", "/commission", params={"order_id": renewal})).data
    assert [(c["amount"], c["base"], c["state_name"]) for c in rows] == [(1200, 12000, "available")]
    summary = (await a.agent.call("GET", "/commission/summary")).data
    assert (summary["pending"], summary["available"]) == (300, 600)
    assert await check_commissions() == []
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []
