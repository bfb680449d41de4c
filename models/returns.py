"""Returns (AD-12/13/14): the member asks within the return window, the vendor consents, and
the goods coming back end the devices' service and record the refund as due.

AD-14 (已退货, goods back): every device the order shipped, or the replacement an exchange (换机)
gave the member for it, is locked (a person's lock, with the order id in the reason; not one
another member holds now) and unbound from the member, its shares end; a device that was installed
gets a dismantle ticket; what is still due of the order's total (less what refunds of the
order gave back before: still_due_fen) is recorded as `refund_due_fen` for the payment layer,
and a refund of what the order's payment took and was not given back yet is requested in the
money ledger (models/money.py `order_refundable_fen`, refund number `return-{oid}`; a
second payment of the order is refunded on its own) for the payment channel to execute. The
locks go first (repeating a lock changes nothing), then one transaction moves the order and
unbinds the devices.

A return and a rental end (退租, models/rental_end.py) of one order exclude each other, so the
deposit never comes back through both: AD-12, AD-13 and AD-14 refuse an order with a 退租,
open or done (409 order_has_rental_end; AD-14 before any device is locked, and again under the
order's row lock), and a 退租 is neither asked nor completed once a return was asked.
"""

from __future__ import annotations

import datetime as dt

from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from aquafleet.models.delivery import ServiceApplier
from aquafleet.models.devices import Device, DeviceShare
from aquafleet.models.errors import InvalidInput
from aquafleet.models.money import (
    OUTSTANDING_REFUNDS,
    Part,
    Refund,
    order_refundable_fen,
    refund_part,
    request_refund,
)
from aquafleet.models.order_states import MEMBER, OrderStateConflict, fire, next_state
from aquafleet.models.orders import (
    MAX_REASON,
    Order,
    OrderEvent,
    OrderKind,
    OrderState,
    OrderTransition,
)
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import Principal
from aquafleet.models.tickets import (
    OPEN_STATES,
    AutomaticTicket,
    Ticket,
    TicketConflict,
    TicketState,
    TicketType,
    open_automatic_ticket,
    rental_end_key,
)

RETURN_WINDOW = dt.timedelta(days=7)


class OrderHasRentalEnd(TicketConflict):
    """A return (AD-12, AD-13, AD-14) of a rental one of whose devices has a 退租, open or
    done: the 退租 gives that device's deposit back, the return the whole order."""

    code = "order_has_rental_end"


async def check_no_rental_end(order: Order) -> None:
    """Before a return moves: none of the order's devices has a 退租 (a dismantle ticket with
    the order, not cancelled), open or done (OrderHasRentalEnd). The converse, a 退租 of an
    order being returned, is refused in models/rental_end.py."""
    end = (
        await Ticket.filter(type=TicketType.DISMANTLE, order_id=order.id)
        .exclude(state=TicketState.CANCELLED)
        .order_by("id")
        .first()
    )
    if end is None:
        return
    how = (
        "is open: cancel it first to return the order"
        if end.state in OPEN_STATES
        else "is done: the device went back and its deposit was asked back"
    )
    raise OrderHasRentalEnd(
        f"order {order.oid} is not returned (退货): the rental end (退租) {end.ticket_id} of "
        f"its device {end.device_id} {how}; a return gives the whole order back, deposit "
        "included, and a deposit comes back once",
        end,
    )


async def ask_return(
    order: Order, member_uid: str, reason: str, *, now: dt.datetime | None = None
) -> Order:
    """AD-12: the member asks to return a received order, within RETURN_WINDOW of receipt."""
    now = now or dt.datetime.now(dt.UTC)
    reason = reason.strip()
    if not 1 <= len(reason) <= MAX_REASON:
        raise InvalidInput(f"say why (1..{MAX_REASON} characters)")
    if order.state is OrderState.RECEIVED and await OrderTransition.exists(
        order_id=order.id, event=OrderEvent.RETURN.value
    ):
        raise OrderStateConflict(
            "the order is received and its return was refused: a return is asked once",
            order.state,
        )
    if order.state is OrderState.RECEIVED and order.received_at is not None:
        closes = order.received_at + RETURN_WINDOW
        if now > closes:
            raise OrderStateConflict(
                f"the order is received and its return window closed at "
                f"{closes.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}",
                order.state,
            )
    async with in_transaction("default"):
        # Under the order's row lock, as a 退租 is asked (models/rental_end.py end_rental): of
        # the two asked at once, one sees the other and is refused.
        await Order.filter(id=order.id).select_for_update().get()
        await check_no_rental_end(order)
        await fire(order, OrderEvent.RETURN, actor_role=MEMBER, actor_id=member_uid,
                   reason=reason, now=now)  # fmt: skip
        await Order.filter(id=order.id).update(return_reason=reason)
    await order.refresh_from_db()
    return order


async def consent_return(order: Order, principal: Principal) -> Order:
    """AD-13: the platform or the vendor agrees to take the goods back."""
    async with in_transaction("default"):
        await Order.filter(id=order.id).select_for_update().get()  # as in ask_return
        await check_no_rental_end(order)
        await fire(
            order, OrderEvent.CONSENT, actor_role=principal.role.value, actor_id=principal.subject
        )
    await order.refresh_from_db()
    return order


async def refuse_return(
    order: Order, principal: Principal, reason: str, *, now: dt.datetime | None = None
) -> Order:
    """The platform or the vendor refuses the return (not in the seed): return -> received,
    with the reason recorded on the move. The order keeps its receipt time, so the return
    window goes on from where it was (the timer ends it in done); the member cannot ask again
    (each event is recorded once per order)."""
    reason = reason.strip()
    if not 1 <= len(reason) <= MAX_REASON:
        raise InvalidInput(f"say why (1..{MAX_REASON} characters)")
    return await fire(
        order, OrderEvent.REFUSE, actor_role=principal.role.value, actor_id=principal.subject,
        reason=reason, now=now,
    )  # fmt: skip


async def goods_shipped_as(order: Order) -> dict[str, str]:
    """The devices the order's goods are now, each with the device the order shipped that it
    stands for: those it shipped (each for itself), each followed through the exchanges
    completed for it in this order (换机: the member holds the replacement, the vendor the one
    it took back), in that order. Only this order's exchanges (the ticket's `order_id`,
    `order_of_goods`): a device the vendor took back and shipped again with another order is
    exchanged there for that order's member, not this one's. The one rule for following
    exchanges: returns (AD-14), 退租 and its deposit (models/rental_end.py) and AD-15
    (models/order_deletion.py) use it."""
    shipped = [str(did) for did in (order.delivery or {}).get("devices", [])]
    stands_for = {did: did for did in shipped}
    frontier = shipped
    while frontier:
        exchanged = await Ticket.filter(
            type=TicketType.EXCHANGE, state=TicketState.DONE, order_id=order.id,
            device_id__in=frontier, new_device_id__isnull=False,
        ).order_by("id").values_list("device_id", "new_device_id")  # fmt: skip
        frontier = []
        for old, new in exchanged:
            if str(new) not in stands_for:
                stands_for[str(new)] = stands_for[str(old)]
                frontier.append(str(new))
    return stands_for


# Orders whose goods are out with their member: a returned order's came back (AD-14).
GOODS_OUT_KINDS = (OrderKind.PURCHASE, OrderKind.RENTAL)  # a renewal names a device, ships none


async def order_of_goods(vendor_code: str, did: str, member_uid: str | None) -> Order | None:
    """The order `did` is goods of for `member_uid` now, which an exchange of it belongs to:
    the member's newest order (purchase or rental, not returned) that shipped it or got it
    through its own exchanges (goods_shipped_as), and neither exchanged it away nor ended its
    rental (退租) since. None for a device no order of the member's accounts for (bound by
    hand, say): its exchange then changes no order's goods."""
    if member_uid is None:
        return None
    orders = (
        Order.filter(vendor_id=vendor_code, member_id=member_uid, kind__in=GOODS_OUT_KINDS)
        .exclude(state=OrderState.REFUND)
        .filter(delivery__isnull=False)
        .order_by("-id")
    )
    for order in await orders:
        if did not in await goods_shipped_as(order) or await _gone_from(order, did):
            continue
        return order
    return None


async def _gone_from(order: Order, did: str) -> bool:
    """Whether the order's goods left the member as `did`: its rental ended (退租 done), or
    the last of the order's exchanges that moved it took it away (not one that gave it back,
    as the second of A -> B -> A)."""
    done = Ticket.filter(order_id=order.id, state=TicketState.DONE)
    if await done.filter(dedup_key=rental_end_key(order.oid, did)).exists():
        return True
    moved = (
        await done.filter(type=TicketType.EXCHANGE)
        .filter(Q(device_id=did) | Q(new_device_id=did))
        .order_by("-id")
        .first()
    )
    return moved is not None and moved.device_id == did


async def goods_of(order: Order) -> list[str]:
    """The devices the order's goods are now (goods_shipped_as): those it shipped, then the
    replacements exchanges gave for them."""
    return list(await goods_shipped_as(order))


async def still_due_fen(order: Order) -> int:
    """What a return gives back of the order: its total less what refunds of the order (due,
    in flight or done; not those of a second payment, refunded apart) gave back already."""
    back = sum(
        int(refund.amount_fen)
        for refund in await Refund.filter(order_oid=order.oid, state__in=list(OUTSTANDING_REFUNDS))
        if refund_part(refund) is not Part.DUPLICATE
    )
    return max(0, int(order.total_fen) - back)


async def goods_returned(
    order: Order,
    principal: Principal,
    apply_service: ServiceApplier,
    *,
    now: dt.datetime | None = None,
) -> Order:
    """AD-14: the goods are back (see the module's docstring)."""
    now = now or dt.datetime.now(dt.UTC)
    next_state(order.state, OrderEvent.REFUND, principal.role.value)  # refuse early
    await check_no_rental_end(order)  # before the devices are locked
    dids = await goods_of(order)
    elsewhere = {
        str(did)
        for did in await Device.filter(did__in=dids, owner_id__isnull=False)
        .exclude(owner_id=order.member_id)
        .values_list("did", flat=True)
    }
    for taken in [did for did in dids if did not in elsewhere]:  # another member's: not ours
        await apply_service(
            taken, ServiceChangeRequest(op="lock", reason=f"returned with order {order.oid}")
        )
    async with in_transaction("default"):
        # Under the order's row lock, as a 退租's completion checks the order: not both.
        await Order.filter(id=order.id).select_for_update().get()
        await check_no_rental_end(order)
        due = await still_due_fen(order)
        await fire(
            order, OrderEvent.REFUND, actor_role=principal.role.value,
            actor_id=principal.subject, reason=f"goods back; {due} fen due", now=now,
        )  # fmt: skip
        await Order.filter(id=order.id).update(refund_due_fen=due)
        left = await order_refundable_fen(order.oid)  # a duplicate payment is refunded apart
        if left > 0:
            await request_refund(
                order=order, amount_fen=left, refund_no=f"return-{order.oid}",
                reason="goods returned (AD-14)", actor=principal.subject,
            )  # fmt: skip
        held = Q(did__in=dids, owner_id=order.member_id)
        installed = list(
            await Device.filter(held, installed_at__isnull=False).values_list("did", flat=True)
        )
        await DeviceShare.filter(device_id__in=list(
            await Device.filter(held).values_list("did", flat=True)
        )).delete()  # fmt: skip
        await Device.filter(held).update(owner_id=None, bound_at=None, updated_at=now)
    for did in installed:
        await open_automatic_ticket(
            AutomaticTicket(
                dedup_key=f"return:{order.oid}:{did}", type=TicketType.DISMANTLE,
                vendor_code=order.vendor_id, did=str(did), member_uid=order.member_id,
                detail=f"returned with order {order.oid}", about_order_id=order.id,
            )
        )  # fmt: skip
    await order.refresh_from_db()
    return order
