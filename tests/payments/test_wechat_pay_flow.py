"""WeChat Pay end to end through a real node and the fake WeChat Pay, on SQLite and PostgreSQL:
a member pays an order (prepay, the app's step, the notification); duplicate, reordered, late,
forged, wrong-amount and after-close notifications; the bill closed with its order; refunds
full and partial. The money ledger's check is clean after each scenario."""

from __future__ import annotations

from typing import Any

import pytest

from aquafleet.api.payments import PAYMENTS
from aquafleet.gateway import channels
from aquafleet.models import payments
from aquafleet.models.accounts import AdminAccount, create_account
from aquafleet.models.commission_check import check_commissions
from aquafleet.models.money import (
    Leg,
    MoneyTransaction,
    Refund,
    RefundState,
    balance,
    channel_account,
    post,
    request_refund,
)
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.order_states import fire
from aquafleet.models.orders import Order, OrderEvent, OrderState
from aquafleet.models.payments import (
    Outcome,
    Payment,
    PaymentNotice,
    PaymentState,
    check_payments,
)
from aquafleet.models.tenancy import Role
from aquafleet.models.wechatpay import rsa_verify
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.fakes.wechatpay import FakeWechatPay
from tests.fakes.wechatpay_signing import FORGED, UNSIGNED
from tests.payments.keys import public_pem
from tests.payments.shops import ChannelShop, assert_ledger_clean, moved_before_closing


class Shop(ChannelShop):
    fake: FakeWechatPay

    async def order(self) -> dict[str, Any]:
        return await self.new_order()

    async def prepay(self, oid: str, expect: int = 200) -> Any:
        return await self.shopper.client.call("POST", f"/orders/{oid}/prepay/weixin", expect=expect)

    @property
    def metrics(self) -> Any:
        return self.node.metrics


async def set_merchant(api: ApiClient, vid: str, fake: FakeWechatPay) -> None:
    merchant = fake.merchants["1900000109"]
    await api.call(
        "PUT",
        f"/vendors/{vid}/mxx",
        {
            "mch_gid": merchant.mch_id, "mch_appid": merchant.app_id,
            "mch_apiv3_key": merchant.api_v3_key, "mch_private_key": merchant.private_pem,
            "mch_cert_serial": merchant.key_serial, "wxpay_serial": fake.platform_serial,
            "wxpay_public_key": fake.platform_public,
        },
    )  # fmt: skip


@pytest.fixture
async def shop(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], fake_pay: FakeWechatPay
) -> Shop:
    a, _ = tenants
    await set_merchant(api, a.vid, fake_pay)
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid, wx_openid="o-alice")
    return Shop(a.vid, shopper, api_node, fake_pay, pid)


async def test_a_member_pays_an_order_with_wechat_pay_end_to_end(shop: Shop):
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    prepay = (await shop.prepay(oid)).data
    merchant = shop.fake.merchants["1900000109"]
    # What the app checks and hands to wx.requestPayment: signed with the merchant key.
    assert prepay["appId"] == merchant.app_id and prepay["signType"] == "RSA"
    message = (
        f"{prepay['appId']}\n{prepay['timeStamp']}\n{prepay['nonceStr']}\n{prepay['package']}\n"
    )
    assert rsa_verify(public_pem(merchant.private_pem), message, prepay["paySign"])
    txn = shop.fake.transactions[prepay["bill_no"]]
    assert txn.total == total and txn.openid == "o-alice"
    assert txn.notify_url.endswith(f"/api/v1/payments/weixin/notify/{shop.vid}")
    assert (await shop.prepay(oid)).data["package"] == prepay["package"]  # again: same bill

    unpaid = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert unpaid["pay_state"] == "pending" and unpaid["transaction_no"] == ""

    await shop.fake.pay(prepay["bill_no"])  # the member pays in the app; WeChat Pay notifies
    assert shop.fake.answers == [(200, shop.fake.answers[0][1])]
    assert '"outcome":"paid"' in shop.fake.answers[0][1]
    assert await shop.state(oid) == "paid"
    info = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert info["pay_ch"] == "weixin" and info["pay_state"] == "paid"
    assert info["bill_no"] == oid and info["transaction_no"] == txn.transaction_id
    assert info["pay_tms"] is not None and info["amount"] == total
    assert await balance(channel_account("weixin", shop.vid)) == total
    assert shop.metrics.payments_paid == 1
    # Paid: no second prepay.
    assert (await shop.prepay(oid, expect=409)).status == 409
    await assert_ledger_clean()


async def test_duplicate_and_reordered_notifications_pay_once(shop: Shop):
    order = await shop.order()
    oid = order["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    shop.fake.hold, shop.fake.duplicate = True, 3
    await shop.fake.pay(bill)
    answers = await shop.fake.release(reverse=True)
    assert [status for status, _ in answers] == [200, 200, 200]
    outcomes = [text.split('"outcome":"')[1].split('"')[0] for _, text in answers]
    assert outcomes == ["paid", "duplicate", "duplicate"]
    assert await shop.state(oid) == "paid"
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    assert await PaymentNotice.filter(bill_no=bill).count() == 1
    await assert_ledger_clean()


async def test_a_late_notification_is_found_by_querying(shop: Shop):
    oid = (await shop.order())["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    shop.fake.hold = True
    await shop.fake.pay(bill)  # paid, but the notification does not come
    service = shop.node.app[PAYMENTS]
    assert (await shop.sweep()).bills_queried == 0  # not late yet
    service.query_after = service.query_after * 0
    report = await shop.sweep()
    assert (report.bills_queried, report.bills_paid) == (1, 1)
    assert await shop.state(oid) == "paid"
    (late,) = await shop.fake.release()
    assert late[0] == 200 and '"outcome":"duplicate"' in late[1]
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    await assert_ledger_clean()


@pytest.mark.parametrize("corruption", ["signature", "serial", "stale", "ciphertext"])
async def test_a_forged_stale_or_unreadable_notification_changes_nothing(
    shop: Shop, corruption: str
):
    oid = (await shop.order())["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    shop.fake.corrupt = corruption
    await shop.fake.pay(bill)
    ((status, text),) = shop.fake.answers
    assert status == 401 and "notification_refused" in text
    assert await shop.state(oid) == "obligation"
    assert shop.metrics.payments_notices_refused == 1
    assert await MoneyTransaction.filter(order_oid=oid).count() == 0
    assert await PaymentNotice.all().count() == 0
    await assert_ledger_clean()


async def test_a_notification_with_another_amount_is_recorded_and_never_pays(shop: Shop):
    order = await shop.order()
    oid = order["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.fake.pay(bill, amount=1)
    ((status, text),) = shop.fake.answers
    assert status == 200 and '"outcome":"amount_mismatch"' in text
    assert await shop.state(oid) == "obligation"
    assert shop.metrics.payments_amount_mismatch == 1
    notice = await PaymentNotice.get(bill_no=bill)
    assert (notice.outcome, notice.amount_fen) == ("amount_mismatch", 1)
    assert await MoneyTransaction.filter(order_oid=oid).count() == 0
    await assert_ledger_clean()


async def test_closing_an_order_closes_its_bill_at_wechat_pay(shop: Shop):
    oid = (await shop.order())["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/close")
    report = await shop.sweep()
    assert report.bills_closed == 1 and shop.fake.transactions[bill].state == "CLOSED"
    assert (await Payment.get(bill_no=bill)).state is PaymentState.CLOSED
    assert (await shop.sweep()).bills_closed == 0  # once
    await assert_ledger_clean()


async def test_money_arriving_after_the_order_closed_is_refunded_automatically(shop: Shop):
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    shop.fake.hold = True
    await shop.fake.pay(bill)  # paid at WeChat Pay just as the order closes here
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/close")
    (answer,) = await shop.fake.release()
    assert answer[0] == 200 and '"outcome":"refund_after_close"' in answer[1]
    assert await shop.state(oid) == "close"
    refund = await Refund.get(refund_no=f"close-{oid}")
    assert refund.state is RefundState.DUE and refund.amount_fen == total
    await assert_ledger_clean()
    shop.fake.hold = False
    report = await shop.sweep()
    assert report.refunds_sent == 1
    await shop.fake.drain()  # WeChat Pay's refund notification
    refund = await Refund.get(refund_no=f"close-{oid}")
    assert refund.state is RefundState.SUCCEEDED and refund.channel == "weixin"
    assert await balance(channel_account("weixin", shop.vid)) == 0
    assert shop.fake.refunds[f"close-{oid}"].refund == total
    await assert_ledger_clean()


async def test_a_return_is_refunded_partially_then_in_full_once(shop: Shop):
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.fake.pay(bill)
    paid = await Order.get(oid=oid)
    await request_refund(order=paid, amount_fen=1000, refund_no="part-1", reason="少件", actor="t")
    await request_refund(
        order=paid, amount_fen=total - 1000, refund_no=f"return-{oid}", reason="退货", actor="t"
    )
    report = await shop.sweep()
    assert report.refunds_sent == 2
    await shop.fake.drain()
    states = {r.refund_no: r.state for r in await Refund.filter(order_oid=oid)}
    assert states == {"part-1": RefundState.SUCCEEDED, f"return-{oid}": RefundState.SUCCEEDED}
    assert (await shop.sweep()).refunds_sent == 0  # executed once
    assert sum(r.refund for r in shop.fake.refunds.values()) == total
    assert await balance(channel_account("weixin", shop.vid)) == 0
    info = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert [r["state"] for r in info["refunds"]] == ["succeeded", "succeeded"]
    # A repeated refund notification settles nothing twice.
    assert await MoneyTransaction.filter(kind="refund", order_oid=oid).count() == 2
    await assert_ledger_clean()
    assert paid.state is OrderState.PAID


@pytest.mark.parametrize("signature", [FORGED, UNSIGNED])
async def test_a_refund_refused_in_wechat_pays_place_is_not_failed(shop: Shop, signature: str):
    """The refund's create is answered 400 NOT_ENOUGH by someone other than WeChat Pay, its
    signature made with another key or absent. A refusal fails a refund (its amount may be
    refunded again): not taken, the refund stays due, counted; sent again, refunded once."""
    order = await shop.order()
    bill = (await shop.prepay(order["order_id"])).data["bill_no"]
    await shop.fake.pay(bill)
    paid = await Order.get(oid=order["order_id"])
    await request_refund(
        order=paid, amount_fen=1000, refund_no="R-forged", reason="少件", actor="t"
    )
    refunds = "/v3/refund/domestic/refunds"
    shop.fake.forge_next(refunds, 400, "NOT_ENOUGH", signature=signature, times=3)
    report = await shop.sweep()
    assert (report.refunds_sent, report.refunds_failed, len(report.errors)) == (0, 0, 1)
    assert (await Refund.get(refund_no="R-forged")).state is RefundState.DUE
    assert shop.metrics.wechatpay_answers_unverified == 3 and not shop.fake.refunds
    assert (await shop.sweep()).refunds_sent == 1
    await shop.fake.drain()
    assert (await Refund.get(refund_no="R-forged")).state is RefundState.SUCCEEDED
    assert [r.refund for r in shop.fake.refunds.values()] == [1000]
    await assert_ledger_clean()


async def test_the_money_check_compares_the_bills_with_the_ledger(shop: Shop):
    oid = (await shop.order())["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.fake.pay(bill)
    await assert_ledger_clean()
    await Payment.filter(bill_no=bill).update(amount_fen=1)  # the bill says 1 fen
    await post(
        "pay:20261206AAAA999999999999", kind="payment", vendor=shop.vid,
        legs=[Leg(channel_account("weixin", shop.vid), 5), Leg("order:X:goods", -5)],
    )  # fmt: skip
    found = {(p.what, p.subject) for p in await check_payments()}
    assert found == {
        ("bill_not_booked", bill),
        ("booked_without_bill", "pay:20261206AAAA999999999999"),
    }


async def test_an_order_paid_twice_is_booked_and_its_second_payment_refunded_once(shop: Shop):
    """The member opened WeChat Pay, then paid the order from its wallet; the WeChat payment
    went through too (the bill moved to the wallet before moving closed it at WeChat Pay; the
    API now closes it first: test_bill_moves.py). That money is booked as a duplicate and
    refunded in full through WeChat Pay, once; the order is paid once, its commissions
    untouched, and every check holds."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    topup = await shop.shopper.client.call(
        "POST", f"/users/{shop.shopper.uid}/wallet/topup", {"amount": total}
    )
    await shop.fake.pay(topup.data["bill_no"])
    await moved_before_closing(bill)
    await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet")
    assert await shop.state(oid) == "paid"

    shop.fake.hold, shop.fake.duplicate = True, 2
    await shop.fake.pay(bill)  # the WeChat payment the member had started
    answers = await shop.fake.release()
    outcomes = [text.split('"outcome":"')[1].split('"')[0] for _, text in answers]
    assert outcomes == ["paid_twice", "duplicate"]
    shop.fake.hold = False
    txn = shop.fake.transactions[bill].transaction_id
    refund = await Refund.get(refund_no=f"twice-{txn}")
    assert (refund.amount_fen, refund.part, refund.channel) == (total, "duplicate", "weixin")
    assert refund.state is RefundState.DUE
    info = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert info["pay_ch"] == "wallet" and info["pay_state"] == "paid"  # paid once, by the wallet
    assert [(r["part"], r["amount"]) for r in info["refunds"]] == [("duplicate", total)]
    await assert_ledger_clean()
    assert await check_commissions() == []

    report = await shop.sweep()
    assert report.refunds_sent == 1
    await shop.fake.drain()
    assert (await Refund.get(refund_no=f"twice-{txn}")).state is RefundState.SUCCEEDED
    assert shop.fake.refunds[f"twice-{txn}"].refund == total  # back through WeChat Pay
    assert (await shop.sweep()).refunds_sent == 0  # once
    # What WeChat Pay holds for the vendor is the top-up alone; the member's wallet paid.
    assert await balance(channel_account("weixin", shop.vid)) == total
    assert await shop.state(oid) == "paid"
    await assert_ledger_clean()
    assert await check_commissions() == []


async def test_an_order_marked_paid_by_an_admin_then_paid_at_wechat_pay_is_refunded(shop: Shop):
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    if not await AdminAccount.exists(username="ops"):
        await create_account("ops", "0" * 32, Role.PLATFORM)
    await mark_paid(oid, admin="ops", reason="paid in cash at the shop")
    await shop.fake.pay(bill)
    assert '"outcome":"paid_twice"' in shop.fake.answers[-1][1]
    refund = await Refund.get(refund_no=f"twice-{shop.fake.transactions[bill].transaction_id}")
    assert (refund.amount_fen, refund.part) == (total, "duplicate")
    await assert_ledger_clean()
    assert (await shop.sweep()).refunds_sent == 1
    await shop.fake.drain()
    await refund.refresh_from_db()
    assert refund.state is RefundState.SUCCEEDED
    assert await balance(channel_account("weixin", shop.vid)) == 0
    assert await balance(channel_account("manual", shop.vid)) == total  # the cash
    await assert_ledger_clean()


# Races between reading a bill and applying its payment: each test commits the other side's
# effect between the two (a hook before the step), so the interleaving is forced, not timed.


async def test_a_payment_landing_as_an_admin_marks_the_order_paid_is_refunded(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
):
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    if not await AdminAccount.exists(username="ops"):
        await create_account("ops", "0" * 32, Role.PLATFORM)
    pay_order = payments.pay_order

    async def admin_first(order: Order, **kwargs: Any) -> Order:
        # The notification read the order unpaid; the admin's mark-paid commits before it pays.
        await mark_paid(oid, admin="ops", reason="paid in cash at the shop")
        return await pay_order(order, **kwargs)

    monkeypatch.setattr(payments, "pay_order", admin_first)
    await shop.fake.pay(bill)
    assert '"outcome":"paid_twice"' in shop.fake.answers[-1][1]
    refund = await Refund.get(refund_no=f"twice-{shop.fake.transactions[bill].transaction_id}")
    assert (refund.amount_fen, refund.part) == (total, "duplicate")
    assert await shop.state(oid) == "paid"
    await assert_ledger_clean()


async def test_a_payment_landing_as_the_timer_closes_the_order_is_refunded(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
):
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    pay_order = payments.pay_order

    async def closed_first(order: Order, **kwargs: Any) -> Order:
        # The notification read the order unpaid; the unpaid-order timer closes it first.
        unpaid = await Order.get(oid=oid)
        await fire(unpaid, OrderEvent.CANCEL, actor_role="system", actor_id="timer")
        return await pay_order(order, **kwargs)

    monkeypatch.setattr(payments, "pay_order", closed_first)
    await shop.fake.pay(bill)
    answer = shop.fake.answers[-1]
    assert answer[0] == 200 and '"outcome":"refund_after_close"' in answer[1]
    assert await shop.state(oid) == "close"
    refund = await Refund.get(refund_no=f"close-{oid}")
    assert refund.state is RefundState.DUE and refund.amount_fen == total
    await assert_ledger_clean()


@pytest.mark.parametrize("step", ["_pay_order_bill", "pay_order"])
async def test_a_notification_and_the_sweeps_query_of_one_payment_pay_once(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, step: str
):
    """WeChat Pay's notification and the sweep's query name one payment under two notice ids:
    whichever comes second is a duplicate, not a second payment to refund. The notification
    lands after the query read the bill, before it reads the order or before it pays it."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    shop.fake.hold = True
    await shop.fake.pay(bill)  # the notification is late
    original = getattr(payments, step)
    notified: list[tuple[int, str]] = []

    async def notification_first(*args: Any, **kwargs: Any) -> Any:
        if not notified:  # the query's call (the notification's own goes straight on)
            notified.append((0, "sent"))
            notified[:] = await shop.fake.release()
        return await original(*args, **kwargs)

    monkeypatch.setattr(payments, step, notification_first)
    queried = await shop.node.app[PAYMENTS].wechat.query_bill(await Payment.get(bill_no=bill))
    assert notified[0][0] == 200 and '"outcome":"paid"' in notified[0][1]
    assert queried is Outcome.DUPLICATE
    assert not await Refund.filter(order_oid=oid).exists()
    assert await balance(channel_account("weixin", shop.vid)) == total
    assert await shop.state(oid) == "paid"
    await assert_ledger_clean()


async def test_a_refund_settled_by_its_notification_before_it_is_marked_requested(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
):
    """WeChat Pay's refund notification may settle a refund before the sweep, back from
    sending it, marks it requested: the sweep answers it sent, not failed."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.fake.pay(bill)
    paid = await Order.get(oid=oid)
    await request_refund(order=paid, amount_fen=total, refund_no=f"return-{oid}", reason="退货",
                         actor="t")  # fmt: skip
    shop.fake.refund_auto_succeed = False
    move_refund = channels.move_refund

    async def notified_first(refund_no: str, target: RefundState, **kwargs: Any) -> Refund:
        if target is RefundState.REQUESTED:
            await shop.fake.succeed_refund(refund_no)  # its notification settles it
        return await move_refund(refund_no, target, **kwargs)

    monkeypatch.setattr(channels, "move_refund", notified_first)
    report = await shop.sweep()
    assert report.errors == [] and report.refunds_sent == 1
    assert (await Refund.get(refund_no=f"return-{oid}")).state is RefundState.SUCCEEDED
    assert await balance(channel_account("weixin", shop.vid)) == 0
    await assert_ledger_clean()


@pytest.mark.parametrize("interleaving", ["one_after_the_other", "racing"])
async def test_two_payments_after_the_order_closed_are_each_refunded_once(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, interleaving: str
):
    """The order closed unpaid; the member had opened its bill at WeChat Pay, moved it to
    Alipay, and paid both. Each transaction is booked and given back in full through its own
    channel, once: WeChat Pay's as the order's (`close-{oid}`), Alipay's by its transaction
    (`twice-{trade_no}`). Racing: Alipay's notice read the bill unpaid, then WeChat Pay's
    notification lands before it books."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/close")
    shop.fake.hold = True
    await shop.fake.pay(bill)  # paid at WeChat Pay; its notification comes later
    trade_no = "2026120622001400001234567890"
    alipay = payments.ChannelPayment(
        notice_id=f"alipay:{trade_no}", channel="alipay", vendor=shop.vid, bill_no=bill,
        transaction_no=trade_no, amount_fen=total,
    )  # fmt: skip
    service = shop.node.app[PAYMENTS]
    notified: list[tuple[int, str]] = []
    if interleaving == "racing":
        original = payments._pay_order_bill

        async def wechat_first(*args: Any, **kwargs: Any) -> Any:
            if not notified:  # Alipay's call (WeChat Pay's own goes straight on)
                notified.append((0, "sent"))
                notified[:] = await shop.fake.release()
            return await original(*args, **kwargs)

        monkeypatch.setattr(payments, "_pay_order_bill", wechat_first)
    else:
        notified[:] = await shop.fake.release()
    assert await service.apply(alipay) is Outcome.REFUND_AFTER_CLOSE
    assert notified[0][0] == 200 and '"outcome":"refund_after_close"' in notified[0][1]
    wechat_txn = shop.fake.transactions[bill].transaction_id

    refunds = {r.refund_no: r for r in await Refund.filter(order_oid=oid)}
    assert set(refunds) == {f"close-{oid}", f"twice-{trade_no}"}
    assert refunds[f"close-{oid}"].amount_fen == total
    assert (refunds[f"twice-{trade_no}"].amount_fen, refunds[f"twice-{trade_no}"].channel) == (
        total,
        "alipay",
    )
    assert await balance(channel_account("weixin", shop.vid)) == total
    assert await balance(channel_account("alipay", shop.vid)) == total
    paid = await Payment.get(bill_no=bill)  # the bill is WeChat Pay's payment, the first
    assert (paid.state, paid.channel, paid.transaction_no) == (
        PaymentState.PAID,
        "weixin",
        wechat_txn,
    )

    # The same transactions again, under other notice ids: nothing more.
    again = payments.ChannelPayment(
        notice_id=f"query:{trade_no}", channel="alipay", vendor=shop.vid, bill_no=bill,
        transaction_no=trade_no, amount_fen=total,
    )  # fmt: skip
    assert await service.apply(again) is Outcome.DUPLICATE
    assert await service.wechat.query_bill(await Payment.get(bill_no=bill)) is Outcome.DUPLICATE
    assert await Refund.filter(order_oid=oid).count() == 2
    assert await MoneyTransaction.filter(order_oid=oid).count() == 2  # one booking each
    assert await shop.state(oid) == "close"
    await assert_ledger_clean()

    shop.fake.hold = False
    await shop.sweep()  # WeChat Pay's back; Alipay's waits for its merchant (not set up here)
    await shop.fake.drain()
    assert (await Refund.get(refund_no=f"close-{oid}")).state is RefundState.SUCCEEDED
    assert shop.fake.refunds[f"close-{oid}"].refund == total
    assert await balance(channel_account("weixin", shop.vid)) == 0
    await assert_ledger_clean()


async def test_bills_of_orders_paid_otherwise_are_closed_and_never_starve_a_late_one(shop: Shop):
    """Over a sweep's batch of orders marked paid by an admin leave their WeChat Pay bills
    pending. The sweep asks WeChat Pay about each and closes it there (one the member paid
    anyway is booked and refunded as paid twice), so they leave its working set, and a newer
    bill whose notification is late is found and paid within a pass or two."""
    if not await AdminAccount.exists(username="ops"):
        await create_account("ops", "0" * 32, Role.PLATFORM)
    stale: list[str] = []
    batch = 4  # a sweep's batch (SWEEP_BATCH in production), small so the test stays quick
    for _ in range(batch + 1):
        oid = (await shop.order())["order_id"]
        stale.append((await shop.prepay(oid)).data["bill_no"])
        await mark_paid(oid, admin="ops", reason="paid in cash at the shop")
    paid_twice = shop.fake.transactions[stale[0]].total
    shop.fake.hold = True
    await shop.fake.pay(stale[0])  # paid at WeChat Pay too; the notification is lost
    shop.fake.held.clear()
    late = (await shop.order())["order_id"]
    late_bill = (await shop.prepay(late)).data["bill_no"]
    await shop.fake.pay(late_bill)  # paid; the notification is late
    service = shop.node.app[PAYMENTS]
    service.query_after = service.query_after * 0

    await shop.sweep(batch)  # a batch of stale bills closed, then the late bill queried
    assert await shop.state(late) == "paid"
    await shop.sweep(batch)  # the rest of the stale bills
    states = {p.bill_no: p.state for p in await Payment.filter(bill_no__in=stale)}
    assert set(states.values()) == {PaymentState.CLOSED}
    assert {shop.fake.transactions[b].state for b in stale[1:]} == {"CLOSED"}
    twice = await Refund.get(refund_no=f"twice-{shop.fake.transactions[stale[0]].transaction_id}")
    assert (twice.part, twice.channel, twice.amount_fen) == ("duplicate", "weixin", paid_twice)
    await assert_ledger_clean()

    shop.fake.requests.clear()
    report = await shop.sweep(batch)
    queried = {r.rsplit("/", 1)[1] for r in shop.fake.requests if r.startswith("GET /v3/pay/")}
    assert queried == set() and report.bills_queried == 0  # never asked about again
    await shop.fake.drain()  # the paid-twice money went back through WeChat Pay
    assert (await Refund.get(id=twice.id)).state is RefundState.SUCCEEDED
    assert shop.fake.refunds[twice.refund_no].refund == paid_twice
    await assert_ledger_clean()
