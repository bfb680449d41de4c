"""A payment under a number the order's bill left open at a provider, whose notification never
comes, is found by the payments sweep and applied once (docs/payments.md, "Numbers a bill left
open"): the order paid, or the second payment refunded under the number it was paid under; and
the numbers bills moved before moves closed them left open are closed there by the one-off
`aquafleet payments old-numbers`. Through a real node with the fake WeChat Pay, Alipay and
Allinpay, on SQLite and PostgreSQL; `aquafleet money check` is clean after each, and a further
sweep changes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest

from aquafleet.api.payments import PAYMENTS
from aquafleet.gateway.old_numbers import OldNumbersSwept, ask_old_number, record_guessed_numbers
from aquafleet.models.bill_numbers import OldBillNumber
from aquafleet.models.money import MoneyTransaction, Refund, RefundState, balance, channel_account
from aquafleet.models.payments import PaymentNotice
from tests.conftest import MASTER_SECRET
from tests.fakes.allinpay import CLOSED, PENDING
from tests.payments.shops import assert_ledger_clean, moved_before_closing
from tests.payments.test_alipay import fake_alipay
from tests.payments.test_bill_moves_channels import Channels, api_node, channels
from tests.payments.test_bill_old_numbers import _alipay_url_then_moved_on
from tests.payments.test_cards import closes_asked, fake_card
from tests.platform.test_cli import aquafleet, clean_env

__all__ = ["api_node", "channels", "fake_alipay", "fake_card"]

BEIJING = dt.timezone(dt.timedelta(hours=8))


async def _sweep(channels: Channels) -> Any:
    """One pass of the node's sweep, asking about everything now (not a minute later)."""
    service = channels.shop.node.app[PAYMENTS]
    service.query_after = service.query_after * 0
    return await service.sweep()


async def _money(oid: str) -> tuple[int, int, int]:
    """What the order's money is: payments booked, notices, refunds."""
    return (
        await MoneyTransaction.filter(order_oid=oid).count(),
        await PaymentNotice.filter(bill_no__startswith=oid).count(),
        await Refund.filter(order_oid=oid).count(),
    )


async def _nothing_more(channels: Channels, oid: str) -> None:
    """Another sweep asks nothing, sends nothing, books nothing; the ledger is clean."""
    before = await _money(oid)
    report = await _sweep(channels)
    assert (report.errors, report.old_numbers_asked, report.refunds_sent) == ([], 0, 0)
    assert (report.bills_paid, report.old_numbers_paid) == (0, 0)
    assert await _money(oid) == before
    await assert_ledger_clean()


# ----------------------------------------------------------------------------- Alipay


async def test_an_unheard_payment_under_an_old_alipay_number_pays_the_order_once(
    channels: Channels,
):
    """The Alipay URL of `{oid}` the member never opened, the bill since moved on to `{oid}-2`
    at Allinpay; the member opens the old URL and pays, and Alipay's notification never
    comes. Before, the sweep asked Allinpay about `{oid}-2` only: the order stayed unpaid
    (closed at its deadline) with the money at Alipay. Now the sweep asks Alipay about `{oid}`
    too: the order is paid once, under that number, and the card bill closed."""
    oid, total, url = await _alipay_url_then_moved_on(channels)
    assert await channels.alipay.open(url) == 200
    assert await channels.alipay.pay(oid, notify=False) == []

    report = await _sweep(channels)
    assert await channels.shop.state(oid) == "paid"
    assert (report.errors, report.old_numbers_paid) == ([], 1)
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "paid", oid)
    assert info["transaction_no"] == channels.alipay.trade(oid).trade_no
    assert channels.card.trx[f"{oid}-2"].status == CLOSED  # the card cannot pay it too
    assert await _money(oid) == (1, 1, 0)
    assert await balance(channel_account("alipay", channels.shop.vid)) == total
    assert await balance(channel_account("card", channels.shop.vid)) == 0
    await assert_ledger_clean()

    await _nothing_more(channels, oid)
    assert await channels.alipay.notify(channels.alipay.trade(oid)) == 200  # late after all
    assert await _money(oid) == (1, 1, 0)  # the same payment's notice: a duplicate
    await assert_ledger_clean()


async def test_an_unheard_second_payment_under_an_old_alipay_number_is_refunded_once(
    channels: Channels,
):
    """The order is paid by card under `{oid}-2`; the member then pays the old Alipay URL of
    `{oid}` and its notification never comes. Before, nothing found that payment: the money
    stayed at Alipay. Now the sweep finds it, books it as a second payment and refunds it in
    the same pass, through Alipay under `{oid}`, once."""
    oid, total, url = await _alipay_url_then_moved_on(channels)
    await channels.card.pay(f"{oid}-2")
    assert await channels.shop.state(oid) == "paid"
    assert await channels.alipay.open(url) == 200
    assert await channels.alipay.pay(oid, notify=False) == []

    report = await _sweep(channels)
    outcomes = await PaymentNotice.filter(bill_no=oid, channel="alipay").values_list("outcome")
    assert outcomes == [("paid_twice",)]
    assert report.errors == []
    assert (report.old_numbers_paid, report.refunds_sent, report.refunds_settled) == (1, 1, 1)
    refunds = [
        json.loads(params["biz_content"])
        for method, params in channels.alipay.calls
        if method == "alipay.trade.refund"
    ]
    assert [r["out_trade_no"] for r in refunds] == [oid]
    refund = await Refund.get(order_oid=oid)
    assert (refund.channel, refund.state, refund.amount_fen) == (
        "alipay", RefundState.SUCCEEDED, total,
    )  # fmt: skip
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("card", "paid", f"{oid}-2")
    assert await balance(channel_account("alipay", channels.shop.vid)) == 0
    assert await balance(channel_account("card", channels.shop.vid)) == total
    await assert_ledger_clean()
    await _nothing_more(channels, oid)


# ----------------------------------------------------------------------------- left open


async def _paid_at_alipay_while_open_elsewhere(channels: Channels, oid: str, url: str) -> None:
    """The member pays the old Alipay URL (notified) while the bill is open at another
    channel that cannot close it then: the order is paid at Alipay, the other left open."""
    assert await channels.alipay.open(url) == 200
    assert await channels.alipay.pay(oid) == [200]
    assert await channels.shop.state(oid) == "paid"
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "paid", oid)


async def test_a_wechat_pay_order_left_open_and_paid_unheard_is_refunded_once(
    channels: Channels,
):
    """The bill is at WeChat Pay under `{oid}` (the Alipay URL never opened kept its number)
    when the member pays the old Alipay URL; WeChat Pay does not answer the close, so its
    order stays open, and the member pays it too, its notification never coming. Before,
    that was forgotten (logged `bill_left_open`): the second payment stayed at WeChat Pay.
    Now the sweep closes the order there, finds it paid and refunds it once."""
    oid, total = await channels.order()
    url = str((await channels.prepay(oid, "alipay")).data["pay_url"])
    assert (await channels.prepay(oid, "weixin")).data["bill_no"] == oid
    wechat = channels.shop.fake
    wechat.fail_next(f"/v3/pay/transactions/out-trade-no/{oid}/close", times=3)
    await _paid_at_alipay_while_open_elsewhere(channels, oid, url)
    assert wechat.transactions[oid].state == "NOTPAY"  # left open
    wechat.hold = True
    await wechat.pay(oid)  # the member's WeChat Pay sheet; the notification never comes
    wechat.hold = False

    report = await _sweep(channels)
    outcomes = await PaymentNotice.filter(bill_no=oid, channel="weixin").values_list("outcome")
    assert outcomes == [("paid_twice",)]
    assert report.errors == []
    assert (report.old_numbers_paid, report.refunds_sent) == (1, 1)
    refund = await Refund.get(order_oid=oid)
    assert (refund.channel, refund.amount_fen) == ("weixin", total)
    assert [(r.out_trade_no, r.refund) for r in wechat.refunds.values()] == [(oid, total)]
    await wechat.drain()
    assert (await Refund.get(order_oid=oid)).state is RefundState.SUCCEEDED
    assert await balance(channel_account("weixin", channels.shop.vid)) == 0
    assert await balance(channel_account("alipay", channels.shop.vid)) == total
    await assert_ledger_clean()
    await _nothing_more(channels, oid)
    assert [status for status, _ in await wechat.release()] == [200]  # late: a duplicate
    await _nothing_more(channels, oid)


async def test_a_card_bill_left_open_and_paid_unheard_is_refunded_once(channels: Channels):
    """The bill is at Allinpay under `{oid}-2` when the member pays the old Alipay URL;
    Allinpay does not answer the close, and the member pays the card code too, its
    notification lost. Now the sweep closes it at Allinpay, finds it paid and refunds it
    there under `{oid}-2`, once."""
    oid, total, url = await _alipay_url_then_moved_on(channels)
    channels.card.fail_next("/apiweb/tranx/close", times=3)
    await _paid_at_alipay_while_open_elsewhere(channels, oid, url)
    assert channels.card.trx[f"{oid}-2"].status == PENDING  # left open
    assert await channels.card.pay(f"{oid}-2", notify=False) == []

    report = await _sweep(channels)
    outcomes = await PaymentNotice.filter(bill_no=f"{oid}-2", channel="card").values_list("outcome")
    assert outcomes == [("paid_twice",)]
    assert report.errors == []
    assert (report.old_numbers_paid, report.refunds_sent, report.refunds_settled) == (1, 1, 1)
    refund = await Refund.get(order_oid=oid)
    assert (refund.channel, refund.state, refund.amount_fen) == (
        "card", RefundState.SUCCEEDED, total,
    )  # fmt: skip
    assert [r.oldreqsn for r in channels.card.refunds.values()] == [f"{oid}-2"]
    assert await balance(channel_account("card", channels.shop.vid)) == 0
    assert await balance(channel_account("alipay", channels.shop.vid)) == total
    await assert_ledger_clean()
    await _nothing_more(channels, oid)


# ----------------------------------------------------------------------------- before moves closed


async def _moved_before_moves_closed(channels: Channels) -> tuple[str, int, str]:
    """An order whose Alipay page the member opened, its bill moved to WeChat Pay here only
    (as before session 15: Alipay's trade left open), opened there under `{oid}`, then moved
    to a card (WeChat Pay's order closed: the bill is `{oid}-2` at Allinpay)."""
    oid, total, url = await channels.opened_at_alipay()
    await moved_before_closing(oid, "weixin")
    assert (await channels.prepay(oid, "weixin")).data["bill_no"] == oid
    assert (await channels.prepay(oid, "credit")).data["bill_no"] == f"{oid}-2"
    assert channels.alipay.trade(oid).status == "WAIT_BUYER_PAY"  # still payable there
    return oid, total, url


async def _old_numbers(channels: Channels, database_url: str, tmp_path: Any) -> dict[str, Any]:
    """`aquafleet payments old-numbers --since today --json`, from the shell."""
    env = clean_env(
        data_dir=tmp_path / "cli", master_secret=MASTER_SECRET, database_url=database_url,
        wechatpay_api_url=channels.shop.fake.url, alipay_gateway_url=channels.alipay.gateway,
        allinpay_api_url=channels.card.url,
        payments_notify_url=f"http://127.0.0.1:{channels.shop.node.http_port}",
    )  # fmt: skip
    today = dt.datetime.now(BEIJING).date().isoformat()
    code, out = await aquafleet(env, "payments", "old-numbers", "--since", today, "--json")
    assert code == 0, out
    lines = out.splitlines()
    return dict(json.loads("\n".join(lines[lines.index("{") : lines.index("}") + 1])))


async def test_old_numbers_closes_what_a_move_before_session_15_left_open(
    channels: Channels, database_url: str, tmp_path: Any
):
    """Alipay's trade of `{oid}` was left open by a move before moves closed it, and the bill
    has `{oid}-2` now. Nothing remembered it, so nothing closed it: the member could pay both.
    `payments old-numbers` closes it at Alipay (and asks about every other number the bill
    had at each channel), and the bill's number now is left alone: the card pays it once."""
    oid, total, url = await _moved_before_moves_closed(channels)
    await _sweep(channels)
    assert channels.alipay.trade(oid).status == "WAIT_BUYER_PAY"  # the sweep alone knows nothing

    found = await _old_numbers(channels, database_url, tmp_path)
    assert found["errors"] == [] and found["paid"] == 0
    assert found["recorded"] == found["asked"] == 5  # 2 numbers x 3 channels, less the bill's
    assert channels.alipay.trade(oid).status == "TRADE_CLOSED"
    assert await channels.alipay.open(url) == 400  # the member's old page: refused
    assert channels.card.trx[f"{oid}-2"].status == PENDING
    assert f"{oid}-2" not in closes_asked(channels.card)

    assert await channels.card.pay(f"{oid}-2") == [(200, "success")]
    assert await channels.shop.state(oid) == "paid"
    assert await _money(oid) == (1, 1, 0)
    assert await balance(channel_account("card", channels.shop.vid)) == total
    await assert_ledger_clean()
    await _nothing_more(channels, oid)


async def test_old_numbers_applies_a_payment_found_there_once(
    channels: Channels, database_url: str, tmp_path: Any
):
    """The member paid the Alipay trade a move before session 15 left open, its notification
    lost, while the bill waits at Allinpay under `{oid}-2`. `payments old-numbers` finds the
    payment: the order is paid once, under `{oid}` at Alipay, and the card bill closed. Run
    again, it finds nothing more."""
    oid, total, _url = await _moved_before_moves_closed(channels)
    assert await channels.alipay.pay(oid, notify=False) == []
    await _sweep(channels)
    assert await channels.shop.state(oid) == "obligation"  # the sweep alone does not find it

    found = await _old_numbers(channels, database_url, tmp_path)
    assert (found["errors"], found["paid"]) == ([], 1)
    assert await channels.shop.state(oid) == "paid"
    info = await channels.payment(oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "paid", oid)
    assert channels.card.trx[f"{oid}-2"].status == CLOSED
    with pytest.raises(ValueError, match="closed"):
        await channels.card.pay(f"{oid}-2")
    assert await _money(oid) == (1, 1, 0)
    assert await balance(channel_account("alipay", channels.shop.vid)) == total
    await assert_ledger_clean()

    again = await _old_numbers(channels, database_url, tmp_path)
    assert (again["errors"], again["paid"]) == ([], 0)
    await _nothing_more(channels, oid)


async def test_a_guessed_number_is_not_closed_once_the_bill_moved_there_under_it(
    channels: Channels, monkeypatch: pytest.MonkeyPatch
):
    """`payments old-numbers` guessed WeChat Pay's `{oid}` (the bill is at Alipay under it,
    its page never opened) and was about to close it there when the member chose WeChat Pay:
    the bill moved there under `{oid}` and the member got a fresh sheet. Before, the number
    was checked before the close, so the close took that fresh sheet (the member could not
    pay it). Now the check and the close are under the bill's lock: the move waits for the
    close (of a number WeChat Pay did not have yet), then opens the sheet, which pays."""
    oid, _total = await channels.order()
    await channels.prepay(oid, "alipay")  # the URL, never opened: no trade at Alipay
    service = channels.shop.node.app[PAYMENTS]
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert await record_guessed_numbers(service, since) == 2  # WeChat Pay's, the card's
    number = await OldBillNumber.get(bill_no=oid, channel="weixin")
    real_close = service.wechat.close_to_move
    moving: list[asyncio.Task[Any]] = []

    async def member_moves_meanwhile(payment: Any) -> Any:
        moving.append(asyncio.ensure_future(channels.prepay(oid, "weixin")))
        await asyncio.wait(moving, timeout=10)  # done unless it waits for the bill's lock
        return await real_close(payment)

    monkeypatch.setattr(service.wechat, "close_to_move", member_moves_meanwhile)
    await ask_old_number(service, number, OldNumbersSwept())
    monkeypatch.undo()
    moved = await asyncio.wait_for(moving[0], 30)
    assert moved.data["bill_no"] == oid
    assert channels.shop.fake.transactions[oid].state == "NOTPAY"  # the member's sheet pays
    await channels.shop.fake.pay(oid)
    assert await channels.shop.state(oid) == "paid"
    assert await _money(oid) == (1, 1, 0)
    await assert_ledger_clean()
