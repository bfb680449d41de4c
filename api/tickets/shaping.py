"""What the tickets' routes share: who may call them, the ids' patterns, a ticket's path
parameter and its answer (`TicketOut`, the seed's AE example's fields)."""

from __future__ import annotations

from pydantic import Field

from aquafleet.api.schemas import PathParams, ResponseModel, UtcDateTime
from aquafleet.models.tenancy import ADMIN_ROLES, ANY_ROLE, TECHNICIAN_ONLY
from aquafleet.models.tickets import Ticket

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
