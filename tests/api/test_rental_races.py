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
