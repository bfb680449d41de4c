"""A return (AD-14) of an order some of whose money went back before, on SQLite and PostgreSQL:
the return refunds what is left of what was paid, once, and the order reaches refund."""

from __future__ import annotations

from aquafleet.models.money import Refund, request_refund
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.test_delivery_api import PARCEL, register
from tests.payments.shops import assert_ledger_clean
from tests.payments.test_wechat_pay_flow import Shop, shop

__all__ = ["shop"]


async def test_an_order_paid_twice_then_returned_refunds_the_order_once(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """Marked paid (cash at the shop), then paid at WeChat Pay too: that second payment is
    refunded in full (twice-...). The goods then come back: AD-14 refunds the order's payment
    (the total, once), not both payments again, and the order is not stuck in consent."""
    vendor = tenants[0].vendor
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="paid in cash at the shop")
    await shop.fake.pay(bill)
    assert '"outcome":"paid_twice"' in shop.fake.answers[-1][1]
    (did,) = await register(api, shop.vid, 1)
    await vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    client = shop.shopper.client
    await client.call("POST", f"/orders/{oid}/status/confirm")
    await client.call("POST", f"/orders/{oid}/status/return", {"reason": "漏水"})
    await vendor.call("POST", f"/orders/{oid}/status/consent")

    back = await vendor.call("PUT", f"/orders/{oid}/status/refund")
    assert (back.data["state_name"], back.data["amounts"]["refund_due"]) == ("refund", total)
    refunds = {r.refund_no: r.amount_fen for r in await Refund.filter(order_oid=oid)}
    assert refunds[f"return-{oid}"] == total
    assert sum(refunds.values()) == 2 * total  # both payments back, each once
    await assert_ledger_clean()


async def test_a_return_after_a_partial_refund_records_what_is_still_due(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """Part of the order's payment went back before the goods did (an operator's refund):
    AD-14 records the total less that as due (`amounts.refund_due`, integer fen), refunds
    exactly that, and the ledger stays consistent (`aquafleet money check`)."""
    vendor = tenants[0].vendor
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.fake.pay(bill)
    part = 1234
    await request_refund(
        order=await Order.get(oid=oid), amount_fen=part, refund_no=f"part-{oid}",
        reason="part given back", actor="test",
    )  # fmt: skip
    (did,) = await register(api, shop.vid, 1)
    await vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    client = shop.shopper.client
    await client.call("POST", f"/orders/{oid}/status/confirm")
    await client.call("POST", f"/orders/{oid}/status/return", {"reason": "漏水"})
    await vendor.call("POST", f"/orders/{oid}/status/consent")

    back = await vendor.call("PUT", f"/orders/{oid}/status/refund")
    assert (back.data["state_name"], back.data["amounts"]["refund_due"]) == ("refund", total - part)
    assert (await Order.get(oid=oid)).refund_due_fen == total - part
    refunds = {r.refund_no: r.amount_fen for r in await Refund.filter(order_oid=oid)}
    assert refunds == {f"part-{oid}": part, f"return-{oid}": total - part}
    await assert_ledger_clean()
