"""Renewal orders (kind 3, seed FAQ 2) through a real node on SQLite and PostgreSQL: a member
renews a rented device it holds; paying the renewal extends or tops up the device once, at
once, and the order is done without a delivery."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from aquafleet.gateway.appkeys import DEVICE_GATEWAY
from aquafleet.models.errors import InvalidInput
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from aquafleet.models.service import (
    DAY_S,
    DeviceService,
    ServiceChange,
    ServiceMode,
)
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import Role
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import Shopper, add_product, make_member
from tests.api.test_delivery_api import PARCEL, register
from tests.api.test_orders_api import order_body

VOLUME_RENT = {
    "deposit": 0,
    "config": [{"name": "100L", "key": "100l", "value": 900, "ml": 100_000}],
}


def applier(node: Any) -> Any:
    gateway = node.app[DEVICE_GATEWAY]

    async def apply(did: str, change: ServiceChangeRequest) -> object:
        return await gateway.change_service(did, change, actor="payment:test")

    return apply


async def delivered(
    node: Any, tenant: Tenant, shopper: Shopper, did: str, line: dict[str, Any]
) -> str:
    """`did` ordered by `shopper` with `line`, paid and delivered: the member holds it."""
    oid = (await shopper.client.call("POST", "/orders", order_body(line))).data["order_id"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await tenant.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    return str(oid)


async def test_a_renewal_costs_the_rent_and_paying_it_extends_the_device_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    pid = await add_product(a.vendor)  # sold, or rented by days (30d: 6000, 60d: 12000)
    shopper = await make_member(api_node, api, a.vid)
    other = await make_member(api_node, api, a.vid)
    rented, sold, theirs = await register(api, a.vid, 3)
    (foreign,) = await register(api, b.vid, 1)
    await delivered(api_node, a, shopper, rented, {"product_id": pid, "package": "30d"})
    await delivered(api_node, a, shopper, sold, {"product_id": pid})
    await delivered(api_node, a, other, theirs, {"product_id": pid, "package": "30d"})
    expires = (await DeviceService.get(did=rented)).rental_expires_at
    assert expires is not None

    refused = [
        (shopper.client, {"did": foreign, "package": "30d"}, 404),  # another tenant's
        (shopper.client, {"did": theirs, "package": "30d"}, 404),  # another member's
        (shopper.client, {"did": "AAAA99999999ABCD", "package": "30d"}, 404),
        (shopper.client, {"did": sold, "package": "30d"}, 409),  # a sale: nothing to renew
        (shopper.client, {"did": rented, "package": "7d"}, 422),  # not a package of it
        (shopper.client, {"did": rented}, 422),
        (a.vendor, {"did": rented, "package": "30d"}, 403),  # members renew
    ]
    for client, sent, status in refused:
        await client.call("POST", "/orders/renewals", sent, expect=status)
    assert not await Order.filter(kind=3).exists()

    headers = {"Idempotency-Key": "renew-1"}
    body = {"did": rented, "package": "60d", "memo": "two more months"}
    order = (await shopper.client.call("POST", "/orders/renewals", body, headers=headers)).data
    again = (await shopper.client.call("POST", "/orders/renewals", body, headers=headers)).data
    assert again["order_id"] == order["order_id"]
    # The key sent again with another renewal (or an AD-02 order) is refused, not answered.
    for path, other in (
        ("/orders/renewals", {**body, "package": "30d"}),
        ("/orders/renewals", {**body, "memo": "one more month"}),
        ("/orders", order_body({"product_id": pid})),
    ):
        refused = await shopper.client.call("POST", path, other, headers=headers, expect=409)
        assert refused.body["code"] == "idempotency_key_reused"
        assert refused.body["data"] == {"order_id": order["order_id"]}
    assert await Order.filter(kind=3).count() == 1
    assert (order["type"], order["state_name"], order["memo"]) == (3, "obligation", body["memo"])
    amounts = order["amounts"]
    assert (amounts["rent"], amounts["deposit"], amounts["freight"], amounts["install"]) == (
        12000, 0, 0, 0,
    )  # fmt: skip
    assert amounts["total"] == 12000
    assert [(c["product_id"], c["package"], c["amount"]) for c in order["content"]] == [
        (pid, "60d", 12000)
    ]
    assert order["delivery"] == {"devices": [rented]}
    oid = order["order_id"]
    assert (await DeviceService.get(did=rented)).rental_expires_at == expires  # not yet paid

    with pytest.raises(InvalidInput):  # paying a renewal needs the device side
        await mark_paid(oid, admin=PLATFORM_USER, reason="transfer")
    paid = await mark_paid(
        oid, admin=PLATFORM_USER, reason="transfer", apply_service=applier(api_node)
    )
    assert paid.state.name == "DONE"
    assert (await DeviceService.get(did=rented)).rental_expires_at == expires + 60 * DAY_S
    # Paid twice: the device changes once.
    await mark_paid(oid, admin=PLATFORM_USER, reason="again", apply_service=applier(api_node))
    assert (await DeviceService.get(did=rented)).rental_expires_at == expires + 60 * DAY_S
    assert await ServiceChange.filter(did=rented, request_id=f"order:{oid}").count() == 1
    seen = (await shopper.client.call("GET", f"/orders/{oid}")).data
    assert (seen["state_name"], seen["pay_tms"] is not None, seen["complete_tms"] is not None) == (
        "done", True, True,
    )  # fmt: skip
    await a.vendor.call(
        "POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [rented]}, expect=409
    )
    await a.vendor.call("PUT", f"/orders/{oid}/delivery", {"company": "x"}, expect=409)
    listed = await a.vendor.call("GET", "/orders", params={"type": 3})
    assert [o["order_id"] for o in listed.data] == [oid]


async def test_a_failed_renewal_stays_paid_and_a_retry_tops_up_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(
        a.vendor, billing=4, install=False, install_cost=0, specification={}, rent=VOLUME_RENT
    )
    shopper = await make_member(api_node, api, a.vid)
    (did,) = await register(api, a.vid, 1)
    await delivered(api_node, a, shopper, did, {"product_id": pid, "package": "100l"})
    await shopper.client.call(
        "POST", "/orders/renewals", {"did": did, "package": "30d"}, expect=422
    )
    oid = (
        await shopper.client.call("POST", "/orders/renewals", {"did": did, "package": "100l"})
    ).data["order_id"]

    async def broken(did: str, change: ServiceChangeRequest) -> object:
        raise ConnectionError("redis went away")

    with pytest.raises(ConnectionError):
        await mark_paid(oid, admin=PLATFORM_USER, reason="transfer", apply_service=broken)
    assert (await shopper.client.call("GET", f"/orders/{oid}")).data["state_name"] == "paid"
    assert (await DeviceService.get(did=did)).remaining_ml == 100_000
    first = await mark_paid(
        oid, admin=PLATFORM_USER, reason="retry", apply_service=applier(api_node)
    )
    second = await mark_paid(
        oid, admin=PLATFORM_USER, reason="retry", apply_service=applier(api_node)
    )
    assert first.state.name == second.state.name == "DONE"
    assert (await DeviceService.get(did=did)).remaining_ml == 200_000


async def test_a_paid_renewal_unlocks_an_expired_connected_device_at_once(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The renewal half of the issue's end-to-end path, on a time rental: the connected device
    (real gateway, real Redis) is locked when its rental ran out and hears the paid renewal's
    new expiry, unlocked, without reconnecting."""
    from tests.metering.test_volume_rental import next_state

    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    (issued,) = (await api.call("POST", "/devices", {"vid": a.vid, "count": 1})).data
    did = issued["did"]
    device = device_factory(did, bytes.fromhex(issued["key"]), api_node.tcp_port)
    await device.login()
    await delivered(api_node, a, shopper, did, {"product_id": pid, "package": "30d"})
    _, state = await next_state(device)
    assert state.locked is False
    # The rental ran out (an hour ago): the device is locked.
    gone = int(time.time()) - 3600
    await applier(api_node)(did, ServiceChangeRequest(op="set_expiry", rental_expires_at=gone))
    _, state = await next_state(device)
    assert (state.locked, state.rental_expires_at) == (True, gone)

    oid = (
        await shopper.client.call("POST", "/orders/renewals", {"did": did, "package": "90d"})
    ).data["order_id"]
    before = int(time.time())
    await mark_paid(oid, admin=PLATFORM_USER, reason="transfer", apply_service=applier(api_node))
    _, state = await next_state(device, timeout=1.0)  # within a second, same connection
    assert state.locked is False
    assert state.rental_expires_at is not None
    assert before + 90 * DAY_S <= state.rental_expires_at <= int(time.time()) + 90 * DAY_S


async def test_mark_paid_from_the_shell_renews_through_redis(
    node_factory: Any, tmp_path: Path, migrated_sqlite: Any
):
    """The operator's mark-paid pays a renewal against the node's Redis: the quota is topped
    up once, however often the operator repeats it."""
    from aquafleet.gateway.appkeys import SERVICE_STORE
    from aquafleet.models import service
    from aquafleet.models.accounts import create_account
    from aquafleet.models.devices import Device
    from aquafleet.models.members import Member, member_uid
    from aquafleet.models.products import create_product
    from aquafleet.models.renewals import create_renewal
    from tests.api.conftest import PASSWORD, md5
    from tests.conftest import MASTER_SECRET, REDIS_URL, TEST_SHARDS
    from tests.devices import register_devices
    from tests.platform.test_cli import aquafleet, clean_env

    database = migrated_sqlite(tmp_path / "renew.sqlite3")
    node = await node_factory(database_url=database)
    (dev,) = await register_devices(node, 1, vendor="SHOP")
    await create_account("ops", md5(PASSWORD), Role.PLATFORM)
    member = await Member.create(uid=member_uid("SHOP", 1), vendor_id="SHOP", name="m", state=2)
    product = await create_product(
        "SHOP",
        {"name": "净水机", "billing": 4, "state": 1, "rent_packages": VOLUME_RENT["config"]},
    )
    await Device.filter(did=dev.did).update(owner_id=member.uid, product_id=product.pid)
    await service.configure(
        node.app[SERVICE_STORE], dev.did, ServiceMode.VOLUME_RENTAL, remaining_ml=-50,
        actor="test",
    )  # fmt: skip
    order, _ = await create_renewal(member, dev.did, "100l")
    env = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=database,
        redis_url=REDIS_URL, redis_prefix=node.settings.redis_prefix, redis_shards=TEST_SHARDS,
    )  # fmt: skip
    for reason in ("transfer 4712", "said twice"):
        code, out = await aquafleet(
            env, "orders", "mark-paid", order.oid, "--admin", "ops", "--reason", reason
        )
        assert code == 0 and "done" in out, out
    assert (await DeviceService.get(did=dev.did)).remaining_ml == 99_950
    assert (await node.app[SERVICE_STORE].read(dev.did)).remaining_ml == 99_950


async def test_a_renewal_whose_id_is_an_exchange_tickets_renews_the_replacement(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """Ticket ids have the form of order ids with serials of their own: an exchange ticket
    configured the replacement under the id the member's renewal of it then got. The renewal
    is its own change of the device, not a retry of the exchange's: it extends the rental."""
    from tests.api.test_ticket_work_api import exchange_ticket

    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    shipped, replacement = await register(api, a.vid, 2)
    await delivered(api_node, a, shopper, shipped, {"product_id": pid, "package": "30d"})
    fault = {"type": 4, "device_id": shipped, "detail": "不出水"}
    await shopper.client.call("POST", "/tickets", fault, expect=201)  # ticket serial 1
    tid = await exchange_ticket(api, a.vendor, shopper, shipped)  # serial 2
    await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": replacement})
    expires = (await DeviceService.get(did=replacement)).rental_expires_at
    assert expires is not None

    body = {"did": replacement, "package": "30d"}
    oid = (await shopper.client.call("POST", "/orders/renewals", body)).data["order_id"]
    assert oid == tid  # order serial 2, the same day and vendor
    paid = await mark_paid(
        oid, admin=PLATFORM_USER, reason="transfer", apply_service=applier(api_node)
    )
    assert paid.state.name == "DONE"
    assert (await DeviceService.get(did=replacement)).rental_expires_at == expires + 30 * DAY_S


async def test_a_renewal_applied_under_its_bare_order_id_is_not_applied_again(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A renewal left paid by a version that changed the device under the bare order id (before
    `order:<oid>`): paying it again, or the sweep, finishes it without a second extension."""
    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    (did,) = await register(api, a.vid, 1)
    await delivered(api_node, a, shopper, did, {"product_id": pid, "package": "30d"})
    expires = (await DeviceService.get(did=did)).rental_expires_at
    assert expires is not None
    body = {"did": did, "package": "30d"}
    oid = (await shopper.client.call("POST", "/orders/renewals", body)).data["order_id"]
    old_way = ServiceChangeRequest(
        op="extend", days=30, reason=f"renewal order {oid}", request_id=oid
    )
    await applier(api_node)(did, old_way)  # then the version stopped before `renew`

    paid = await mark_paid(oid, admin=PLATFORM_USER, reason="t", apply_service=applier(api_node))
    assert paid.state.name == "DONE"
    assert (await DeviceService.get(did=did)).rental_expires_at == expires + 30 * DAY_S
