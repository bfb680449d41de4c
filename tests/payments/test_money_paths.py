"""Money paths where two of the platform's steps meet, through a real node and the fake WeChat
Pay, on SQLite and PostgreSQL: the return of an order a member paid twice, and a renewal paid at
WeChat Pay whose device change failed. The money ledger's check is clean after each."""

from __future__ import annotations

from aquafleet.models.money import Refund, RefundState, balance, channel_account
from aquafleet.models.orders import Order, OrderEvent, fire
from tests.api.conftest import Tenant
from tests.payments.test_wechat_pay_flow import Shop, assert_ledger_clean, shop

__all__ = ["shop"]


async def _wallet(shop: Shop) -> int:
    answer = await shop.shopper.client.call("GET", f"/users/{shop.shopper.uid}/wallet")
    return int(answer.data["balance"])


async def _paid_from_the_wallet_and_at_wechat_pay(shop: Shop) -> tuple[str, int, str]:
    """An order the member paid from its wallet after opening WeChat Pay, whose WeChat payment
    went through too (paid twice): its id, total and the duplicate's refund number."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    topup = await shop.shopper.client.call(
        "POST", f"/users/{shop.shopper.uid}/wallet/topup", {"amount": total}
    )
    await shop.fake.pay(topup.data["bill_no"])
    await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet")
    await shop.fake.pay(bill)
    assert '"outcome":"paid_twice"' in shop.fake.answers[-1][1]
    return oid, total, f"twice-{shop.fake.transactions[bill].transaction_id}"


async def _received(oid: str) -> None:
    """The order shipped and received (the parcel's steps are not this test's)."""
    order = await Order.get(oid=oid)
    await fire(order, OrderEvent.DELIVER, actor_role="vendor", actor_id="test")
    await fire(order, OrderEvent.CONFIRM, actor_role="system", actor_id="test")


async def test_an_order_paid_twice_is_returned_and_refunded_once_more(
    shop: Shop, tenants: tuple[Tenant, Tenant]
):
    """The member paid an order twice (its wallet, then WeChat Pay: refunded in full), then
    returned it: AD-14 takes the goods back and refunds the order's own payment, to the
    wallet. What the member paid twice came back through WeChat Pay; nothing is refused."""
    vendor = tenants[0].vendor
    oid, total, twice = await _paid_from_the_wallet_and_at_wechat_pay(shop)
    assert (await shop.sweep()).refunds_sent == 1  # the duplicate, back through WeChat Pay
    await shop.fake.drain()
    assert (await Refund.get(refund_no=twice)).state is RefundState.SUCCEEDED
    assert await _wallet(shop) == 0

    await _received(oid)
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/return", {"reason": "漏水"})
    await vendor.call("POST", f"/orders/{oid}/status/consent")
    back = await vendor.call("PUT", f"/orders/{oid}/status/refund", expect=201)
    assert back.data["state_name"] == "refund"
    returned = await Refund.get(refund_no=f"return-{oid}")
    assert (returned.amount_fen, returned.part) == (total, "")
    await shop.sweep()
    assert (await Refund.get(refund_no=f"return-{oid}")).state is RefundState.SUCCEEDED
    assert await _wallet(shop) == total  # the order's payment, back where it came from
    # WeChat Pay holds the top-up alone: the duplicate went back through it.
    assert await balance(channel_account("weixin", shop.vid)) == total
    await assert_ledger_clean()


async def test_an_order_paid_twice_is_returned_while_its_duplicate_is_in_flight(
    shop: Shop, tenants: tuple[Tenant, Tenant]
):
    """The same, the duplicate's refund not yet sent when the goods come back: the return
    refunds the order's payment, the duplicate's refund stays as it is."""
    vendor = tenants[0].vendor
    oid, total, twice = await _paid_from_the_wallet_and_at_wechat_pay(shop)
    await _received(oid)
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/return", {"reason": "漏水"})
    await vendor.call("POST", f"/orders/{oid}/status/consent")
    await vendor.call("PUT", f"/orders/{oid}/status/refund", expect=201)
    assert (await Refund.get(refund_no=f"return-{oid}")).amount_fen == total
    assert (await Refund.get(refund_no=twice)).amount_fen == total
    await shop.sweep()
    await shop.fake.drain()
    states = {r.refund_no: r.state for r in await Refund.filter(order_oid=oid)}
    assert states == {twice: RefundState.SUCCEEDED, f"return-{oid}": RefundState.SUCCEEDED}
    assert await _wallet(shop) == total
    await assert_ledger_clean()
