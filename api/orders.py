"""Orders (订单, AD-01..06, AD-11..15): create, list, read, deliver, confirm receipt, returns,
cancel, delete (docs/api-shop.md).

Thin: pricing, ids, snapshots, scoping and the state machine live in models.orders and its
neighbours (models.order_placing, order_states, order_queries, order_deletion). A member
sees its own orders, a vendor its own, an agent or dealer its subtree's, the platform all; an
order outside that answers 404 as an unknown id does.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from aquafleet.api.errors import ValidationFailed
from aquafleet.api.list_filters import named_member, named_vendor
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import (
    UNSET,
    ListQuery,
    PathParams,
    Query,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    VendorCode,
    text,
)
from aquafleet.gateway.appkeys import DEVICE_GATEWAY
from aquafleet.models.delivery import Parcel, change_delivery, deliver_order
from aquafleet.models.members import get_member
from aquafleet.models.order_deletion import delete_order
from aquafleet.models.order_placing import LineRequest, OrderRequest, create_order
from aquafleet.models.order_queries import find_order, visible_orders
from aquafleet.models.order_states import fire
from aquafleet.models.orders import (
    MAX_IDEMPOTENCY_KEY,
    MAX_LINES,
    MAX_QUANTITY,
    Order,
    OrderEvent,
    OrderKind,
    OrderLine,
    OrderState,
    OrderTransition,
)
from aquafleet.models.products import MAX_FEN
from aquafleet.models.renewals import create_renewal
from aquafleet.models.returns import (
    RETURN_WINDOW,
    ask_return,
    consent_return,
    goods_returned,
    refuse_return,
)
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import (
    ADMIN_ROLES,
    ANY_ROLE,
    MEMBER_ONLY,
    PLATFORM_ONLY,
    PLATFORM_OR_VENDOR,
    PLATFORM_VENDOR_OR_MEMBER,
)

routes = RouteTable(
    "orders",
    "Orders (订单, AD-01..15): create with every amount computed by the server, the seed's "
    "state machine, tenant-scoped lists (docs/api-shop.md).",
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
PID_PATTERN = r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$"
OID_PATTERN = r"^[0-9]{8}[A-Z0-9]{4}[0-9]{12}$"
UID_PATTERN = r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$"
DID_PATTERN = r"^[A-Z0-9]{4}[0-9]{8}[0-9A-F]{4}$"


class LineIn(RequestModel):
    product_id: str = Field(pattern=PID_PATTERN)
    quantity: int = Field(1, ge=1, le=MAX_QUANTITY)
    package: str = Field(
        UNSET, pattern=r"^[A-Za-z0-9_-]{1,16}$", description="a rent package's key: rents"
    )
    price: int = Field(UNSET, ge=0, le=MAX_FEN, description="ignored: the server prices every line")


class ReceiverIn(RequestModel):
    """收件人 (Consignee), AD-02's names."""

    name: str = text(32, min_length=1)
    phone: str = Field(pattern=r"^[0-9+() -]{5,20}$")
    area: str = text(128, default="", description="地址(区域), e.g. 广东省珠海市香洲区")
    address: str = text(255, min_length=1, description="地址(详细)")
    zipcode: str = Field("", pattern=r"^([0-9]{6})?$")


class OrderIn(RequestModel):
    """AD-02. Amounts are computed by the server; a line's `price` is ignored."""

    content: list[LineIn] = Field(min_length=1, max_length=MAX_LINES)
    receiver: ReceiverIn
    memo: str = text(255, default="")
    referral_code: str = Field(
        UNSET,
        min_length=1,
        max_length=32,
        description="推荐码 (seed FAQ 8), optional: a member's uid, or an agent's or dealer's "
        "code `A<id>`, of the member's vendor; the order is attributed to it (400 "
        "`referral_invalid` when it names nobody who may refer)",
    )


class RenewalIn(RequestModel):
    """A renewal (kind 3, seed FAQ 2): another rental period for a device the member holds."""

    did: str = Field(pattern=r"^[A-Z0-9]{4}[0-9]{8}[0-9A-F]{4}$", description="the device held")
    package: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,16}$", description="a rent package of the device's product"
    )
    memo: str = text(255, default="")


class LineOut(ResponseModel):
    product_id: str
    name: str = Field(description="the product's name when bought")
    quantity: int
    package: str | None
    price: int = Field(description="per unit, fen: the product's price or the package's")
    amount: int = Field(description="the line's whole cost, fen")


class AmountsOut(ResponseModel):
    """订单金额, 运费, 安装费, 押金 and the rent, fen."""

    goods: int
    freight: int
    install: int
    deposit: int
    rent: int
    total: int
    refund_due: int = Field(
        description="recorded when the goods came back (AD-14): the total less what refunds "
        "of the order gave back before"
    )


class OrderOut(ResponseModel):
    order_id: str
    state: int = Field(description="0 obligation .. 8 done (docs/api-shop.md)")
    state_name: str
    type: int = Field(description="1 purchase, 2 rental, 3 renewal")
    vid: str
    user_id: str
    agent_id: int | None = Field(description="the agent or dealer node the order counts for")
    rid: str | None = Field(description="推荐人: the referring member's uid, if any")
    content: list[LineOut]
    receiver: dict[str, str]
    memo: str
    amounts: AmountsOut
    delivery: dict[str, Any] | None
    return_reason: str
    return_refused: str | None = Field(
        description="why the vendor refused the return, if it did (the order is received again)"
    )
    create_tms: UtcDateTime
    pay_tms: UtcDateTime | None
    receive_tms: UtcDateTime | None
    complete_tms: UtcDateTime | None


class OrderPath(PathParams):
    oid: str = Field(pattern=OID_PATTERN)


class OrderListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "create_tms": "created_at",
        "total": "total_fen",
        "state": "state",
    }
    sort: Literal["create_tms", "total", "state"] = "create_tms"
    order: Literal["asc", "desc"] = Field("desc", description="sort direction (newest first)")
    state: OrderState = Field(UNSET)
    type: OrderKind = Field(UNSET)
    vid: VendorCode = Field(UNSET)
    uid: str = Field(UNSET, pattern=UID_PATTERN, description="the member")
    device: str = Field(
        UNSET,
        pattern=DID_PATTERN,
        description="orders naming this DID: delivered with it, or renewing it",
    )
    since: dt.datetime = Field(UNSET, description="created at or after (ISO 8601)")
    until: dt.datetime = Field(UNSET, description="created before (ISO 8601)")


# ----------------------------------------------------------------------------- shaping


def order_out(order: Order, lines: Sequence[OrderLine], refused: str | None = None) -> OrderOut:
    return OrderOut(
        order_id=order.oid,
        state=int(order.state),
        state_name=order.state.name.lower(),
        type=int(order.kind),
        vid=order.vendor_id,
        user_id=order.member_id,
        agent_id=order.agent_id,
        rid=order.referrer_uid,
        content=[
            LineOut(
                product_id=line.product_id,
                name=str(line.snapshot.get("name", "")),
                quantity=line.quantity,
                package=line.package_key,
                price=line.price_fen,
                amount=line.amount_fen,
            )
            for line in sorted(lines, key=lambda line: line.position)
        ],
        receiver=dict(order.receiver),
        memo=order.memo,
        amounts=AmountsOut(
            goods=order.goods_fen,
            freight=order.freight_fen,
            install=order.install_fen,
            deposit=order.deposit_fen,
            rent=order.rent_fen,
            total=order.total_fen,
            refund_due=order.refund_due_fen,
        ),
        return_reason=order.return_reason,
        return_refused=refused,
        delivery=order.delivery,
        create_tms=order.created_at,
        pay_tms=order.paid_at,
        receive_tms=order.received_at,
        complete_tms=order.completed_at,
    )


async def order_outs(orders: Sequence[Order]) -> list[OrderOut]:
    """Answers for many orders with their lines read in one query."""
    by_order: dict[int, list[OrderLine]] = defaultdict(list)
    ids = [o.id for o in orders]
    for line in await OrderLine.filter(order_id__in=ids):
        by_order[line.order_id].append(line)
    refused: dict[int, str] = {
        int(row["order_id"]): str(row["reason"])
        for row in await OrderTransition.filter(
            order_id__in=ids, event=OrderEvent.REFUSE.value
        ).values("order_id", "reason")
    }
    return [order_out(order, by_order[order.id], refused.get(order.id)) for order in orders]


def _aware(value: dt.datetime, field: str) -> dt.datetime:
    if value.tzinfo is None:
        raise ValidationFailed(
            f"query {field}: give a time zone (Z)",
            data=[{"field": field, "message": "give a time zone (Z)"}],
        )
    return value


# ----------------------------------------------------------------------------- routes


@routes.get(
    "/orders",
    seed="AD-01",
    summary="List orders",
    roles=ANY_ROLE,
    query=OrderListQuery,
    response=OrderOut,
    many=True,
    description="A+C. A member its own orders, a vendor its own, an agent or dealer those of "
    "its subtree's members, the platform all. Newest first unless told otherwise.",
)
async def list_orders(call: Call) -> Page:
    query: OrderListQuery = call.query
    qs = visible_orders(call.principal)
    filters: dict[str, Any] = {}
    if query.state is not None:
        filters["state"] = query.state
    if query.type is not None:
        filters["kind"] = query.type
    if query.vid is not None:
        filters["vendor_id"] = await named_vendor(call.principal, query.vid)
    if query.uid is not None:
        filters["member_id"] = await named_member(call.principal, query.uid)
    if query.device is not None:
        filters["devices__did"] = query.device  # a device's orders outlive its binding
    if query.since is not None:
        filters["created_at__gte"] = _aware(query.since, "since")
    if query.until is not None:
        filters["created_at__lt"] = _aware(query.until, "until")
    rows, total = await query.page(qs.filter(**filters), pk="id")
    return Page(await order_outs(rows), total)


@routes.post(
    "/orders",
    seed="AD-02",
    summary="Create an order",
    roles=MEMBER_ONLY,
    body=OrderIn,
    response=OrderOut,
    errors=(400, 404, 409),
    description="C. The member orders published products of its vendor; a line with `package` "
    "rents the product with that package (rent + deposit), one without buys it (price). Every "
    "amount is computed here (goods, freight, install fee, deposit, rent); a `price` sent is "
    f"ignored. An `{IDEMPOTENCY_HEADER}` header (1..{MAX_IDEMPOTENCY_KEY} characters) makes a "
    "retried create answer the first order instead of making a second; the key sent with "
    "another request answers 409 idempotency_key_reused.",
)
async def add_order(call: Call) -> OrderOut:
    body: OrderIn = call.body
    key = idempotency_header(call)
    member = await get_member(call.principal.subject)
    request = OrderRequest(
        lines=[LineRequest(line.product_id, line.quantity, line.package) for line in body.content],
        receiver=body.receiver.model_dump(),
        memo=body.memo,
        idempotency_key=key,
        referral_code=body.referral_code,
    )
    order, _created = await create_order(member, request)
    return (await order_outs([order]))[0]


def idempotency_header(call: Call) -> str | None:
    """The request's Idempotency-Key header (None: none sent); 422 when not 1..64 characters."""
    key = call.request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        message = f"must be 1..{MAX_IDEMPOTENCY_KEY} characters"
        raise ValidationFailed(
            f"header {IDEMPOTENCY_HEADER}: {message}",
            data=[{"field": IDEMPOTENCY_HEADER, "message": message}],
        )
    return key


@routes.post(
    "/orders/renewals",
    summary="Renew a rented device",
    roles=MEMBER_ONLY,
    body=RenewalIn,
    response=OrderOut,
    errors=(404, 409),
    description="C, not in the seed (its FAQ 2). A renewal order (type 3) for a device the "
    "member holds, with a rent package of the device's product: it costs the package's rent "
    "(no deposit, no freight). Paying it extends the time rental by the package's days or tops "
    "up the volume quota by its ml at once, and the order is done; it is never delivered. A "
    "device the member cannot see answers 404, one it does not hold or not rented 409, a "
    f"package the product lacks 422. `{IDEMPOTENCY_HEADER}` as for AD-02.",
)
async def add_renewal(call: Call) -> OrderOut:
    body: RenewalIn = call.body
    key = idempotency_header(call)
    member = await get_member(call.principal.subject)
    order, _created = await create_renewal(
        member, body.did, body.package, memo=body.memo, idempotency_key=key
    )
    return (await order_outs([order]))[0]


@routes.get(
    "/orders/{oid}",
    seed="AD-03",
    summary="Read an order",
    roles=ANY_ROLE,
    params=OrderPath,
    response=OrderOut,
    description="A+C, scoped as AD-01.",
)
async def read_order(call: Call) -> OrderOut:
    order = await find_order(call.principal, call.params.oid)
    return (await order_outs([order]))[0]


# ----------------------------------------------------------------------------- delivery


class DeliveryIn(RequestModel):
    """AD-05: the seed's delivery block, and the devices shipped (one per unit, in line order)."""

    company: str = text(64, min_length=1, description="物流公司")
    tracking_num: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$", description="物流单号")
    delivery_clerk: str = text(64, default="", description="发货员")
    delivery_tms: dt.datetime = Field(UNSET, description="发货时间 (default: now)")
    devices: list[Annotated[str, Field(pattern=DID_PATTERN)]] = Field(
        min_length=1, max_length=MAX_LINES * MAX_QUANTITY, description="the DIDs shipped"
    )


class DeliveryChangeIn(RequestModel):
    """AD-06: correct the parcel; the devices shipped do not change."""

    company: str = text(64, default=UNSET, min_length=1)
    tracking_num: str = Field(UNSET, pattern=r"^[A-Za-z0-9-]{1,64}$")
    delivery_clerk: str = text(64, default=UNSET)
    delivery_tms: dt.datetime = Field(UNSET)


class DeliveryOut(ResponseModel):
    company: str
    tracking_num: str
    delivery_tms: str
    delivery_clerk: str
    devices: list[str]


@routes.get(
    "/orders/{oid}/delivery",
    seed="AD-04",
    summary="Read an order's delivery",
    roles=ANY_ROLE,
    params=OrderPath,
    response=DeliveryOut,
    description="A+C, scoped as AD-01. `data` is null until the order is delivered.",
)
async def read_delivery(call: Call) -> DeliveryOut | None:
    order = await find_order(call.principal, call.params.oid)
    return None if order.delivery is None else DeliveryOut.model_validate(order.delivery)


@routes.post(
    "/orders/{oid}/delivery",
    seed="AD-05",
    summary="Deliver an order",
    roles=ADMIN_ROLES,
    params=OrderPath,
    body=DeliveryIn,
    response=OrderOut,
    errors=(404, 409),
    description="A, scoped as AD-01; the order must be paid. Name one device per unit, in line "
    "order: each is bound to the member and configured for its line (sale, or the package's "
    "days or ml) with the order id as request id; the device hears it at once when online, "
    "else at its next login. The product's filters are copied onto the device, and an install "
    "ticket opens when the product has install service.",
)
async def deliver(call: Call) -> OrderOut:
    body: DeliveryIn = call.body
    principal = call.principal
    order = await find_order(principal, call.params.oid)
    sent = _aware(body.delivery_tms, "delivery_tms") if body.delivery_tms else None
    parcel = Parcel(body.company, body.tracking_num, body.delivery_clerk, sent)
    gateway = call.app[DEVICE_GATEWAY]
    actor = f"{principal.role.value}:{principal.subject}"

    async def apply(did: str, change: ServiceChangeRequest) -> object:
        return await gateway.change_service(did, change, actor=actor)

    delivered = await deliver_order(principal, order, parcel, body.devices, apply)
    return (await order_outs([delivered]))[0]


@routes.put(
    "/orders/{oid}/delivery",
    seed="AD-06",
    summary="Correct an order's delivery",
    roles=PLATFORM_OR_VENDOR,
    params=OrderPath,
    body=DeliveryChangeIn,
    response=DeliveryOut,
    errors=(409,),
    description="A# (客服通道): change the company, tracking number, time or clerk of a "
    "delivered order; only the fields given change.",
)
async def correct_delivery(call: Call) -> DeliveryOut:
    body: DeliveryChangeIn = call.body
    order = await find_order(call.principal, call.params.oid)
    changes: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "delivery_tms":
            value = _aware(value, name).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        changes[name] = value
    changed = await change_delivery(order, changes)
    return DeliveryOut.model_validate(changed.delivery)


# ----------------------------------------------------------------------------- moves


async def _fire_as_caller(call: Call, event: OrderEvent) -> OrderOut:
    """Move the caller's order (as the state table allows the caller's role) and answer it."""
    principal = call.principal
    order = await find_order(principal, call.params.oid)
    moved = await fire(order, event, actor_role=principal.role.value, actor_id=principal.subject)
    return (await order_outs([moved]))[0]


@routes.post(
    "/orders/{oid}/status/confirm",
    seed="AD-11",
    summary="Confirm receipt",
    roles=MEMBER_ONLY,
    params=OrderPath,
    response=OrderOut,
    errors=(404, 409),
    description="C: the member confirms its delivered order arrived (delivered -> received); "
    "any other state answers 409 naming it.",
)
async def confirm_receipt(call: Call) -> OrderOut:
    return await _fire_as_caller(call, OrderEvent.CONFIRM)


class ReturnIn(RequestModel):
    reason: str = text(255, min_length=1, description="why the member returns the goods")


@routes.post(
    "/orders/{oid}/status/return",
    seed="AD-12",
    summary="Ask to return an order",
    roles=MEMBER_ONLY,
    params=OrderPath,
    body=ReturnIn,
    response=OrderOut,
    errors=(404, 409),
    description=f"C: the member asks to return a received order, within {RETURN_WINDOW.days} "
    "days of receipt (received -> return). A rental with a 退租, open or done, is not returned "
    "(409 order_has_rental_end): the 退租 gives the deposit back.",
)
async def ask_to_return(call: Call) -> OrderOut:
    order = await find_order(call.principal, call.params.oid)
    moved = await ask_return(order, call.principal.subject, call.body.reason)
    return (await order_outs([moved]))[0]


@routes.post(
    "/orders/{oid}/status/consent",
    seed="AD-13",
    summary="Consent to a return",
    roles=PLATFORM_OR_VENDOR,
    params=OrderPath,
    response=OrderOut,
    errors=(404, 409),
    description="A#: return -> consent (409 order_has_rental_end for a rental with a 退租).",
)
async def consent(call: Call) -> OrderOut:
    order = await find_order(call.principal, call.params.oid)
    return (await order_outs([await consent_return(order, call.principal)]))[0]


class RefuseIn(RequestModel):
    reason: str = text(255, min_length=1, description="why the return is refused")


@routes.post(
    "/orders/{oid}/status/refuse",
    summary="Refuse a return",
    roles=PLATFORM_OR_VENDOR,
    params=OrderPath,
    body=RefuseIn,
    response=OrderOut,
    errors=(404, 409),
    description="A#, not in the seed: the platform or the vendor refuses the member's return "
    "request with a reason (return -> received; `return_refused` answers the reason). The "
    "order keeps its receipt time: the return window goes on and its timer ends the order in "
    "done; the member cannot ask to return it again.",
)
async def refuse(call: Call) -> OrderOut:
    order = await find_order(call.principal, call.params.oid)
    moved = await refuse_return(order, call.principal, call.body.reason)
    return (await order_outs([moved]))[0]


@routes.put(
    "/orders/{oid}/status/refund",
    seed="AD-14",
    summary="Goods back: end the devices' service, record the refund due",
    roles=PLATFORM_OR_VENDOR,
    params=OrderPath,
    response=OrderOut,
    errors=(404, 409),
    description="A# (已退货): consent -> refund. Every device the order shipped is locked and "
    "unbound; an installed one gets a dismantle ticket; the order's total, less what refunds "
    "of the order gave back before, is recorded as `amounts.refund_due` for the payment "
    "layer. A rental with a 退租, open or done, is not returned (409 order_has_rental_end, "
    "before anything moves).",
)
async def refund(call: Call) -> OrderOut:
    principal = call.principal
    order = await find_order(principal, call.params.oid)
    gateway = call.app[DEVICE_GATEWAY]
    actor = f"{principal.role.value}:{principal.subject}"

    async def apply(did: str, change: ServiceChangeRequest) -> object:
        return await gateway.change_service(did, change, actor=actor)

    return (await order_outs([await goods_returned(order, principal, apply)]))[0]


@routes.post(
    "/orders/{oid}/status/close",
    summary="Cancel an unpaid order",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=OrderPath,
    response=OrderOut,
    errors=(404, 409),
    description="Not in the seed: the member (its own order), its vendor or the platform closes "
    "an order that is not paid yet (obligation -> close).",
)
async def cancel(call: Call) -> OrderOut:
    return await _fire_as_caller(call, OrderEvent.CANCEL)


class DeleteQuery(Query):
    confirm: str = Field(pattern=OID_PATTERN, description="删除确认: the order's id again")


@routes.delete(
    "/orders/{oid}",
    seed="AD-15",
    summary="Delete an order",
    roles=PLATFORM_ONLY,
    params=OrderPath,
    query=DeleteQuery,
    errors=(404, 409, 422),
    description="A*. 删除确认: `?confirm=<the order's id>`. Only closed or done orders, and "
    "no rental whose member still holds its devices (409 rental_devices_held: end the rental "
    "first); the deletion is soft: the order leaves every list and read, its rows stay.",
)
async def remove_order(call: Call) -> None:
    order = await find_order(call.principal, call.params.oid)
    if call.query.confirm != order.oid:
        raise ValidationFailed(
            "query confirm: must repeat the order's id",
            data=[{"field": "confirm", "message": "must repeat the order's id"}],
        )
    await delete_order(order)
