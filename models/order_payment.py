"""Paying an order: the one paid step (`pay_order`) every channel's confirmed payment and the
internal one (`mark_paid`, a platform admin with a reason) go through."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from aquafleet.models.errors import Forbidden, InvalidInput, NotFound
from aquafleet.models.order_states import PLATFORM, OrderStateConflict, fire
from aquafleet.models.orders import Order, OrderEvent, OrderKind, OrderTransition
from aquafleet.models.tenancy import Role

if TYPE_CHECKING:
    from aquafleet.models.delivery import ServiceApplier


async def pay_order(
    order: Order,
    *,
    channel: str,
    payment_key: str,
    actor_role: str,
    actor_id: str,
    reason: str,
    apply_service: ServiceApplier | None = None,
    within: Callable[[Order], Awaitable[object]] | None = None,
    source: str | None = None,
    now: dt.datetime | None = None,
) -> Order:
    """The one paid step, for the internal one (`mark_paid`) and every channel's confirmed
    payment: fire PAY, book the payment in the money ledger (and `within`'s writes, e.g. the
    channel's payment row), in one transaction, once; an order paid before answers as it is. A
    renewal (kind 3) needs `apply_service`: paying it renews its device at once and the order is
    done (models/renewals.py); a retry finishes a renewal a failure left paid."""
    from aquafleet.models.money import record_order_payment
    from aquafleet.models.renewals import apply_renewal

    if order.kind is OrderKind.RENEWAL and apply_service is None:
        raise InvalidInput(f"order {order.oid} is a renewal: paying it needs the device service")
    if not await OrderTransition.exists(order_id=order.id, event=OrderEvent.PAY.value):
        try:
            async with in_transaction("default"):
                order = await fire(
                    order, OrderEvent.PAY, actor_role=actor_role, actor_id=actor_id,
                    reason=reason, now=now,
                )  # fmt: skip
                await record_order_payment(
                    order, channel=channel, payment_key=payment_key, actor=actor_id,
                    memo=reason, source=source,
                )  # fmt: skip
                if within is not None:
                    await within(order)
        except (IntegrityError, OrderStateConflict):
            # A concurrent payment moved it first (PostgreSQL's row lock shows the paid
            # state, SQLite's unique event per order refuses the second row): answer it.
            if not await OrderTransition.exists(order_id=order.id, event=OrderEvent.PAY.value):
                raise
            await order.refresh_from_db()
    else:
        # Paid already, perhaps by a racing call after the caller read `order`: answer the
        # order as it is now, not the caller's copy.
        await order.refresh_from_db()
    if apply_service is not None:
        order = await apply_renewal(order, apply_service, now=now)
    return order


async def platform_admin(username: str) -> Any:
    """The active platform admin account of that name (shell steps name one); Forbidden
    otherwise."""
    from aquafleet.models.accounts import AccountState, AdminAccount

    account = await AdminAccount.get_or_none(username__iexact=username)
    if account is None or account.role != Role.PLATFORM or account.state != AccountState.ACTIVE:
        raise Forbidden(f"{username!r} is not an active platform admin account")
    return account


async def mark_paid(
    oid: str,
    *,
    admin: str,
    reason: str,
    apply_service: ServiceApplier | None = None,
    now: dt.datetime | None = None,
) -> Order:
    """The internal paid step (channel `manual`): only a platform admin account (`admin`, its
    user name) may, with a reason; both are recorded. Idempotent (`pay_order`)."""

    account = await platform_admin(admin)
    if not reason.strip():
        raise InvalidInput("say why the order is marked paid (--reason)")
    order = await Order.get_or_none(oid=oid, deleted_at__isnull=True)
    if order is None:
        raise NotFound(f"order {oid} not found")
    actor = f"admin:{account.username}"
    return await pay_order(
        order, channel="manual", payment_key=actor, actor_role=PLATFORM, actor_id=actor,
        reason=reason.strip(), apply_service=apply_service, now=now,
    )  # fmt: skip
