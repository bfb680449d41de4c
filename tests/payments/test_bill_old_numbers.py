"""What the member still holds under an order bill's older number, and a bill paid through one
channel while it is open at another (docs/payments.md, "Paying otherwise after opening a
channel"): a payment under any number the order's bill had is the order's (never an unknown
bill whose money stays at the channel); the bill open at another channel then is closed
there; an Alipay URL expires when the unpaid order would close. Through a real node with the
fake WeChat Pay, Alipay and Allinpay, on SQLite and PostgreSQL; the ledger check is clean
after each."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse

import pytest

from aquafleet.models.money import MoneyTransaction, Refund, RefundState, balance, channel_account
from aquafleet.models.orders import Order
from aquafleet.models.payments import PaymentNotice
from tests.fakes.allinpay import CLOSED, PENDING
from tests.payments.shops import assert_ledger_clean
from tests.payments.test_alipay import fake_alipay
from tests.payments.test_bill_moves_channels import Channels, api_node, channels
from tests.payments.test_cards import closes_asked, fake_card

__all__ = ["api_node", "channels", "fake_alipay", "fake_card"]

BEIJING = dt.timezone(dt.timedelta(hours=8))


async def _alipay_url_then_moved_on(channels: Channels) -> tuple[str, int, str]:
    """The member gets the order's Alipay URL (`{oid}`) and never opens it, then opens WeChat
    Pay (the bill moves under `{oid}`: Alipay had no trade to close), then chooses a card:
    WeChat Pay's order is closed, so the bill is `{oid}-2` at Allinpay. The old Alipay URL
    still pays `{oid}` at Alipay."""
    oid, total = await channels.order()
    url = str((await channels.prepay(oid, "alipay")).data["pay_url"])
    assert (await channels.prepay(oid, "weixin")).data["bill_no"] == oid
    assert (await channels.prepay(oid, "credit")).data["bill_no"] == f"{oid}-2"
    assert channels.shop.fake.transactions[oid].state == "CLOSED"
    assert channels.card.trx[f"{oid}-2"].status == PENDING
    assert channels.alipay.trades == {}
    return oid, total, url


async def test_an_old_alipay_number_paid_after_the_order_is_refunded(channels: Channels):
    """The order is paid by card under `{oid}-2`; then the member opens the Alipay URL of
    `{oid}` and pays it. Before, that payment was an unknown bill: recorded, the money kept
    at Alipay, never refunded. Now it is the order's second payment: booked and refunded
    through Alipay under the number it was paid under."""
    oid, total, url = await _alipay_url_then_moved_on(channels)
    await channels.card.pay(f"{oid}-2")
    assert await channels.shop.state(oid) == "paid"

    assert await channels.alipay.open(url) == 200
    assert await channels.alipay.pay(oid) == [200]
    notice = await PaymentNotice.get(bill_no=oid, channel="alipay")
    assert notice.outcome == "paid_twice"
    report = await channels.shop.sweep()
    assert (report.errors, report.refunds_sent, report.refunds_settled) == ([], 1, 1)
    refunds = [
        json.loads(params["biz_content"])
        for method, params in channels.alipay.calls
        if method == "alipay.trade.refund"
    ]
    assert [(r["out_trade_no"], r["refund_amount"]) for r in refunds] == [
        (oid, f"{total // 100}.{total % 100:02d}")
    ]
    assert channels.alipay.trade(oid).status == "TRADE_CLOSED"  # refunded in full
    refund = await Refund.get(order_oid=oid)
    assert (refund.channel, refund.state) == ("alipay", RefundState.SUCCEEDED)
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("card", "paid", f"{oid}-2")
    assert await balance(channel_account("alipay", channels.shop.vid)) == 0
    assert await balance(channel_account("card", channels.shop.vid)) == total
    await assert_ledger_clean()


async def test_an_old_alipay_number_pays_the_unpaid_order_once(channels: Channels):
    """The order is still unpaid, its bill open at Allinpay under `{oid}-2`, when the member
    pays the old Alipay URL of `{oid}`. Before, an unknown bill: the order stayed unpaid (and
    closed at its deadline) with the money at Alipay. Now the payment pays the order, once,
    under the number it was made under (Alipay's refunds and the bill name it), and the bill
    open at Allinpay is closed there first, so the card cannot pay the order too."""
    oid, total, url = await _alipay_url_then_moved_on(channels)

    assert await channels.alipay.open(url) == 200
    assert await channels.alipay.pay(oid) == [200]
    notice = await PaymentNotice.get(bill_no=oid, channel="alipay")
    assert notice.outcome == "paid"
    assert await channels.shop.state(oid) == "paid"
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "paid", oid)
    assert info["transaction_no"] == channels.alipay.trade(oid).trade_no
    assert closes_asked(channels.card) == [f"{oid}-2"]
    assert channels.card.trx[f"{oid}-2"].status == CLOSED
    with pytest.raises(ValueError, match="closed"):
        await channels.card.pay(f"{oid}-2")

    report = await channels.shop.sweep()
    assert (report.errors, report.refunds_sent) == ([], 0)
    assert await Refund.filter(order_oid=oid).count() == 0
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    assert await balance(channel_account("alipay", channels.shop.vid)) == total
    assert await balance(channel_account("card", channels.shop.vid)) == 0
    await assert_ledger_clean()


async def test_a_payment_at_alipay_closes_the_bill_open_at_wechat_pay(channels: Channels):
    """The Alipay URL never opened moved to WeChat Pay under its number, and WeChat Pay's
    order for it is open; the member pays the old URL. Before, WeChat Pay's order stayed open
    (the sweep only closes pending bills; this one is paid), the member could pay it too and
    be refunded later. Now it is closed at WeChat Pay as the Alipay payment arrives."""
    oid, total = await channels.order()
    url = str((await channels.prepay(oid, "alipay")).data["pay_url"])
    assert (await channels.prepay(oid, "weixin")).data["bill_no"] == oid
    assert channels.shop.fake.transactions[oid].state == "NOTPAY"

    assert await channels.alipay.open(url) == 200
    assert await channels.alipay.pay(oid) == [200]
    assert await channels.shop.state(oid) == "paid"
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "paid", oid)
    assert channels.shop.fake.transactions[oid].state == "CLOSED"
    with pytest.raises(AssertionError, match="CLOSED"):
        await channels.shop.fake.pay(oid)  # the member's WeChat Pay sheet takes nothing

    assert (await channels.shop.sweep()).refunds_sent == 0
    assert await Refund.filter(order_oid=oid).count() == 0
    assert await balance(channel_account("alipay", channels.shop.vid)) == total
    assert await balance(channel_account("weixin", channels.shop.vid)) == 0
    await assert_ledger_clean()


def _time_expire(url: str) -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return str(json.loads(query["biz_content"][0]).get("time_expire", ""))


async def test_an_alipay_url_expires_when_the_unpaid_order_would_close(channels: Channels):
    """The wap.pay URL carries Alipay's time_expire, the order's payment deadline (made +
    order_unpaid_close_h, 24 h). Before, a URL never opened stayed payable for ever, after
    the order had closed too. Now Alipay refuses to open it after the deadline, and a page
    opened before and not paid takes no payment after it."""
    oid, _total = await channels.order()
    url = str((await channels.prepay(oid, "alipay")).data["pay_url"])
    order = await Order.get(oid=oid)
    deadline = (order.created_at + dt.timedelta(hours=24)).astimezone(BEIJING)
    assert _time_expire(url) == deadline.strftime("%Y-%m-%d %H:%M:%S")

    other, _ = await channels.order()
    opened = str((await channels.prepay(other, "alipay")).data["pay_url"])
    assert await channels.alipay.open(opened) == 200

    channels.alipay.advance(dt.timedelta(hours=24, minutes=1))
    assert await channels.alipay.open(url) == 400  # 订单已超时
    assert channels.alipay.trades.get((channels.alipay.trade(other).app_id, oid)) is None
    await channels.alipay.pay(other)  # 订单已超时，不能付款
    assert channels.alipay.trade(other).status == "TRADE_CLOSED"
    assert await PaymentNotice.filter(channel="alipay").count() == 0
    for number in (oid, other):
        assert await channels.shop.state(number) == "obligation"
    await assert_ledger_clean()
