"""Card payments (AD-08 credit, AD-09 debit) end to end through a real node and the fake
Allinpay 收银宝, on SQLite and PostgreSQL: pay, duplicate, forged and wrong-amount
notifications, a late notification found by the sweep's query, refunds executed by the refund
sweep, bills of orders closed or paid otherwise closed at the acquirer, the credentials never
shown. The money ledger's check is clean after each scenario."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aquafleet.api.payments import PAYMENTS
from aquafleet.models.accounts import AdminAccount, create_account
from aquafleet.models.allinpay import rsa_verify, sign_string
from aquafleet.models.merchants import PaymentMerchant
from aquafleet.models.money import (
    MoneyTransaction,
    Refund,
    RefundState,
    balance,
    channel_account,
    request_refund,
)
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from aquafleet.models.payments import Payment, PaymentNotice, PaymentState
from aquafleet.models.sealed import is_sealed
from aquafleet.models.tenancy import Role
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.fakes.allinpay import FakeAllinpay
from tests.payments.shops import ChannelShop, assert_ledger_clean, channel_node

CUSID = "990581007426001"


@pytest.fixture
async def fake_card() -> AsyncIterator[FakeAllinpay]:
    server = FakeAllinpay()
    await server.start()
    server.add_merchant(CUSID)
    yield server
    await server.stop()


@pytest.fixture
async def api_node(database_url: str, node_factory: Any, fake_card: FakeAllinpay) -> Any:
    """A node whose card acquirer is the fake, which notifies the node at its own port."""
    return await channel_node(node_factory, database_url, allinpay_api_url=fake_card.url)


class CardShop(ChannelShop):
    fake: FakeAllinpay

    async def order(self) -> tuple[str, int]:
        order = await self.new_order()
        return str(order["order_id"]), int(order["amounts"]["total"])

    async def prepay(self, oid: str, kind: str = "credit", expect: int = 200) -> Any:
        return await self.shopper.client.call("POST", f"/orders/{oid}/prepay/{kind}", expect=expect)


async def set_acquirer(api: ApiClient, vid: str, fake: FakeAllinpay) -> None:
    merchant = fake.merchants[CUSID]
    await api.call(
        "PUT",
        f"/vendors/{vid}/acquirers/allinpay",
        {
            "allinpay_cusid": merchant.cusid, "allinpay_appid": merchant.appid,
            "allinpay_private_key": merchant.private_pem, "allinpay_public_key": fake.public_pem,
        },
    )  # fmt: skip


@pytest.fixture
async def shop(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], fake_card: FakeAllinpay
) -> CardShop:
    a, _ = tenants
    await set_acquirer(api, a.vid, fake_card)
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    return CardShop(a.vid, shopper, api_node, fake_card, pid)


def test_the_signing_rule_is_allinpays():
    # 收银宝 3.2 安全规范: non-empty fields but sign, sorted by name, k=v joined by &.
    fields = {"version": "11", "cusid": "990581007426001", "appid": "00000051", "body": "",
              "randomstr": "82712208", "signtype": "RSA", "trxid": "112094120001088317",
              "sign": "x"}  # fmt: skip
    assert sign_string(fields) == (
        "appid=00000051&cusid=990581007426001&randomstr=82712208&signtype=RSA"
        "&trxid=112094120001088317&version=11"
    )


async def test_a_member_pays_an_order_by_credit_card_end_to_end(shop: CardShop):
    oid, total = await shop.order()
    prepay = (await shop.prepay(oid, "credit")).data
    assert prepay["bill_no"] == oid and prepay["acquirer"] == "allinpay"
    trx = shop.fake.trx[oid]
    assert prepay["pay_info"].endswith(trx.trxid)
    assert trx.trxamt == total and trx.limit_pay == ""
    assert trx.notify_url.endswith(f"/api/v1/payments/card/allinpay/notify/{shop.vid}")
    # Our request was signed with the merchant key (the fake refuses anything else).
    path, form = shop.fake.calls[-1]
    assert path == "/apiweb/unitorder/pay" and form["signtype"] == "RSA"
    assert rsa_verify(form, shop.fake.merchants[CUSID].public_pem)
    assert (await shop.prepay(oid, "credit")).data["bill_no"] == oid  # again: the same bill
    assert len(shop.fake.trx) == 1

    answers = await shop.fake.pay(oid, card="credit")
    assert answers == [(200, "success")]
    assert await shop.state(oid) == "paid"
    info = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("card", "paid", oid)
    assert info["transaction_no"] == trx.trxid and info["amount"] == total
    assert await balance(channel_account("card", shop.vid)) == total
    assert shop.node.metrics.payments_paid == 1
    assert (await shop.prepay(oid, "debit", expect=409)).status == 409
    await assert_ledger_clean()


async def test_a_debit_card_bill_refuses_credit_cards(shop: CardShop):
    oid, _total = await shop.order()
    await shop.prepay(oid, "debit")
    assert shop.fake.trx[oid].limit_pay == "no_credit"
    with pytest.raises(ValueError, match="credit"):
        await shop.fake.pay(oid, card="credit")
    assert await shop.fake.pay(oid, card="debit") == [(200, "success")]
    assert await shop.state(oid) == "paid"
    await assert_ledger_clean()


async def test_a_duplicate_notification_pays_once(shop: CardShop):
    oid, _total = await shop.order()
    await shop.prepay(oid)
    answers = await shop.fake.pay(oid, times=3)
    assert answers == [(200, "success")] * 3
    assert await shop.state(oid) == "paid"
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    assert await PaymentNotice.filter(bill_no=oid).count() == 1
    await assert_ledger_clean()


async def test_a_forged_notification_changes_nothing(shop: CardShop):
    oid, _total = await shop.order()
    await shop.prepay(oid)
    ((status, text),) = await shop.fake.pay(oid, forge=True)
    assert status == 401 and "notification_refused" in text and text != "success"
    assert await shop.state(oid) == "obligation"
    assert shop.node.metrics.payments_notices_refused == 1
    assert await MoneyTransaction.filter(order_oid=oid).count() == 0
    assert await PaymentNotice.all().count() == 0
    await assert_ledger_clean()


async def test_a_notification_with_another_amount_never_pays(shop: CardShop):
    oid, _total = await shop.order()
    await shop.prepay(oid)
    assert await shop.fake.pay(oid, amount=1) == [(200, "success")]
    assert await shop.state(oid) == "obligation"
    assert shop.node.metrics.payments_amount_mismatch == 1
    notice = await PaymentNotice.get(bill_no=oid)
    assert (notice.outcome, notice.amount_fen, notice.channel) == ("amount_mismatch", 1, "card")
    assert await MoneyTransaction.filter(order_oid=oid).count() == 0
    await assert_ledger_clean()


async def test_a_late_notification_is_found_by_the_sweeps_query(shop: CardShop):
    oid, _total = await shop.order()
    await shop.prepay(oid)
    trx = shop.fake.trx[oid]
    trx.notify_url = "http://127.0.0.1:9/lost"  # the notification never arrives
    with pytest.raises(OSError):
        await shop.fake.pay(oid)
    service = shop.node.app[PAYMENTS]
    service.query_after = service.query_after * 0
    report = await shop.sweep()
    assert (report.bills_queried, report.bills_paid) == (1, 1)
    assert await shop.state(oid) == "paid"
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    await assert_ledger_clean()


async def test_refunds_of_a_card_paid_order_are_executed_by_the_refund_sweep(shop: CardShop):
    oid, total = await shop.order()
    await shop.prepay(oid)
    await shop.fake.pay(oid)
    paid = await Order.get(oid=oid)
    await request_refund(order=paid, amount_fen=1000, refund_no="part-1", reason="少件", actor="t")
    report = await shop.sweep()
    assert (report.refunds_sent, report.refunds_settled) == (1, 1)
    shop.fake.refund_status = "2000"  # the second one is still processing when answered
    await request_refund(
        order=paid, amount_fen=total - 1000, refund_no=f"return-{oid}", reason="退货", actor="t"
    )
    report = await shop.sweep()
    assert (report.refunds_sent, report.refunds_settled) == (1, 0)
    assert (await Refund.get(refund_no=f"return-{oid}")).state is RefundState.REQUESTED
    shop.fake.finish_refund(f"return-{oid}")
    assert (await shop.sweep()).refunds_settled == 1  # the sweep's query settles it
    states = {r.refund_no: (r.state, r.channel) for r in await Refund.filter(order_oid=oid)}
    assert states == {
        "part-1": (RefundState.SUCCEEDED, "card"),
        f"return-{oid}": (RefundState.SUCCEEDED, "card"),
    }
    assert sum(r.trxamt for r in shop.fake.refunds.values()) == total
    assert shop.fake.trx[oid].refunded == total
    assert (await shop.sweep()).refunds_sent == 0  # executed once
    assert await balance(channel_account("card", shop.vid)) == 0
    info = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert [r["state"] for r in info["refunds"]] == ["succeeded", "succeeded"]
    await assert_ledger_clean()


async def test_a_refund_the_acquirer_refuses_fails(shop: CardShop):
    oid, total = await shop.order()
    await shop.prepay(oid)
    await shop.fake.pay(oid)
    paid = await Order.get(oid=oid)
    await request_refund(order=paid, amount_fen=total, refund_no="r-1", reason="x", actor="t")
    shop.fake.trx[oid].refunded = total  # refunded elsewhere: Allinpay refuses
    report = await shop.sweep()
    assert report.refunds_failed == 1
    assert (await Refund.get(refund_no="r-1")).state is RefundState.FAILED
    await assert_ledger_clean()


async def test_the_acquirer_credentials_are_sealed_never_answered_nor_logged(
    log_stream: io.StringIO, shop: CardShop, api: ApiClient
):
    secret_line = shop.fake.merchants[CUSID].private_pem.splitlines()[5]
    oid, _ = await shop.order()
    await shop.prepay(oid)
    await shop.fake.pay(oid)
    assert await shop.state(oid) == "paid"
    answered = []
    for path in (f"/vendors/{shop.vid}", "/vendors", "/openapi.json"):
        async with api.session.get(
            f"{api.base}/api/v1{path}", headers={"Authorization": f"Bearer {api.token}"}
        ) as response:
            answered.append(await response.text())
    logged = log_stream.getvalue()
    # The stream holds the node's lines: the acquirer set, the payment confirmed.
    assert "vendor_acquirer_changed" in logged and "payment_confirmed" in logged
    assert secret_line not in logged and secret_line not in "\n".join(answered)
    row = await PaymentMerchant.get(vendor_id=shop.vid, channel="allinpay")
    assert is_sealed(row.sealed) and secret_line not in row.sealed + str(row.public)
    assert row.public["allinpay_cusid"] == CUSID
    bad = await api.call(
        "PUT", f"/vendors/{shop.vid}/acquirers/allinpay",
        {"allinpay_private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-key\n"}, expect=422,
    )  # fmt: skip
    assert "not-a-key" not in str(bad.body)


def closes_asked(fake: FakeAllinpay) -> list[str]:
    """The bills aquafleet asked Allinpay to close (订单关闭), in order."""
    return [form["oldreqsn"] for path, form in fake.calls if path == "/apiweb/tranx/close"]


async def test_the_bill_of_a_closed_order_is_closed_at_the_acquirer(shop: CardShop):
    """A card bill is payable at Allinpay until it is closed there: the sweep closes the bill
    of a closed order at Allinpay, not only here, so the member can no longer pay it."""
    oid, _total = await shop.order()
    await shop.prepay(oid)
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/close")
    report = await shop.sweep()
    assert report.errors == [] and report.bills_closed == 1
    assert closes_asked(shop.fake) == [oid]
    assert (await Payment.get(bill_no=oid)).state is PaymentState.CLOSED
    with pytest.raises(ValueError, match="closed"):
        await shop.fake.pay(oid)  # the member's card is refused: no money taken
    assert await shop.state(oid) == "close"
    assert await MoneyTransaction.filter(order_oid=oid).count() == 0
    assert (await shop.sweep()).bills_closed == 0 and closes_asked(shop.fake) == [oid]
    await assert_ledger_clean()


async def test_the_bill_of_an_order_paid_otherwise_is_closed_at_the_acquirer(shop: CardShop):
    """The order was marked paid by an admin while its card bill was open: the sweep asks
    Allinpay (not paid), closes the bill there, and the member can no longer pay it twice."""
    if not await AdminAccount.exists(username="ops"):
        await create_account("ops", "0" * 32, Role.PLATFORM)
    oid, _total = await shop.order()
    await shop.prepay(oid)
    await mark_paid(oid, admin="ops", reason="paid in cash at the shop")
    report = await shop.sweep()
    assert report.errors == [] and report.bills_closed == 1
    assert closes_asked(shop.fake) == [oid]
    assert (await Payment.get(bill_no=oid)).state is PaymentState.CLOSED
    with pytest.raises(ValueError, match="closed"):
        await shop.fake.pay(oid)
    assert await shop.state(oid) == "paid"
    assert not await Refund.filter(order_oid=oid).exists()
    assert await balance(channel_account("card", shop.vid)) == 0
    await assert_ledger_clean()


async def test_a_bill_the_acquirer_cannot_close_yet_is_closed_by_a_later_sweep(shop: CardShop):
    """Allinpay does not close the bill (not 0000) and its query says it is still awaiting
    payment: it stays pending here, without an error, and the next sweep closes it."""
    oid, _total = await shop.order()
    await shop.prepay(oid)
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/close")
    shop.fake.close_status = "2008"
    report = await shop.sweep()
    assert report.errors == [] and report.bills_closed == 0
    assert (await Payment.get(bill_no=oid)).state is PaymentState.PENDING
    shop.fake.close_status = "0000"
    assert (await shop.sweep()).bills_closed == 1
    assert closes_asked(shop.fake) == [oid, oid]
    assert (await Payment.get(bill_no=oid)).state is PaymentState.CLOSED
    with pytest.raises(ValueError, match="closed"):
        await shop.fake.pay(oid)
    await assert_ledger_clean()


async def test_money_arriving_after_the_order_closed_goes_back_to_the_card(shop: CardShop):
    """The member paid at the acquirer, the notification was lost, and the order closed:
    closing the bill, Allinpay will not (paid); its query applies the payment after close,
    and the sweep refunds the card."""
    oid, total = await shop.order()
    await shop.prepay(oid)
    assert await shop.fake.pay(oid, notify=False) == []  # paid; the notification is lost
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/close")
    report = await shop.sweep()  # closing the bill finds it paid
    assert report.errors == [] and report.bills_closed == 0
    assert closes_asked(shop.fake) == [oid]
    assert await shop.state(oid) == "close"
    refund = await Refund.get(refund_no=f"close-{oid}")
    assert refund.state is RefundState.DUE and refund.amount_fen == total
    report = await shop.sweep()
    assert (report.refunds_sent, report.refunds_settled) == (1, 1)
    assert shop.fake.refunds[f"close-{oid}"].trxamt == total
    assert await balance(channel_account("card", shop.vid)) == 0
    await assert_ledger_clean()


async def test_a_prepay_is_retried_when_the_acquirer_does_not_answer(shop: CardShop):
    oid, _total = await shop.order()
    shop.fake.fail_next("/apiweb/unitorder/pay", times=1)
    assert (await shop.prepay(oid)).data["bill_no"] == oid
    assert len(shop.fake.trx) == 1
    shop.fake.fail_next("/apiweb/unitorder/pay", times=3)
    answer = await shop.prepay(oid, expect=503)
    assert answer.body["code"] == "acquirer_unavailable"
