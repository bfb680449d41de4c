"""Ending a rental (退租, seed FAQ 1): the member asks for a device of its rental order, a
dismantle ticket with the order attached opens (`end_rental`), and its completion
(models/ticket_work.py) locks and unbinds the device and requests the deposit back.

A 退租 and an exchange (换机) of a device exclude each other, so the deposit comes back at most
once per device the order shipped (an exchange's replacement stands for the device it
replaced: models/returns.py goods_shipped_as):

- One 退租 per order and shipped device, open or done: asked for a device whose shipped device
  (itself, or the one it replaced) has another one, RentalEndExists (409 rental_end_exists).
  A cancelled one counts for nothing: asking again opens a new ticket (release_cancelled).
- A device whose 退租 is open is not exchanged: opening an exchange for it, or completing one
  opened before, RentalEnding (409 rental_ending); nor one whose 退租 is done, in the
  exchange's order, or, for an exchange no order accounts for, with the device held by nobody
  since (RentalEnded, 409 rental_ended: the device went back, its deposit with it).
- A return (退货, AD-12..14) gives the whole order back, deposit included: no 退租 is asked or
  completed for an order being returned or returned (OrderReturning, 409 order_returning),
  and no return moves for an order with a 退租, open or done (models/returns.py,
  409 order_has_rental_end). Both completions check under the order's row lock.
- A 退租 whose device an exchange of its order took away since (a race with the exchange, or
  tickets from before these rules) does not complete, DeviceExchanged (409 device_exchanged):
  the member holds the replacement; cancel it and end the rental of the replacement. One
  whose shipped device's deposit another 退租 already requested back completes without a
  second refund (its note names that ticket).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device
from aquafleet.models.errors import Conflict, InvalidInput, NotFound, RequestReused
from aquafleet.models.order_placing import request_digest
from aquafleet.models.order_states import OrderStateData
from aquafleet.models.orders import MAX_IDEMPOTENCY_KEY, Order, OrderKind, OrderState
from aquafleet.models.returns import goods_shipped_as
from aquafleet.models.tickets import (
    OPEN_STATES,
    AutomaticTicket,
    Ticket,
    TicketConflict,
    TicketRequestKey,
    TicketState,
    TicketType,
    closed_key,
    open_automatic_ticket,
    rental_end_key,
)


class RentalEndExists(TicketConflict):
    """退租 of a device whose shipped device already has a 退租, open or done."""

    code = "rental_end_exists"


class RentalEnding(Conflict):
    """An exchange of a device whose 退租 is open (or done in the exchange's order)."""

    code = "rental_ending"

    def __init__(self, message: str, ticket: Ticket | None) -> None:
        super().__init__(message)
        self.ticket = ticket  # None: another member's 退租, not named to this one

    @property
    def data(self) -> dict[str, Any] | None:
        if self.ticket is None:
            return None
        return {"ticket_id": self.ticket.ticket_id, "status": int(self.ticket.state)}


class RentalEnded(Conflict):
    """An exchange of a device whose 退租 is done: it went back with its deposit."""

    code = "rental_ended"

    def __init__(self, message: str, ticket: Ticket, oid: str | None) -> None:
        super().__init__(message)
        self.ticket = ticket
        self.oid = oid

    @property
    def data(self) -> dict[str, Any]:
        return {"ticket_id": self.ticket.ticket_id, "order_id": self.oid}


class OrderReturning(OrderStateData):
    """A 退租 (asked or completed) of an order being returned or returned (AD-12..14)."""

    code = "order_returning"


class DeviceExchanged(Conflict):
    """Completing a 退租 of a device an exchange of its order took away since."""

    code = "device_exchanged"

    def __init__(self, message: str, exchange: Ticket) -> None:
        super().__init__(message)
        self.exchange = exchange

    @property
    def data(self) -> dict[str, Any]:
        return {"ticket_id": self.exchange.ticket_id, "new_device_id": self.exchange.new_device_id}


class DeviceNotHeld(Conflict):
    """An exchange (opened or completed) naming a member who does not hold its device."""

    code = "device_not_held"

    def __init__(self, did: str, member_uid: str) -> None:
        super().__init__(
            f"device {did} is not held by member {member_uid}: an exchange (换机) replaces a "
            "device its member holds; name the member the device is bound to"
        )
        self.did, self.member_uid = did, member_uid

    @property
    def data(self) -> dict[str, Any]:
        return {"device_id": self.did, "user_id": self.member_uid}


def check_held(device: Device, member_uid: str | None) -> None:
    """An exchange's device is bound to the member it serves (DeviceNotHeld): else the old
    device, another member's or nobody's, would be taken and its service handed to the
    member named. No member named: the device's holder, whoever that is."""
    if member_uid is not None and device.owner_id != member_uid:
        raise DeviceNotHeld(device.did, member_uid)


RENTAL_END_STATES = frozenset({OrderState.DELIVERED, OrderState.RECEIVED, OrderState.DONE})
# A return asked, agreed or done (AD-12, AD-13, AD-14): the return gives the order's money back,
# deposit included, so no 退租 is asked or completed (models/returns.py refuses the converse).
RETURNING_STATES = frozenset({OrderState.RETURN, OrderState.CONSENT, OrderState.REFUND})


def check_not_returning(order: Order) -> None:
    """A 退租 of an order being returned or returned: OrderReturning."""
    if order.state in RETURNING_STATES:
        state = order.state.name.lower()
        raise OrderReturning(
            f"order {order.oid} is {state}: its return (退货) gives the order's money back, "
            "deposit included, so its rental is not ended (退租) as well"
            + ("" if order.state is OrderState.REFUND else "; refuse the return first"),
            order.state,
        )


async def end_rental(
    order: Order, member_uid: str, did: str, reason: str, *, idempotency_key: str | None = None
) -> tuple[Ticket, bool]:
    """退租: the member ends the rental of a device the order delivered, or of the replacement
    an exchange (or a chain of them) gave for it (models/returns.py goods_shipped_as), that it
    holds; a dismantle ticket opens (once per order and device, and once per device the order
    shipped: check_one_end). Its completion locks and unbinds the device and requests the
    deposit of the device the order shipped back. `idempotency_key` (the Idempotency-Key
    header): sent again with the same request, the ticket the first answered, as it is now;
    with another request, IdempotencyKeyReused (ticket_of_key)."""
    if order.member_id != member_uid:
        raise NotFound(f"order {order.oid} not found")
    reason = reason.strip()[:200]
    digest = request_digest("rental_end", {"order": order.oid, "device": did, "reason": reason})
    async with in_transaction("default"):
        # Under the order's row lock, as AD-12 checks for a 退租 (models/returns.py ask_return):
        # of a 退租 and a return asked at once, one sees the other and is refused. A retry
        # with the key waits there for the first request's answer.
        order = await Order.filter(id=order.id).select_for_update().get()
        first = await ticket_of_key(member_uid, idempotency_key, digest)
        if first is not None:
            return first, False
        ticket, created = await _open_end(order, member_uid, did, reason)
        if idempotency_key is not None:
            await _record_key(member_uid, idempotency_key, digest, ticket)
        return ticket, created


async def _open_end(order: Order, member_uid: str, did: str, reason: str) -> tuple[Ticket, bool]:
    """end_rental's checks and its ticket, with the order's row locked."""
    if order.kind is OrderKind.RENTAL:
        check_not_returning(order)
    if order.kind is not OrderKind.RENTAL or order.state not in RENTAL_END_STATES:
        raise Conflict(
            f"the order is {order.state.name.lower()} ({order.kind.name.lower()}): only a "
            "delivered rental is ended"
        )
    stands_for = await goods_shipped_as(order)
    if did not in stands_for:
        raise NotFound(f"device {did} is not part of order {order.oid}")
    device = await Device.get_or_none(did=did)
    if device is None or device.owner_id != member_uid:
        raise Conflict(f"device {did} is no longer held by the member")
    await check_one_end(order, did, stands_for)  # a deposit comes back once per device
    key = rental_end_key(order.oid, did)
    await release_cancelled(key)
    return await open_automatic_ticket(
        AutomaticTicket(
            dedup_key=key, type=TicketType.DISMANTLE,
            vendor_code=order.vendor_id, did=did, member_uid=member_uid,
            detail=f"rental ended by the member (order {order.oid})"
            + (f": {reason}" if reason else ""),
            order_id=order.id,
        )
    )  # fmt: skip


class IdempotencyKeyReused(RequestReused):
    """A 退租's Idempotency-Key sent again with another request (order, device or reason)."""

    def __init__(self, key: str, first: Ticket) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} asked for rental end (退租) {first.ticket_id} with "
            "another request: a new ask needs a new key",
            {"ticket_id": first.ticket_id},
        )


async def ticket_of_key(member_uid: str, key: str | None, digest: str) -> Ticket | None:
    """The ticket the member's request with `key` opened or answered before, when the request
    was the same; another request under that key is IdempotencyKeyReused."""
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    recorded = await TicketRequestKey.get_or_none(member_uid=member_uid, idempotency_key=key)
    if recorded is None:
        return None
    first = await Ticket.get(id=recorded.ticket_id)
    if recorded.request_hash != digest:
        raise IdempotencyKeyReused(key, first)
    return first


async def _record_key(member_uid: str, key: str, digest: str, ticket: Ticket) -> None:
    """The key answers `ticket` from now on. The same key racing on another order (whose row
    lock this one does not wait for) inserts first: this request is then the other one,
    refused, and its transaction (its ticket too) rolls back."""
    try:
        async with in_transaction("default"):  # a savepoint: the lookup below still runs
            await TicketRequestKey.create(
                member_uid=member_uid, idempotency_key=key, request_hash=digest,
                ticket_id=ticket.id, created_at=dt.datetime.now(dt.UTC),
            )  # fmt: skip
    except IntegrityError:
        first = await ticket_of_key(member_uid, key, digest)
        if first is None or first.id != ticket.id:
            raise IdempotencyKeyReused(key, first or ticket) from None


async def release_cancelled(key: str) -> None:
    """A cancelled 退租 is not the answer to the next ask for its order and device: its key
    is freed (as a closed fault ticket's is), so the ask opens a new ticket that a retry of it
    then answers. An open or done one keeps its key: asking again answers it."""
    cancelled = await Ticket.get_or_none(dedup_key=key, state=TicketState.CANCELLED)
    if cancelled is not None:  # a racing ask freed it already: the update then changes nothing
        await Ticket.filter(id=cancelled.id, dedup_key=key).update(
            dedup_key=closed_key(key, cancelled.ticket_id)
        )


def _rental_ends(order_id: int) -> QuerySet[Ticket]:
    """The order's 退租 tickets that are not cancelled (dismantle tickets with the order)."""
    return (
        Ticket.filter(type=TicketType.DISMANTLE, order_id=order_id)
        .exclude(state=TicketState.CANCELLED)
        .order_by("id")
    )


async def check_one_end(order: Order, did: str, stands_for: dict[str, str]) -> None:
    """Before a 退租 of `did` opens: no other 退租 of the order stands for the same shipped
    device (RentalEndExists)."""
    shipped = stands_for[did]
    for other in await _rental_ends(order.id):
        if other.device_id == did or stands_for.get(str(other.device_id)) != shipped:
            continue
        how = "is open" if other.state in OPEN_STATES else "is done: its deposit was asked back"
        raise RentalEndExists(
            f"device {did} stands for device {shipped} of order {order.oid}, whose rental "
            f"end (退租) {other.ticket_id} for device {other.device_id} {how}; a deposit "
            "comes back once per device the order shipped",
            other,
        )


async def check_exchangeable(did: str, order_id: int | None, member_uid: str | None = None) -> None:
    """Before an exchange of `did` opens or completes: no 退租 of it is open, in any order
    (RentalEnding); none is done in the exchange's order, nor, for an exchange of no order,
    done with the device held by nobody since (RentalEnded: it went back with its deposit, and
    its former member is given no replacement for a rental that ended). `member_uid`: the
    member asking for the exchange, who is not told another member's 退租 (the device was
    unbound and bound to it meanwhile): that ticket is not its to read or cancel."""
    ends = Ticket.filter(type=TicketType.DISMANTLE, device_id=did, order_id__isnull=False)
    ending = await ends.filter(state__in=sorted(OPEN_STATES)).order_by("id").first()
    if ending is not None and member_uid is not None and ending.member_uid != member_uid:
        raise RentalEnding(
            f"device {did} is being given back by the member who rented it before: it is not "
            "exchanged until that rental end (退租) is done or cancelled",
            None,
        )
    if ending is not None:
        raise RentalEnding(
            f"device {did} is being given back: its rental end (退租) {ending.ticket_id} is "
            "open. It is not exchanged; cancel the 退租 first to exchange it",
            ending,
        )
    done = ends.filter(state=TicketState.DONE).order_by("-id")
    if order_id is not None:
        ended = await done.filter(order_id=order_id).first()
    elif await Device.exists(did=did, owner_id__isnull=True):
        ended = await done.first()  # the exchange found no order: its rental ended there
    else:
        ended = None  # bound since (shipped again, or by hand): not that rental's device
    if ended is not None:
        order = await Order.get_or_none(id=ended.order_id)
        oid = None if order is None else order.oid
        raise RentalEnded(
            f"device {did} was given back: its rental ended (退租) with ticket "
            f"{ended.ticket_id}, which asked its deposit back; it is no longer rented under "
            f"order {oid} and is not exchanged",
            ended,
            oid,
        )


async def check_still_rented(ticket: Ticket, order: Order) -> None:
    """Before a 退租 completes: no exchange of its order took its device away from the member
    (DeviceExchanged; a device a later exchange of the order gave back to the member, which
    holds it again, ends). Run with the order's row locked, as completing an exchange is."""
    if await Device.exists(did=ticket.device_id, owner_id=ticket.member_uid):
        return
    exchange = (
        await Ticket.filter(
            type=TicketType.EXCHANGE, state=TicketState.DONE, order_id=order.id,
            device_id=ticket.device_id,
        ).order_by("-id").first()
    )  # fmt: skip
    if exchange is not None:
        raise DeviceExchanged(
            f"device {ticket.device_id} was exchanged for {exchange.new_device_id} (ticket "
            f"{exchange.ticket_id}) after this rental end (退租) was asked: the member holds "
            f"{exchange.new_device_id}. Cancel this ticket; the member ends the rental of "
            f"{exchange.new_device_id}",
            exchange,
        )


async def deposit_requested_by(
    ticket: Ticket, order: Order, stands_for: dict[str, str]
) -> Ticket | None:
    """Another done 退租 of the order that requested the deposit of the device `ticket`'s
    device stands for (None: none did). Run with the order's row locked."""
    shipped = stands_for.get(str(ticket.device_id))
    if shipped is None:
        return None
    for other in await _rental_ends(order.id).filter(state=TicketState.DONE):
        if other.id != ticket.id and stands_for.get(str(other.device_id)) == shipped:
            return other
    return None
