"""The ticket lifecycle (工单, AE-01..03): who sees which ticket, the moves of the seed's
workflow 创建 -> 审核 -> 派单 -> 正在处理 -> 等待回应 -> 完成 (and cancel), dispatch by hierarchy
or by distance, ratings and the summary.

Every move is one event of `EVENTS` (the state it leads to, and who may fire it) checked against
`models.tickets.TRANSITIONS` (where it may come from); anything else is a 409 naming the state.
Each move is recorded in `TicketMove` with who, when and a note, in the transaction that moves
the ticket, together with the notifications it causes (models/outbox.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.functions import Count
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device, find_visible
from aquafleet.models.errors import Conflict, Forbidden, InvalidInput, NotFound
from aquafleet.models.outbox import NotificationKind, Recipient, RecipientType, enqueue
from aquafleet.models.outbox import member_recipient as _member_recipient
from aquafleet.models.rental_end import check_exchangeable, check_held
from aquafleet.models.returns import order_of_goods
from aquafleet.models.technicians import (
    Technician,
    WorkState,
    hierarchy_levels,
    nearest_ids,
    open_ticket_counts,
    visible_technicians,
)
from aquafleet.models.tenancy import ADMIN_ROLES, Principal, Role
from aquafleet.models.tickets import (
    MAX_DETAIL,
    OPEN_STATES,
    Ticket,
    TicketState,
    TicketType,
    can_transition,
    closed_key,
    open_ticket,
    sold_by_node,
)

MAX_NOTE = 255
TID_LENGTH = 24
SYSTEM = "system"


class TicketEvent(StrEnum):
    APPROVE = "approve"  # 审核 passed (check_result true)
    REJECT = "reject"  # 审核 refused (check_result false): the ticket is cancelled
    DISPATCH = "dispatch"  # 派单 (again: re-dispatch)
    START = "start"  # 正在处理: the technician is on the way / at work
    WAIT = "wait"  # 等待回应: waiting for the member or for parts
    COMPLETE = "complete"  # 完成
    CANCEL = "cancel"


S, E = TicketState, TicketEvent
ADMINS = frozenset(r.value for r in ADMIN_ROLES)
TECH = Role.TECHNICIAN.value
MEMBER = Role.MEMBER.value
# event -> (the state it leads to, who may fire it); where it may come from: TRANSITIONS.
EVENTS: dict[TicketEvent, tuple[TicketState, frozenset[str]]] = {
    E.APPROVE: (S.APPROVED, ADMINS),
    E.REJECT: (S.CANCELLED, ADMINS),
    E.DISPATCH: (S.DISPATCHED, ADMINS | {SYSTEM}),
    E.START: (S.IN_PROGRESS, ADMINS | {TECH}),
    E.WAIT: (S.WAITING_REPLY, ADMINS | {TECH}),
    E.COMPLETE: (S.DONE, ADMINS | {TECH}),
    E.CANCEL: (S.CANCELLED, ADMINS | {MEMBER}),
}
# A member may cancel only what nobody has looked at yet.
MEMBER_CANCELS_FROM = frozenset({S.CREATED})
# Ticket types a member may open (AE-03): the ones the seed says the member asks for.
MEMBER_TYPES = frozenset({TicketType.EXCHANGE, TicketType.RETURN, TicketType.FAULT})


class TicketStateConflict(Conflict):
    code = "conflict"


class TicketMove(Model):
    """One move of a ticket: event, from, to, who (role and id), when, and a note."""

    id = fields.BigIntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="moves", on_delete=fields.RESTRICT
    )
    event = fields.CharField(max_length=16)
    from_state = fields.IntEnumField(TicketState)
    to_state = fields.IntEnumField(TicketState)
    actor_role = fields.CharField(max_length=16)
    actor_id = fields.CharField(max_length=64)
    note = fields.CharField(max_length=MAX_NOTE, default="")
    technician_id = fields.IntField(null=True)  # a dispatch: to whom
    created_at = fields.DatetimeField()

    ticket_id: int

    class Meta:
        table = "ticket_move"


# ----------------------------------------------------------------------------- pure rules


def next_state(current: TicketState, event: TicketEvent, actor: str) -> TicketState:
    """The state `event` leads to from `current` when `actor` fires it (409 / 403 otherwise)."""
    target, actors = EVENTS[event]
    if not can_transition(current, target) or (
        event is E.CANCEL and actor == MEMBER and current not in MEMBER_CANCELS_FROM
    ):
        raise TicketStateConflict(f"the ticket is {current.name.lower()}: it cannot {event}")
    if actor not in actors:
        raise Forbidden(f"a {actor} may not {event} a ticket")
    return target


def parse_sla(text: str) -> dict[TicketType, int]:
    """`install=72,fault=24,...` (hours per type) -> {type: hours}; types left out: 72."""
    sla = dict.fromkeys(TicketType, 72)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, hours = item.partition("=")
        try:
            sla[TicketType[name.strip().upper()]] = int(hours)
        except (KeyError, ValueError):
            raise InvalidInput(f"ticket SLA {item!r}: say type=hours, e.g. fault=24") from None
        if not 1 <= sla[TicketType[name.strip().upper()]] <= 8760:
            raise InvalidInput(f"ticket SLA {item!r}: 1..8760 hours")
    return sla


def is_overdue(ticket: Ticket, sla_h: Mapping[TicketType, int], now: dt.datetime) -> bool:
    """Open past its appointment, or past its type's SLA since it was opened."""
    if ticket.state not in OPEN_STATES:
        return False
    if ticket.appoint_at is not None and ticket.appoint_at < now:
        return True
    return ticket.created_at + dt.timedelta(hours=sla_h[TicketType(ticket.type)]) < now


def actor_of(principal: Principal) -> tuple[str, str]:
    return principal.role.value, principal.subject


# ----------------------------------------------------------------------------- scoping


def visible_tickets(principal: Principal) -> QuerySet[Ticket]:
    """The platform all; a vendor its own; an agent or dealer its subtree's (the ticket's node:
    models/tickets.py ticket_node); a member its own; a technician those dispatched to it."""
    role = principal.role
    if role is Role.PLATFORM:
        return Ticket.all()
    if role is Role.MEMBER:
        return Ticket.filter(member_uid=principal.subject)
    if principal.vendor_code is None:
        return Ticket.filter(id__in=[])
    qs = Ticket.filter(vendor_id=principal.vendor_code)
    if role is Role.VENDOR:
        return qs
    if role is Role.TECHNICIAN and principal.subject.isdigit():
        return qs.filter(technician__account_id=int(principal.subject))
    if role in (Role.AGENT, Role.DEALER) and principal.agent_path:
        return qs.filter(agent__path__startswith=principal.agent_path)
    return Ticket.filter(id__in=[])


async def find_ticket(principal: Principal, tid: str) -> Ticket:
    ticket = None
    if len(tid) == TID_LENGTH:
        ticket = await visible_tickets(principal).filter(ticket_id=tid).first()
    if ticket is None:
        raise NotFound(f"ticket {tid} not found")
    return ticket


# ----------------------------------------------------------------------------- create (AE-03)


@dataclass(frozen=True, slots=True)
class TicketRequest:
    type: TicketType
    did: str | None = None
    member_uid: str | None = None
    detail: str = ""
    priority: int = 2
    appoint_at: dt.datetime | None = None
    address: str = ""
    lat_e6: int | None = None
    lng_e6: int | None = None


async def create_ticket(principal: Principal, request: TicketRequest) -> Ticket:
    """AE-03: a member for a device it holds (exchange, return, fault); an admin any type for
    a device of its subtree (and its member)."""
    if not 1 <= request.priority <= 3:
        raise InvalidInput("priority must be 1 (urgent), 2 (normal) or 3 (low)")
    device: Device | None = None
    if request.did is not None:
        # In the caller's subtree, or sold by an order of it: the ticket is then that node's.
        device = await find_visible(principal, request.did) or await sold_by_node(
            principal, request.did
        )
        if device is None:
            raise NotFound(f"device {request.did} not found")
    member_uid = request.member_uid
    if principal.role is Role.MEMBER:
        if request.type not in MEMBER_TYPES:
            raise Forbidden("a member asks for exchange, return or fault tickets only")
        if device is None or device.owner_id != principal.subject:
            raise Conflict("a member opens tickets for a device it holds")
        member_uid = principal.subject
    vendor_code = device.vendor_id if device is not None else principal.vendor_code
    if vendor_code is None:
        raise InvalidInput("name the device (did) the ticket is for")
    extra: dict[str, Any] = {"priority": request.priority, "address": request.address}
    if member_uid is not None and principal.role is not Role.MEMBER:
        await _check_named_member(principal, member_uid, vendor_code, device)
    elif device is None and principal.role in (Role.AGENT, Role.DEALER) and principal.agent_path:
        from aquafleet.models.agents import path_ids

        # Neither a device nor a member to take a node from: the node that opens it, which
        # would not see its own ticket otherwise.
        extra["agent_id"] = path_ids(principal.agent_path)[-1]
    if request.appoint_at is not None:
        extra["appoint_at"] = request.appoint_at
    if request.lat_e6 is not None and request.lng_e6 is not None:
        extra["lat_e6"], extra["lng_e6"] = request.lat_e6, request.lng_e6
    if request.type is TicketType.EXCHANGE and device is not None:
        # The exchange belongs to the order whose goods the device is: its replacement stands
        # in that order, and only there (models/returns.py goods_shipped_as).
        order = await order_of_goods(vendor_code, device.did, member_uid or device.owner_id)
        extra["order_id"] = None if order is None else order.id
        asker = principal.subject if principal.role is Role.MEMBER else None
        await check_exchangeable(device.did, extra["order_id"], asker)
        check_held(device, member_uid)  # an admin's: the member it names holds the device
    return await open_ticket(
        vendor_code, request.type, did=request.did, member_uid=member_uid,
        detail=request.detail[:MAX_DETAIL], **extra,
    )  # fmt: skip


async def _check_named_member(
    principal: Principal, uid: str, vendor_code: str, device: Device | None
) -> None:
    """The member an admin names for a ticket is one of the ticket's vendor the caller sees
    (or the device's owner); NotFound otherwise, as an unknown uid. Another vendor's member
    would see the ticket, and an exchange would bind the device to it. (The ticket's node is
    models/tickets.py ticket_node: the device's, else its order's, else the member's.)"""
    from aquafleet.models.members import Member, agent_path_of

    member = await Member.get_or_none(uid=uid, vendor_id=vendor_code)
    if member is None:
        raise NotFound(f"member {uid} not found")
    is_owner = device is not None and device.owner_id == member.uid
    if not is_owner and not principal.may_see_node(vendor_code, await agent_path_of(member)):
        raise NotFound(f"member {uid} not found")


# ----------------------------------------------------------------------------- moves


async def _technician_recipient(
    conn: BaseDBAsyncClient, technician_id: int | None
) -> Recipient | None:
    if technician_id is None:
        return None
    technician = await Technician.filter(id=technician_id).using_db(conn).first()
    if technician is None:
        return None
    return Recipient(RecipientType.TECHNICIAN, str(technician.id), None, technician.mobile or None)


async def _notify(conn: BaseDBAsyncClient, ticket: Ticket, event: TicketEvent, seq: int) -> None:
    """The messages a move causes, in its transaction."""
    data = {
        "ticket_id": ticket.ticket_id, "type": int(ticket.type), "device_id": ticket.device_id,
        "detail": ticket.detail, "address": ticket.address,
    }  # fmt: skip
    key = f"ticket:{ticket.ticket_id}:{event.value}:{seq}"
    if event is E.DISPATCH:
        recipients = [await _technician_recipient(conn, ticket.technician_id)]
        kind = NotificationKind.TICKET_DISPATCHED
    elif event is E.START:
        recipients = [await _member_recipient(conn, ticket.member_uid)]
        kind = NotificationKind.TECHNICIAN_ON_WAY
        key = f"ticket:{ticket.ticket_id}:start"  # once, however often work resumes
    elif event is E.COMPLETE:
        recipients = [await _member_recipient(conn, ticket.member_uid)]
        kind = NotificationKind.TICKET_DONE
    else:
        return
    await enqueue(
        conn, event_key=key, kind=kind, vendor_code=ticket.vendor_id, recipients=recipients,
        data=data,
    )  # fmt: skip


async def fire(
    ticket: Ticket,
    event: TicketEvent,
    *,
    actor_role: str,
    actor_id: str,
    note: str = "",
    changes: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> Ticket:
    """Move the ticket by `event`, record the move and its notifications, in one transaction
    that re-reads the ticket under a lock: two racing moves apply once."""
    if len(note) > MAX_NOTE:
        raise InvalidInput(f"note must be at most {MAX_NOTE} characters")
    now = now or dt.datetime.now(dt.UTC)
    async with in_transaction("default") as conn:
        current = await Ticket.filter(id=ticket.id).select_for_update().using_db(conn).get()
        source = TicketState(current.state)
        target = next_state(source, event, actor_role)
        values: dict[str, Any] = {"state": target, "updated_at": now, **(changes or {})}
        if target is S.DONE:
            values["done_at"] = now
        if target in (S.DONE, S.CANCELLED) and (current.dedup_key or "").startswith("fault:"):
            # Free the device+fault key: the same fault later opens a new ticket.
            values["dedup_key"] = closed_key(current.dedup_key or "", current.ticket_id)
        updated = await Ticket.filter(id=current.id, state=source).using_db(conn).update(**values)
        if not updated:
            raise TicketStateConflict("the ticket changed meanwhile; reload and retry")
        seq = await TicketMove.filter(ticket_id=current.id).using_db(conn).count()
        await TicketMove.create(
            ticket_id=current.id, event=event.value, from_state=source, to_state=target,
            actor_role=actor_role, actor_id=actor_id[:64], note=note,
            technician_id=values.get("technician_id"), created_at=now, using_db=conn,
        )  # fmt: skip
        moved = await Ticket.filter(id=current.id).using_db(conn).get()
        await _notify(conn, moved, event, seq)
    await ticket.refresh_from_db()
    return ticket


async def approve(ticket: Ticket, principal: Principal, passed: bool, note: str = "") -> Ticket:
    """审核: check_result, check_tms and check_usr as in the seed; a refusal cancels."""
    now = dt.datetime.now(dt.UTC)
    role, subject = actor_of(principal)
    return await fire(
        ticket, E.APPROVE if passed else E.REJECT, actor_role=role, actor_id=subject, note=note,
        changes={"check_result": passed, "check_at": now, "check_usr": f"{role}:{subject}"},
        now=now,
    )  # fmt: skip


# ----------------------------------------------------------------------------- dispatch


class DispatchMode(StrEnum):
    HIERARCHY = "hierarchy"
    DISTANCE = "distance"


class NoTechnician(Conflict):
    code = "no_technician"


class TechnicianOfOtherNode(Conflict):
    """A technician of a node the ticket does not belong to: neither the ticket's node nor one
    above it (a sibling's, or one below it), nor the vendor's own."""

    code = "technician_other_node"

    def __init__(self, technician: Technician, ticket: Ticket) -> None:
        super().__init__(
            f"technician {technician.id} is of node {technician.agent_id}: ticket "
            f"{ticket.ticket_id} belongs to "
            + (f"node {ticket.agent_id}" if ticket.agent_id is not None else "the vendor")
            + "; dispatch it to the vendor's technicians or those of its node or above"
        )
        self.data = {
            "technician_id": technician.id,
            "technician_agent_id": technician.agent_id,
            "agent_id": ticket.agent_id,
        }


async def ticket_levels(ticket: Ticket) -> list[int | None]:
    """The nodes whose technicians may work the ticket: its node, those above it, and the
    vendor (None): the teams dispatch by hierarchy chooses from, whose admins see the ticket."""
    from aquafleet.models.agents import Agent

    path = None
    if ticket.agent_id is not None:
        node = await Agent.get_or_none(id=ticket.agent_id)
        path = node.path if node is not None else None
    return hierarchy_levels(path)


def _can_take(technician: Technician, ticket: Ticket) -> bool:
    return (
        technician.vendor_id == ticket.vendor_id
        and technician.work_state is WorkState.AVAILABLE
        and int(ticket.type) in technician.skills
    )


async def by_hierarchy(ticket: Ticket) -> Technician:
    """The team of the ticket's dealer, else its agent, else the vendor: the available
    member with the skill holding the fewest open tickets (then the lowest id)."""
    for level in await ticket_levels(ticket):
        team = [
            t
            for t in await Technician.filter(
                vendor_id=ticket.vendor_id, agent_id=level, is_default=True
            )
            if _can_take(t, ticket)
        ]
        if team:
            load = await open_ticket_counts([t.id for t in team])
            return min(team, key=lambda t: (load.get(t.id, 0), t.id))
    raise NoTechnician("no available default technician with the skill on the ticket's nodes")


async def by_distance(
    ticket: Ticket,
    principal: Principal,
    redis: aioredis.Redis,
    prefix: str,
    radius_km: int,
) -> tuple[Technician, int]:
    """The nearest available technician with the skill (Redis GEOSEARCH around the ticket's
    place), among those the dispatcher sees; (technician, metres away)."""
    if ticket.lat_e6 is None or ticket.lng_e6 is None:
        raise InvalidInput("the ticket has no position (the device's or one given): use hierarchy")
    near = await nearest_ids(
        redis, prefix, ticket.vendor_id, ticket.lat_e6, ticket.lng_e6, radius_km
    )
    levels = await ticket_levels(ticket)
    found = {
        t.id: t
        for t in await visible_technicians(principal).filter(id__in=[tid for tid, _ in near])
        if t.agent_id in levels
    }
    for technician_id, metres in near:
        technician = found.get(technician_id)
        if technician is not None and _can_take(technician, ticket):
            return technician, metres
    raise NoTechnician(f"no available technician with the skill within {radius_km} km")


async def dispatch(
    ticket: Ticket,
    principal: Principal,
    technician: Technician,
    note: str = "",
) -> Ticket:
    """派单 to `technician` (one the caller sees, of the ticket's vendor, with the skill, of
    the vendor or of the ticket's node or one above it: ticket_levels)."""
    if technician.vendor_id != ticket.vendor_id:
        raise NotFound(f"technician {technician.id} not found")
    if technician.agent_id not in await ticket_levels(ticket):
        raise TechnicianOfOtherNode(technician, ticket)
    if int(ticket.type) not in technician.skills:
        raise InvalidInput(f"technician {technician.id} lacks the skill for type {ticket.type}")
    role, subject = actor_of(principal)
    return await fire(
        ticket, E.DISPATCH, actor_role=role, actor_id=subject, note=note,
        changes={"technician_id": technician.id, "dispatched_at": dt.datetime.now(dt.UTC)},
    )  # fmt: skip


# ----------------------------------------------------------------------------- ratings


async def rate(ticket: Ticket, member_uid: str, value: int, detail: str = "") -> Ticket:
    """工单评价: the ticket's member, once, after completion, 1..5."""
    if isinstance(value, bool) or not 1 <= value <= 5:
        raise InvalidInput("rate_value must be 1..5")
    if len(detail) > MAX_DETAIL:
        raise InvalidInput(f"rate_detail must be at most {MAX_DETAIL} characters")
    if ticket.member_uid != member_uid:
        raise NotFound(f"ticket {ticket.ticket_id} not found")
    if ticket.state is not S.DONE:
        raise TicketStateConflict(f"the ticket is {ticket.state.name.lower()}: rate it when done")
    now = dt.datetime.now(dt.UTC)
    rated = await Ticket.filter(id=ticket.id, rate_value__isnull=True).update(
        rate_value=value, rate_detail=detail, rate_at=now, updated_at=now
    )
    if not rated:
        raise Conflict("the ticket is already rated")
    await ticket.refresh_from_db()
    return ticket


# ----------------------------------------------------------------------------- summary


@dataclass(frozen=True, slots=True)
class Summary:
    by_state: dict[int, int]
    by_type: dict[int, int]
    open: int
    overdue: int
    overdue_by_type: dict[int, int]


async def summary(
    principal: Principal, sla_h: Mapping[TicketType, int], now: dt.datetime | None = None
) -> Summary:
    """AE-02: counts per state and type in the caller's scope, and the overdue open ones."""
    now = now or dt.datetime.now(dt.UTC)
    qs = visible_tickets(principal)
    rows = (
        await qs.annotate(n=Count("id")).group_by("state", "type").values_list("state", "type", "n")
    )
    by_state: dict[int, int] = {}
    by_type: dict[int, int] = {}
    for state, type_, n in rows:
        by_state[int(state)] = by_state.get(int(state), 0) + int(n)
        by_type[int(type_)] = by_type.get(int(type_), 0) + int(n)
    overdue_by_type: dict[int, int] = {}
    open_qs = qs.filter(state__in=list(OPEN_STATES))
    for type_, hours in sla_h.items():
        late = open_qs.filter(type=type_)
        past_sla = await late.filter(created_at__lt=now - dt.timedelta(hours=hours)).count()
        past_appointment = await late.filter(
            created_at__gte=now - dt.timedelta(hours=hours), appoint_at__lt=now
        ).count()
        if past_sla + past_appointment:
            overdue_by_type[int(type_)] = past_sla + past_appointment
    return Summary(
        by_state=by_state,
        by_type=by_type,
        open=sum(n for s, n in by_state.items() if TicketState(s) in OPEN_STATES),
        overdue=sum(overdue_by_type.values()),
        overdue_by_type=overdue_by_type,
    )


async def moves_of(ticket: Ticket) -> list[TicketMove]:
    return list(await TicketMove.filter(ticket_id=ticket.id).order_by("id"))


def ensure_admin_or(principal: Principal, roles: Sequence[Role]) -> None:
    if principal.role not in (*ADMIN_ROLES, *roles):
        raise Forbidden(f"a {principal.role} account may not do this")
