"""The rest of the shop (issue 13) through a real node on SQLite and PostgreSQL: referral codes
at checkout, trial and quality-check devices, AD-01's filters, refused returns, renewals whose
device left, and the state conflicts' code."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aquafleet.models.agents import Agent, AgentState
from aquafleet.models.devices import Device, DeviceType
from aquafleet.models.members import Member, MemberState
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.order_referrals import agent_referral_code
from aquafleet.models.orders import Order, OrderState
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


# ----------------------------------------------------------------------------- AD-01 filters


async def test_ad01_filters_sort_and_pages(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    pid = await add_product(a.vendor)  # sold 298000 (+1000 freight, +5000 install) or rented
    one = await make_member(api_node, api, a.vid)
    two = await make_member(api_node, api, a.vid)

    async def new_order(shopper: Any, line: dict[str, Any]) -> str:
        answer = await shopper.client.call("POST", "/orders", order_body(line), expect=201)
        return str(answer.data["order_id"])

    bought = await new_order(one, {"product_id": pid})  # total 304000
    rented = await new_order(one, {"product_id": pid, "package": "30d"})  # 62000
    unpaid = await new_order(two, {"product_id": pid})  # 304000, made two days ago
    await Order.filter(oid=unpaid).update(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    d1, d2 = await register(api, a.vid, 2)
    for oid, did in ((bought, d1), (rented, d2)):
        await mark_paid(oid, admin=PLATFORM_USER, reason="test")
        body = {**PARCEL, "devices": [did]}
        await a.vendor.call("POST", f"/orders/{oid}/delivery", body, expect=201)
    renewal = (
        await one.client.call("POST", "/orders/renewals", {"did": d2, "package": "30d"}, expect=201)
    ).data["order_id"]  # 6000, unpaid

    async def listed(client: ApiClient = api, **params: Any) -> list[str]:
        answer = await client.call("GET", "/orders", params=params)
        return [o["order_id"] for o in answer.data]

    assert set(await listed(device=d2)) == {rented, renewal}
    assert set(await listed(device=d1)) == {bought}
    assert await listed(device="AAAA99999999ABCD") == []
    await api.call("GET", "/orders", params={"device": "AAAA1"}, expect=422)
    assert await listed(two.client, device=d1) == []  # another member's order
    assert await listed(b.vendor, device=d1) == []  # another tenant's
    assert await listed(one.client, device=d1) == [bought]
    assert set(await listed(state=2)) == {bought, rented}
    assert set(await listed(state=0)) == {unpaid, renewal}
    assert set(await listed(type=1)) == {bought, unpaid}
    assert await listed(type=2) == [rented]
    assert await listed(type=3) == [renewal]
    assert await listed(uid=two.uid) == [unpaid]
    assert await listed(uid=one.uid, type=1) == [bought]
    assert await listed(uid=one.uid, device=d2, type=3) == [renewal]
    day_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await listed(until=day_ago) == [unpaid]
    assert set(await listed(since=day_ago)) == {bought, rented, renewal}
    assert set(await listed(since=day_ago, state=2, device=d1)) == {bought}

    # Sort and pages: newest first by default; by total with ties in creation order.
    assert await listed() == [renewal, rented, bought, unpaid]
    assert await listed(order="asc") == [unpaid, bought, rented, renewal]
    assert await listed(sort="total", order="asc") == [renewal, rented, bought, unpaid]
    assert await listed(sort="total", order="desc") == [unpaid, bought, rented, renewal]
    page = await api.call(
        "GET", "/orders", params={"sort": "total", "order": "asc", "limit": 2, "offset": 1}
    )
    assert [o["order_id"] for o in page.data] == [rented, bought]
    assert page.body["total"] == 4  # all that match, whatever the page
    assert await listed(sort="state", order="asc", limit=2) == [unpaid, renewal]
    for bad in ({"sort": "price"}, {"limit": 0}, {"offset": -1}, {"state": 9}, {"type": 4}):
        await api.call("GET", "/orders", params=bad, expect=422)


# ----------------------------------------------------------------------------- the shell


async def test_deliver_from_the_shell(
    database_url: str, node_factory: Any, tmp_path: Any
):  # the database first: it is torn down after the node
    import json

    from aquafleet.gateway.appkeys import SERVICE_STORE
    from aquafleet.models.accounts import create_account
    from aquafleet.models.members import member_uid
    from aquafleet.models.order_placing import LineRequest, OrderRequest, create_order
    from aquafleet.models.products import create_product
    from aquafleet.models.service import DeviceService, ServiceMode
    from aquafleet.models.tenancy import Role
    from tests.api.conftest import PASSWORD, md5
    from tests.api.test_orders_api import RECEIVER
    from tests.conftest import MASTER_SECRET, REDIS_URL, TEST_SHARDS
    from tests.devices import register_devices
    from tests.platform.test_cli import aquafleet, clean_env

    node = await node_factory(database_url=database_url)
    sold, rented, third = await register_devices(node, 3, vendor="SHOP")
    await create_account("ops", md5(PASSWORD), Role.PLATFORM)
    member = await Member.create(uid=member_uid("SHOP", 1), vendor_id="SHOP", name="m", state=2)
    month = {"name": "30天", "key": "30d", "value": 6000, "days": 30}
    product = await create_product(
        "SHOP",
        {"name": "净水机", "billing": 3, "price_fen": 100, "state": 1, "rent_packages": [month]},
    )
    lines = [LineRequest(product.pid), LineRequest(product.pid, package="30d")]
    order, _ = await create_order(member, OrderRequest(lines, RECEIVER))
    second, _ = await create_order(member, OrderRequest([LineRequest(product.pid)], RECEIVER))
    env = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=database_url,
        redis_url=REDIS_URL, redis_prefix=node.settings.redis_prefix, redis_shards=TEST_SHARDS,
    )  # fmt: skip
    ship = ["--company", "顺丰速运", "--tracking", "SF1234567890", "--clerk", "李四"]
    deliver = ("orders", "deliver", order.oid, "--admin", "ops", *ship)
    code, out = await aquafleet(env, *deliver, "--did", sold.did, "--did", rented.did)
    assert code != 0 and "obligation" in out, out  # not paid yet
    await mark_paid(order.oid, admin="ops", reason="cash")
    await mark_paid(second.oid, admin="ops", reason="cash")
    code, out = await aquafleet(env, *deliver, "--did", sold.did)
    assert code != 0 and "2 units" in out, out
    code, out = await aquafleet(
        env, "orders", "deliver", order.oid, "--admin", "nobody", *ship, "--did", sold.did
    )
    assert code != 0 and "platform admin" in out, out
    code, out = await aquafleet(env, *deliver, "--did", sold.did, "--did", rented.did)
    assert code == 0, out
    assert "delivered" in out and f"shipped {sold.did}, {rented.did} with 顺丰速运" in out, out
    code, out = await aquafleet(env, *deliver, "--did", sold.did, "--did", rented.did)
    assert code != 0 and "delivered" in out, out  # once

    code, out = await aquafleet(
        env, "orders", "deliver", second.oid, "--admin", "ops", *ship, "--did", third.did,
        "--json",
    )  # fmt: skip
    assert code == 0, out
    shipped = json.loads(out)
    assert (shipped["oid"], shipped["state"]) == (second.oid, "delivered")
    assert shipped["delivery"]["devices"] == [third.did]
    assert shipped["delivery"]["tracking_num"] == "SF1234567890"
    # The same models call as AD-05: bound, configured through the node's Redis.
    owners = await Device.filter(did__in=[sold.did, rented.did, third.did]).values_list(
        "owner_id", flat=True
    )
    assert set(owners) == {member.uid}
    modes = {s.did: s.mode for s in await DeviceService.all()}
    assert modes == {sold.did: ServiceMode.SALE, rented.did: ServiceMode.TIME_RENTAL,
                     third.did: ServiceMode.SALE}  # fmt: skip
    assert (await node.app[SERVICE_STORE].read(rented.did)).rental_expires_at is not None
    assert (await Order.get(id=order.id)).state is OrderState.DELIVERED


# ----------------------------------------------------------------------------- refused returns


async def test_the_vendor_refuses_a_return_with_a_reason(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    from aquafleet.models.order_timers import sweep
    from aquafleet.models.orders import OrderTransition
    from tests.api.test_orders_api import _order_in

    a, b = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    order = await _order_in(OrderState.RECEIVED, a.vid, shopper.uid, pid)
    received = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    await Order.filter(id=order.id).update(received_at=received)
    oid = order.oid
    asked = await shopper.client.call(
        "POST", f"/orders/{oid}/status/return", {"reason": "漏水"}, expect=201
    )
    assert asked.data["state_name"] == "return" and asked.data["return_refused"] is None

    path = f"/orders/{oid}/status/refuse"
    no = {"reason": "the seal is broken: not returnable"}
    await shopper.client.call("POST", path, no, expect=403)
    await a.agent.call("POST", path, no, expect=403)
    await b.vendor.call("POST", path, no, expect=404)
    await a.vendor.call("POST", path, {}, expect=422)
    await a.vendor.call("POST", path, {"reason": ""}, expect=422)
    refused = await a.vendor.call("POST", path, no, expect=201)
    assert refused.data["state_name"] == "received"
    assert refused.data["return_refused"] == no["reason"]
    assert refused.data["return_reason"] == "漏水"  # what the member asked stays
    stored = await Order.get(id=order.id)
    assert stored.received_at == received  # the window goes on from the receipt
    move = await OrderTransition.get(order_id=order.id, event="refuse")
    assert (move.from_state, move.to_state, move.actor_role, move.reason) == (
        OrderState.RETURN, OrderState.RECEIVED, "vendor", no["reason"],
    )  # fmt: skip
    seen = await shopper.client.call("GET", f"/orders/{oid}")
    assert seen.data["return_refused"] == no["reason"]

    # Refused once is final: no second request, no consent, no second refusal.
    again = await shopper.client.call(
        "POST", f"/orders/{oid}/status/return", {"reason": "please"}, expect=409
    )
    assert "refused" in again.body["message"]
    await a.vendor.call("POST", f"/orders/{oid}/status/consent", expect=409)
    await a.vendor.call("POST", path, no, expect=409)
    # The return window's timer ends the order in done when the 7 days are over.
    assert (await sweep(received + dt.timedelta(days=6))).done == 0
    assert (await sweep(received + dt.timedelta(days=7, seconds=1))).done == 1
    assert (await Order.get(id=order.id)).state is OrderState.DONE


# ----------------------------------------------------------------------------- renewals


async def test_a_renewal_paid_after_its_device_left_the_member_is_not_applied(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    import pytest

    from aquafleet.models.money import Refund, RefundState
    from aquafleet.models.orders import OrderTransition
    from aquafleet.models.renewals import RenewalDeviceGone
    from aquafleet.models.service import DeviceService
    from tests.api.test_renewals_api import applier, delivered

    a, _ = tenants
    pid = await add_product(a.vendor)  # rented by days
    shopper = await make_member(api_node, api, a.vid)
    kept, unbound = await register(api, a.vid, 2)
    for did in (kept, unbound):
        await delivered(api_node, a, shopper, did, {"product_id": pid, "package": "30d"})
    renewals = {}
    for did in (kept, unbound):
        answer = await shopper.client.call(
            "POST", "/orders/renewals", {"did": did, "package": "60d"}, expect=201
        )
        renewals[did] = answer.data["order_id"]
    expires = (await DeviceService.get(did=unbound)).rental_expires_at
    # The member gives the device up (AB-13 unbind) before the renewal is paid.
    await shopper.client.call("DELETE", f"/devices/{unbound}/bind", expect=204)
    assert (await Device.get(did=unbound)).owner_id is None

    for attempt in ("first", "retried"):
        with pytest.raises(RenewalDeviceGone, match="no longer held") as gone:
            await mark_paid(renewals[unbound], admin=PLATFORM_USER, reason=attempt,
                            apply_service=applier(api_node))  # fmt: skip
        assert gone.value.code == "renewal_device_gone"
    order = await Order.get(oid=renewals[unbound])
    assert order.state is OrderState.PAID  # paid, not renewed: what was paid is refunded, once
    refunds = await Refund.filter(order_oid=order.oid)
    assert [(r.refund_no, r.amount_fen, r.state) for r in refunds] == [
        (f"renewal-{order.oid}", order.total_fen, RefundState.DUE)
    ]
    moves = await OrderTransition.filter(order_id=order.id).values_list("event", flat=True)
    assert list(moves) == ["pay"]
    assert (await DeviceService.get(did=unbound)).rental_expires_at == expires  # unchanged
    # The device the member still holds renews as before.
    done = await mark_paid(renewals[kept], admin=PLATFORM_USER, reason="ok",
                           apply_service=applier(api_node))  # fmt: skip
    assert done.state is OrderState.DONE


# ----------------------------------------------------------------------------- state conflicts


async def test_a_refused_move_answers_order_state_conflict_with_the_state(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    oid = (await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))).data[
        "order_id"
    ]
    unpaid = {"state": 0, "state_name": "obligation"}
    paid = {"state": 1, "state_name": "paid"}
    cases = [
        (shopper.client, "POST", f"/orders/{oid}/status/confirm", None, unpaid),
        (a.vendor, "POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": ["AAAA00000001ABCD"]},
         unpaid),
        (a.vendor, "PUT", f"/orders/{oid}/delivery", {"tracking_num": "X1"}, unpaid),
        (api, "DELETE", f"/orders/{oid}?confirm={oid}", None, unpaid),
    ]  # fmt: skip
    for client, method, path, body, state in cases:
        answer = await client.call(method, path, body, expect=409)
        assert answer.code == "order_state_conflict", (path, answer)
        assert answer.body["data"] == state and state["state_name"] in answer.body["message"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    for client, path in ((shopper.client, f"/orders/{oid}/status/close"),
                         (a.vendor, f"/orders/{oid}/status/consent")):  # fmt: skip
        answer = await client.call("POST", path, expect=409)
        assert (answer.code, answer.body["data"]) == ("order_state_conflict", paid)
    # Other conflicts keep their own codes.
    (did,) = await register(api, a.vid, 1)
    other = await make_member(api_node, api, a.vid)
    await Device.filter(did=did).update(owner_id=other.uid)
    bound = await a.vendor.call(
        "POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]}, expect=409
    )
    assert bound.code == "device_bound" and bound.body["data"] is None
