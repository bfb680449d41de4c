"""Money paths where two of the platform's steps meet, through a real node and the fake WeChat
Pay, on SQLite and PostgreSQL: the return of an order a member paid twice, and a renewal paid at
WeChat Pay whose device change failed. The money ledger's check is clean after each."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from aquafleet.api.payments import PAYMENTS
from aquafleet.models.devices import Device
from aquafleet.models.money import Refund, RefundState, balance, channel_account
from aquafleet.models.order_states import fire
from aquafleet.models.orders import Order, OrderEvent
from aquafleet.models.service import DAY_S, DeviceService, ServiceChange
from aquafleet.models.service_requests import ServiceChangeRequest
from tests.api.conftest import ApiClient, Tenant
from tests.api.test_delivery_api import register
from tests.api.test_renewals_api import delivered
from tests.payments.shops import moved_before_closing
from tests.payments.test_wechat_pay_flow import Shop, assert_ledger_clean, shop

__all__ = ["shop"]


async def _wallet(shop: Shop) -> int:
    answer = await shop.shopper.client.call("GET", f"/users/{shop.shopper.uid}/wallet")
    return int(answer.data["balance"])


class PaidTwice(NamedTuple):
    oid: str
    total: int
    bill: str  # the order's WeChat Pay bill, paid after the wallet paid the order
    topup_bill: str  # the wallet top-up's bill
    refund_no: str  # the duplicate's refund


async def paid_from_the_wallet_and_at_wechat_pay(shop: Shop) -> PaidTwice:
    """An order the member paid from its wallet after opening WeChat Pay, whose WeChat payment
    went through too (paid twice): its bill moved to the wallet before moving closed it at
    WeChat Pay (the API now closes it first: tests/payments/test_bill_moves.py)."""
    order = await shop.order()
    oid, total = order["order_id"], order["amounts"]["total"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    topup = await shop.shopper.client.call(
        "POST", f"/users/{shop.shopper.uid}/wallet/topup", {"amount": total}
    )
    await shop.fake.pay(topup.data["bill_no"])
    await moved_before_closing(bill)
    await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet")
    await shop.fake.pay(bill)
    assert '"outcome":"paid_twice"' in shop.fake.answers[-1][1]
    twice = f"twice-{shop.fake.transactions[bill].transaction_id}"
    return PaidTwice(oid, total, bill, topup.data["bill_no"], twice)


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
    oid, total, _bill, _topup, twice = await paid_from_the_wallet_and_at_wechat_pay(shop)
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
    oid, total, _bill, _topup, twice = await paid_from_the_wallet_and_at_wechat_pay(shop)
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


async def test_a_renewal_paid_at_wechat_pay_whose_device_change_failed_is_applied_by_the_sweep(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """The member pays a renewal at WeChat Pay; the payment is booked but the device change
    fails (Redis away, or the node dies before it). WeChat Pay resends its notification, which
    is then a duplicate: the payments sweep applies the renewal, once, and the order is done."""
    (did,) = await register(api, shop.vid, 1)
    await delivered(
        shop.node, tenants[0], shop.shopper, did, {"product_id": shop.pid, "package": "30d"}
    )
    expires = (await DeviceService.get(did=did)).rental_expires_at
    assert expires is not None
    renewal = await shop.shopper.client.call(
        "POST", "/orders/renewals", {"did": did, "package": "30d"}
    )
    oid = renewal.data["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    payments = shop.node.app[PAYMENTS]
    working = payments.apply_service

    async def broken(did: str, change: ServiceChangeRequest) -> object:
        raise ConnectionError("redis went away")

    payments.apply_service = broken
    shop.fake.hold = True
    await shop.fake.pay(bill)
    notification = shop.fake.held[0]
    (failed,) = await shop.fake.release()
    assert failed[0] >= 500  # WeChat Pay resends
    payments.apply_service = working
    resent = await shop.fake.deliver(notification)
    assert resent[0] == 200 and '"outcome":"duplicate"' in resent[1]
    assert await shop.state(oid) == "paid"
    assert (await DeviceService.get(did=did)).rental_expires_at == expires  # not renewed yet

    assert (await shop.sweep()).renewals_finished == 0  # the notification's own may be running
    paid_at = (await Order.get(oid=oid)).paid_at
    assert paid_at is not None
    await Order.filter(oid=oid).update(paid_at=paid_at - dt.timedelta(seconds=61))  # later
    report = await shop.sweep()
    assert report.renewals_finished == 1
    assert await shop.state(oid) == "done"
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 30 * DAY_S
    assert (await shop.sweep()).renewals_finished == 0  # once
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 30 * DAY_S
    assert await ServiceChange.filter(did=did, request_id=f"order:{oid}").count() == 1
    await assert_ledger_clean()


async def test_a_paid_renewal_of_a_device_given_back_is_refunded_not_retried(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """A renewal paid for a device the member no longer holds is refunded (renewal-{oid})
    and stays paid; the sweep does not try to apply it again."""
    (did,) = await register(api, shop.vid, 1)
    await delivered(
        shop.node, tenants[0], shop.shopper, did, {"product_id": shop.pid, "package": "30d"}
    )
    renewal = await shop.shopper.client.call(
        "POST", "/orders/renewals", {"did": did, "package": "30d"}
    )
    oid = renewal.data["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await Device.filter(did=did).update(owner_id=None)  # unbound meanwhile
    await shop.fake.pay(bill)
    assert shop.fake.answers[-1][0] == 409
    refund = await Refund.get(refund_no=f"renewal-{oid}")
    assert refund.amount_fen == renewal.data["amounts"]["total"]
    paid_at = (await Order.get(oid=oid)).paid_at
    assert paid_at is not None
    await Order.filter(oid=oid).update(paid_at=paid_at - dt.timedelta(hours=1))
    report = await shop.sweep()
    assert report.renewals_finished == 0 and not any(oid in e for e in report.errors)
    assert await shop.state(oid) == "paid"
    await assert_ledger_clean()


async def test_a_member_renews_its_device_from_its_wallet(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """A renewal is an order like any other to the wallet: paid from it at once, the device
    renewed once, the order done."""
    (did,) = await register(api, shop.vid, 1)
    line = {"product_id": shop.pid, "package": "30d"}
    await delivered(shop.node, tenants[0], shop.shopper, did, line)
    expires = (await DeviceService.get(did=did)).rental_expires_at
    assert expires is not None
    renewal = await shop.shopper.client.call(
        "POST", "/orders/renewals", {"did": did, "package": "30d"}
    )
    oid, total = renewal.data["order_id"], renewal.data["amounts"]["total"]
    topup = await shop.shopper.client.call(
        "POST", f"/users/{shop.shopper.uid}/wallet/topup", {"amount": total}
    )
    await shop.fake.pay(topup.data["bill_no"])
    paid = await shop.shopper.client.call("POST", f"/orders/{oid}/prepay/wallet")
    assert (paid.data["pay_ch"], paid.data["pay_state"]) == ("wallet", "paid")
    assert await shop.state(oid) == "done"
    assert await _wallet(shop) == 0
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 30 * DAY_S
    assert await ServiceChange.filter(did=did, request_id=f"order:{oid}").count() == 1
    await assert_ledger_clean()
