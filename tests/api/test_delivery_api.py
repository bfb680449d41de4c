"""Delivery (AD-04/05/06) through a real node on SQLite and PostgreSQL: the devices shipped are
bound to the member and configured for the line they fill, once, with the order id as request
id; filters and install tickets follow the product."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from aquafleet.gateway.appkeys import DEVICE_GATEWAY
from aquafleet.models.delivery import Parcel, deliver_order
from aquafleet.models.devices import Device
from aquafleet.models.filters import DeviceFilterSpec
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.order_states import OrderStateConflict
from aquafleet.models.orders import Order
from aquafleet.models.service import ServiceChange
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.tickets import Ticket, TicketType
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import SEED_PRODUCT, add_product, make_member
from tests.api.test_orders_api import order_body

PARCEL = {"company": "顺丰速运", "tracking_num": "SF1234567890", "delivery_clerk": "李四"}


async def register(api: ApiClient, vid: str, count: int) -> list[str]:
    answer = await api.call("POST", "/devices", {"vid": vid, "count": count})
    return [d["did"] for d in answer.data]


async def test_delivery_binds_and_configures_each_device_for_its_line(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    timed = await add_product(a.vendor)  # sold, or rented by days; install service
    by_volume = await add_product(
        a.vendor,
        billing=4,
        install=False,
        install_cost=0,
        rent={
            "deposit": 0,
            "config": [{"name": "100L", "key": "100l", "value": 900, "ml": 100_000}],
        },
        specification={},
    )
    shopper = await make_member(api_node, api, a.vid)
    order = (
        await shopper.client.call(
            "POST",
            "/orders",
            order_body(
                {"product_id": timed},
                {"product_id": timed, "package": "30d"},
                {"product_id": by_volume, "package": "100l"},
            ),
        )
    ).data
    oid = order["order_id"]
    sold, rented, metered = await register(api, a.vid, 3)
    (foreign,) = await register(api, b.vid, 1)
    body = {**PARCEL, "devices": [sold, rented, metered]}

    assert (await shopper.client.call("GET", f"/orders/{oid}/delivery")).data is None
    unpaid = await a.vendor.call("POST", f"/orders/{oid}/delivery", body, expect=409)
    assert "obligation" in unpaid.body["message"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    refused = [
        (a.vendor, {**PARCEL, "devices": [sold, rented]}, 422),  # three units, two devices
        (a.vendor, {**PARCEL, "devices": [sold, sold, rented]}, 422),
        (a.vendor, {**PARCEL, "devices": [sold, rented, foreign]}, 404),
        (a.vendor, {**PARCEL, "devices": [sold, rented, "AAAA99999999ABCD"]}, 404),
        (a.vendor, {**PARCEL, "devices": [sold, rented, "AAAA1"]}, 422),
        (a.vendor, {"company": "x", "devices": [sold, rented, metered]}, 422),
        (a.agent, body, 404),  # the member is the vendor's own, not the agent's
        (b.vendor, body, 404),
        (shopper.client, body, 403),
    ]
    for client, sent, status in refused:
        await client.call("POST", f"/orders/{oid}/delivery", sent, expect=status)
    assert (await api.call("GET", f"/devices/{sold}")).data["state"] == 1

    before = int(dt.datetime.now(dt.UTC).timestamp())
    delivered = await a.vendor.call("POST", f"/orders/{oid}/delivery", body, expect=201)
    assert delivered.data["state_name"] == "delivered"
    delivery = (await shopper.client.call("GET", f"/orders/{oid}/delivery")).data
    assert {k: delivery[k] for k in PARCEL} == PARCEL
    assert delivery["devices"] == [sold, rented, metered]
    assert delivery["delivery_tms"].endswith("Z")

    mine = await shopper.client.call("GET", f"/users/{shopper.uid}/devices")
    assert {d["did"] for d in mine.data} == {sold, rented, metered}
    services = {}
    for did in (sold, rented, metered):
        services[did] = (await shopper.client.call("GET", f"/devices/{did}/svc")).data
        assert services[did]["locked"] is False
    assert services[sold]["mode"] == 1
    assert services[rented]["mode"] == 2
    expires = dt.datetime.strptime(services[rented]["rental_expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    expected = before + 30 * 86_400
    assert expected - 5 <= int(expires.replace(tzinfo=dt.UTC).timestamp()) <= expected + 60
    assert (services[metered]["mode"], services[metered]["remaining_ml"]) == (3, 100_000)
    changes = await ServiceChange.filter(request_id=f"order:{oid}").values_list("did", flat=True)
    assert sorted(changes) == sorted([sold, rented, metered])
    # Filters follow the product; install tickets the install service (not the volume one's).
    spec = await DeviceFilterSpec.get(did=sold)
    assert [s["order"] for s in spec.stages] == [1, 2, 3]
    assert not await DeviceFilterSpec.exists(did=metered)
    tickets = await Ticket.filter(type=TicketType.INSTALL).values_list("device_id", flat=True)
    assert sorted(tickets) == sorted([sold, rented])
    read = (await api.call("GET", f"/devices/{sold}")).data
    assert read["manufacture"]["product_id"] == timed

    # Delivering twice is refused with the state; nothing is configured twice.
    again = await a.vendor.call("POST", f"/orders/{oid}/delivery", body, expect=409)
    assert "delivered" in again.body["message"]
    assert await ServiceChange.filter(request_id=f"order:{oid}").count() == 3

    # AD-06: customer service corrects the parcel, never the devices.
    fixed = await a.vendor.call(
        "PUT", f"/orders/{oid}/delivery", {"tracking_num": "SF999"}, expect=201
    )
    assert fixed.data["tracking_num"] == "SF999" and fixed.data["devices"] == body["devices"]
    await a.agent.call("PUT", f"/orders/{oid}/delivery", {"tracking_num": "X1"}, expect=403)
    await a.vendor.call("PUT", f"/orders/{oid}/delivery", {"devices": [sold]}, expect=422)
    assert SEED_PRODUCT["install"] is True

    # AD-11: the member confirms receipt, once; nobody else may.
    other = await make_member(api_node, api, a.vid)
    await other.client.call("POST", f"/orders/{oid}/status/confirm", expect=404)
    await a.vendor.call("POST", f"/orders/{oid}/status/confirm", expect=403)
    received = await shopper.client.call("POST", f"/orders/{oid}/status/confirm", expect=201)
    assert received.data["state_name"] == "received"
    twice = await shopper.client.call("POST", f"/orders/{oid}/status/confirm", expect=409)
    assert (twice.code, "received" in twice.body["message"]) == ("order_state_conflict", True)
    assert twice.body["data"] == {"state": 3, "state_name": "received"}
    assert received.data["receive_tms"] is not None

    # AD-12..14: the member returns it, the vendor consents, the goods come back.
    await Device.filter(did=sold).update(installed_at=dt.datetime.now(dt.UTC))
    await a.vendor.call("POST", f"/orders/{oid}/status/consent", expect=409)  # not asked yet
    await a.vendor.call("POST", f"/orders/{oid}/status/return", {"reason": "x"}, expect=403)
    await shopper.client.call("POST", f"/orders/{oid}/status/return", {"reason": ""}, expect=422)
    asked = await shopper.client.call(
        "POST", f"/orders/{oid}/status/return", {"reason": "漏水"}, expect=201
    )
    assert (asked.data["state_name"], asked.data["return_reason"]) == ("return", "漏水")
    await a.vendor.call("PUT", f"/orders/{oid}/status/refund", expect=409)  # no consent yet
    await a.agent.call("POST", f"/orders/{oid}/status/consent", expect=403)
    await shopper.client.call("POST", f"/orders/{oid}/status/consent", expect=403)
    await a.vendor.call("POST", f"/orders/{oid}/status/consent", expect=201)
    back = await a.vendor.call("PUT", f"/orders/{oid}/status/refund", expect=201)
    assert back.data["state_name"] == "refund" and back.data["complete_tms"] is not None
    assert back.data["amounts"]["refund_due"] == order["amounts"]["total"] > 0
    for did in (sold, rented, metered):
        service = (await api.call("GET", f"/devices/{did}/svc")).data
        assert service["locked"] is True, (did, service)
        assert (await Device.get(did=did)).owner_id is None
    assert (await shopper.client.call("GET", f"/users/{shopper.uid}/devices")).data == []
    dismantle = await Ticket.filter(type=TicketType.DISMANTLE).values_list("device_id", flat=True)
    assert list(dismantle) == [sold]
    await a.vendor.call("PUT", f"/orders/{oid}/status/refund", expect=409)  # final


async def test_a_device_bound_to_someone_else_is_not_shipped(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)
    shopper = await make_member(api_node, api, a.vid)
    other = await make_member(api_node, api, a.vid)
    (did,) = await register(api, a.vid, 1)
    await api.call("POST", f"/devices/{did}/bind", {"uid": other.uid}, expect=201)
    oid = (await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))).data[
        "order_id"
    ]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    answer = await a.vendor.call(
        "POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]}, expect=409
    )
    assert answer.code == "device_bound"
    assert (await shopper.client.call("GET", f"/orders/{oid}")).data["state_name"] == "paid"
    assert not await ServiceChange.filter(request_id=f"order:{oid}").exists()


async def test_a_delivered_volume_rental_pours_its_quota_locks_and_a_renewal_unlocks_it(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The issue's end-to-end path: order, pay, deliver with a DID, and the connected device
    (real gateway, real Redis) is unlocked with the bought quota at once, pours until it locks,
    and a paid renewal unlocks it without reconnecting."""
    import time

    from tests.devices import telemetry
    from tests.metering.test_volume_rental import next_state

    a, _ = tenants
    package = {"name": "1升", "key": "1l", "value": 900, "ml": 1000}
    pid = await add_product(
        a.vendor, billing=4, install=False, install_cost=0, specification={},
        rent={"deposit": 0, "config": [package]},
    )  # fmt: skip
    shopper = await make_member(api_node, api, a.vid)
    oid = (
        await shopper.client.call(
            "POST", "/orders", order_body({"product_id": pid, "package": "1l"})
        )
    ).data["order_id"]
    (issued,) = (await api.call("POST", "/devices", {"vid": a.vid, "count": 1})).data
    device = device_factory(issued["did"], bytes.fromhex(issued["key"]), api_node.tcp_port)
    await device.login()
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    body = {**PARCEL, "devices": [issued["did"]]}
    await a.agent.call("POST", f"/orders/{oid}/delivery", body, expect=404)  # not its member
    await a.vendor.call("POST", f"/orders/{oid}/delivery", body, expect=201)
    _, state = await next_state(device)  # pushed to the connected device at once
    assert (state.locked, state.remaining_ml) == (False, 1000)
    await device.send(telemetry(1, int(time.time()), 1200))
    _, state = await next_state(device)
    assert (state.locked, state.remaining_ml) == (True, -200)
    # The member buys a renewal; once paid, the same connection hears the top-up: the 200 ml
    # poured after the lock are paid off first, and the device unlocks.
    renewal = {"did": issued["did"], "package": "1l"}
    rid = (await shopper.client.call("POST", "/orders/renewals", renewal)).data["order_id"]
    gateway = api_node.app[DEVICE_GATEWAY]

    async def apply(did: str, change: ServiceChangeRequest) -> object:
        return await gateway.change_service(did, change, actor="payment:test")

    await mark_paid(rid, admin=PLATFORM_USER, reason="test", apply_service=apply)
    _, state = await next_state(device, timeout=1.0)
    assert (state.locked, state.remaining_ml) == (False, 800)


async def test_of_two_racing_deliveries_only_the_winners_devices_are_bound_and_serviced(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """Two deliveries of one order with different devices, the second from a copy of the order
    read before the first landed: it answers 409 and configures and binds nothing."""
    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    body = order_body({"product_id": pid, "package": "30d"})
    oid = (await shopper.client.call("POST", "/orders", body)).data["order_id"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    winner, loser = await register(api, a.vid, 2)
    stale = await Order.get(oid=oid)  # read before the first delivery lands

    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [winner]})
    gateway = api_node.app[DEVICE_GATEWAY]

    async def apply(did: str, change: ServiceChangeRequest) -> object:
        return await gateway.change_service(did, change, actor="test")

    vendor = Principal(Role.VENDOR, "racing-admin", vendor_code=a.vid)
    parcel = Parcel(PARCEL["company"], "SF0000000000", PARCEL["delivery_clerk"])
    with pytest.raises(OrderStateConflict):
        await deliver_order(vendor, stale, parcel, [loser], apply)

    assert (await Device.get(did=winner)).owner_id == shopper.uid
    assert (await Device.get(did=loser)).owner_id is None
    assert (await gateway.read_service(winner)).mode == 2
    assert (await gateway.read_service(loser)).mode is None  # never configured
    assert not await ServiceChange.filter(did=loser).exists()
    shipped = (await shopper.client.call("GET", f"/orders/{oid}")).data
    assert shipped["delivery"]["devices"] == [winner]


async def test_a_delivery_retried_after_its_time_rental_was_recorded_keeps_the_first_rental(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A delivery's time rental counts from the delivery's own now, so a retry asks another
    expiry under the same `order:<oid>`: it is the same change (the order's), answered as
    applied before, never refused as another change under a reused id."""
    from aquafleet.models.delivery import service_change
    from aquafleet.models.orders import OrderLine

    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    body = order_body({"product_id": pid, "package": "30d"})
    oid = (await shopper.client.call("POST", "/orders", body)).data["order_id"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    (did,) = await register(api, a.vid, 1)
    gateway = api_node.app[DEVICE_GATEWAY]
    line = await OrderLine.get(order__oid=oid)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)  # a try an hour ago got this far
    await gateway.change_service(did, service_change(line, oid, earlier), actor="test")
    expires = (await gateway.read_service(did)).rental_expires_at

    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    assert (await Device.get(did=did)).owner_id == shopper.uid
    assert (await gateway.read_service(did)).rental_expires_at == expires  # applied once
    assert await ServiceChange.filter(did=did, request_id=f"order:{oid}").count() == 1


async def test_a_returned_device_shipped_again_works_for_its_new_holder(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """AD-14 locks the devices that came back; shipping one again (AD-05, to another member)
    starts its service afresh: the new holder's purifier pours, it is not locked for the old."""
    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)
    first = await make_member(api_node, api, a.vid)
    second = await make_member(api_node, api, a.vid)
    (did,) = await register(api, a.vid, 1)
    line = {"product_id": pid, "package": "30d"}
    oid = (await first.client.call("POST", "/orders", order_body(line))).data["order_id"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    await first.client.call("POST", f"/orders/{oid}/status/confirm")
    await first.client.call("POST", f"/orders/{oid}/status/return", {"reason": "搬家"})
    await a.vendor.call("POST", f"/orders/{oid}/status/consent")
    await a.vendor.call("PUT", f"/orders/{oid}/status/refund")
    assert (await api.call("GET", f"/devices/{did}/svc")).data["locked"] is True

    again = (await second.client.call("POST", "/orders", order_body(line))).data["order_id"]
    await mark_paid(again, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{again}/delivery", {**PARCEL, "devices": [did]})
    service = (await second.client.call("GET", f"/devices/{did}/svc")).data
    assert (service["mode"], service["locked"], service["lock_reasons"]) == (2, False, [])
    assert (await Device.get(did=did)).owner_id == second.uid


async def test_a_returned_rental_past_its_expiry_and_grace_opens_no_dismantle_ticket(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The goods came back (AD-14): when the rental they were delivered with would have run
    out and its grace passed, nobody is sent to collect a device that is already back; a
    device still at its member's is (the control)."""
    from aquafleet.gateway.appkeys import RENTAL_SCHEDULER

    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    returned, kept = await register(api, a.vid, 2)
    line = {"product_id": pid, "package": "30d"}
    for did in (returned, kept):
        oid = (await shopper.client.call("POST", "/orders", order_body(line))).data["order_id"]
        await mark_paid(oid, admin=PLATFORM_USER, reason="test")
        await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
        await shopper.client.call("POST", f"/orders/{oid}/status/confirm")
        if did == returned:
            await shopper.client.call("POST", f"/orders/{oid}/status/return", {"reason": "x"})
            await a.vendor.call("POST", f"/orders/{oid}/status/consent")
            await a.vendor.call("PUT", f"/orders/{oid}/status/refund")
    assert not await Ticket.filter(type=TicketType.DISMANTLE).exists()

    scheduler = api_node.app[RENTAL_SCHEDULER]
    later = int(dt.datetime.now(dt.UTC).timestamp()) + 30 * 86_400 + scheduler.grace_s + 60
    await scheduler.tick(later)  # the expiries lock, the reminders and the graces are due
    dismantle = await Ticket.filter(type=TicketType.DISMANTLE).values_list("device_id", flat=True)
    assert list(dismantle) == [kept]


async def test_returning_an_order_whose_device_was_exchanged_takes_back_the_replacement(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The member exchanged the delivered device (换机), the vendor shipped the device it took
    back to another member, and then the first member returned the order: the goods coming
    back are the replacement it holds, which is locked and unbound (it does not keep a working
    purifier with its money refunded); the other member's purifier is not touched."""
    from tests.api.test_ticket_work_api import exchange_ticket

    a, _ = tenants
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    other = await make_member(api_node, api, a.vid)
    shipped, replacement = await register(api, a.vid, 2)
    line = {"product_id": pid, "package": "30d"}
    oid = (await shopper.client.call("POST", "/orders", order_body(line))).data["order_id"]
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [shipped]})
    await shopper.client.call("POST", f"/orders/{oid}/status/confirm")
    tid = await exchange_ticket(api, a.vendor, shopper, shipped)
    await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": replacement})
    assert (await Device.get(did=replacement)).owner_id == shopper.uid
    theirs = (await other.client.call("POST", "/orders", order_body(line))).data["order_id"]
    await mark_paid(theirs, admin=PLATFORM_USER, reason="test")
    await a.vendor.call("POST", f"/orders/{theirs}/delivery", {**PARCEL, "devices": [shipped]})

    await shopper.client.call("POST", f"/orders/{oid}/status/return", {"reason": "不想要了"})
    await a.vendor.call("POST", f"/orders/{oid}/status/consent")
    await a.vendor.call("PUT", f"/orders/{oid}/status/refund")
    service = (await api.call("GET", f"/devices/{replacement}/svc")).data
    assert (service["locked"], service["lock_reasons"]) == (True, ["manual"])
    assert (await Device.get(did=replacement)).owner_id is None
    assert (await shopper.client.call("GET", f"/users/{shopper.uid}/devices")).data == []
    service = (await other.client.call("GET", f"/devices/{shipped}/svc")).data
    assert (service["locked"], (await Device.get(did=shipped)).owner_id) == (False, other.uid)
