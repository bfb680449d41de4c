"""`aquafleet payments reconcile --date D` against the fake's trade bill: each kind of
difference is planted once, and the report lists exactly those."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest

from aquafleet.models.money import Refund, RefundState, request_refund
from aquafleet.models.orders import Order
from aquafleet.models.payments import Payment, PaymentState
from aquafleet.models.reconcile import BEIJING, compare, day_bounds, fen_of, parse_trade_bill
from tests.conftest import MASTER_SECRET
from tests.fakes.wechatpay import FakeTransaction
from tests.payments.test_money_paths import paid_from_the_wallet_and_at_wechat_pay
from tests.payments.test_wechat_pay_flow import Shop, shop
from tests.platform.test_cli import aquafleet, clean_env

__all__ = ["shop"]


def test_bill_amounts_are_read_as_fen_without_floats():
    assert [fen_of(v) for v in ("35.00", "0.01", "2990.5", "12")] == [3500, 1, 299050, 1200]


async def _paid(shop: Shop, *, hold: bool = False) -> str:
    oid = (await shop.order())["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    shop.fake.hold = hold
    await shop.fake.pay(bill)
    shop.fake.hold = False
    return str(bill)


async def test_the_report_finds_every_planted_difference_and_nothing_else(
    shop: Shop, database_url: str, tmp_path: Any
):
    fake = shop.fake
    matched = await _paid(shop)
    gone = await _paid(shop)  # paid here, then missing from the channel's bill
    changed = await _paid(shop)  # the channel's amount differs
    pending = await _paid(shop, hold=True)  # paid at the channel, the notification never came
    del fake.transactions[gone]
    fake.transactions[changed].total -= 1
    merchant = fake.merchants["1900000109"]
    fake.transactions["STRANGER0001"] = FakeTransaction(  # a payment we never opened
        mchid=merchant.mch_id, appid=merchant.app_id, out_trade_no="STRANGER0001",
        description="?", total=700, openid="o-x", notify_url="", prepay_id="wx0",
        created_at=time.time(), state="SUCCESS", transaction_id="4200000000000000000001",
        success_at=time.time(),
    )  # fmt: skip
    order = await Order.get(oid=matched)
    await request_refund(order=order, amount_fen=1000, refund_no="R-ok", reason="x", actor="t")
    await shop.sweep()
    await fake.drain()
    fake.refund_auto_succeed = False
    await request_refund(order=order, amount_fen=2000, refund_no="R-state", reason="x", actor="t")
    await shop.sweep()
    fake.refunds["R-state"].status = "SUCCESS"  # succeeded there; its notification never came

    day = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date().isoformat()
    rows = parse_trade_bill(fake.bill_text(day))
    assert {r.bill_no for r in rows if r.trade_state == "SUCCESS"} == {
        matched, changed, pending, "STRANGER0001",
    }  # fmt: skip
    env = clean_env(
        data_dir=tmp_path / "cli", master_secret=MASTER_SECRET, database_url=database_url,
        wechatpay_api_url=fake.url,
    )  # fmt: skip
    code, out = await aquafleet(env, "payments", "reconcile", "--date", day, "--json")
    assert code == 1, out
    lines = out.splitlines()
    report = json.loads("\n".join(lines[lines.index("{") : lines.index("}") + 1]))
    found = {(d["what"], d["subject"]) for d in report["differences"]}
    assert found == {
        ("missing_at_channel", gone),
        ("amount_mismatch", changed),
        ("state_mismatch", pending),
        ("missing_here", "STRANGER0001"),
        ("state_mismatch", "R-state"),
    }, report
    amounts = {d["subject"]: (d["ours"], d["theirs"]) for d in report["differences"]}
    total = (await Order.get(oid=changed)).total_fen
    assert amounts[changed] == (str(total), str(total - 1))
    assert amounts["R-state"] == ("requested", "success")

    # Another day's bill lists none of it, and ours has nothing then either: clean.
    yesterday = (dt.date.fromisoformat(day) - dt.timedelta(days=1)).isoformat()
    code, out = await aquafleet(env, "payments", "reconcile", "--date", yesterday)
    assert code == 0 and "0 differences" in out, out


async def test_a_day_is_the_channel_s_beijing_day_whatever_the_hour_in_utc(shop: Shop):
    """A payment at 17:00 UTC on the 6th is Beijing's 7th: it belongs to the 7th's bill, on
    SQLite too, where the bounds' text is compared with the stored UTC text (before the fix it
    was missed from 16:00 UTC on, and the full report failed every evening)."""
    await _paid(shop)  # a vendor, a member and an order that exist; its own time is now
    payment = await Payment.filter(state=PaymentState.PAID).first()
    assert payment is not None
    late = dt.datetime(2026, 12, 6, 17, 0, tzinfo=dt.UTC)  # 01:00 on the 7th in Beijing
    payment.paid_at = late
    await payment.save(update_fields=["paid_at"])
    vendor, channel = payment.vendor_code, payment.channel

    on_the_7th = await compare(vendor, channel, dt.date(2026, 12, 7), [])
    assert [(d.what, d.subject) for d in on_the_7th] == [("missing_at_channel", payment.bill_no)]
    assert await compare(vendor, channel, dt.date(2026, 12, 6), []) == []
    start, end = day_bounds(dt.date(2026, 12, 7))
    assert (start, end) == (
        dt.datetime(2026, 12, 6, 16, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 7, 16, tzinfo=dt.UTC),
    )


async def test_a_payment_booked_as_paid_twice_is_no_difference(shop: Shop):
    """The member paid an order from its wallet, then its WeChat Pay bill too: WeChat Pay's
    bill lists that payment and its refund, and we booked both (`pay-twice`, `twice-...`).
    The report lists nothing: the bill is not ours as paid at WeChat Pay, yet it is known."""
    paid = await paid_from_the_wallet_and_at_wechat_pay(shop)
    await shop.sweep()  # the duplicate refunded through WeChat Pay
    await shop.fake.drain()
    day = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    rows = parse_trade_bill(shop.fake.bill_text(day.isoformat()))
    assert {r.bill_no for r in rows if r.trade_state == "SUCCESS"} == {paid.bill, paid.topup_bill}
    assert await compare(shop.vid, "weixin", day, rows) == []


async def test_a_payment_just_before_midnight_is_on_the_channel_s_day(shop: Shop):
    """The member pays at 23:59:59 Beijing; the notification (or the sweep's query, when it
    was lost) is applied here after midnight. The bill is paid on the day WeChat Pay says
    (its success_time), the day its bill lists it on: neither day's report has a difference.
    Before, the bill was paid on the day it was applied here: yesterday's report named it
    state_mismatch (ours paid, theirs paid) and today's missing_at_channel."""
    today = dt.datetime.now(BEIJING).date()
    yesterday = today - dt.timedelta(days=1)
    before_midnight = dt.datetime.combine(today, dt.time(), BEIJING) - dt.timedelta(seconds=1)
    oid = (await shop.order())["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.fake.pay(bill, at=before_midnight.timestamp())
    assert '"outcome":"paid"' in shop.fake.answers[-1][1]
    paid = await Payment.get(bill_no=bill)
    assert paid.paid_at == before_midnight
    info = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert info["pay_tms"] == before_midnight.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    for day in (yesterday, today):
        rows = parse_trade_bill(shop.fake.bill_text(day.isoformat()))
        assert await compare(shop.vid, "weixin", day, rows) == [], day


@pytest.mark.parametrize("told_by", ["notification", "query"])
async def test_a_refund_asked_before_midnight_and_paid_after_is_on_the_channel_s_day(
    shop: Shop, told_by: str
):
    """A refund asked at 23:59 Beijing and paid back by WeChat Pay at 00:01: WeChat Pay's bill
    lists it on the day it succeeded. It is counted here on that day too (its success_time,
    from the refund notification or the sweep's query), so neither day's report has a
    difference. Before, it was counted on the day it was asked: that day's report named it
    missing_at_channel and the next day's missing_here, and the command exited 1 twice."""
    today = dt.datetime.now(BEIJING).date()
    yesterday = today - dt.timedelta(days=1)
    midnight = dt.datetime.combine(today, dt.time(), BEIJING)
    paid_at, asked, succeeded = (midnight - dt.timedelta(minutes=10),
                                 midnight - dt.timedelta(minutes=1),
                                 midnight + dt.timedelta(minutes=1))  # fmt: skip
    oid = (await shop.order())["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.fake.pay(bill, at=paid_at.timestamp())
    order = await Order.get(oid=oid)
    await request_refund(order=order, amount_fen=1000, refund_no="R-late", reason="x", actor="t")
    await Refund.filter(refund_no="R-late").update(created_at=asked.astimezone(dt.UTC))
    shop.fake.refund_auto_succeed = False
    assert (await shop.sweep()).refunds_sent == 1
    shop.fake.refunds["R-late"].created_at = asked.timestamp()
    if told_by == "query":
        shop.fake.refunds["R-late"].notify_url = ""  # the notification is lost
        await shop.fake.succeed_refund("R-late", at=succeeded.timestamp())
        await shop.sweep()  # the sweep's query settles it
    else:
        await shop.fake.succeed_refund("R-late", at=succeeded.timestamp())
    refund = await Refund.get(refund_no="R-late")
    assert refund.state is RefundState.SUCCEEDED
    assert refund.succeeded_at == succeeded

    for day in (yesterday, today):
        rows = parse_trade_bill(shop.fake.bill_text(day.isoformat()))
        assert await compare(shop.vid, "weixin", day, rows) == [], day
    listed = parse_trade_bill(shop.fake.bill_text(today.isoformat()))
    assert [r.refund_no for r in listed if r.trade_state == "REFUND"] == ["R-late"]
