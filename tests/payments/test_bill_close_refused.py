"""A channel that answers, and refuses to close the bill the member is moving away from it (a
refusal other than "paid" or "no such bill": the merchant lost the product or its permission):
the move answers 502 with that channel's code, and nothing moves: the same number at the same
channel, still payable there, nothing opened at the other channel, nothing booked. Once the
channel closes bills again, asking again moves it, and the order is paid once (docs/payments.md,
"Paying otherwise after opening a channel"). Through a real node with the fake WeChat Pay,
Alipay and Allinpay, on SQLite and PostgreSQL."""

from __future__ import annotations

from aquafleet.models.money import MoneyTransaction, Refund, balance, channel_account
from tests.fakes.allinpay import CLOSED, PENDING
from tests.payments.shops import assert_ledger_clean
from tests.payments.test_alipay import fake_alipay
from tests.payments.test_bill_moves_channels import (
    Channels,
    _paid_once_at_wechat_pay,
    alipay_closes,
    api_node,
    channels,
)
from tests.payments.test_cards import closes_asked, fake_card

__all__ = ["api_node", "channels", "fake_alipay", "fake_card"]


async def _nothing_moved(channels: Channels, oid: str, channel: str) -> None:
    """The bill is where it was, under the order id, pending; the order unpaid, unbooked."""
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == (channel, "pending", oid)
    assert await channels.shop.state(oid) == "obligation"
    assert await MoneyTransaction.filter(order_oid=oid).count() == 0
    assert await Refund.filter(order_oid=oid).count() == 0
    await assert_ledger_clean()


async def test_wechat_pay_refusing_the_close_moves_nothing(channels: Channels):
    """WeChat Pay refuses to close the order (a signed 403 NO_AUTH): Alipay is refused with 502
    `wechatpay_refused`, no Alipay URL is made and WeChat Pay's order is still payable. Once
    WeChat Pay closes it, the bill moves to Alipay under `{oid}-2` and is paid there once."""
    oid, total = await channels.order()
    assert (await channels.prepay(oid, "weixin")).data["bill_no"] == oid
    close = f"/v3/pay/transactions/out-trade-no/{oid}/close"
    channels.shop.fake.fail_next(close, status=403, code="NO_AUTH")

    refused = await channels.prepay(oid, "alipay", expect=502)
    assert refused.code == "wechatpay_refused"
    assert "NO_AUTH" in refused.body["message"]
    assert channels.shop.fake.transactions[oid].state == "NOTPAY"
    await _nothing_moved(channels, oid, "weixin")

    moved = await channels.prepay(oid, "alipay")
    assert moved.data["bill_no"] == f"{oid}-2"
    assert channels.shop.fake.transactions[oid].state == "CLOSED"
    assert channels.shop.fake.requests.count(f"POST {close}") == 2
    assert await channels.alipay.open(str(moved.data["pay_url"])) == 200
    assert await channels.alipay.pay(f"{oid}-2") == [200]
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "paid", f"{oid}-2")
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    assert (await channels.shop.sweep()).refunds_sent == 0
    assert await balance(channel_account("alipay", channels.shop.vid)) == total
    assert await balance(channel_account("weixin", channels.shop.vid)) == 0
    await assert_ledger_clean()


async def test_alipay_refusing_the_close_moves_nothing(channels: Channels):
    """Alipay refuses alipay.trade.close (signed, 40006 isv.insufficient-isv-permissions):
    WeChat Pay is refused with 502 `alipay_refused`, nothing is opened at WeChat Pay and the
    page the member opened still pays the trade. Once Alipay closes it, the bill moves to
    WeChat Pay under `{oid}-2` and is paid there once."""
    oid, total, url = await channels.opened_at_alipay()
    channels.alipay.refuse_next("alipay.trade.close")

    refused = await channels.prepay(oid, "weixin", expect=502)
    assert refused.code == "alipay_refused"
    assert "isv.insufficient-isv-permissions" in refused.body["message"]
    assert channels.alipay.trade(oid).status == "WAIT_BUYER_PAY"
    assert channels.shop.fake.transactions == {}
    assert await channels.alipay.open(url) == 200  # the page is still the order's
    await _nothing_moved(channels, oid, "alipay")

    bill = (await channels.prepay(oid, "weixin")).data["bill_no"]
    assert bill == f"{oid}-2" and channels.alipay.trade(oid).status == "TRADE_CLOSED"
    assert alipay_closes(channels.alipay) == [oid, oid]
    await _paid_once_at_wechat_pay(channels, oid, total, bill)
    await assert_ledger_clean()


async def test_the_acquirer_refusing_the_close_moves_nothing(channels: Channels):
    """Allinpay refuses 订单关闭 and the query that would say what became of the bill (retcode
    FAIL: the merchant suspended): WeChat Pay is refused with 502 `acquirer_refused`, nothing
    is opened at WeChat Pay and the card still pays the bill. Once Allinpay answers again, the
    bill moves to WeChat Pay under `{oid}-2` and is paid there once."""
    oid, total = await channels.opened_by_card()
    channels.card.refuse_next("/apiweb/tranx/close")
    channels.card.refuse_next("/apiweb/tranx/query")

    refused = await channels.prepay(oid, "weixin", expect=502)
    assert refused.code == "acquirer_refused"
    assert "商户状态异常" in refused.body["message"]
    assert channels.card.trx[oid].status == PENDING
    assert channels.shop.fake.transactions == {}
    await _nothing_moved(channels, oid, "card")

    bill = (await channels.prepay(oid, "weixin")).data["bill_no"]
    assert bill == f"{oid}-2" and channels.card.trx[oid].status == CLOSED
    assert closes_asked(channels.card) == [oid, oid]
    await _paid_once_at_wechat_pay(channels, oid, total, bill)
    await assert_ledger_clean()
