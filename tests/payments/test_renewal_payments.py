"""Renewal orders (kind 3) paid through the member's channels, on SQLite and PostgreSQL: paying
one from the wallet or through WeChat Pay renews its device once, and a renewal whose device
change failed when its notification came is finished by WeChat Pay's resend."""

from __future__ import annotations

import datetime as dt

from aquafleet.api.payments import PAYMENTS
from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.models.devices import DeviceState
from aquafleet.models.money import Refund
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from aquafleet.models.registry import set_device_state
from aquafleet.models.service import DAY_S, DeviceService, ServiceChange
from aquafleet.models.service_requests import ServiceChangeRequest
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.test_delivery_api import PARCEL, register
from tests.payments.shops import assert_ledger_clean
from tests.payments.test_wallet import _top_up, _wallet
from tests.payments.test_wechat_pay_flow import Shop, shop

__all__ = ["shop"]


async def _paid_a_while_ago(oid: str) -> None:
    """The renewal paid longer ago than the sweep leaves to the notification that paid it."""
    paid_at = (await Order.get(oid=oid)).paid_at
    assert paid_at is not None
    await Order.filter(oid=oid).update(paid_at=paid_at - dt.timedelta(seconds=61))


async def _renewal(shop: Shop, api: ApiClient, vendor: ApiClient) -> tuple[str, str, int]:
    """The shop's member rents a device for 30 days (paid, delivered) and orders its renewal
    by 60 days: (renewal order id, did, the rental's expiry before the renewal)."""
    (did,) = await register(api, shop.vid, 1)
    client = shop.shopper.client
    body = {
        "content": [{"product_id": shop.pid, "package": "30d"}],
        "receiver": {"name": "张三", "phone": "13900000000", "address": "南方软件园A123"},
    }
    oid = (await client.call("POST", "/orders", body)).data["order_id"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    expires = (await DeviceService.get(did=did)).rental_expires_at
    assert expires is not None
    renewal = await client.call("POST", "/orders/renewals", {"did": did, "package": "60d"})
    return str(renewal.data["order_id"]), did, expires


async def test_a_renewal_paid_from_the_wallet_renews_its_device(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    renewal, did, expires = await _renewal(shop, api, tenants[0].vendor)
    await _top_up(shop, 12_000)
    paid = await shop.shopper.client.call("POST", f"/orders/{renewal}/prepay/wallet")
    assert paid.data["pay_ch"] == "wallet" and paid.data["pay_state"] == "paid"
    assert await shop.state(renewal) == "done"
    assert await _wallet(shop) == 0
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 60 * DAY_S
    assert await ServiceChange.filter(did=did, request_id=f"order:{renewal}").count() == 1
    await assert_ledger_clean()


async def test_a_renewal_whose_device_change_failed_is_finished_by_the_resent_notification(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    renewal, did, expires = await _renewal(shop, api, tenants[0].vendor)
    service = shop.node.app[PAYMENTS]
    working = service.apply_service
    failures = [RedisUnavailable("redis went away")]

    async def flaky(did: str, change: ServiceChangeRequest) -> object:
        if failures:
            raise failures.pop()
        return await working(did, change)

    service.apply_service = flaky
    bill = (await shop.prepay(renewal)).data["bill_no"]
    shop.fake.duplicate = 2  # WeChat Pay sends it again: the first answer was not a 2xx
    await shop.fake.pay(bill)
    assert [status for status, _ in shop.fake.answers] == [503, 200]
    assert '"outcome":"duplicate"' in shop.fake.answers[1][1]  # booked by the first
    assert await shop.state(renewal) == "paid"  # the member paid; the device is not renewed
    assert (await DeviceService.get(did=did)).rental_expires_at == expires

    # The payments sweep finishes it, once, when it is older than a notification's own work.
    assert (await shop.sweep()).renewals_finished == 0  # the notification's may be running
    await _paid_a_while_ago(renewal)
    assert (await shop.sweep()).renewals_finished == 1
    assert await shop.state(renewal) == "done"
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 60 * DAY_S
    assert (await shop.sweep()).renewals_finished == 0
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 60 * DAY_S
    assert await ServiceChange.filter(did=did, request_id=f"order:{renewal}").count() == 1
    await assert_ledger_clean()


async def test_the_sweep_leaves_a_renewal_whose_device_left_its_member_paid_and_refunded(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    renewal, did, expires = await _renewal(shop, api, tenants[0].vendor)
    await api.call("DELETE", f"/devices/{did}/bind")  # AB-13, after the renewal was ordered
    bill = (await shop.prepay(renewal)).data["bill_no"]
    await shop.fake.pay(bill)
    assert await shop.state(renewal) == "paid"
    await _paid_a_while_ago(renewal)
    for _ in range(2):
        assert (await shop.sweep()).renewals_finished == 0
    assert await shop.state(renewal) == "paid"
    assert (await DeviceService.get(did=did)).rental_expires_at == expires
    assert await Refund.filter(refund_no=f"renewal-{renewal}").count() == 1


async def _left_paid(shop: Shop, renewal: str) -> None:
    """The renewal paid at WeChat Pay while its device change failed (Redis away) and left
    paid, longer ago than the sweep leaves to the notification."""
    service = shop.node.app[PAYMENTS]
    working = service.apply_service

    async def broken(did: str, change: ServiceChangeRequest) -> object:
        raise RedisUnavailable("redis went away")

    service.apply_service = broken
    try:
        await shop.fake.pay((await shop.prepay(renewal)).data["bill_no"])
    finally:
        service.apply_service = working
    assert await shop.state(renewal) == "paid"
    await _paid_a_while_ago(renewal)


async def test_renewals_refused_every_pass_never_starve_a_newer_one(
    shop: Shop, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """More paid renewals refused every time (their devices disabled) than a sweep's batch:
    each tried goes to the back, so a renewal paid after them is applied at the next pass;
    the refused ones are counted and named."""
    vendor = tenants[0].vendor
    refused = [await _renewal(shop, api, vendor) for _ in range(2)]
    newer, did, expires = await _renewal(shop, api, vendor)
    for renewal, _, _ in refused:
        await _left_paid(shop, renewal)
    await _left_paid(shop, newer)
    for _, disabled, _ in refused:
        await set_device_state(disabled, DeviceState.DISABLED)  # aquafleet devices disable

    first = await shop.sweep(limit=2)  # the oldest two: refused
    assert (first.renewals_finished, first.renewals_refused) == (0, 2)
    for renewal, disabled, _ in refused:
        (named,) = [e for e in first.errors if renewal in e]
        assert "device_disabled" in named and disabled in named
    assert shop.metrics.payments_renewals_refused == 2
    second = await shop.sweep(limit=2)
    assert second.renewals_finished == 1
    assert await shop.state(newer) == "done"
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 60 * DAY_S
    for renewal, _, _ in refused:
        assert await shop.state(renewal) == "paid"  # still listed: GET /orders?type=3&state=1
    third = await shop.sweep(limit=2)
    assert (third.renewals_finished, third.renewals_refused) == (0, 2)
