"""Tickets (工单, AE-01..03) and their lifecycle, ending a rental, notification preferences
(docs/api-tickets.md).

Thin: scoping, the state table, dispatch and completion live in models/ticket_flow.py and
models/ticket_work.py, ending a rental in models/rental_end.py. A ticket outside the caller's
scope answers 404 as an unknown id does; a technician sees only the tickets dispatched to it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from typing_extensions import TypeAliasType

from aquafleet.api.errors import ValidationFailed
from aquafleet.api.list_filters import named_member, named_technician
from aquafleet.api.orders import IDEMPOTENCY_HEADER, OrderPath, idempotency_header
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import (
    UNSET,
    ListQuery,
    PathParams,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    text,
)
from aquafleet.gateway.appkeys import DEVICE_GATEWAY, REDIS, SETTINGS
from aquafleet.models.errors import InvalidInput
from aquafleet.models.handover import HandBack, Handover
from aquafleet.models.order_queries import find_order
from aquafleet.models.orders import MAX_IDEMPOTENCY_KEY
from aquafleet.models.rental_end import end_rental
from aquafleet.models.service import ServiceChangeRequest
from aquafleet.models.technicians import Technician, find_technician
from aquafleet.models.tenancy import (
    ADMIN_ROLES,
    ANY_ROLE,
    MEMBER_ONLY,
    TECHNICIAN_ONLY,
    Principal,
    Role,
)
from aquafleet.models.ticket_flow import (
    DispatchMode,
    TicketEvent,
    TicketMove,
    TicketRequest,
    actor_of,
    approve,
    by_distance,
    by_hierarchy,
    create_ticket,
    dispatch,
    find_ticket,
    fire,
    moves_of,
    parse_sla,
    rate,
    summary,
    visible_tickets,
)
from aquafleet.models.ticket_work import cancel, complete, markers_expired, stuck_exchanges
from aquafleet.models.tickets import MAX_DETAIL, Ticket, TicketState, TicketType

routes = RouteTable(
    "tickets",
    "Tickets (工单, AE-01..03): the seed's workflow 创建 审核 派单 正在处理 等待回应 完成, "
    "dispatch by hierarchy or distance, completion's domain work, ratings "
    "(docs/api-tickets.md).",
)

EVERYONE = ANY_ROLE | TECHNICIAN_ONLY
STAFF = ADMIN_ROLES | TECHNICIAN_ONLY
TID_PATTERN = r"^[0-9]{8}[A-Z0-9]{4}[0-9]{12}$"
DID_PATTERN = r"^[A-Z0-9]{4}[0-9]{8}[0-9A-F]{4}$"
UID_PATTERN = r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$"


class TicketPath(PathParams):
    tid: str = Field(pattern=TID_PATTERN)


class ApprovalOut(ResponseModel):
    """The seed's 工单审核 block."""

    check_result: bool | None
    check_tms: UtcDateTime | None
    check_usr: str | None


class RatingsOut(ResponseModel):
    """The seed's 工单评价 block."""

    rate_value: int | None
    rate_tms: UtcDateTime | None
    rate_detail: str


class TicketOut(ResponseModel):
    """The seed's AE example's fields, and what field service adds."""

    ticket_id: str
    status: int = Field(description="1 created .. 6 done, 7 cancelled (docs/api-tickets.md)")
    status_name: str
    type: int = Field(description="1 install, 2 exchange, 3 return, 4 fault, 5 maintenance, "
                      "6 dismantle")  # fmt: skip
    vid: str
    priority: int = Field(description="1 urgent, 2 normal, 3 low")
    detail: str
    create_tms: UtcDateTime
    appoint_tms: UtcDateTime | None = Field(description="预约时间")
    user_id: str | None
    device_id: str | None
    address: str
    lat_e6: int | None
    lng_e6: int | None
    order_id: str | None = Field(
        description="the order the ticket came from, if any; an exchange's: the order whose "
        "goods its device is"
    )
    technician_id: int | None
    dispatch_tms: UtcDateTime | None
    complete_tms: UtcDateTime | None
    new_device_id: str | None = Field(description="exchange: the replacement device")
    handed_over_to: str | None = Field(
        description="exchange: the device the old one's service was handed over to, recorded "
        "before the hand-over ran (set while the completion is under way, or stuck; a retry "
        "naming another device re-points it while the hand-over had not run)"
    )
    handed_over_tms: UtcDateTime | None = Field(description="exchange: when it was handed over")
    approval: ApprovalOut
    ratings: RatingsOut


class MoveOut(ResponseModel):
    event: str
    from_status: int
    to_status: int
    actor_role: str
    actor_id: str
    note: str
    technician_id: int | None
    tms: UtcDateTime


async def ticket_outs(tickets: list[Ticket]) -> list[TicketOut]:
    from aquafleet.models.orders import Order

    order_ids = {t.order_id for t in tickets if t.order_id is not None}
    oids = dict(await Order.filter(id__in=list(order_ids)).values_list("id", "oid"))
    return [
        TicketOut(
            ticket_id=t.ticket_id,
            status=int(t.state),
            status_name=t.state.name.lower(),
            type=int(t.type),
            vid=t.vendor_id,
            priority=t.priority,
            detail=t.detail,
            create_tms=t.created_at,
            appoint_tms=t.appoint_at,
            user_id=t.member_uid,
            device_id=t.device_id,
            address=t.address,
            lat_e6=t.lat_e6,
            lng_e6=t.lng_e6,
            order_id=oids.get(t.order_id) if t.order_id is not None else None,
            technician_id=t.technician_id,
            dispatch_tms=t.dispatched_at,
            complete_tms=t.done_at,
            new_device_id=t.new_device_id,
            handed_over_to=t.handed_over_to,
            handed_over_tms=t.handed_over_at,
            approval=ApprovalOut(
                check_result=t.check_result, check_tms=t.check_at, check_usr=t.check_usr
            ),
            ratings=RatingsOut(
                rate_value=t.rate_value, rate_tms=t.rate_at, rate_detail=t.rate_detail
            ),
        )
        for t in tickets
    ]


async def one(ticket: Ticket) -> TicketOut:
    return (await ticket_outs([ticket]))[0]


def _aware(value: dt.datetime | None, field: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValidationFailed(
            f"{field}: give a time zone (Z)", data=[{"field": field, "message": "give a time zone"}]
        )
    return value


# ----------------------------------------------------------------------------- AE-01..03


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


# ----------------------------------------------------------------------------- moves


class NoteIn(RequestModel):
    note: str = text(255, default="", description="recorded with the move")


class ApprovalIn(RequestModel):
    check_result: bool = Field(description="审核结果: true approves, false refuses (cancels)")
    note: str = text(255, default="")


@routes.post(
    "/tickets/{tid}/approve",
    summary="审核: approve or refuse a ticket",
    roles=ADMIN_ROLES,
    params=TicketPath,
    body=ApprovalIn,
    response=TicketOut,
    errors=(404, 409),
    description="A, in scope: created -> approved (check_result true) or cancelled (false); "
    "check_tms and check_usr record when and who.",
)
async def approve_ticket(call: Call) -> TicketOut:
    ticket = await find_ticket(call.principal, call.params.tid)
    body: ApprovalIn = call.body
    return await one(await approve(ticket, call.principal, body.check_result, body.note))


class DispatchIn(RequestModel):
    technician_id: int = Field(UNSET, ge=1, description="this technician (one the caller sees)")
    mode: DispatchMode = Field(
        UNSET, description="or choose: hierarchy (the node's default team) or distance (nearest)"
    )
    note: str = text(255, default="")


class DispatchOut(ResponseModel):
    ticket: TicketOut
    technician_id: int
    mode: str = Field(description="explicit, hierarchy or distance")
    distance_m: int | None = Field(description="distance: metres from the ticket's place")


@routes.post(
    "/tickets/{tid}/dispatch",
    summary="派单: dispatch a ticket to a technician",
    roles=ADMIN_ROLES,
    params=TicketPath,
    body=DispatchIn,
    response=DispatchOut,
    errors=(404, 409, 422),
    description="A, in scope: approved (or dispatched: re-dispatch) -> dispatched. Name a "
    "technician, or let the server choose: `hierarchy` takes the default team of the device's "
    "dealer, else agent, else vendor (the available member with the skill and the fewest open "
    "tickets); `distance` the nearest available technician with the skill within "
    "`dispatch_radius_km` (Redis GEOSEARCH). 409 no_technician when none fits.",
)
async def dispatch_ticket(call: Call) -> DispatchOut:
    body: DispatchIn = call.body
    principal = call.principal
    ticket = await find_ticket(principal, call.params.tid)
    if (body.technician_id is None) == (body.mode is None):
        raise InvalidInput("give technician_id or mode (hierarchy, distance), one of them")
    distance = None
    technician: Technician
    if body.technician_id is not None:
        technician, mode = await find_technician(principal, body.technician_id), "explicit"
    elif body.mode is DispatchMode.HIERARCHY:
        technician, mode = await by_hierarchy(ticket), "hierarchy"
    else:
        settings = call.app[SETTINGS]
        technician, distance = await by_distance(
            ticket, principal, call.app[REDIS], settings.redis_prefix, settings.dispatch_radius_km
        )
        mode = "distance"
    moved = await dispatch(ticket, principal, technician, body.note)
    return DispatchOut(
        ticket=await one(moved), technician_id=technician.id, mode=mode, distance_m=distance
    )


async def _move(call: Call, event: TicketEvent) -> TicketOut:
    ticket = await find_ticket(call.principal, call.params.tid)
    role, subject = actor_of(call.principal)
    note = call.body.note if call.body is not None else ""
    return await one(await fire(ticket, event, actor_role=role, actor_id=subject, note=note))


@routes.post(
    "/tickets/{tid}/start",
    summary="正在处理: the technician is on the way / at work",
    roles=STAFF,
    params=TicketPath,
    body=NoteIn,
    response=TicketOut,
    errors=(404, 409),
    description="The ticket's technician (or an admin in scope): dispatched or waiting -> in "
    "progress. The member hears the technician is on the way (once).",
)
async def start_ticket(call: Call) -> TicketOut:
    return await _move(call, TicketEvent.START)


@routes.post(
    "/tickets/{tid}/wait",
    summary="等待回应: waiting for the member or for parts",
    roles=STAFF,
    params=TicketPath,
    body=NoteIn,
    response=TicketOut,
    errors=(404, 409),
    description="The ticket's technician (or an admin in scope): in progress -> waiting.",
)
async def wait_ticket(call: Call) -> TicketOut:
    return await _move(call, TicketEvent.WAIT)


# A list item cannot carry a field's bounds: the alias bounds the item (as api/products.py).
FilterStage = TypeAliasType("FilterStage", Annotated[int, Field(ge=0, le=255)])


class CompleteIn(RequestModel):
    note: str = text(255, default="")
    filters: list[FilterStage] = Field(
        default_factory=list,
        max_length=16,
        description="maintenance: the filter stages replaced (default: the ticket's stage)",
    )
    new_device: str = Field(UNSET, pattern=DID_PATTERN, description="exchange: the replacement")


@routes.post(
    "/tickets/{tid}/complete",
    summary="完成: complete a ticket (and do its work)",
    roles=STAFF,
    params=TicketPath,
    body=CompleteIn,
    response=TicketOut,
    errors=(404, 409, 422),
    description="The ticket's technician (or an admin in scope): in progress or waiting -> "
    "done. Maintenance resets the filters replaced on the device (it must be online: 409 "
    "device_offline otherwise); install records the installation; exchange binds `new_device` "
    "(of the vendor; completed under an agent or dealer node, of that node's subtree) "
    "to the member with the old device's service (the quota it has left at that moment moves "
    "over) and locks and unbinds the old one (a retry after a failure half way naming another "
    "`new_device` than the one the quota went to: 409 handed_over_elsewhere; one naming "
    "another device while the hand-over recorded had not run completes onto it, the "
    "ticket's `handed_over_to` re-pointed; a retry later than the live store's markers live, "
    "a week: 409 handover_expired); dismantle "
    "locks and unbinds the device and, for a rental the member ended, requests the deposit "
    "back. The member is told.",
)
async def complete_ticket(call: Call) -> TicketOut:
    body: CompleteIn = call.body
    principal = call.principal
    ticket = await find_ticket(principal, call.params.tid)
    work = GatewayWork(call, principal)
    done = await complete(
        ticket, principal, work, note=body.note, filters=body.filters, new_device=body.new_device
    )
    return await one(done)


class GatewayWork:
    """The device side of completion, through the gateway facade."""

    def __init__(self, call: Call, principal: Principal) -> None:
        self.gateway = call.app[DEVICE_GATEWAY]
        self.actor = f"{principal.role.value}:{principal.subject}"

    async def change_service(self, did: str, change: ServiceChangeRequest) -> object:
        return await self.gateway.change_service(did, change, actor=self.actor)

    async def hand_over(
        self, did: str, recipient: str, request_id: str, reason: str, *, recorded: bool = False
    ) -> Handover:
        return await self.gateway.hand_over(
            did, recipient=recipient, request_id=request_id, actor=self.actor, reason=reason,
            recorded=recorded,
        )  # fmt: skip

    async def hand_back(
        self, did: str, request_id: str, lock_request_id: str | None, reason: str, *,
        recorded: bool = False,
    ) -> HandBack:  # fmt: skip
        return await self.gateway.hand_back(
            did, request_id=request_id, lock_request_id=lock_request_id, actor=self.actor,
            reason=reason, recorded=recorded,
        )  # fmt: skip

    async def reset_filter(self, did: str, stage: int, reason: str) -> int:
        return await self.gateway.reset_filter(did, stage, actor=self.actor, reason=reason)


class CancelIn(NoteIn):
    settled: bool = Field(
        False,
        description="exchange: the operator settled both devices' service by hand after a "
        "409 handover_expired; the ticket closes without touching the devices (ignored "
        "while the hand-over can still be given back)",
    )


@routes.post(
    "/tickets/{tid}/cancel",
    summary="Cancel a ticket",
    roles=ANY_ROLE,
    params=TicketPath,
    body=CancelIn,
    response=TicketOut,
    errors=(404, 409),
    description="An admin in scope, from any open status; the member its own ticket while "
    "nobody approved it yet. An exchange whose completion failed after the old device's "
    "quota was handed over gives it back first: the old device gets what the new one has "
    "left of it (once, however often the cancel is retried), the new one keeps none. A "
    "hand-over older than the live store's markers (a week) is not given back: 409 "
    "handover_expired; settle the devices by hand, then cancel with `settled: true`.",
)
async def cancel_ticket(call: Call) -> TicketOut:
    principal = call.principal
    ticket = await find_ticket(principal, call.params.tid)
    body: CancelIn | None = call.body
    note = body.note if body is not None else ""
    settled = body.settled if body is not None else False
    work = GatewayWork(call, principal)
    return await one(await cancel(ticket, principal, work, note=note, settled=settled))


class RatingIn(RequestModel):
    rate_value: int = Field(ge=1, le=5, description="工单评分 1..5")
    rate_detail: str = text(MAX_DETAIL, default="", description="评价详情")


@routes.post(
    "/tickets/{tid}/rating",
    summary="工单评价: rate a completed ticket",
    roles=MEMBER_ONLY,
    params=TicketPath,
    body=RatingIn,
    response=TicketOut,
    errors=(404, 409),
    description="C: the ticket's member, once it is done, once (409 when rated already).",
)
async def rate_ticket(call: Call) -> TicketOut:
    ticket = await find_ticket(call.principal, call.params.tid)
    body: RatingIn = call.body
    return await one(await rate(ticket, call.principal.subject, body.rate_value, body.rate_detail))


# ----------------------------------------------------------------------------- ending a rental


class RentalEndIn(RequestModel):
    device_id: str = Field(pattern=DID_PATTERN, description="the rented device to give back")
    reason: str = text(200, default="")


@routes.post(
    "/orders/{oid}/rental/end",
    summary="退租: end the rental of a device",
    roles=MEMBER_ONLY,
    params=OrderPath,
    body=RentalEndIn,
    response=TicketOut,
    status=201,
    errors=(404, 409),
    description="C, not in the seed (its FAQ 1): the member ends the rental of a device it "
    "holds for its delivered rental order (shipped, or an exchange's replacement); a dismantle "
    "ticket opens, whose completion asks the device's deposit back, once per device shipped "
    f"(docs/api-tickets.md). `{IDEMPOTENCY_HEADER}` (1..{MAX_IDEMPOTENCY_KEY} characters): a "
    "retried ask answers the first one's ticket as it is now, even cancelled (nothing opens "
    "twice); the key with another order, device or reason, 409 idempotency_key_reused.",
)
async def end_rental_route(call: Call) -> TicketOut:
    body: RentalEndIn = call.body
    order = await find_order(call.principal, call.params.oid)
    ticket, _created = await end_rental(
        order, call.principal.subject, body.device_id, body.reason,
        idempotency_key=idempotency_header(call),
    )  # fmt: skip
    return await one(ticket)
