"""Returns (退货, AD-12..14) and rental ends (退租) of one rental order exclude each other, on
SQLite and PostgreSQL: a return gives the whole order back, deposit included, and a 退租 gives
its device's deposit back, so whichever came first, the other is refused (409) and the money
goes back once (`aquafleet money check` stays clean)."""

from __future__ import annotations

from typing import Any

from aquafleet.models.devices import Device
from aquafleet.models.money import Refund
from aquafleet.models.orders import Order, OrderState
from aquafleet.models.tickets import open_automatic_ticket
from tests.api.conftest import ApiClient, Tenant
from tests.api.test_rental_exchanges import DEPOSIT, rental_end, two_device_rental
from tests.api.test_ticket_work_api import work_through
from tests.api.test_tickets_api import register, technician
from tests.payments.shops import assert_ledger_clean


async def refunds_of(oid: str) -> dict[str, int]:
    return {r.refund_no: r.amount_fen for r in await Refund.filter(order_oid=oid)}


async def test_a_rental_ended_first_is_not_returned_as_well(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """退租 first: while it is open, and once it is done (the deposit asked back), the member's
    return of the order (AD-12) is refused with 409 order_has_rental_end naming it. A 退租 that
    slipped in once the return was agreed (a race, or tickets from before the rule) stops
    AD-14 before any device is locked or money moves, and cannot complete itself (409
    order_returning); cancelled, the return goes through and the order's money goes back
    once."""
    a, _ = tenants
    first, second, third, fourth = await register(api, a.vid, 4)
    shopper, oid = await two_device_rental(api, api_node, a, [first, second])
    tech_id, tech = await technician(a.vendor, "collector", skills=[6])
    client = shopper.client
    await client.call("POST", f"/orders/{oid}/status/confirm")
    ended = await client.call("POST", f"/orders/{oid}/rental/end", {"device_id": first})
    tid = ended.data["ticket_id"]
    back = {"reason": "不想租了"}
    refused = await client.call("POST", f"/orders/{oid}/status/return", back, expect=409)
    assert refused.code == "order_has_rental_end", refused
    assert refused.data == {"ticket_id": tid, "device_id": first, "status": 1}
    await work_through(a.vendor, tech, tech_id, tid)
    await tech.call("POST", f"/tickets/{tid}/complete", {})
    refused = await client.call("POST", f"/orders/{oid}/status/return", back, expect=409)
    assert refused.code == "order_has_rental_end", refused
    assert refused.data == {"ticket_id": tid, "device_id": first, "status": 6}
    assert (await Order.get(oid=oid)).state is OrderState.RECEIVED
    assert await refunds_of(oid) == {f"R{tid}": DEPOSIT}

    # Another order, whose return was agreed before a 退租 slipped in.
    shopper, other = await two_device_rental(api, api_node, a, [third, fourth])
    await shopper.client.call("POST", f"/orders/{other}/status/confirm")
    await shopper.client.call("POST", f"/orders/{other}/status/return", back)
    await a.vendor.call("POST", f"/orders/{other}/status/consent")
    order = await Order.get(oid=other)
    stale, _ = await open_automatic_ticket(rental_end(order, third, shopper.uid))
    refused = await a.vendor.call("PUT", f"/orders/{other}/status/refund", expect=409)
    assert refused.code == "order_has_rental_end", refused
    assert refused.data == {"ticket_id": stale.ticket_id, "device_id": third, "status": 1}
    assert (await Order.get(oid=other)).state is OrderState.CONSENT
    assert await Device.filter(owner_id=shopper.uid).count() == 2  # nothing locked or unbound
    await work_through(a.vendor, tech, tech_id, stale.ticket_id)
    path = f"/tickets/{stale.ticket_id}/complete"
    refused = await tech.call("POST", path, {}, expect=409)
    assert refused.code == "order_returning", refused
    assert refused.data == {"state": 5, "state_name": "consent"}
    assert (await Device.get(did=third)).owner_id == shopper.uid
    await a.vendor.call("POST", f"/tickets/{stale.ticket_id}/cancel", {})
    returned = await a.vendor.call("PUT", f"/orders/{other}/status/refund")
    total = returned.data["amounts"]["total"]
    assert await refunds_of(other) == {f"return-{other}": total}
    await assert_ledger_clean()


async def test_an_order_being_returned_is_not_ended_as_well(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """Return first: once the member asked it, once it was agreed and once the goods are back,
    a 退租 of the order is refused with 409 order_returning (its state in `data`); a 退租 left
    open from before does not complete after AD-14 (no second deposit, the ledger clean). A
    return refused puts the order back as received: its rental is then ended as usual, the
    deposit back once."""
    a, _ = tenants
    first, second, third, fourth = await register(api, a.vid, 4)
    shopper, oid = await two_device_rental(api, api_node, a, [first, second])
    tech_id, tech = await technician(a.vendor, "collector", skills=[6])
    client, end = shopper.client, f"/orders/{oid}/rental/end"
    await client.call("POST", f"/orders/{oid}/status/confirm")
    await client.call("POST", f"/orders/{oid}/status/return", {"reason": "漏水"})
    for move, state in ((None, (4, "return")), ("consent", (5, "consent"))):
        if move:
            await a.vendor.call("POST", f"/orders/{oid}/status/{move}")
        refused = await client.call("POST", end, {"device_id": first}, expect=409)
        assert refused.code == "order_returning", refused
        assert (refused.data["state"], refused.data["state_name"]) == state
    returned = await a.vendor.call("PUT", f"/orders/{oid}/status/refund")
    total = returned.data["amounts"]["total"]
    refused = await client.call("POST", end, {"device_id": first}, expect=409)
    assert refused.code == "order_returning"
    stale, _ = await open_automatic_ticket(rental_end(await Order.get(oid=oid), first, shopper.uid))
    await work_through(a.vendor, tech, tech_id, stale.ticket_id)
    refused = await tech.call("POST", f"/tickets/{stale.ticket_id}/complete", {}, expect=409)
    assert refused.code == "order_returning", refused
    assert await refunds_of(oid) == {f"return-{oid}": total}
    await assert_ledger_clean()

    # A refused return: the order is received again, and its rental ends as usual.
    shopper, other = await two_device_rental(api, api_node, a, [third, fourth])
    client, end = shopper.client, f"/orders/{other}/rental/end"
    await client.call("POST", f"/orders/{other}/status/confirm")
    await client.call("POST", f"/orders/{other}/status/return", {"reason": "漏水"})
    await client.call("POST", end, {"device_id": third}, expect=409)
    await a.vendor.call("POST", f"/orders/{other}/status/refuse", {"reason": "已修好"})
    asked = (await client.call("POST", end, {"device_id": third}, expect=201)).data
    await work_through(a.vendor, tech, tech_id, asked["ticket_id"])
    await tech.call("POST", f"/tickets/{asked['ticket_id']}/complete", {})
    assert await refunds_of(other) == {f"R{asked['ticket_id']}": DEPOSIT}
    await assert_ledger_clean()
