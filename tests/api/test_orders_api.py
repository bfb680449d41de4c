"""Orders (AD-01..03, the state machine, mark-paid) through a real node on SQLite and
PostgreSQL: server-side amounts, snapshots, idempotent create, tenant scoping, every move of the
seed's state machine and every refused one."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from aquafleet.models.accounts import create_account
from aquafleet.models.errors import Forbidden, InvalidInput, NotFound
from aquafleet.models.members import Member, member_uid
from aquafleet.models.order_payment import mark_paid, pay_order
from aquafleet.models.order_placing import LineRequest, OrderRequest, create_order
from aquafleet.models.order_states import OrderStateConflict, fire
from aquafleet.models.orders import Order, OrderEvent, OrderState, OrderTransition
from aquafleet.models.tenancy import Role
from tests.api.conftest import PASSWORD, PLATFORM_USER, ApiClient, Tenant, md5
from tests.api.shop import SEED_PRODUCT, add_product, make_member
from tests.conftest import MASTER_SECRET
from tests.platform.test_cli import aquafleet, clean_env

RECEIVER = {
    "name": "张三",
    "phone": "13900000000",
    "area": "广东省珠海市香洲区",
    "address": "南方软件园A123",
    "zipcode": "519000",
}


def order_body(*lines: dict[str, Any], memo: str = "") -> dict[str, Any]:
    return {"content": list(lines), "receiver": RECEIVER, "memo": memo}


async def test_the_server_prices_every_line_and_the_order_keeps_the_product_as_bought(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)  # sold at 298000 or rented (30d: 6000), see SEED_PRODUCT
    shopper = await make_member(api_node, api, a.vid)
    answer = await shopper.client.call(
        "POST",
        "/orders",
        order_body(
            {"product_id": pid, "quantity": 2, "price": 1},  # a price sent is ignored
            {"product_id": pid, "package": "30d"},
            memo="请周末送货",
        ),
        expect=201,
    )
    order = answer.data
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    assert re.fullmatch(rf"{today}{a.vid}0{{11}}1", order["order_id"]), order["order_id"]
    assert (order["state"], order["state_name"], order["type"]) == (0, "obligation", 2)
    assert order["user_id"] == shopper.uid and order["vid"] == a.vid
    units = 3
    expected = {
        "goods": 2 * 298000,
        "freight": units * 1000,
        "install": units * 5000,
        "deposit": 50000,
        "rent": 6000,
    }
    expected["total"] = sum(expected.values())
    assert order["amounts"] == {**expected, "refund_due": 0}
    assert [(c["quantity"], c["package"], c["price"]) for c in order["content"]] == [
        (2, None, 298000),
        (1, "30d", 6000),
    ]
    assert order["content"][0]["amount"] == 2 * (298000 + 1000 + 5000)
    assert order["content"][1]["amount"] == 6000 + 50000 + 1000 + 5000
    assert order["receiver"] == RECEIVER and order["memo"] == "请周末送货"
    assert order["pay_tms"] is None and order["delivery"] is None

    # Later edits of the product never change the order.
    changed = {
        "price": 1,
        "name": "改名",
        "freight": 0,
        "rent": {**SEED_PRODUCT["rent"], "deposit": 0},
    }
    await a.vendor.call("PUT", f"/products/{pid}", changed, expect=201)
    again = await shopper.client.call("GET", f"/orders/{order['order_id']}")
    assert again.data == order
    assert again.data["content"][0]["name"] == SEED_PRODUCT["name"]
    # A new order pays the new price and takes the next serial.
    second = await shopper.client.call(
        "POST", "/orders", order_body({"product_id": pid}), expect=201
    )
    assert second.data["amounts"]["goods"] == 1 and second.data["order_id"].endswith("2")
    assert second.data["type"] == 1


async def test_a_retried_create_answers_the_first_order(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)
    one = await make_member(api_node, api, a.vid)
    two = await make_member(api_node, api, a.vid)
    body = order_body({"product_id": pid})
    key = {"Idempotency-Key": "retry-7f3a"}
    first = await one.client.call("POST", "/orders", body, headers=key, expect=201)
    retried = await one.client.call("POST", "/orders", body, headers=key, expect=201)
    assert retried.data == first.data
    assert await Order.filter(member_id=one.uid).count() == 1
    # The key is the member's own: another member's same key makes its own order.
    other = await two.client.call("POST", "/orders", body, headers=key, expect=201)
    assert other.data["order_id"] != first.data["order_id"]
    fresh = await one.client.call("POST", "/orders", body, headers={"Idempotency-Key": "b"})
    assert fresh.data["order_id"] != first.data["order_id"]
    too_long = {"Idempotency-Key": "k" * 65}
    await one.client.call("POST", "/orders", body, headers=too_long, expect=422)
    assert await Order.filter(member_id=one.uid).count() == 2


async def test_a_key_sent_again_with_another_order_is_refused(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    body = order_body({"product_id": pid})
    key = {"Idempotency-Key": "checkout-1"}
    first = await shopper.client.call("POST", "/orders", body, headers=key, expect=201)
    others = [
        order_body({"product_id": pid, "quantity": 2}),  # another quantity
        order_body({"product_id": pid, "package": "30d"}),  # rented, not bought
        {**body, "memo": "another memo"},
        {**body, "receiver": {**body["receiver"], "address": "another street 9"}},
        {**body, "referral_code": f"A{a.agent_id}"},
    ]
    for other in others:
        refused = await shopper.client.call("POST", "/orders", other, headers=key, expect=409)
        assert refused.body["code"] == "idempotency_key_reused"
        assert refused.body["data"] == {"order_id": first.data["order_id"]}
    again = await shopper.client.call("POST", "/orders", body, headers=key, expect=201)
    assert again.data == first.data  # the same request still answers the first order
    assert await Order.filter(member_id=shopper.uid).count() == 1


async def test_only_what_is_on_sale_can_be_ordered(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    sold = await add_product(a.vendor)
    draft = await add_product(a.vendor, state=0)
    rented_only = await add_product(a.vendor, billing=2)
    foreign = await add_product(b.vendor)
    retired = await add_product(a.vendor)
    await a.vendor.call("PUT", f"/products/{retired}", {"state": 2}, expect=201)
    shopper = await make_member(api_node, api, a.vid)
    cases = [
        ({"product_id": draft}, 404, "not_found"),
        ({"product_id": foreign}, 404, "not_found"),
        ({"product_id": retired}, 404, "not_found"),
        ({"product_id": "AAAA000000009999ABCD"}, 404, "not_found"),
        ({"product_id": sold, "package": "7d"}, 422, "invalid_input"),
        ({"product_id": rented_only}, 422, "invalid_input"),
        ({"product_id": sold, "quantity": 0}, 422, "validation_failed"),
        ({"product_id": sold, "quantity": 100}, 422, "validation_failed"),
        ({"product_id": sold, "quantity": 1.0}, 422, "validation_failed"),
        ({"product_id": sold, "price": -1}, 422, "validation_failed"),
    ]
    for line, status, code in cases:
        answer = await shopper.client.call("POST", "/orders", order_body(line), expect=status)
        assert answer.code == code, (line, answer)
    no_receiver = {"content": [{"product_id": sold}]}
    await shopper.client.call("POST", "/orders", no_receiver, expect=422)
    for admin in (api, a.vendor, a.agent):  # AD-02 is C
        await admin.call("POST", "/orders", order_body({"product_id": sold}), expect=403)
    assert await Order.all().count() == 0


async def test_orders_are_scoped_to_the_tenant(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    pid = await add_product(a.vendor)
    pid_b = await add_product(b.vendor)
    of_dealer = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    of_vendor = await make_member(api_node, api, a.vid)
    of_b = await make_member(api_node, api, b.vid)
    dealer_order = (
        await of_dealer.client.call("POST", "/orders", order_body({"product_id": pid}))
    ).data["order_id"]
    vendor_order = (
        await of_vendor.client.call("POST", "/orders", order_body({"product_id": pid}))
    ).data["order_id"]
    b_order = (await of_b.client.call("POST", "/orders", order_body({"product_id": pid_b}))).data[
        "order_id"
    ]

    async def listed(client: ApiClient, **params: Any) -> set[str]:
        answer = await client.call("GET", "/orders", params=params)
        assert answer.body["total"] == len(answer.data)
        return {o["order_id"] for o in answer.data}

    assert await listed(api) == {dealer_order, vendor_order, b_order}
    assert await listed(a.vendor) == {dealer_order, vendor_order}
    assert await listed(a.agent) == {dealer_order}  # the dealer is under the agent
    assert await listed(a.dealer) == {dealer_order}
    assert await listed(of_dealer.client) == {dealer_order}
    assert await listed(of_vendor.client) == {vendor_order}
    assert await listed(b.vendor) == {b_order}
    for client, oid in (
        (of_vendor.client, dealer_order),
        (a.agent, vendor_order),
        (b.vendor, dealer_order),
        (b.agent, dealer_order),
        (of_b.client, vendor_order),
    ):
        answer = await client.call("GET", f"/orders/{oid}", expect=404)
        assert answer.code == "not_found"
    await api.call("GET", "/orders/2026AAAA", expect=404)
    # Filters.
    assert await listed(api, vid=b.vid) == {b_order}
    assert await listed(api, uid=of_dealer.uid) == {dealer_order}
    assert await listed(api, state=1) == set()
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await listed(api, until=past) == set()
    assert len(await listed(api, since=past)) == 3
    await api.call("GET", "/orders", params={"since": "2026-01-01T00:00:00"}, expect=422)
    newest = await api.call("GET", "/orders", params={"limit": 1})
    assert [o["order_id"] for o in newest.data] == [b_order] and newest.body["total"] == 3


# ----------------------------------------------------------------------------- state machine

# The seed's chain, written out independently of models.order_states.TRANSITIONS: obligation -> paid
# -> delivered -> received (OK) -> return -> consent -> refund | close | done.
OB, P, D, R, RT, C = "obligation", "paid", "delivered", "received", "return", "consent"
SEED_MOVES = {
    (OB, "pay"): ("paid", {"platform", "system"}),
    (OB, "cancel"): ("close", {"member", "platform", "vendor", "system"}),
    (P, "deliver"): ("delivered", {"platform", "vendor", "agent", "dealer"}),
    (P, "renew"): ("done", {"system"}),  # a paid renewal (kind 3), not the seed's
    (D, "confirm"): ("received", {"member", "system"}),
    (R, "return"): ("return", {"member"}),
    (R, "finish"): ("done", {"system"}),
    (RT, "consent"): ("consent", {"platform", "vendor"}),
    (RT, "refuse"): ("received", {"platform", "vendor"}),  # not the seed's: a refused return
    (C, "refund"): ("refund", {"platform", "vendor"}),
}
ACTORS = ["member", "platform", "vendor", "agent", "dealer", "system"]


async def _order_in(state: OrderState, vid: str, uid: str, pid: str) -> Order:
    member = await Member.get(uid=uid)
    order, _ = await create_order(member, OrderRequest([LineRequest(pid)], RECEIVER))
    await Order.filter(id=order.id).update(state=state)
    await order.refresh_from_db()
    return order


async def test_every_move_of_the_state_machine_and_every_refused_one(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    moves = 0
    for state, event in itertools.product(OrderState, OrderEvent):
        order = await _order_in(state, a.vid, shopper.uid, pid)
        expected = SEED_MOVES.get((state.name.lower(), event.value))
        if expected is None:
            with pytest.raises(OrderStateConflict) as refused:
                await fire(order, event, actor_role="platform", actor_id="t")
            assert state.name.lower() in refused.value.message  # names the current state
            assert (await Order.get(id=order.id)).state is state
            continue
        target, allowed = expected
        for actor in sorted(set(ACTORS) - allowed):
            with pytest.raises(Forbidden):
                await fire(order, event, actor_role=actor, actor_id="t")
        actor = sorted(allowed)[0]
        moved = await fire(order, event, actor_role=actor, actor_id="who", reason="why")
        assert moved.state.name.lower() == target
        (move,) = await OrderTransition.filter(order_id=order.id)
        assert (move.event, move.from_state, move.to_state) == (event.value, state, moved.state)
        assert (move.actor_role, move.actor_id, move.reason) == (actor, "who", "why")
        assert (moved.completed_at is not None) == (target in ("refund", "close", "done"))
        # The same event again is refused: the order has moved on.
        with pytest.raises(OrderStateConflict):
            await fire(moved, event, actor_role=actor, actor_id="who")
        moves += 1
    assert moves == len(SEED_MOVES)


async def test_mark_paid_is_a_platform_admins_recorded_and_idempotent_step(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    oid = (await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))).data[
        "order_id"
    ]
    with pytest.raises(Forbidden):
        await mark_paid(oid, admin=f"{a.vid.lower()}-admin", reason="transfer 42")  # a vendor
    with pytest.raises(Forbidden):
        await mark_paid(oid, admin="nobody", reason="transfer 42")
    with pytest.raises(InvalidInput):
        await mark_paid(oid, admin=PLATFORM_USER, reason="  ")
    with pytest.raises(NotFound):
        await mark_paid("20260101AAAA000000000999", admin=PLATFORM_USER, reason="x")
    order = await mark_paid(oid, admin=PLATFORM_USER, reason="transfer 42")
    again = await mark_paid(oid, admin=PLATFORM_USER, reason="retry")
    assert order.state is again.state is OrderState.PAID
    moves = await OrderTransition.filter(order__oid=oid)
    assert [(m.event, m.actor_role, m.actor_id, m.reason) for m in moves] == [
        ("pay", "platform", f"admin:{PLATFORM_USER}", "transfer 42")
    ]
    read = await shopper.client.call("GET", f"/orders/{oid}")
    assert read.data["state_name"] == "paid" and read.data["pay_tms"] is not None
    # Two racing mark-paids pay once, and both answer the paid order.
    racing = (await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))).data[
        "order_id"
    ]
    both = await asyncio.gather(
        mark_paid(racing, admin=PLATFORM_USER, reason="one"),
        mark_paid(racing, admin=PLATFORM_USER, reason="two"),
    )
    assert [o.state for o in both] == [OrderState.PAID, OrderState.PAID]
    assert await OrderTransition.filter(order__oid=racing).count() == 1
    # A caller whose copy was read before another call paid it gets the paid order back,
    # not its stale copy (CI once raced into exactly this).
    stale_oid = (
        await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))
    ).data["order_id"]
    stale = await Order.get(oid=stale_oid)
    await mark_paid(stale_oid, admin=PLATFORM_USER, reason="first")
    answered = await pay_order(
        stale, channel="manual", payment_key="admin:x", actor_role="platform",
        actor_id="admin:x", reason="second",
    )  # fmt: skip
    assert answered.state is OrderState.PAID and answered.paid_at is not None
    assert await OrderTransition.filter(order__oid=stale_oid).count() == 1
    # A cancelled order cannot be paid.
    second = (await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))).data[
        "order_id"
    ]
    await fire(await Order.get(oid=second), OrderEvent.CANCEL, actor_role="member", actor_id="m")
    with pytest.raises(OrderStateConflict, match="close"):
        await mark_paid(second, admin=PLATFORM_USER, reason="late transfer")


async def test_mark_paid_from_the_shell(node_factory: Any, tmp_path: Path, migrated_sqlite: Any):
    from aquafleet.models.products import create_product
    from aquafleet.models.registry import create_vendor

    database = migrated_sqlite(tmp_path / "orders.sqlite3")
    await node_factory(database_url=database)
    await create_vendor("SHOP", "Shop")
    await create_account("ops", md5(PASSWORD), Role.PLATFORM)
    member = await Member.create(uid=member_uid("SHOP", 1), vendor_id="SHOP", name="m", state=2)
    product = await create_product(
        "SHOP", {"name": "净水机", "billing": 1, "price_fen": 100, "state": 1}
    )
    order, _ = await create_order(member, OrderRequest([LineRequest(product.pid)], RECEIVER))
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=database)
    code, out = await aquafleet(env, "orders", "mark-paid", order.oid, "--admin", "ops")
    assert code != 0 and "--reason" in out
    code, out = await aquafleet(
        env, "orders", "mark-paid", order.oid, "--admin", "ops", "--reason", "cash at the shop"
    )
    assert code == 0 and "paid" in out, out
    code, out = await aquafleet(env, "orders", "show", order.oid)
    assert code == 0 and "pay: obligation -> paid by platform admin:ops: cash at the shop" in out
    code, out = await aquafleet(env, "orders", "list", "--state", "paid")
    assert code == 0 and order.oid in out
    code, out = await aquafleet(env, "orders", "run-timers", "--unpaid-close-after-h", "0")
    assert code == 0 and "closed 0, received 0, done 0" in out, out  # the order is paid


async def test_the_return_window_closes_seven_days_after_receipt(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    from aquafleet.models.returns import RETURN_WINDOW, ask_return

    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    order = await _order_in(OrderState.RECEIVED, a.vid, shopper.uid, pid)
    received = dt.datetime.now(dt.UTC) - RETURN_WINDOW
    await Order.filter(id=order.id).update(received_at=received)
    await order.refresh_from_db()
    assert dt.timedelta(days=7) == RETURN_WINDOW
    with pytest.raises(OrderStateConflict, match="return window closed"):
        await ask_return(order, shopper.uid, "too late", now=received + RETURN_WINDOW * 1.01)
    moved = await ask_return(order, shopper.uid, "just in time", now=received + RETURN_WINDOW)
    assert moved.state is OrderState.RETURN and moved.return_reason == "just in time"


async def test_an_unpaid_order_is_cancelled_and_a_closed_one_deleted_by_the_platform(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    other = await make_member(api_node, api, a.vid)

    async def new_order() -> str:
        answer = await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))
        return str(answer.data["order_id"])

    mine, paid = await new_order(), await new_order()
    await other.client.call("POST", f"/orders/{mine}/status/close", expect=404)
    await b.vendor.call("POST", f"/orders/{mine}/status/close", expect=404)
    await a.agent.call("POST", f"/orders/{mine}/status/close", expect=403)
    closed = await shopper.client.call("POST", f"/orders/{mine}/status/close", expect=201)
    assert closed.data["state_name"] == "close" and closed.data["complete_tms"] is not None
    await mark_paid(paid, admin=PLATFORM_USER, reason="test")
    refused = await a.vendor.call("POST", f"/orders/{paid}/status/close", expect=409)
    assert "paid" in refused.body["message"]

    # AD-15: the platform only, with confirmation, closed or done orders only, soft.
    await a.vendor.call("DELETE", f"/orders/{mine}?confirm={mine}", expect=403)
    await api.call("DELETE", f"/orders/{mine}", expect=422)
    await api.call("DELETE", f"/orders/{mine}?confirm={paid}", expect=422)
    answer = await api.call("DELETE", f"/orders/{paid}?confirm={paid}", expect=409)
    assert "paid" in answer.body["message"]
    await api.call("DELETE", f"/orders/{mine}?confirm={mine}", expect=204)
    for client in (api, a.vendor, shopper.client):
        await client.call("GET", f"/orders/{mine}", expect=404)
        assert {o["order_id"] for o in (await client.call("GET", "/orders")).data} == {paid}
    assert await Order.filter(oid=mine).exists()  # soft: the rows stay


async def test_timers_close_receive_and_finish_due_orders_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    from aquafleet.models.order_timers import TimerSettings, sweep

    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    now = dt.datetime.now(dt.UTC)
    settings = TimerSettings(
        unpaid_close_after=dt.timedelta(hours=24),
        auto_receive_after=dt.timedelta(days=10),
        return_window=dt.timedelta(days=7),
    )
    unpaid_old = await _order_in(OrderState.OBLIGATION, a.vid, shopper.uid, pid)
    unpaid_new = await _order_in(OrderState.OBLIGATION, a.vid, shopper.uid, pid)
    delivered_old = await _order_in(OrderState.DELIVERED, a.vid, shopper.uid, pid)
    delivered_new = await _order_in(OrderState.DELIVERED, a.vid, shopper.uid, pid)
    received_old = await _order_in(OrderState.RECEIVED, a.vid, shopper.uid, pid)
    received_new = await _order_in(OrderState.RECEIVED, a.vid, shopper.uid, pid)
    ago = dt.timedelta
    await Order.filter(id=unpaid_old.id).update(created_at=now - ago(hours=25))
    await Order.filter(id=unpaid_new.id).update(created_at=now - ago(hours=23))
    await Order.filter(id=delivered_old.id).update(delivered_at=now - ago(days=10, seconds=1))
    await Order.filter(id=delivered_new.id).update(delivered_at=now - ago(days=9))
    await Order.filter(id=received_old.id).update(received_at=now - ago(days=8))
    await Order.filter(id=received_new.id).update(received_at=now - ago(days=6))

    first, second = await asyncio.gather(sweep(now, settings), sweep(now, settings))
    assert (
        first.closed + second.closed,
        first.received + second.received,
        first.done + second.done,
    ) == (1, 1, 1)
    assert await sweep(now, settings) == type(first)(0, 0, 0)
    states = {o.id: o.state for o in await Order.all()}
    assert states[unpaid_old.id] is OrderState.CLOSE
    assert states[delivered_old.id] is OrderState.RECEIVED
    assert states[received_old.id] is OrderState.DONE
    for fresh in (unpaid_new, delivered_new, received_new):
        assert states[fresh.id] is fresh.state
    moves = await OrderTransition.filter(actor_role="system").values_list("event", flat=True)
    assert sorted(moves) == ["cancel", "confirm", "finish"]
    # The order received by the timer starts its own return window then.
    assert (await Order.get(id=delivered_old.id)).received_at == now
