"""The orders' timers: unpaid orders close, delivered orders are received, and the return window
ends in done.

A timer is the order's own timestamp (`created_at`, `delivered_at`, `received_at`) and state, so
it survives any restart. A sweep moves every due order through the state machine as `system`;
a second sweep, on this node or another at the same moment, finds the order moved (the table
refuses the event, and each event is recorded once per order) and skips it: a timer fires once.
Who runs the sweep periodically is the caller's choice (`aquafleet orders run-timers` from cron
today; a leased loop in the node later).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tortoise.exceptions import IntegrityError

from aquafleet.models.order_states import SYSTEM, OrderStateConflict, fire
from aquafleet.models.orders import Order, OrderEvent, OrderState
from aquafleet.models.returns import RETURN_WINDOW

UNPAID_CLOSE_AFTER = dt.timedelta(hours=24)
AUTO_RECEIVE_AFTER = dt.timedelta(days=10)
SWEEP_BATCH = 500


@dataclass(frozen=True, slots=True)
class TimerSettings:
    unpaid_close_after: dt.timedelta = UNPAID_CLOSE_AFTER
    auto_receive_after: dt.timedelta = AUTO_RECEIVE_AFTER
    return_window: dt.timedelta = RETURN_WINDOW


@dataclass(frozen=True, slots=True)
class SweepResult:
    closed: int
    received: int
    done: int


async def _move_due(
    state: OrderState, since_field: str, due_before: dt.datetime, event: OrderEvent,
    reason: str, now: dt.datetime, limit: int,
) -> int:  # fmt: skip
    due = Order.filter(
        state=state, deleted_at__isnull=True, **{f"{since_field}__lte": due_before}
    ).order_by("id")
    moved = 0
    for order in await due.limit(limit):
        try:
            await fire(order, event, actor_role=SYSTEM, actor_id="timer", reason=reason, now=now)
        except (OrderStateConflict, IntegrityError):  # moved meanwhile, by a person or a sweep
            continue
        moved += 1
    return moved


async def sweep(
    now: dt.datetime | None = None,
    settings: TimerSettings = TimerSettings(),  # frozen: a safe default
    *,
    limit: int = SWEEP_BATCH,
) -> SweepResult:
    """Move every due order (at most `limit` per timer and call)."""
    now = now or dt.datetime.now(dt.UTC)
    closed = await _move_due(
        OrderState.OBLIGATION, "created_at", now - settings.unpaid_close_after, OrderEvent.CANCEL,
        "not paid in time", now, limit,
    )  # fmt: skip
    received = await _move_due(
        OrderState.DELIVERED, "delivered_at", now - settings.auto_receive_after,
        OrderEvent.CONFIRM, "received automatically", now, limit,
    )  # fmt: skip
    done = await _move_due(
        OrderState.RECEIVED, "received_at", now - settings.return_window, OrderEvent.FINISH,
        "the return window ended", now, limit,
    )  # fmt: skip
    return SweepResult(closed, received, done)
