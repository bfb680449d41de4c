"""What the member still holds under an order bill's older number (docs/payments.md, "Paying
otherwise after opening a channel"): an Alipay URL expires when the unpaid order would close.
Through a real node with the fake WeChat Pay, Alipay and Allinpay, on SQLite and PostgreSQL;
the ledger check is clean after each."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse

from aquafleet.models.orders import Order
from aquafleet.models.payments import PaymentNotice
from tests.fakes.allinpay import PENDING
from tests.payments.shops import assert_ledger_clean
from tests.payments.test_alipay import fake_alipay
from tests.payments.test_bill_moves_channels import Channels, api_node, channels
from tests.payments.test_cards import fake_card

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
