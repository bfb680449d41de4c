"""Ending a rental (退租, seed FAQ 1): the member asks, a dismantle ticket opens
(models/rental_end.py)."""

from __future__ import annotations

from pydantic import Field

from aquafleet.api.orders import IDEMPOTENCY_HEADER, OrderPath, idempotency_header
from aquafleet.api.routing import Call, RouteTable
from aquafleet.api.schemas import RequestModel, text
from aquafleet.api.tickets.shaping import DID_PATTERN, TicketOut, one
from aquafleet.models.order_queries import find_order
from aquafleet.models.orders import MAX_IDEMPOTENCY_KEY
from aquafleet.models.rental_end import end_rental
from aquafleet.models.tenancy import MEMBER_ONLY

routes = RouteTable("tickets")


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
    description="C, not in the seed (its FAQ 1): the member ends the rental of the device it "
    "holds for its delivered rental order (the one shipped, or the replacement an exchange gave "
    "for it; 409 for a device it no longer holds). A dismantle ticket opens (asking again "
    "answers the same ticket while it is open or done; once it is cancelled, a new one); "
    "completing it locks and unbinds the device, ends its service and requests the order's "
    "deposit for that device back, once per device the order shipped (409 rental_end_exists "
    "when the device it stands for already has a 退租, open or done; 409 order_returning for "
    "an order whose return was asked: the return gives the deposit back). An "
    f"`{IDEMPOTENCY_HEADER}` header (1..{MAX_IDEMPOTENCY_KEY} characters) makes a retried ask "
    "answer the ticket the first one opened or answered, as it is now, even cancelled (nothing "
    "opens twice); the key sent with another order, device or reason answers 409 "
    "idempotency_key_reused (`data.ticket_id`: the key's ticket).",
)
async def end_rental_route(call: Call) -> TicketOut:
    body: RentalEndIn = call.body
    order = await find_order(call.principal, call.params.oid)
    ticket, _created = await end_rental(
        order, call.principal.subject, body.device_id, body.reason,
        idempotency_key=idempotency_header(call),
    )  # fmt: skip
    return await one(ticket)
