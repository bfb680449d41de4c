"""A member opens WeChat Pay for an order, then pays it otherwise (the wallet): the WeChat Pay
order is closed there first, so the payment sheet the member still holds cannot pay the order a
second time. Through a real node and the fake WeChat Pay, on SQLite and PostgreSQL; the money
ledger's check is clean after each."""

from __future__ import annotations

from typing import Any

import pytest

from aquafleet.api.payments import PAYMENTS
from aquafleet.gateway.providers.wechatpay import WechatPayUnavailable
from aquafleet.models.money import Refund, balance, channel_account
from aquafleet.models.payments import Payment, PaymentState
from tests.payments.test_wechat_pay_flow import Shop, assert_ledger_clean, shop

__all__ = ["shop"]


async def _wallet(shop: Shop) -> int:
    answer = await shop.shopper.client.call("GET", f"/users/{shop.shopper.uid}/wallet")
    return int(answer.data["balance"])


async def _topped_up(shop: Shop, amount: int) -> None:
    topup = await shop.shopper.client.call(
        "POST", f"/users/{shop.shopper.uid}/wallet/topup", {"amount": amount}
    )
    await shop.fake.pay(topup.data["bill_no"])


async def _opened_at_wechat_pay(shop: Shop) -> tuple[str, int, str]:
    """An order whose WeChat Pay payment sheet the member holds, and a wallet that can pay it."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    assert bill == oid and shop.fake.transactions[bill].state == "NOTPAY"
    await _topped_up(shop, total)
    return oid, total, bill


async def _payment(shop: Shop, oid: str) -> dict[str, Any]:
    return dict((await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data)


async def test_a_wechat_pay_bill_moved_to_the_wallet_cannot_be_paid_there_too(shop: Shop):
    """Before, the bill moved to the wallet here only: WeChat Pay's order stayed open, the
    member paid it from the sheet it still had, and the order was paid twice (the second
    payment booked and refunded). Now the order is closed at WeChat Pay before the wallet pays:
    WeChat Pay refuses to pay it, and the order is paid once, from the wallet."""
    oid, total, bill = await _opened_at_wechat_pay(shop)

    paid = await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet")
    assert (paid.data["pay_ch"], paid.data["pay_state"]) == ("wallet", "paid")
    assert shop.fake.transactions[bill].state == "CLOSED"
    with pytest.raises(AssertionError, match="CLOSED"):
        await shop.fake.pay(bill)  # the member's old payment sheet: WeChat Pay refuses it

    info = await _payment(shop, oid)
    assert (info["pay_ch"], info["pay_state"], info["refunds"]) == ("wallet", "paid", [])
    assert await _wallet(shop) == 0
    assert await balance(channel_account("weixin", shop.vid)) == total  # the top-up alone
    report = await shop.sweep()
    assert (report.refunds_sent, report.bills_closed) == (0, 0)
    assert await Refund.filter(order_oid=oid).count() == 0
    again = await shop.prepay(oid, expect=409)
    assert again.code == "order_state_conflict"  # paid: nothing to pay at WeChat Pay
    assert await shop.state(oid) == "paid"
    await assert_ledger_clean()


async def test_wechat_pay_unreachable_moves_nothing(shop: Shop):
    """WeChat Pay does not answer the close (every try): the wallet payment is refused with a
    clear 503 and nothing moved: the bill is still the WeChat Pay one, the wallet untouched.
    The member can still pay with WeChat Pay, once; later, with WeChat Pay back, the move
    works."""
    oid, total, bill = await _opened_at_wechat_pay(shop)
    shop.fake.fail_next(f"/v3/pay/transactions/out-trade-no/{bill}/close", times=3)

    refused = await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet", expect=503)
    assert refused.code == "wechatpay_unavailable"
    assert "WeChat Pay" in refused.body["message"]
    info = await _payment(shop, oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("weixin", "pending", bill)
    assert await _wallet(shop) == total
    assert shop.fake.transactions[bill].state == "NOTPAY"
    assert await shop.state(oid) == "obligation"

    # WeChat Pay is back: the move closes the bill there and the wallet pays, once.
    paid = await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet")
    assert (paid.data["pay_ch"], paid.data["pay_state"]) == ("wallet", "paid")
    assert shop.fake.transactions[bill].state == "CLOSED"
    assert await _wallet(shop) == 0
    await assert_ledger_clean()


async def test_a_bill_paid_at_wechat_pay_while_moving_is_applied_once(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
):
    """The member paid the WeChat Pay sheet, its notification not here yet, then asks to pay
    from the wallet: the close answers ORDERPAID, the WeChat payment is applied (queried) and
    the wallet is not charged (409 order_paid). The late notification is then a duplicate.
    Should the query not be answered, nothing moves (503) and the next try applies it."""
    oid, total, bill = await _opened_at_wechat_pay(shop)
    shop.fake.hold = True
    await shop.fake.pay(bill)
    shop.fake.hold = False

    client = shop.node.app[PAYMENTS].wechat.client

    async def unanswered(*_args: Any, **_kwargs: Any) -> Any:
        raise WechatPayUnavailable("no answer")

    with monkeypatch.context() as patched:
        patched.setattr(client, "query_transaction", unanswered)
        down = await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet", expect=503)
    assert down.code == "wechatpay_unavailable"
    assert (await _payment(shop, oid))["pay_state"] == "pending"
    assert await _wallet(shop) == total

    refused = await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet", expect=409)
    assert refused.code == "order_paid"
    info = await _payment(shop, oid)
    assert (info["pay_ch"], info["pay_state"]) == ("weixin", "paid")
    assert info["transaction_no"] == shop.fake.transactions[bill].transaction_id
    assert await _wallet(shop) == total  # not charged
    assert await shop.state(oid) == "paid"

    answers = await shop.fake.release()
    assert ['"outcome":"duplicate"' in text for _, text in answers] == [True]
    assert (await shop.sweep()).refunds_sent == 0
    assert await Refund.filter(order_oid=oid).count() == 0
    assert await balance(channel_account("weixin", shop.vid)) == 2 * total  # top-up and order
    await assert_ledger_clean()


async def test_back_to_wechat_pay_after_the_wallet_was_short(shop: Shop):
    """WeChat Pay refuses a closed order's number again (ORDERCLOSED): a bill closed there to
    move takes its next number, so the member who tried the wallet (short) and comes back to
    WeChat Pay gets a new sheet and pays, once."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    assert (await shop.prepay(oid)).data["bill_no"] == oid
    short = await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet", expect=409)
    assert short.code == "insufficient_funds"
    assert shop.fake.transactions[oid].state == "CLOSED"

    again = (await shop.prepay(oid)).data["bill_no"]
    assert again == f"{oid}-2"
    await shop.fake.pay(again)
    assert '"outcome":"paid"' in shop.fake.answers[-1][1]
    info = await _payment(shop, oid)
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("weixin", "paid", again)
    assert (await Payment.get(order_oid=oid)).state is PaymentState.PAID
    assert await balance(channel_account("weixin", shop.vid)) == total
    await assert_ledger_clean()
