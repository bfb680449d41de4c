"""A member opens Alipay or a card for an order, then pays it with WeChat Pay: the bill is closed
at Alipay (alipay.trade.close) or at the card acquirer (Allinpay 订单关闭) first, so the page or
the card code the member still holds cannot pay the order a second time; Alipay or the acquirer
silent, nothing moves (503); paid there meanwhile, that payment is applied once and the move
refused (409 order_paid). Through a real node with the fake WeChat Pay, Alipay and Allinpay, on
SQLite and PostgreSQL; the money ledger's check is clean after each. (Bills moving from WeChat
Pay: test_bill_moves.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from aquafleet.models.money import MoneyTransaction, Refund, balance, channel_account
from aquafleet.models.payments import PaymentNotice
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.fakes.alipay import FakeAlipay
from tests.fakes.allinpay import CLOSED, PENDING, FakeAllinpay
from tests.fakes.wechatpay import FakeWechatPay
from tests.payments.shops import assert_ledger_clean, channel_node
from tests.payments.test_alipay import APP_ID, fake_alipay
from tests.payments.test_cards import closes_asked, fake_card, set_acquirer
from tests.payments.test_wechat_pay_flow import Shop, set_merchant

__all__ = ["fake_alipay", "fake_card"]


@pytest.fixture
async def api_node(
    database_url: str, node_factory: Any, fake_pay: FakeWechatPay, fake_alipay: FakeAlipay,
    fake_card: FakeAllinpay,
) -> Any:  # fmt: skip
    """A node whose WeChat Pay, Alipay and card acquirer are the fakes."""
    return await channel_node(
        node_factory, database_url, wechatpay_api_url=fake_pay.url,
        alipay_gateway_url=fake_alipay.gateway, allinpay_api_url=fake_card.url,
    )  # fmt: skip


@dataclass
class Channels:
    """One vendor with WeChat Pay, Alipay and a card acquirer set up; its member is bound to
    WeChat (`shop`: the WeChat Pay shop of test_wechat_pay_flow.py)."""

    shop: Shop
    alipay: FakeAlipay
    card: FakeAllinpay

    async def order(self) -> tuple[str, int]:
        order = await self.shop.order()
        return str(order["order_id"]), int(order["amounts"]["total"])

    async def prepay(self, oid: str, channel: str, expect: int = 200) -> Any:
        path = f"/orders/{oid}/prepay/{channel}"
        return await self.shop.shopper.client.call("POST", path, expect=expect)

    async def payment(self, oid: str) -> dict[str, Any]:
        answer = await self.shop.shopper.client.call("GET", f"/orders/{oid}/payment")
        return dict(answer.data)

    async def opened_at_alipay(self) -> tuple[str, int, str]:
        """An order whose Alipay page the member opened (the trade exists at Alipay)."""
        oid, total = await self.order()
        url = str((await self.prepay(oid, "alipay")).data["pay_url"])
        assert await self.alipay.open(url) == 200
        assert self.alipay.trade(oid).status == "WAIT_BUYER_PAY"
        return oid, total, url

    async def opened_by_card(self) -> tuple[str, int]:
        """An order whose UnionPay code the member holds (the bill waits at Allinpay)."""
        oid, total = await self.order()
        assert (await self.prepay(oid, "credit")).data["bill_no"] == oid
        assert self.card.trx[oid].status == PENDING
        return oid, total


@pytest.fixture
async def channels(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], fake_pay: FakeWechatPay,
    fake_alipay: FakeAlipay, fake_card: FakeAllinpay,
) -> Channels:  # fmt: skip
    a, _ = tenants
    await set_merchant(api, a.vid, fake_pay)
    await api.call(
        "PUT", f"/vendors/{a.vid}/mxx/alipay", fake_alipay.credentials(fake_alipay.apps[APP_ID])
    )
    await set_acquirer(api, a.vid, fake_card)
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid, wx_openid="o-alice")
    return Channels(Shop(a.vid, shopper, api_node, fake_pay, pid), fake_alipay, fake_card)


def alipay_closes(fake: FakeAlipay) -> list[str]:
    """The trades aquafleet asked Alipay to close (alipay.trade.close), in order."""
    return [
        json.loads(params["biz_content"])["out_trade_no"]
        for method, params in fake.calls
        if method == "alipay.trade.close"
    ]


async def _paid_once_at_wechat_pay(channels: Channels, oid: str, total: int, bill: str) -> None:
    """The member pays the order's WeChat Pay bill: paid once, with WeChat Pay only."""
    await channels.shop.fake.pay(bill)
    assert '"outcome":"paid"' in channels.shop.fake.answers[-1][1]
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("weixin", "paid", bill)
    assert await channels.shop.state(oid) == "paid"
    assert await balance(channel_account("weixin", channels.shop.vid)) == total
    assert await balance(channel_account("alipay", channels.shop.vid)) == 0
    assert await balance(channel_account("card", channels.shop.vid)) == 0
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    report = await channels.shop.sweep()
    assert (report.errors, report.refunds_sent) == ([], 0)
    assert await Refund.filter(order_oid=oid).count() == 0


# ----------------------------------------------------------------------------- Alipay


async def _paid_once_at(channels: Channels, oid: str, total: int, channel: str) -> None:
    """The order was paid once, at `channel`: one notice, one payment booked, no refund."""
    outcomes = await PaymentNotice.filter(bill_no=oid).values_list("outcome", flat=True)
    assert sorted(outcomes) == ["paid"]
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    assert (await channels.shop.sweep()).refunds_sent == 0
    assert await Refund.filter(order_oid=oid).count() == 0
    assert await balance(channel_account(channel, channels.shop.vid)) == total
    await assert_ledger_clean()


async def test_an_alipay_bill_moved_to_wechat_pay_is_closed_at_alipay(channels: Channels):
    """Before, the bill moved to WeChat Pay here only: Alipay's trade stayed open and the page
    the member had opened could still pay it, so the order was paid twice. Now the trade is
    closed at Alipay first; WeChat Pay gets the bill's next number (Alipay's is spent)."""
    oid, total, url = await channels.opened_at_alipay()

    bill = (await channels.prepay(oid, "weixin")).data["bill_no"]
    assert alipay_closes(channels.alipay) == [oid]
    assert channels.alipay.trade(oid).status == "TRADE_CLOSED"
    assert bill == f"{oid}-2" and channels.shop.fake.transactions[bill].state == "NOTPAY"
    assert await channels.alipay.open(url) == 400  # the member's old page: Alipay refuses it
    await channels.alipay.pay(oid)  # nor does the closed trade take the member's money
    assert channels.alipay.trade(oid).status == "TRADE_CLOSED"

    await _paid_once_at_wechat_pay(channels, oid, total, bill)
    await assert_ledger_clean()


async def test_an_alipay_bill_paid_while_moving_is_applied_once(channels: Channels):
    """The member paid at Alipay, its notification not here yet, then asks for WeChat Pay:
    closing the trade, Alipay says it is paid (ACQ.TRADE_STATUS_ERROR), its query's payment is
    applied and the move refused (409 order_paid): no WeChat Pay bill is made. The late
    notification is then a duplicate; nothing is refunded."""
    oid, total, _url = await channels.opened_at_alipay()
    assert await channels.alipay.pay(oid, notify=False) == []

    refused = await channels.prepay(oid, "weixin", expect=409)
    assert refused.code == "order_paid"
    assert alipay_closes(channels.alipay) == [oid]
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "paid", oid)
    assert info["transaction_no"] == channels.alipay.trade(oid).trade_no
    assert await channels.shop.state(oid) == "paid"
    assert channels.shop.fake.transactions == {}  # nothing opened at WeChat Pay

    assert await channels.alipay.notify(channels.alipay.trade(oid)) == 200  # the late one
    await _paid_once_at(channels, oid, total, "alipay")  # the same payment: one notice


async def test_alipay_unreachable_moves_nothing(channels: Channels):
    """Alipay does not answer the close (every try): WeChat Pay is refused with a clear 503
    and nothing moved: the bill is still the Alipay one, its page still pays it, nothing is
    opened at WeChat Pay. Later, with Alipay back, the move works."""
    oid, total, url = await channels.opened_at_alipay()
    channels.alipay.fail_next(3)

    refused = await channels.prepay(oid, "weixin", expect=503)
    assert refused.code == "alipay_unavailable"
    assert "Alipay" in refused.body["message"]
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "pending", oid)
    assert channels.alipay.trade(oid).status == "WAIT_BUYER_PAY"
    assert channels.shop.fake.transactions == {}
    assert await channels.shop.state(oid) == "obligation"
    assert await channels.alipay.open(url) == 200  # the page is still the order's

    bill = (await channels.prepay(oid, "weixin")).data["bill_no"]
    assert bill == f"{oid}-2" and channels.alipay.trade(oid).status == "TRADE_CLOSED"
    await _paid_once_at_wechat_pay(channels, oid, total, bill)
    await assert_ledger_clean()


async def test_an_alipay_page_never_opened_moves_under_its_number(channels: Channels):
    """A wap.pay URL the member never opened has no trade at Alipay to close
    (ACQ.TRADE_NOT_EXIST): the bill moves and keeps its number, so should the member open the
    old URL and pay it after all, that payment still finds the bill: booked as a second
    payment and refunded through Alipay, never an unknown bill."""
    oid, total = await channels.order()
    url = str((await channels.prepay(oid, "alipay")).data["pay_url"])

    bill = (await channels.prepay(oid, "weixin")).data["bill_no"]
    assert alipay_closes(channels.alipay) == [oid] and channels.alipay.trades == {}
    assert bill == oid
    await _paid_once_at_wechat_pay(channels, oid, total, bill)

    assert await channels.alipay.open(url) == 200
    assert await channels.alipay.pay(oid) == [200]
    notice = await PaymentNotice.get(bill_no=oid, channel="alipay")
    assert notice.outcome == "paid_twice"
    report = await channels.shop.sweep()
    assert (report.refunds_sent, report.refunds_settled) == (1, 1)
    assert await balance(channel_account("alipay", channels.shop.vid)) == 0
    await assert_ledger_clean()


# ----------------------------------------------------------------------------- the card


async def test_a_card_bill_moved_to_wechat_pay_is_closed_at_the_acquirer(channels: Channels):
    """Before, the bill moved to WeChat Pay here only: Allinpay kept it waiting and the
    member's UnionPay code could still pay it, so the order was paid twice. Now it is closed
    at Allinpay first (订单关闭) and the card is refused; WeChat Pay gets the next number."""
    oid, total = await channels.opened_by_card()

    bill = (await channels.prepay(oid, "weixin")).data["bill_no"]
    assert closes_asked(channels.card) == [oid]
    assert channels.card.trx[oid].status == CLOSED
    assert bill == f"{oid}-2" and channels.shop.fake.transactions[bill].state == "NOTPAY"
    with pytest.raises(ValueError, match="closed"):
        await channels.card.pay(oid)  # the member's card: Allinpay refuses it

    await _paid_once_at_wechat_pay(channels, oid, total, bill)
    await assert_ledger_clean()


async def test_a_card_bill_paid_while_moving_is_applied_once(channels: Channels):
    """The member paid by card, the notification lost, then asks for WeChat Pay: closing the
    bill, Allinpay says it is paid; its query's payment is applied and the move refused (409
    order_paid): no WeChat Pay bill is made. A resent notification is a duplicate."""
    oid, total = await channels.opened_by_card()
    assert await channels.card.pay(oid, notify=False) == []

    refused = await channels.prepay(oid, "weixin", expect=409)
    assert refused.code == "order_paid"
    assert closes_asked(channels.card) == [oid]
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("card", "paid", oid)
    assert info["transaction_no"] == channels.card.trx[oid].trxid
    assert await channels.shop.state(oid) == "paid"
    assert channels.shop.fake.transactions == {}

    assert await channels.card.pay(oid) == [(200, "success")]  # its notification, resent
    await _paid_once_at(channels, oid, total, "card")


async def test_the_acquirer_unreachable_moves_nothing(channels: Channels):
    """Allinpay does not answer the close (every try): WeChat Pay is refused with a clear 503
    and nothing moved: the bill is still the card one, the card still pays it, nothing is
    opened at WeChat Pay. Later, with Allinpay back, the move works."""
    oid, total = await channels.opened_by_card()
    channels.card.fail_next("/apiweb/tranx/close", times=3)

    refused = await channels.prepay(oid, "weixin", expect=503)
    assert refused.code == "acquirer_unavailable"
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("card", "pending", oid)
    assert channels.card.trx[oid].status == PENDING
    assert channels.shop.fake.transactions == {}
    assert await channels.shop.state(oid) == "obligation"

    bill = (await channels.prepay(oid, "weixin")).data["bill_no"]
    assert bill == f"{oid}-2" and channels.card.trx[oid].status == CLOSED
    await _paid_once_at_wechat_pay(channels, oid, total, bill)
    await assert_ledger_clean()


async def test_a_card_bill_the_acquirer_cannot_close_yet_does_not_move(channels: Channels):
    """Allinpay answers but does not close the bill, its query saying it is still being paid
    (2008): the card may still pay it, so it does not move (409 bill_open_at_channel); once
    Allinpay closes it, it does."""
    oid, total = await channels.opened_by_card()
    channels.card.close_status = "2008"

    refused = await channels.prepay(oid, "weixin", expect=409)
    assert refused.code == "bill_open_at_channel"
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("card", "pending", oid)
    assert channels.shop.fake.transactions == {}

    channels.card.close_status = "0000"
    bill = (await channels.prepay(oid, "weixin")).data["bill_no"]
    assert bill == f"{oid}-2" and closes_asked(channels.card) == [oid, oid]
    await _paid_once_at_wechat_pay(channels, oid, total, bill)
    await assert_ledger_clean()
