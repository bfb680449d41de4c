"""The endpoints that move money, each fired twice at once through real HTTP on SQLite and
PostgreSQL (where two requests run on two connections and meet at row locks): the same
request twice, and two different requests on one order or one balance. Money moves once (the
loser answers as it is, or 409 with a code of docs/api.md), no balance goes below zero, no
request answers 500, and `aquafleet money check` finds nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable
from typing import Any, TypeVar

from aquafleet.api.errors import ERROR_CODES
from aquafleet.models.commission_check import check_commissions
from aquafleet.models.commissions import Withdrawal, member_earner
from aquafleet.models.money import MoneyTransaction, Refund, RefundState, balance
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from aquafleet.models.service import DAY_S, DeviceService, ServiceChange
from aquafleet.models.wallet import wallet_balance
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import add_product
from tests.api.test_commissions_api import COMMIS, bought_and_done, chain
from tests.api.test_delivery_api import PARCEL
from tests.api.test_rental_exchanges import DEPOSIT, two_device_rental
from tests.api.test_ticket_work_api import work_through
from tests.api.test_tickets_api import register, technician
from tests.payments.shops import assert_ledger_clean
from tests.payments.test_renewal_payments import _renewal
from tests.payments.test_wallet import _top_up
from tests.payments.test_wechat_pay_flow import Shop, shop

__all__ = ["shop"]

T = TypeVar("T")
RACE_TIMEOUT_S = 30  # two requests on a loaded CI box; a deadlock fails here, not at the suite's


async def both(*calls: Awaitable[T]) -> list[T]:
    """The calls at once, bounded: a lock that never frees fails the test, not the suite."""
    return list(await asyncio.wait_for(asyncio.gather(*calls), RACE_TIMEOUT_S))


async def send(
    client: ApiClient, method: str, path: str, body: Any = None, *, headers: Any = None
) -> tuple[int, dict[str, Any]]:
    """One request, whatever it answers: (status, envelope). A refusal names a documented code."""
    sent = {"Authorization": f"Bearer {client.token}", **(headers or {})}
    url = f"{client.base}/api/v1{path}"
    async with client.session.request(method, url, json=body, headers=sent) as answer:
        envelope = dict(await answer.json())
    assert answer.status < 500, (path, answer.status, envelope)
    if answer.status >= 300:
        assert envelope["code"] in ERROR_CODES, envelope
    return answer.status, envelope


def outcome(answer: tuple[int, dict[str, Any]]) -> tuple[int, str]:
    """(200, "") for any success (a POST answers 201), else (status, code)."""
    status, envelope = answer
    return (200, "") if status < 300 else (status, str(envelope["code"]))


async def wallet_debits(uid: str) -> int:
    """How many postings took money from the member's wallet."""
    return await MoneyTransaction.filter(
        entries__account=f"wallet:{uid}", entries__amount_fen__gt=0
    ).count()


# ----------------------------------------------------------------------------- the wallet


async def test_one_order_paid_from_the_wallet_twice_at_once_takes_the_money_once(shop: Shop):
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    await _top_up(shop, total * 3)
    path = f"/orders/{oid}/prepay/wallet"
    answers = await both(*(send(shop.shopper.client, "POST", path) for _ in range(2)))
    # The one that lost the order's lock answers the paid order (200) or that it is paid.
    assert all(outcome(a) in {(200, ""), (409, "order_paid")} for a in answers), answers
    assert (200, "") in [outcome(a) for a in answers]
    assert await shop.state(oid) == "paid"
    assert await wallet_balance(shop.shopper.uid) == total * 2
    assert await wallet_debits(shop.shopper.uid) == 1
    await assert_ledger_clean()


async def test_two_orders_racing_for_one_wallet_never_overdraw_it(shop: Shop):
    first, second = await shop.order(), await shop.order()
    total = first["amounts"]["total"]
    await _top_up(shop, total + total // 2)  # one order's worth and a half
    answers = await both(
        *(send(shop.shopper.client, "POST", f"/orders/{o['order_id']}/prepay/wallet")
          for o in (first, second))
    )  # fmt: skip
    assert sorted(outcome(a) for a in answers) == [(200, ""), (409, "insufficient_funds")]
    assert await wallet_balance(shop.shopper.uid) == total // 2
    await assert_ledger_clean()


async def test_a_wallet_payment_racing_the_members_cancel_does_one_of_them(shop: Shop):
    orders = [await shop.order() for _ in range(3)]
    total = orders[0]["amounts"]["total"]
    await _top_up(shop, total * 3)
    client = shop.shopper.client
    paid = 0
    for order in orders:
        oid = order["order_id"]
        pay, cancel = await both(
            send(client, "POST", f"/orders/{oid}/prepay/wallet"),
            send(client, "POST", f"/orders/{oid}/status/close"),
        )
        state = await shop.state(oid)
        if state == "paid":
            paid += 1
            assert outcome(pay) == (200, "") and outcome(cancel) == (409, "order_state_conflict")
        else:
            assert state == "close"
            assert outcome(cancel) == (200, "")
            assert outcome(pay) == (409, "order_state_conflict"), pay
    assert await wallet_balance(shop.shopper.uid) == total * (3 - paid)
    assert await wallet_debits(shop.shopper.uid) == paid
    await assert_ledger_clean()


async def test_a_wallet_payment_racing_the_wechat_pay_notification_keeps_one(shop: Shop):
    """The member pays at WeChat Pay and, at once, from the wallet (the bill is closed at
    WeChat Pay first: the fake answers its close, so whichever comes first pays and the other
    is given back or refused)."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    await _top_up(shop, total)
    bill = (await shop.prepay(oid)).data["bill_no"]
    await both(
        shop.fake.pay(bill),
        send(shop.shopper.client, "POST", f"/orders/{oid}/prepay/wallet"),
    )
    await shop.sweep()  # a refund of a second payment goes out
    assert await shop.state(oid) == "paid"
    taken = await balance(f"wallet:{shop.shopper.uid}") + total  # 0: not taken; total: taken
    refunded = sum(r.amount_fen for r in await Refund.filter(order_oid=oid))
    weixin_paid = shop.fake.transactions[bill].state == "SUCCESS"
    # What was paid twice is being given back: paid once, net.
    assert taken + total * weixin_paid - refunded == total, (taken, weixin_paid, refunded)
    await assert_ledger_clean()


# ----------------------------------------------------------------------------- close vs paid


async def test_closing_an_order_while_its_payment_notification_arrives(shop: Shop):
    client = shop.shopper.client
    for _ in range(3):
        order = await shop.order()
        oid, total = order["order_id"], order["amounts"]["total"]
        bill = (await shop.prepay(oid)).data["bill_no"]
        _paid, cancel = await both(
            shop.fake.pay(bill), send(client, "POST", f"/orders/{oid}/status/close")
        )
        state = await shop.state(oid)
        assert await MoneyTransaction.filter(key=f"pay:{oid}").count() == 1
        if state == "paid":
            assert outcome(cancel) == (409, "order_state_conflict")
            assert not await Refund.filter(order_oid=oid).exists()
        else:  # closed first: the money came after, and goes back in full
            assert state == "close" and outcome(cancel) == (200, "")
            (back,) = await Refund.filter(order_oid=oid)
            assert (back.refund_no, back.amount_fen) == (f"close-{oid}", total)
        await assert_ledger_clean()


# ----------------------------------------------------------------------------- renewals


async def test_a_renewal_ordered_and_paid_twice_at_once_renews_once(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    renewal, did, expires = await _renewal(shop, api, tenants[0].vendor)
    client = shop.shopper.client
    # The same renewal ordered twice at once under one Idempotency-Key: one order.
    key = {"Idempotency-Key": "renew-once"}
    body = {"did": did, "package": "60d"}
    made = await both(
        *(send(client, "POST", "/orders/renewals", body, headers=key) for _ in range(2))
    )
    assert [outcome(a) for a in made] == [(200, ""), (200, "")], made
    assert made[0][1]["data"]["order_id"] == made[1][1]["data"]["order_id"]
    other = str(made[0][1]["data"]["order_id"])
    # Another body under that key: refused, nothing made.
    reused = await send(client, "POST", "/orders/renewals", {**body, "memo": "x"}, headers=key)
    assert outcome(reused) == (409, "idempotency_key_reused")

    price = (await Order.get(oid=renewal)).total_fen
    await _top_up(shop, price * 3)
    answers = await both(
        *(send(client, "POST", f"/orders/{renewal}/prepay/wallet") for _ in range(2))
    )
    assert all(outcome(a) in {(200, ""), (409, "order_paid")} for a in answers), answers
    assert await shop.state(renewal) == "done"
    assert await wallet_balance(shop.shopper.uid) == price * 2
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 60 * DAY_S
    assert await ServiceChange.filter(did=did, request_id=f"order:{renewal}").count() == 1
    # The second renewal order and the first paid at once from one wallet that holds both.
    answers = await both(
        send(client, "POST", f"/orders/{other}/prepay/wallet"),
        send(client, "POST", f"/orders/{renewal}/prepay/wallet"),
    )
    assert outcome(answers[0]) == (200, "")
    assert outcome(answers[1]) in {(200, ""), (409, "order_paid"), (409, "order_state_conflict")}
    assert await wallet_balance(shop.shopper.uid) == price
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 120 * DAY_S
    await assert_ledger_clean()


# ----------------------------------------------------------------------------- refunds


async def test_the_goods_back_step_twice_at_once_records_one_refund(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """AD-14 (the admin's refund approval) sent twice at once: one move, one refund due."""
    vendor = tenants[0].vendor
    client = shop.shopper.client
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    await _top_up(shop, total)
    await client.call("POST", f"/orders/{oid}/prepay/wallet")
    (did,) = await register(api, shop.vid, 1)
    await vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    await client.call("POST", f"/orders/{oid}/status/confirm")
    await client.call("POST", f"/orders/{oid}/status/return", {"reason": "不想要了"})
    await vendor.call("POST", f"/orders/{oid}/status/consent")
    answers = await both(*(send(vendor, "PUT", f"/orders/{oid}/status/refund") for _ in range(2)))
    assert sorted(outcome(a) for a in answers) == [(200, ""), (409, "order_state_conflict")]
    (due,) = await Refund.filter(order_oid=oid)
    assert (due.refund_no, due.amount_fen) == (f"return-{oid}", total)
    await both(shop.sweep(), shop.sweep())  # two passes at once settle it once, to the wallet
    assert (await Refund.get(id=due.id)).state is RefundState.SUCCEEDED
    assert await wallet_balance(shop.shopper.uid) == total
    assert await MoneyTransaction.filter(kind="refund", order_oid=oid).count() == 1
    await assert_ledger_clean()


async def test_a_rental_end_completed_twice_at_once_gives_the_deposit_back_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """退租: the technician's completion sent twice at once (a double tap, a retry): one
    deposit back; and the two devices' completions at once: each device's deposit once."""
    a, _ = tenants
    first, second = await register(api, a.vid, 2)
    shopper, oid = await two_device_rental(api, api_node, a, [first, second])
    tech_id, tech = await technician(a.vendor, "fixer", skills=[2, 6])
    end = f"/orders/{oid}/rental/end"
    tickets = [
        (await shopper.client.call("POST", end, {"device_id": did})).data["ticket_id"]
        for did in (first, second)
    ]
    for tid in tickets:
        await work_through(a.vendor, tech, tech_id, tid)
    answers = await both(
        *(send(tech, "POST", f"/tickets/{tickets[0]}/complete", {}) for _ in range(2))
    )
    assert all(status < 300 or status == 409 for status, _ in answers), answers
    assert [r.amount_fen for r in await Refund.filter(order_oid=oid, part="deposit")] == [DEPOSIT]
    # Both devices' ends at once (the second's, and the first's again): two deposits in all.
    await both(*(send(tech, "POST", f"/tickets/{tid}/complete", {}) for tid in tickets))
    refunds = await Refund.filter(order_oid=oid, part="deposit")
    assert [r.amount_fen for r in refunds] == [DEPOSIT, DEPOSIT]
    await assert_ledger_clean()
    # And a mark-paid of the order sent again meanwhile changes nothing.
    await mark_paid(oid, admin=PLATFORM_USER, reason="again")
    assert await MoneyTransaction.filter(key=f"pay:{oid}").count() == 1


# ----------------------------------------------------------------------------- withdrawals


async def test_a_withdrawal_sent_twice_at_once_and_two_beyond_the_balance(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """AE-03 (提现) over HTTP: the same request id twice at once makes one withdrawal (the
    retry answers it); two request ids whose sum is more than is available, at once, let one
    through (the other waits its 30 s or finds the balance short); available never below 0."""
    a, _ = tenants
    _m1, m2, buyer = await chain(api_node, api, a)
    pid = await add_product(a.vendor, commis=COMMIS)
    await bought_and_done(a, buyer, pid)
    before = (await m2.client.call("GET", "/commission/summary")).data["available"]
    body = {"amount": 1000, "request_id": "w-1"}
    answers = await both(*(send(m2.client, "POST", "/commission", body) for _ in range(2)))
    assert [outcome(x) for x in answers] == [(200, ""), (200, "")], answers
    assert answers[0][1]["data"]["id"] == answers[1][1]["data"]["id"]
    assert await Withdrawal.filter(earner=member_earner(m2.uid)).count() == 1

    first = await Withdrawal.get(earner=member_earner(m2.uid))
    await Withdrawal.filter(id=first.id).update(  # made longer ago than the 30-second rule
        created_at=first.created_at - dt.timedelta(seconds=31)
    )
    half = (before - 1000) // 2 + 1  # two of them are more than is left
    answers = await both(
        *(send(m2.client, "POST", "/commission", {"amount": half, "request_id": f"w-{i}"})
          for i in (2, 3))
    )  # fmt: skip
    kinds = sorted(outcome(x) for x in answers)
    assert kinds[0] == (200, "")
    assert kinds[1] in {(409, "insufficient_funds"), (429, "rate_limited")}
    summary = (await m2.client.call("GET", "/commission/summary")).data
    assert (summary["available"], summary["payout"]) == (before - 1000 - half, 1000 + half)
    assert await check_commissions() == []
    await assert_ledger_clean()
