"""A 退租 and a return (AD-12) of one rental asked at once, on SQLite and PostgreSQL: both check
for the other under the order's row lock, so exactly one goes through and the other answers
409 naming it; the order never ends up being returned with a 退租 open."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aquafleet.models import rental_end, returns
from aquafleet.models.orders import Order, OrderState
from aquafleet.models.tickets import OPEN_STATES, Ticket, TicketType
from tests.api.conftest import ApiClient, Tenant
from tests.api.test_rental_exchanges import two_device_rental
from tests.api.test_tickets_api import register
from tests.payments.shops import assert_ledger_clean
from tests.payments.test_money_races import both, outcome, send

WINDOW_S = 0.3  # each path pauses this long after its check: the other runs meanwhile


def widen_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each path pauses right after it checked for the other, before it writes: without a
    shared lock, both checks pass and both write."""
    checked_return, checked_end = returns.check_no_rental_end, rental_end.check_one_end

    async def return_checked(order: Order) -> None:
        await checked_return(order)
        await asyncio.sleep(WINDOW_S)

    async def end_checked(order: Order, did: str, stands_for: dict[str, str]) -> None:
        await checked_end(order, did, stands_for)
        await asyncio.sleep(WINDOW_S)

    monkeypatch.setattr(returns, "check_no_rental_end", return_checked)
    monkeypatch.setattr(rental_end, "check_one_end", end_checked)


async def test_a_rental_end_and_a_return_asked_at_once_do_not_both_go_through(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], monkeypatch: pytest.MonkeyPatch
):
    """退租 of one device and AD-12 of its order, fired together: one answers 201, the other
    409 (order_returning or order_has_rental_end); the order is either being returned with
    no 退租, or received with one open. The vendor can then agree to the return only when no
    退租 is open."""
    a, _ = tenants
    first, second = await register(api, a.vid, 2)
    shopper, oid = await two_device_rental(api, api_node, a, [first, second])
    client = shopper.client
    await client.call("POST", f"/orders/{oid}/status/confirm")
    widen_windows(monkeypatch)
    answers = await both(
        send(client, "POST", f"/orders/{oid}/rental/end", {"device_id": first}),
        send(client, "POST", f"/orders/{oid}/status/return", {"reason": "漏水"}),
    )
    ended, returned = (outcome(answer) for answer in answers)
    assert sorted([ended[0], returned[0]]) == [200, 409], answers
    assert {ended[1], returned[1]} <= {"", "order_returning", "order_has_rental_end"}, answers
    order = await Order.get(oid=oid)
    open_ends = await Ticket.filter(
        type=TicketType.DISMANTLE, order_id=order.id, state__in=sorted(OPEN_STATES)
    ).count()
    if returned[0] == 200:
        assert (order.state, open_ends) == (OrderState.RETURN, 0)
        await a.vendor.call("POST", f"/orders/{oid}/status/consent", expect=201)
    else:
        assert (order.state, open_ends) == (OrderState.RECEIVED, 1)
    await assert_ledger_clean()


async def test_a_rental_end_retried_with_its_idempotency_key_opens_nothing_twice(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """退租 with an Idempotency-Key, as AD-02: the same request again answers the first one's
    ticket as it is now, even once it was cancelled (no second ticket opens); the key with
    another request answers 409 idempotency_key_reused naming the key's ticket, and nothing
    opens. Two asks with one key at once open one ticket."""
    a, _ = tenants
    first, second = await register(api, a.vid, 2)
    shopper, oid = await two_device_rental(api, api_node, a, [first, second])
    client, path = shopper.client, f"/orders/{oid}/rental/end"
    await client.call("POST", f"/orders/{oid}/status/confirm")
    key = {"Idempotency-Key": "end-1"}
    asked = await send(client, "POST", path, {"device_id": first}, headers=key)
    assert asked[0] == 201, asked
    tid = asked[1]["data"]["ticket_id"]
    again = await send(client, "POST", path, {"device_id": first}, headers=key)
    assert (again[0], again[1]["data"]["ticket_id"]) == (201, tid)

    await a.vendor.call("POST", f"/tickets/{tid}/cancel", {"note": "member changed its mind"})
    retried = await send(client, "POST", path, {"device_id": first}, headers=key)
    assert (retried[0], retried[1]["data"]["ticket_id"]) == (201, tid), retried
    assert retried[1]["data"]["status"] == 7  # the first one's ticket, as it is now
    assert await Ticket.filter(type=TicketType.DISMANTLE, device_id=first).count() == 1

    for body in ({"device_id": second}, {"device_id": first, "reason": "搬家"}):
        reused = await send(client, "POST", path, body, headers=key)
        assert outcome(reused) == (409, "idempotency_key_reused"), reused
        assert reused[1]["data"] == {"ticket_id": tid}
    assert not await Ticket.filter(type=TicketType.DISMANTLE, device_id=second).exists()

    # Without the key, the cancelled ticket is not the answer: asking again opens a new one.
    fresh = await client.call("POST", path, {"device_id": first}, expect=201)
    assert fresh.data["ticket_id"] != tid

    # One key sent twice at once: one ticket, both answers name it.
    key = {"Idempotency-Key": "end-2"}
    answers = await both(
        *(send(client, "POST", path, {"device_id": second}, headers=key) for _ in range(2))
    )
    assert [status for status, _ in answers] == [201, 201], answers
    assert answers[0][1]["data"]["ticket_id"] == answers[1][1]["data"]["ticket_id"]
    assert await Ticket.filter(type=TicketType.DISMANTLE, device_id=second).count() == 1
    oversized = await send(client, "POST", path, {"device_id": second}, headers={
        "Idempotency-Key": "k" * 65
    })  # fmt: skip
    assert outcome(oversized) == (422, "validation_failed"), oversized
