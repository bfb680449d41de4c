"""What completing a ticket does (完成); ending a rental (退租, seed FAQ 1) is
models/rental_end.py.

- maintenance: the filter stages replaced are reset on the device (reset_filter command; the
  device bumps the stage's reset_count, which starts a new filter cycle: models/filters.py);
- install: the device's installation block (installer, install time) is filled in;
- exchange: the replacement device is bound to the member, takes the old device's product and
  its live service (configured with the ticket id as request id): the quota it had left at that
  moment moves over and the old device keeps none (one Redis step, models/handover.py
  hand_over, bound to the replacement: a retry naming another device once it ran is refused
  with HandedOverElsewhere); a replacement from stock has the person's lock it came back
  with lifted, as a delivery does (a device exchanged away and back, A -> B -> A, runs
  again); the old device is locked and unbound;
- dismantle: the device is locked and unbound (its shares end); when the ticket came from a
  member ending a rental, the order's deposit for that device is requested back, once per
  device the order shipped (models/rental_end.py: an exchange and a 退租 of the same device
  exclude each other, and so do a return of the order and a 退租, all completions under the
  order's row lock).

Completion locks the ticket's row first and checks its state there, so of two racing
completions only one does any work; then the device effects (each harmless to repeat: the
Redis ones carry the ticket id as request id), then the move to DONE, in that transaction. A
completion that fails half way can be sent again: Redis keeps what it applied (a transaction
cannot take it back), the retry applies it once.

Cancelling (取消) locks the row the same way, so it and a completion never both act. An
exchange whose completion failed after the hand-over (the old device at 0 and locked, the new
one configured with the quota but never bound) is undone first (models/handover.py
hand_back): the old device gets back what is left of the quota handed over (water poured on
either stays poured, a debt stays a debt), the new one keeps none of it (what others added
since stays on it: a top-up, a renewal paid beyond the expiry the exchange gave), and the
person's lock the exchange put on the old device is lifted. Each step is once per ticket, so
a cancel retried after a failure half way gives nothing twice; once the undoing began, a
retry of the completion is refused (409 handed_back): the member keeps the old device.

The live store's markers that make those steps safe to repeat live a week (MARKER_TTL_S), a
half-done exchange may wait longer. So the ticket's row records the hand-over too
(`handed_over_to`, `handed_over_at`), committed in its own transaction before the live store
moves the quota (a failed completion rolls back everything else it wrote). A retry or a
cancel within the markers' life works from the markers as above (a missing marker means the
store never did the step: its marker is written in the one script step that moves the quota).
So a retry naming another device than the recorded one looks at the live store first, under
the row's lock: no marker of the hand-over, the row is re-pointed to the new device (and
committed) and the quota goes there; a marker, refused (HandedOverElsewhere, the row set to
the marker's device). Racing retries serialise on the row's lock, and the live store's one
marker per ticket decides where the quota went (_record_hand_over). Later, the step is sent
`recorded`: when its marker is gone it is refused (409 handover_expired; one naming another
device: HandedOverElsewhere, for no marker then proves nothing) instead of handing the quota
over again or giving back from nothing; the operator settles both devices' service by hand
and cancels with `settled`, which closes the ticket without touching the devices.
`stuck_exchanges` lists the exchanges handed over and neither done nor cancelled, for
operators to act on in time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from typing import Any, Protocol

from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device, DeviceShare, check_usable
from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.handover import (
    MARKER_TTL_S,
    HandBack,
    HandedOverElsewhere,
    Handover,
    HandoverExpired,
)
from aquafleet.models.orders import Order, OrderLine
from aquafleet.models.rental_end import (
    check_exchangeable,
    check_held,
    check_not_returning,
    check_still_rented,
    deposit_requested_by,
)
from aquafleet.models.returns import goods_shipped_as, order_of_goods
from aquafleet.models.service import ServiceMode, taken_back
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.technicians import Technician
from aquafleet.models.tenancy import Principal
from aquafleet.models.ticket_flow import (
    TicketEvent,
    TicketStateConflict,
    actor_of,
    fire,
    next_state,
)
from aquafleet.models.tickets import (
    OPEN_STATES,
    Ticket,
    TicketType,
)


class DeviceWork(Protocol):
    """The device side completion needs (the API wraps the gateway facade)."""

    async def change_service(self, did: str, change: ServiceChangeRequest) -> object: ...

    async def hand_over(
        self, did: str, recipient: str, request_id: str, reason: str, *, recorded: bool = False
    ) -> Handover: ...

    async def hand_back(
        self, did: str, request_id: str, lock_request_id: str | None, reason: str, *,
        recorded: bool = False,
    ) -> HandBack: ...  # fmt: skip

    async def reset_filter(self, did: str, stage: int, reason: str) -> int: ...


def maintenance_stage(ticket: Ticket) -> int | None:
    """The stage an automatic maintenance ticket was opened for (its dedup key)."""
    key = ticket.dedup_key or ""
    parts = key.split(":")
    if len(parts) == 4 and parts[0] == "maintenance" and parts[2].isdigit():
        return int(parts[2])
    return None


async def _maintenance(ticket: Ticket, work: DeviceWork, stages: Sequence[int]) -> str:
    chosen = list(stages) or [s for s in [maintenance_stage(ticket)] if s is not None]
    if not chosen:
        raise InvalidInput("name the filter stages replaced (filters)")
    if ticket.device_id is None:
        raise InvalidInput("the ticket names no device")
    for stage in chosen:
        await work.reset_filter(ticket.device_id, stage, f"ticket {ticket.ticket_id}")
    return f"filters reset: {', '.join(str(s) for s in chosen)}"


async def _install(ticket: Ticket, installer: str, now: dt.datetime) -> str:
    if ticket.device_id is not None:
        await Device.filter(did=ticket.device_id).update(
            installer_id=installer[:64], installed_at=now, updated_at=now
        )
    return f"installed by {installer}"


# A hand-over the row recorded this long ago may have outlived its markers in the live store
# (an hour short of their life: the nodes' and Redis's clocks may differ).
RECORDED_AFTER = dt.timedelta(seconds=MARKER_TTL_S) - dt.timedelta(hours=1)


def markers_expired(ticket: Ticket, now: dt.datetime) -> bool:
    """Whether the ticket's hand-over was recorded long enough ago that its markers may be gone
    (the live store's steps are then sent `recorded`: no marker, no step)."""
    return ticket.handed_over_at is not None and now - ticket.handed_over_at >= RECORDED_AFTER


def _expired(ticket: Ticket) -> HandoverExpired:
    """What the operator is told when an exchange's hand-over outlived its markers."""
    at = ticket.handed_over_at.isoformat() if ticket.handed_over_at else "?"
    return HandoverExpired(
        f"exchange ticket {ticket.ticket_id} handed device {ticket.device_id}'s service over "
        f"to {ticket.handed_over_to} at {at}, longer ago than the live store keeps what the "
        f"exchange did ({MARKER_TTL_S // 86_400} days): it is neither retried nor given back "
        "automatically. Settle both devices' service by hand (/devices/<did>/svc: what the "
        "member should have on the old device, none of it left on the new one), then cancel "
        "the ticket with settled=true (and open a new exchange if one is still wanted)"
    )


async def _replacement(ticket: Ticket, new_did: str | None) -> tuple[Device, str | None]:
    """The exchange's old device and the member the replacement `new_did` goes to, once
    `new_did` is found fit; else NotFound, InvalidInput or Conflict."""
    if new_did is None or ticket.device_id is None:
        raise InvalidInput("an exchange names the replacement device (new_device)")
    old = await Device.get(did=ticket.device_id)
    check_held(old, ticket.member_uid)  # still the member's: not unbound or rebound since
    new = await Device.get_or_none(did=new_did)
    if new is None or new.vendor_id != ticket.vendor_id or new_did == old.did:
        raise NotFound(f"device {new_did} not found")
    check_usable(new)
    member = ticket.member_uid or old.owner_id
    if new.owner_id not in (None, member):
        raise Conflict(f"device {new_did} is bound to another member")
    return old, member


async def _check_in_node(principal: Principal, ticket: Ticket, new_did: str) -> None:
    """A completer under an agent or dealer node (the node's admin, or a technician of it)
    takes the replacement from the node's subtree, as it ships devices with orders: another
    node's stock would be bound to its member and moved into its subtree. The platform, the
    vendor and the vendor's own technicians take any device of the vendor."""
    if principal.agent_path is None:
        return
    if not await Device.exists(
        did=new_did, vendor_id=ticket.vendor_id, agent__path__startswith=principal.agent_path
    ):
        raise NotFound(f"device {new_did} not found")


async def _locked_to_complete(ticket: Ticket, role: str, conn: Any) -> Ticket:
    """The ticket's row, locked in `conn`'s transaction, once its locked state allows `role` to
    complete it (TicketStateConflict otherwise): the caller's copy may be stale."""
    current = await Ticket.filter(id=ticket.id).select_for_update().using_db(conn).get()
    if current.state not in OPEN_STATES:
        raise TicketStateConflict(f"the ticket is {current.state.name.lower()}: it cannot complete")
    next_state(current.state, TicketEvent.COMPLETE, role)
    return current


async def _record_hand_over(
    ticket: Ticket, role: str, new_did: str | None, work: DeviceWork
) -> str | None:
    """Before an exchange's completion moves anything: the replacement it hands over to, and
    when, on the ticket's row in a transaction of its own (it survives a completion that
    fails later). A retry naming another device than the recorded one re-points the record
    to it only when the live store shows the recorded hand-over never ran (no marker of it,
    within the markers' life); when it ran, the row names where it went and the retry is
    refused (HandedOverElsewhere). The device the record named before a re-point (None:
    none)."""
    async with in_transaction("default") as conn:
        current = await _locked_to_complete(ticket, role, conn)
        old, _ = await _replacement(current, new_did)
        recorded_to, now = current.handed_over_to, dt.datetime.now(dt.UTC)
        if recorded_to == new_did:
            return None
        live = None if recorded_to is None else await _live_recipient(current, work, old.did)
        if recorded_to is not None and live is None and markers_expired(current, now):
            # No marker, but it may have expired: whether the hand-over ran is no longer
            # known, so the row's device stays the only one (retried with it: expired).
            raise HandedOverElsewhere(old.did, recorded_to, current.ticket_id)
        if live is None:
            values: dict[str, Any] = {"handed_over_to": new_did, "handed_over_at": now}
        else:
            # It ran. A marker naming another device than the row's was written after the row
            # named that one (a hand-over in flight when a retry re-pointed the row landed
            # after its look), so the row's time stays a bound of the marker's age.
            values = {"handed_over_to": live}
        await Ticket.filter(id=current.id).using_db(conn).update(**values)
    if live is not None and live != new_did:
        raise HandedOverElsewhere(old.did, live, ticket.ticket_id)
    return recorded_to


async def _live_recipient(ticket: Ticket, work: DeviceWork, old_did: str) -> str | None:
    """The device the live store's marker says the ticket's hand-over went to; None when it
    holds no marker of it. Redis writes that marker in the one script step that takes the
    quota off the old device, so within the markers' life no marker means the quota was not
    moved under this ticket. Asked as the hand-over to the recorded device sent `recorded`,
    which changes nothing (no marker: HandoverExpired); HandedBack when the ticket's cancel
    began giving the quota back."""
    assert ticket.handed_over_to is not None
    reason = f"exchange ticket {ticket.ticket_id}"
    try:
        await work.hand_over(
            old_did, ticket.handed_over_to, ticket.ticket_id, reason, recorded=True
        )
    except HandoverExpired:
        return None
    except HandedOverElsewhere as elsewhere:
        return elsewhere.received_by
    return ticket.handed_over_to


async def _follow_live_store(ticket: Ticket, handed_to: str, received_by: str) -> None:
    """After the live store refused the hand-over to `handed_to` because its marker names
    `received_by`, the open ticket's row names `received_by` (unless someone changed the row
    since): a hand-over still in flight when a retry re-pointed the row can land after that
    retry's look at the markers and before its own hand-over."""
    if received_by in ("?", handed_to):
        return
    async with in_transaction("default") as conn:
        current = await Ticket.filter(id=ticket.id).select_for_update().using_db(conn).get()
        if current.state in OPEN_STATES and current.handed_over_to == handed_to:
            await Ticket.filter(id=current.id).using_db(conn).update(handed_over_to=received_by)


async def _exchange(ticket: Ticket, work: DeviceWork, new_did: str | None, now: dt.datetime) -> str:
    old, member = await _replacement(ticket, new_did)
    assert new_did is not None  # _replacement refuses None
    # The live service, not the database's copy (as of the last change): the quota left now
    # moves to the new device and the old one keeps none, in one Redis step. The hand-over is
    # bound to `new_did`: a retry after a failure naming another device is refused
    # (HandedOverElsewhere), so the quota never lands on two devices.
    reason = f"exchange ticket {ticket.ticket_id}"
    recorded_to = ticket.handed_over_to
    if recorded_to is not None and recorded_to != new_did:
        # A racing retry re-pointed the row since _record_hand_over: it is the one that hands
        # over. Asked with the recorded device and `recorded`, the live store changes nothing
        # and says whether the ticket's cancel began giving the quota back (HandedBack).
        with contextlib.suppress(HandoverExpired):
            await work.hand_over(old.did, recorded_to, ticket.ticket_id, reason, recorded=True)
        raise HandedOverElsewhere(old.did, recorded_to, ticket.ticket_id)
    try:
        given = await work.hand_over(
            old.did, new_did, ticket.ticket_id, reason, recorded=markers_expired(ticket, now),
        )  # fmt: skip
    except HandoverExpired:
        raise _expired(ticket) from None
    if given.mode is not None:
        volume = given.mode is ServiceMode.VOLUME_RENTAL
        await work.change_service(
            new_did,
            ServiceChangeRequest(
                op="configure", mode=given.mode,
                remaining_ml=given.remaining_ml if volume else None,
                low_balance_ml=given.low_balance_ml if volume else None,
                rental_expires_at=given.rental_expires_at
                if given.mode is ServiceMode.TIME_RENTAL else None,
                reason=f"exchange ticket {ticket.ticket_id}", request_id=ticket.ticket_id,
                retry_recomputes=True,  # a retry reads the old device's state afresh
            ),
        )  # fmt: skip
    if await taken_back(await Device.get(did=new_did)):
        # From stock, as a delivery ships it: the person's lock it came back with (the
        # exchange that took it from this member before, A -> B -> A) is lifted.
        await work.change_service(
            new_did,
            ServiceChangeRequest(
                op="unlock", reason=f"exchange ticket {ticket.ticket_id}: given from stock",
                request_id=f"{ticket.ticket_id}:unlock",
            ),
        )  # fmt: skip
    await work.change_service(
        old.did,
        ServiceChangeRequest(
            op="lock", reason=f"exchanged: ticket {ticket.ticket_id}",
            request_id=exchange_lock_id(ticket),
        ),
    )  # fmt: skip
    async with in_transaction("default"):
        await DeviceShare.filter(device_id=old.did).delete()
        await Device.filter(did=old.did).update(owner_id=None, bound_at=None, updated_at=now)
        await Device.filter(did=new_did).update(
            owner_id=member, bound_at=now, product_id=old.product_id, agent_id=old.agent_id,
            updated_at=now,
        )  # fmt: skip
    return f"exchanged for {new_did}"


def exchange_lock_id(ticket: Ticket) -> str:
    """The request id of an exchange's lock of the old device: its cancel lifts that lock
    only when it was this lock that set it."""
    return f"{ticket.ticket_id}:lock"


async def exchange_order_id(ticket: Ticket) -> int | None:
    """The order whose goods the exchange's device is (models/returns.py order_of_goods): the
    one it was opened for, else (a ticket opened before exchanges carried it) the one it is
    now; its replacement then stands in that order for what the device stood for."""
    if ticket.order_id is not None or ticket.device_id is None:
        return ticket.order_id
    device = await Device.get_or_none(did=ticket.device_id)
    member = ticket.member_uid or (device.owner_id if device is not None else None)
    order = await order_of_goods(ticket.vendor_id, ticket.device_id, member)
    return None if order is None else order.id


async def _dismantle(ticket: Ticket, work: DeviceWork, actor: str, conn: Any) -> str:
    if ticket.device_id is None:
        return "dismantled"
    did = ticket.device_id
    order, requested_by = None, None
    if ticket.order_id is not None:  # a rental's end (退租): its deposit once (rental_end.py)
        order = await Order.filter(id=ticket.order_id).select_for_update().using_db(conn).get()
        check_not_returning(order)  # a return gives the deposit back: not both
        await check_still_rented(ticket, order)
        requested_by = await deposit_requested_by(ticket, order, await goods_shipped_as(order))
    await work.change_service(
        did, ServiceChangeRequest(op="lock", reason=f"dismantled: ticket {ticket.ticket_id}")
    )
    now = dt.datetime.now(dt.UTC)
    async with in_transaction("default"):
        await DeviceShare.filter(device_id=did).delete()
        await Device.filter(did=did).update(owner_id=None, bound_at=None, updated_at=now)
    if order is None:
        return "dismantled: device locked and unbound"
    if requested_by is not None:
        return (
            "dismantled: device locked and unbound; its deposit was already requested back "
            f"with ticket {requested_by.ticket_id}"
        )
    deposit = await deposit_of(order, did)
    if deposit > 0:
        await request_deposit_refund(order, did, deposit, ticket, actor)
    return f"dismantled: device locked and unbound; deposit {deposit} fen requested back"


async def deposit_of(order: Order, did: str) -> int:
    """The deposit paid for `did` in `order`: its line's deposit (units in line order). A
    replacement an exchange gave for a device the order shipped stands for that device (its
    deposit is the shipped one's)."""
    devices = list((order.delivery or {}).get("devices", []))
    shipped = (await goods_shipped_as(order)).get(did)
    if shipped is None or shipped not in devices:
        return 0
    lines = list(await OrderLine.filter(order_id=order.id).order_by("position"))
    units = [line for line in lines for _ in range(line.quantity)]
    index = devices.index(shipped)
    if index >= len(units) or units[index].package_key is None:
        return 0
    return int(units[index].snapshot.get("rent", {}).get("deposit", 0))


async def request_deposit_refund(
    order: Order, did: str, amount_fen: int, ticket: Ticket, actor: str
) -> None:
    """Ask the money layer to refund the deposit, once per ticket (its refund number)."""
    from aquafleet.models import money

    await money.request_refund(
        order=order,
        amount_fen=amount_fen,
        refund_no=f"R{ticket.ticket_id}",
        reason=f"rental ended: device {did} dismantled (ticket {ticket.ticket_id})",
        actor=actor,
        part=money.Part.DEPOSIT,  # the deposit back: the rent's commission stays earned
    )


async def complete(
    ticket: Ticket,
    principal: Principal,
    work: DeviceWork,
    *,
    note: str = "",
    filters: Sequence[int] = (),
    new_device: str | None = None,
) -> Ticket:
    """完成: the ticket's domain work, then the move to DONE (see the module's docstring)."""
    try:
        await _complete(ticket, principal, work, note, filters, new_device)
    except HandedOverElsewhere as refused:
        if new_device is not None:
            await _follow_live_store(ticket, new_device, refused.received_by)
        raise
    await ticket.refresh_from_db()
    return ticket


async def _complete(
    ticket: Ticket,
    principal: Principal,
    work: DeviceWork,
    note: str,
    filters: Sequence[int],
    new_device: str | None,
) -> None:
    role, subject = actor_of(principal)
    repointed_from, order_id = None, ticket.order_id
    if ticket.type is TicketType.EXCHANGE:  # a ticket's type never changes: the copy will do
        if new_device is not None:
            await _check_in_node(principal, ticket, new_device)
        order_id = await exchange_order_id(ticket)
        if ticket.device_id is not None:  # refused before anything is recorded or moved
            await check_exchangeable(ticket.device_id, order_id)
        repointed_from = await _record_hand_over(ticket, role, new_device, work)
    now = dt.datetime.now(dt.UTC)
    async with in_transaction("default") as conn:
        # The locked state decides before any effect: of two racing completions (say, an
        # exchange with two different devices) the one that waited sees the ticket done and
        # changes nothing; the caller's copy of the ticket may be stale.
        current = await _locked_to_complete(ticket, role, conn)
        changes: dict[str, Any] = {}
        if current.type is TicketType.EXCHANGE:
            changes = {"new_device_id": new_device, "order_id": order_id}
            if order_id is not None and current.device_id is not None:
                # Under the order's row lock, as a 退租's completion: not both (rental_end.py).
                await Order.filter(id=order_id).select_for_update().using_db(conn).get()
                await check_exchangeable(current.device_id, order_id)
        done = await _work(current, principal, work, filters, new_device, now, conn)
        if repointed_from is not None:
            done = f"{done}; the hand-over recorded for {repointed_from} had not run"
        text = f"{note} ({done})" if note else done
        await fire(
            current, TicketEvent.COMPLETE, actor_role=role, actor_id=subject, note=text[:255],
            changes=changes, now=now,
        )  # fmt: skip


async def cancel(
    ticket: Ticket,
    principal: Principal,
    work: DeviceWork,
    *,
    note: str = "",
    settled: bool = False,
) -> Ticket:
    """取消: an exchange's hand-over undone first when it happened, then the move to
    CANCELLED (see the module's docstring). `settled`: the operator settled by hand an
    exchange whose hand-over outlived its markers (else 409 handover_expired); it closes
    without touching the devices (it changes nothing while the markers are there)."""
    role, subject = actor_of(principal)
    now = dt.datetime.now(dt.UTC)
    async with in_transaction("default") as conn:
        # As in `complete`: the locked state decides before any effect, so a cancel that
        # waited for a completion finds it done and gives nothing back.
        current = await Ticket.filter(id=ticket.id).select_for_update().using_db(conn).get()
        next_state(current.state, TicketEvent.CANCEL, role)
        text = note
        if current.type is TicketType.EXCHANGE and current.device_id is not None:
            try:
                back = await work.hand_back(
                    current.device_id, current.ticket_id, exchange_lock_id(current),
                    f"exchange ticket {current.ticket_id} cancelled",
                    recorded=markers_expired(current, now),
                )  # fmt: skip
            except HandoverExpired:
                if not settled:
                    raise _expired(current) from None
                back = HandBack(None, None)
                settled_text = (
                    f"hand-over to {current.handed_over_to} settled by hand (its markers had "
                    "expired)"
                )
                text = f"{note} ({settled_text})" if note else settled_text
            if back.recipient is not None:
                undone = (
                    f"hand-over to {back.recipient} undone: {back.returned_ml} ml back on "
                    f"{current.device_id}"
                    if back.returned_ml is not None
                    else f"hand-over to {back.recipient} undone"
                )
                text = f"{note} ({undone})" if note else undone
        await fire(
            current, TicketEvent.CANCEL, actor_role=role, actor_id=subject, note=text[:255],
            now=now,
        )  # fmt: skip
    await ticket.refresh_from_db()
    return ticket


async def _work(
    ticket: Ticket,
    principal: Principal,
    work: DeviceWork,
    filters: Sequence[int],
    new_device: str | None,
    now: dt.datetime,
    conn: Any,
) -> str:
    """The ticket type's device work; what was done, for the move's note."""
    role, subject = actor_of(principal)
    actor = f"{role}:{subject}"
    if ticket.technician_id is not None:
        technician = await Technician.get_or_none(id=ticket.technician_id)
        if technician is not None:
            actor = f"technician:{technician.id}:{technician.name}"
    match TicketType(ticket.type):
        case TicketType.MAINTENANCE:
            return await _maintenance(ticket, work, filters)
        case TicketType.INSTALL:
            return await _install(ticket, actor, now)
        case TicketType.EXCHANGE:
            return await _exchange(ticket, work, new_device, now)
        case TicketType.DISMANTLE:
            return await _dismantle(ticket, work, actor, conn)
    return "done"


# ----------------------------------------------------------------------------- stuck exchanges


def stuck_exchanges(
    tickets: QuerySet[Ticket], older_than: dt.timedelta, now: dt.datetime | None = None
) -> QuerySet[Ticket]:
    """Of `tickets` (the caller's scope), the exchanges whose hand-over began more than
    `older_than` ago and that are neither done nor cancelled: the old device's service is
    off it and nobody finished or undid the exchange. Oldest first; past MARKER_TTL_S they
    can only be settled by hand (see the module's docstring)."""
    now = now or dt.datetime.now(dt.UTC)
    return tickets.filter(
        type=TicketType.EXCHANGE,
        state__in=sorted(OPEN_STATES),
        handed_over_at__lte=now - older_than,
    ).order_by("handed_over_at", "id")
