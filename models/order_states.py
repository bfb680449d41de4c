"""The order's state machine (models/orders.py): every move is one row of `TRANSITIONS` (state x
event -> state, and who may fire the event); any other move is refused with the order's current
state. `fire` makes a move and records it in `OrderTransition` with who made it and why."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tortoise.transactions import in_transaction

from aquafleet.models.errors import Conflict, Forbidden
from aquafleet.models.orders import MAX_REASON, Order, OrderEvent, OrderState, OrderTransition
from aquafleet.models.tenancy import Role

SYSTEM = "system"  # timers and the payment layer; never a person
# Who fires an event: a Role's value, or SYSTEM.
MEMBER, PLATFORM, VENDOR = Role.MEMBER.value, Role.PLATFORM.value, Role.VENDOR.value
ADMINS = frozenset({PLATFORM, VENDOR, Role.AGENT.value, Role.DEALER.value})

S, E = OrderState, OrderEvent
# The whole state machine: (state, event) -> (next state, who may fire it).
TRANSITIONS: dict[tuple[OrderState, OrderEvent], tuple[OrderState, frozenset[str]]] = {
    (S.OBLIGATION, E.PAY): (S.PAID, frozenset({PLATFORM, SYSTEM})),
    (S.OBLIGATION, E.CANCEL): (S.CLOSE, frozenset({MEMBER, PLATFORM, VENDOR, SYSTEM})),
    (S.PAID, E.DELIVER): (S.DELIVERED, ADMINS),  # purchases and rentals only
    (S.PAID, E.RENEW): (S.DONE, frozenset({SYSTEM})),  # renewals only
    (S.DELIVERED, E.CONFIRM): (S.RECEIVED, frozenset({MEMBER, SYSTEM})),
    (S.RECEIVED, E.RETURN): (S.RETURN, frozenset({MEMBER})),
    (S.RECEIVED, E.FINISH): (S.DONE, frozenset({SYSTEM})),
    (S.RETURN, E.CONSENT): (S.CONSENT, frozenset({PLATFORM, VENDOR})),
    (S.RETURN, E.REFUSE): (S.RECEIVED, frozenset({PLATFORM, VENDOR})),  # models/returns.py
    (S.CONSENT, E.REFUND): (S.REFUND, frozenset({PLATFORM, VENDOR})),
}
FINAL_STATES = frozenset(S) - {state for state, _event in TRANSITIONS}


class OrderStateData(Conflict):
    """A conflict with the order's current state, which the API answers in `data` too."""

    def __init__(self, message: str, state: OrderState) -> None:
        super().__init__(message)
        self.state = state

    @property
    def data(self) -> dict[str, Any]:
        return {"state": int(self.state), "state_name": self.state.name.lower()}


class OrderStateConflict(OrderStateData):
    """The event does not apply to the order's current state (the message names it)."""

    code = "order_state_conflict"


def next_state(state: OrderState, event: OrderEvent, actor: str) -> OrderState:
    """The state `event` leads to from `state` when `actor` fires it; OrderStateConflict when
    the table has no such move, Forbidden when the actor may not fire it."""
    move = TRANSITIONS.get((state, event))
    if move is None:
        raise OrderStateConflict(f"the order is {state.name.lower()}: it cannot {event}", state)
    target, actors = move
    if actor not in actors:
        raise Forbidden(f"a {actor} may not {event} an order")
    return target


async def fire(
    order: Order,
    event: OrderEvent,
    *,
    actor_role: str,
    actor_id: str,
    reason: str = "",
    now: dt.datetime | None = None,
) -> Order:
    """Move the order by `event` (one row of TRANSITIONS), record who and why, in one
    transaction that re-reads the order under a lock: two racing moves apply once."""
    now = now or dt.datetime.now(dt.UTC)
    from aquafleet.models.outbox import enqueue_order_event

    async with in_transaction("default") as conn:
        current = await Order.filter(id=order.id).select_for_update().get()
        target = next_state(current.state, event, actor_role)
        changes: dict[str, Any] = {"state": target, "updated_at": now}
        if target is OrderState.PAID:
            changes["paid_at"] = now
        if target is OrderState.DELIVERED:
            changes["delivered_at"] = now
        if target is OrderState.RECEIVED and current.received_at is None:
            changes["received_at"] = now  # a refused return keeps the window it was asked in
        if target in FINAL_STATES:
            changes["completed_at"] = now
        await OrderTransition.create(
            order_id=current.id, event=event.value, from_state=current.state, to_state=target,
            actor_role=actor_role, actor_id=actor_id[:64], reason=reason[:MAX_REASON],
            created_at=now,
        )  # fmt: skip
        await Order.filter(id=current.id).update(**changes)
        if target in COMMISSION_STATES:
            await _settle_commissions(current.oid, now)
        await enqueue_order_event(conn, current, event.value)  # 消息推送, in this transaction
    await order.refresh_from_db()
    return order


# Paid: the commission split is computed; done: it becomes available (models/commissions.py).
COMMISSION_STATES = frozenset({OrderState.PAID, OrderState.DONE})


async def _settle_commissions(oid: str, now: dt.datetime) -> None:
    from aquafleet.models.commissions import settle_order

    await settle_order(oid, now=now)


async def transitions_of(order: Order) -> list[OrderTransition]:
    return list(await OrderTransition.filter(order_id=order.id).order_by("id"))
