"""The tickets themselves (AE-01..03): list, counts, open, read, a ticket's moves, and the
exchanges stuck after their hand-over."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

from pydantic import Field

from aquafleet.api.errors import ValidationFailed
from aquafleet.api.list_filters import named_member, named_technician
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import UNSET, ListQuery, RequestModel, ResponseModel, UtcDateTime, text
from aquafleet.api.tickets.shaping import (
    DID_PATTERN,
    EVERYONE,
    UID_PATTERN,
    TicketOut,
    TicketPath,
    one,
    ticket_outs,
)
from aquafleet.gateway.appkeys import SETTINGS
from aquafleet.models.errors import InvalidInput
from aquafleet.models.tenancy import ADMIN_ROLES, ANY_ROLE, Role
from aquafleet.models.ticket_flow import (
    TicketMove,
    TicketRequest,
    create_ticket,
    find_ticket,
    moves_of,
    parse_sla,
    summary,
    visible_tickets,
)
from aquafleet.models.ticket_work import markers_expired, stuck_exchanges
from aquafleet.models.tickets import MAX_DETAIL, Ticket, TicketState, TicketType

routes = RouteTable("tickets")


class MoveOut(ResponseModel):
    event: str
    from_status: int
    to_status: int
    actor_role: str
    actor_id: str
    note: str
    technician_id: int | None
    tms: UtcDateTime


def _aware(value: dt.datetime | None, field: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValidationFailed(
            f"{field}: give a time zone (Z)", data=[{"field": field, "message": "give a time zone"}]
        )
    return value


class TicketListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "create_tms": "created_at",
        "appoint_tms": "appoint_at",
        "priority": "priority",
        "status": "state",
    }
    sort: Literal["create_tms", "appoint_tms", "priority", "status"] = "create_tms"
    order: Literal["asc", "desc"] = Field("desc", description="sort direction (newest first)")
    status: TicketState = Field(UNSET)
    type: TicketType = Field(UNSET)
    device_id: str = Field(UNSET, pattern=DID_PATTERN)
    user_id: str = Field(UNSET, pattern=UID_PATTERN)
    technician_id: int = Field(UNSET, ge=1)


@routes.get(
    "/tickets",
    seed="AE-01",
    summary="List tickets",
    roles=EVERYONE,
    query=TicketListQuery,
    response=TicketOut,
    many=True,
    description="The seed says A#; every caller gets its scope: the platform all, a vendor its "
    "own, an agent or dealer its subtree's (the ticket's node: the device's, else that of the "
    "order that sold it, else the member's), a technician those dispatched "
    "to it, a member its own. Filters status, type, device_id, user_id, technician_id.",
)
async def list_tickets(call: Call) -> Page:
    query: TicketListQuery = call.query
    principal = call.principal
    if principal.role is not Role.TECHNICIAN:  # a technician's filters narrow its own tickets
        await named_member(principal, query.user_id)
        await named_technician(principal, query.technician_id)
    filters: dict[str, Any] = {}
    for name, column in (
        ("status", "state"), ("type", "type"), ("device_id", "device_id"),
        ("user_id", "member_uid"), ("technician_id", "technician_id"),
    ):  # fmt: skip
        value = getattr(query, name)
        if value is not None:
            filters[column] = value
    rows, total = await query.page(visible_tickets(call.principal).filter(**filters), pk="id")
    return Page(await ticket_outs(rows), total)


class SummaryOut(ResponseModel):
    by_status: dict[str, int] = Field(description="tickets per status (keys: status numbers)")
    by_type: dict[str, int] = Field(description="tickets per type (keys: type numbers)")
    open: int = Field(description="tickets not done nor cancelled")
    overdue: int = Field(description="open tickets past their appointment or their type's SLA")
    overdue_by_type: dict[str, int]
    sla_hours: dict[str, int] = Field(description="the SLA per type in force (ticket_sla)")


@routes.get(
    "/tickets/summary",
    seed="AE-02",
    summary="Ticket counts and overdue tickets",
    roles=EVERYONE,
    response=SummaryOut,
    description="A+C: counts per status and type in the caller's scope (as AE-01), and the "
    "open tickets overdue: past their appointment (预约时间), or open longer than their "
    "type's SLA (setting `ticket_sla`).",
)
async def ticket_summary(call: Call) -> SummaryOut:
    sla = parse_sla(call.app[SETTINGS].ticket_sla)
    found = await summary(call.principal, sla)
    return SummaryOut(
        by_status={str(k): v for k, v in sorted(found.by_state.items())},
        by_type={str(k): v for k, v in sorted(found.by_type.items())},
        open=found.open,
        overdue=found.overdue,
        overdue_by_type={str(k): v for k, v in sorted(found.overdue_by_type.items())},
        sla_hours={str(int(k)): v for k, v in sla.items()},
    )


class StuckQuery(ListQuery):
    hours: int = Field(
        24, ge=0, le=24 * 366, description="handed over at least this many hours ago"
    )


class StuckExchangeOut(ResponseModel):
    ticket_id: str
    vid: str
    status: int = Field(description="the ticket's status: open (1..5)")
    device_id: str | None = Field(description="the old device: its service was handed over")
    handed_over_to: str | None = Field(description="the replacement it was handed over to")
    handed_over_tms: UtcDateTime
    user_id: str | None
    technician_id: int | None
    markers_expired: bool = Field(
        description="older than the live store's markers (a week): a retry or cancel answers "
        "409 handover_expired, settle by hand"
    )


@routes.get(
    "/tickets/exchanges/stuck",
    summary="Exchanges stuck after their hand-over",
    roles=ADMIN_ROLES,
    query=StuckQuery,
    response=StuckExchangeOut,
    many=True,
    description="A: exchange tickets in the caller's scope (a vendor its own) whose completion "
    "handed the old device's service over at least `hours` ago and that are neither done nor "
    "cancelled, oldest first (`order=desc`: newest first): complete them (same new device) "
    "or cancel them (gives the quota back) before the live store's markers expire "
    "(docs/api-tickets.md).",
)
async def list_stuck_exchanges(call: Call) -> Page:
    query: StuckQuery = call.query
    now = dt.datetime.now(dt.UTC)
    found = stuck_exchanges(visible_tickets(call.principal), dt.timedelta(hours=query.hours), now)
    if query.order == "desc":  # newest hand-over first
        found = found.order_by("-handed_over_at", "-id")
    total = await found.count()
    rows = await found.offset(query.offset).limit(query.limit)
    return Page([stuck_out(t, now) for t in rows], total)


def stuck_out(ticket: Ticket, now: dt.datetime) -> StuckExchangeOut:
    assert ticket.handed_over_at is not None  # stuck_exchanges filters on it
    return StuckExchangeOut(
        ticket_id=ticket.ticket_id, vid=ticket.vendor_id, status=int(ticket.state),
        device_id=ticket.device_id, handed_over_to=ticket.handed_over_to,
        handed_over_tms=ticket.handed_over_at, user_id=ticket.member_uid,
        technician_id=ticket.technician_id, markers_expired=markers_expired(ticket, now),
    )  # fmt: skip


class TicketIn(RequestModel):
    """AE-03 with the seed's example's names."""

    type: TicketType
    device_id: str = Field(UNSET, pattern=DID_PATTERN)
    user_id: str = Field(UNSET, pattern=UID_PATTERN, description="admins: the member served")
    detail: str = text(MAX_DETAIL, default="", description="工单详情")
    priority: int = Field(2, ge=1, le=3, description="1 urgent, 2 normal, 3 low")
    appoint_tms: dt.datetime = Field(UNSET, description="预约时间 (ISO 8601 with Z)")
    address: str = text(255, default="")
    lat_e6: int = Field(UNSET, ge=-85_051_128, le=85_051_128, description="where the work is")
    lng_e6: int = Field(UNSET, ge=-180_000_000, le=180_000_000)


@routes.post(
    "/tickets",
    seed="AE-03",
    summary="Open a ticket",
    roles=ANY_ROLE,
    body=TicketIn,
    response=TicketOut,
    status=201,
    errors=(403, 404, 409),
    description="A+C. A member asks for an exchange, return or fault ticket for a device it "
    "holds; an admin opens any type for a device of its scope, naming (user_id) a member of "
    "the vendor it sees or the device's owner. The ticket takes its node (agents' scope: the "
    "device's, else that of the order that sold the device, never the node its member moved to "
    "since, else the member's), the device's place (for dispatch by distance) and owner "
    "unless given; an exchange, the order whose goods the device is (409 rental_ending for a "
    "device whose 退租 is open, 409 rental_ended for one whose 退租 is done, 409 "
    "device_not_held for a member named who does not hold the device).",
)
async def add_ticket(call: Call) -> TicketOut:
    body: TicketIn = call.body
    if (body.lat_e6 is None) != (body.lng_e6 is None):
        raise InvalidInput("give both lat_e6 and lng_e6, or neither")
    ticket = await create_ticket(
        call.principal,
        TicketRequest(
            type=body.type, did=body.device_id, member_uid=body.user_id, detail=body.detail,
            priority=body.priority, appoint_at=_aware(body.appoint_tms, "appoint_tms"),
            address=body.address, lat_e6=body.lat_e6, lng_e6=body.lng_e6,
        ),
    )  # fmt: skip
    return await one(ticket)


@routes.get(
    "/tickets/{tid}",
    summary="Read a ticket",
    roles=EVERYONE,
    params=TicketPath,
    response=TicketOut,
    description="Scoped as AE-01.",
)
async def read_ticket(call: Call) -> TicketOut:
    return await one(await find_ticket(call.principal, call.params.tid))


def move_out(move: TicketMove) -> MoveOut:
    return MoveOut(
        event=move.event, from_status=int(move.from_state), to_status=int(move.to_state),
        actor_role=move.actor_role, actor_id=move.actor_id, note=move.note,
        technician_id=move.technician_id, tms=move.created_at,
    )  # fmt: skip


@routes.get(
    "/tickets/{tid}/moves",
    summary="A ticket's moves: who, when, what, with notes",
    roles=EVERYONE,
    params=TicketPath,
    response=MoveOut,
    many=True,
    description="Scoped as AE-01; oldest first.",
)
async def ticket_moves(call: Call) -> list[MoveOut]:
    ticket = await find_ticket(call.principal, call.params.tid)
    return [move_out(m) for m in await moves_of(ticket)]
