"""A ticket's moves: approve (审核), dispatch (派单), start, wait, complete with its work on
the devices (through the gateway's facade), cancel, rate (工单评价)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from typing_extensions import TypeAliasType

from aquafleet.api.routing import Call, RouteTable
from aquafleet.api.schemas import UNSET, RequestModel, ResponseModel, text
from aquafleet.api.tickets.shaping import DID_PATTERN, STAFF, TicketOut, TicketPath, one
from aquafleet.gateway.appkeys import DEVICE_GATEWAY, REDIS, SETTINGS
from aquafleet.models.errors import InvalidInput
from aquafleet.models.handover import HandBack, Handover
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.technicians import Technician, find_technician
from aquafleet.models.tenancy import ADMIN_ROLES, ANY_ROLE, MEMBER_ONLY, Principal
from aquafleet.models.ticket_flow import (
    DispatchMode,
    TicketEvent,
    actor_of,
    approve,
    by_distance,
    by_hierarchy,
    dispatch,
    find_ticket,
    fire,
    rate,
)
from aquafleet.models.ticket_work import cancel, complete
from aquafleet.models.tickets import MAX_DETAIL

routes = RouteTable("tickets")


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
