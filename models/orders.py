"""Orders (订单, seed AD-01..15): what a member bought or rented, what it costs, and where it is
in the seed's state machine.

Order id (OID), per the seed (section 1.2): `YYYYMMDD` (UTC date of creation) + the vendor's
4-character code + a 12-digit serial of that vendor (never reused), 24 characters, e.g.
20261206ACME000000000042; the front end shows it with a `D` in front, the database never stores
the `D`.

Every amount is computed here from the products as they are when the order is made (a price a
client sends is never read) and kept in fen with its breakdown; each line keeps a snapshot of its
product, so a later edit of the product never changes an order.

Every move of the state machine is one row of `TRANSITIONS` (state x event -> state, and who may
fire the event); any other move is refused with the order's current state. Each move is recorded
in `OrderTransition` with who made it and why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.agents import Agent, AgentState
from aquafleet.models.devices import Device
from aquafleet.models.errors import Conflict, Forbidden, InvalidInput, NotFound, RequestReused
from aquafleet.models.ids import check_vendor_code
from aquafleet.models.members import LOGIN_ALLOWED, Member, MemberState, is_valid_uid
from aquafleet.models.products import (
    Billing,
    Product,
    ProductState,
    next_serial,
    shop_vendor,
    snapshot,
)
from aquafleet.models.tenancy import Principal, Role

if TYPE_CHECKING:
    from aquafleet.models.delivery import ServiceApplier

ORDER_ID_LENGTH = 24
OID_RE = re.compile(r"^[0-9]{8}[A-Z0-9]{4}[0-9]{12}$")
MAX_ORDER_SERIAL = 999_999_999_999
MAX_LINES = 20
MAX_QUANTITY = 99
MAX_IDEMPOTENCY_KEY = 64
MAX_REASON = 255


class OrderState(IntEnum):
    """The seed's states, in its order (its example's `state: 0` is the first)."""

    OBLIGATION = 0  # 创建订单: waiting for payment
    PAID = 1  # 支付订单
    DELIVERED = 2  # 物流发货
    RECEIVED = 3  # 确认收货
    RETURN = 4  # 申请退货
    CONSENT = 5  # 同意退货
    REFUND = 6  # 已退货 (final)
    CLOSE = 7  # 已关闭 (final)
    DONE = 8  # 已完成 (final)


class OrderKind(IntEnum):
    PURCHASE = 1  # devices sold
    RENTAL = 2  # a new rental: device + package + deposit
    RENEWAL = 3  # a package for a device the member already holds (models/renewals.py)


class OrderEvent(StrEnum):
    PAY = "pay"  # a channel's confirmed payment, or `aquafleet orders mark-paid` (pay_order)
    CANCEL = "cancel"  # before payment: the member, an admin, or the unpaid-order timer
    DELIVER = "deliver"  # AD-05
    CONFIRM = "confirm"  # AD-11, or the auto-receive timer
    RETURN = "return"  # AD-12
    CONSENT = "consent"  # AD-13
    REFUSE = "refuse"  # the vendor refuses the return (not in the seed): back to received
    REFUND = "refund"  # AD-14
    FINISH = "finish"  # the return window ended
    RENEW = "renew"  # a paid renewal changed its device (models/renewals.py): nothing to ship


SYSTEM = "system"  # timers and the payment layer; never a person
# Who fires an event: a Role's value, or SYSTEM.
MEMBER, PLATFORM, VENDOR = Role.MEMBER.value, Role.PLATFORM.value, Role.VENDOR.value
ADMINS = frozenset({PLATFORM, VENDOR, Role.AGENT.value, Role.DEALER.value})

S, E = OrderState, OrderEvent
# The whole state machine: (state, event) -> (next state, who may fire it).
TRANSITIONS: dict[tuple[OrderState, OrderEvent], tuple[OrderState, frozenset[str]]] = {
    (S.OBLIGATION, E.PAY): (S.PAID, frozenset({PLATFORM, SYSTEM})),
    (S.OBLIGATION, E.CANCEL): (S.CLOSE, frozenset({MEMBER, PLATFORM, VENDOR, SYSTEM})),
    (S.PAID, E.DELIVER): (S.DELIVERED, ADMINS),  # purchases and rentals only
    (S.PAID, E.RENEW): (S.DONE, frozenset({SYSTEM})),  # renewals only
    (S.DELIVERED, E.CONFIRM): (S.RECEIVED, frozenset({MEMBER, SYSTEM})),
    (S.RECEIVED, E.RETURN): (S.RETURN, frozenset({MEMBER})),
    (S.RECEIVED, E.FINISH): (S.DONE, frozenset({SYSTEM})),
    (S.RETURN, E.CONSENT): (S.CONSENT, frozenset({PLATFORM, VENDOR})),
    (S.RETURN, E.REFUSE): (S.RECEIVED, frozenset({PLATFORM, VENDOR})),  # models/returns.py
    (S.CONSENT, E.REFUND): (S.REFUND, frozenset({PLATFORM, VENDOR})),
}
FINAL_STATES = frozenset(S) - {state for state, _event in TRANSITIONS}


class OrderStateConflict(Conflict):
    """The event does not apply to the order's current state (the message names it; the API
    answers it in `data` too)."""

    code = "order_state_conflict"

    def __init__(self, message: str, state: OrderState) -> None:
        super().__init__(message)
        self.state = state

    @property
    def data(self) -> dict[str, Any]:
        return {"state": int(self.state), "state_name": self.state.name.lower()}


def next_state(state: OrderState, event: OrderEvent, actor: str) -> OrderState:
    """The state `event` leads to from `state` when `actor` fires it; OrderStateConflict when
    the table has no such move, Forbidden when the actor may not fire it."""
    move = TRANSITIONS.get((state, event))
    if move is None:
        raise OrderStateConflict(f"the order is {state.name.lower()}: it cannot {event}", state)
    target, actors = move
    if actor not in actors:
        raise Forbidden(f"a {actor} may not {event} an order")
    return target


class Order(Model):
    """One order, amounts in fen, receiver and delivery as the seed nests them."""

    id = fields.BigIntField(primary_key=True)
    oid = fields.CharField(max_length=ORDER_ID_LENGTH, unique=True)
    vendor: fields.ForeignKeyRelation[Any] = fields.ForeignKeyField(
        "models.Vendor", related_name="orders", on_delete=fields.RESTRICT
    )
    member: fields.ForeignKeyRelation[Member] = fields.ForeignKeyField(
        "models.Member", related_name="orders", on_delete=fields.RESTRICT
    )
    agent: fields.ForeignKeyNullableRelation[Agent] = fields.ForeignKeyField(
        "models.Agent", related_name="orders", null=True, on_delete=fields.RESTRICT
    )
    referrer_uid = fields.CharField(max_length=20, null=True)
    kind = fields.IntEnumField(OrderKind)
    state = fields.IntEnumField(OrderState, default=OrderState.OBLIGATION)
    receiver: dict[str, Any] = fields.JSONField(default=dict)
    memo = fields.CharField(max_length=255, default="")
    goods_fen = fields.BigIntField(default=0)
    freight_fen = fields.BigIntField(default=0)
    install_fen = fields.BigIntField(default=0)
    deposit_fen = fields.BigIntField(default=0)
    rent_fen = fields.BigIntField(default=0)
    total_fen = fields.BigIntField(default=0)
    delivery: dict[str, Any] | None = fields.JSONField(null=True)
    idempotency_key = fields.CharField(max_length=MAX_IDEMPOTENCY_KEY, null=True)
    # A digest of the request that made the order (request_digest): the key sent again with
    # another request is refused. Null on orders made before it was recorded.
    request_hash = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()
    paid_at = fields.DatetimeField(null=True)
    delivered_at = fields.DatetimeField(null=True)  # auto-receive counts from here
    received_at = fields.DatetimeField(null=True)  # the return window counts from here
    return_reason = fields.CharField(max_length=MAX_REASON, default="")
    refund_due_fen = fields.BigIntField(default=0)  # recorded by AD-14; paid by the payment layer
    completed_at = fields.DatetimeField(null=True)  # reached a final state
    deleted_at = fields.DatetimeField(null=True)

    vendor_id: str
    member_id: str
    agent_id: int | None

    class Meta:
        table = "shop_order"
        unique_together = (("member", "idempotency_key"),)
        indexes = (
            ("vendor_id", "state"),
            ("member_id", "created_at"),
            ("agent_id",),
            ("state", "created_at"),  # the timers' sweeps (models/order_timers.py)
        )


class OrderLine(Model):
    """One line of an order: a product (kept for ever: products any order references are
    retired, never removed), the package chosen, and the product as it was bought."""

    id = fields.BigIntField(primary_key=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="lines", on_delete=fields.RESTRICT
    )
    product: fields.ForeignKeyRelation[Product] = fields.ForeignKeyField(
        "models.Product", related_name="order_lines", on_delete=fields.RESTRICT, db_index=True
    )
    position = fields.SmallIntField()
    quantity = fields.SmallIntField()
    package_key = fields.CharField(max_length=16, null=True)
    price_fen = fields.BigIntField(description="per unit: the product price, or the package's")
    amount_fen = fields.BigIntField(description="everything this line costs")
    snapshot: dict[str, Any] = fields.JSONField()

    order_id: int
    product_id: str

    class Meta:
        table = "order_line"
        unique_together = (("order", "position"),)


class OrderDevice(Model):
    """A device an order names (delivered with it, or renewed by it): AD-01's `device` filter."""

    id = fields.BigIntField(primary_key=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="devices", on_delete=fields.RESTRICT
    )
    did = fields.CharField(max_length=16, db_index=True)

    order_id: int

    class Meta:
        table = "order_device"
        unique_together = (("order", "did"),)


class OrderTransition(Model):
    """One move of an order: from, event, to, who (role and id) and why."""

    id = fields.BigIntField(primary_key=True)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="transitions", on_delete=fields.RESTRICT
    )
    event = fields.CharField(max_length=16)
    from_state = fields.IntEnumField(OrderState)
    to_state = fields.IntEnumField(OrderState)
    actor_role = fields.CharField(max_length=16)
    actor_id = fields.CharField(max_length=64)
    reason = fields.CharField(max_length=MAX_REASON, default="")
    created_at = fields.DatetimeField()

    order_id: int

    class Meta:
        table = "order_transition"
        unique_together = (("order", "event"),)  # every event of the table fires once per order


# ----------------------------------------------------------------------------- ids


def format_order_id(created_at: dt.datetime, vendor_code: str, serial: int) -> str:
    """`YYYYMMDD` (UTC) + vendor code + 12-digit serial."""
    check_vendor_code(vendor_code)
    if not 1 <= serial <= MAX_ORDER_SERIAL:
        raise InvalidInput(f"order serial {serial} out of range 1..{MAX_ORDER_SERIAL}")
    return f"{created_at.astimezone(dt.UTC):%Y%m%d}{vendor_code}{serial:012d}"


def is_valid_order_id(oid: str) -> bool:
    return bool(OID_RE.match(oid))


def order_request_id(oid: str) -> str:
    """The request id of the device changes an order makes (its delivery's configure, its
    renewal's extend or top-up): `order:` and the order id. Ticket ids have the form of order
    ids (date, vendor, a serial of their own), so a bare order id can be the id an exchange
    ticket changes the same device under: each would find the other's marker and be taken for
    a retry of it (a renewal not applied, an exchange refused)."""
    return f"order:{oid}"


async def applied_under_order_id(did: str, oid: str, reason: str) -> bool:
    """An order's device change recorded under the bare order id (before order_request_id), by
    its reason: it was applied, and is not applied again under the new id."""
    from aquafleet.models.service import ServiceChange

    return await ServiceChange.exists(did=did, request_id=oid, reason=reason)


# ----------------------------------------------------------------------------- amounts


@dataclass(frozen=True, slots=True)
class LineRequest:
    """One line as a member asks for it: a product, how many, and for a rental the package."""

    product_id: str
    quantity: int = 1
    package: str | None = None


@dataclass(frozen=True, slots=True)
class PricedLine:
    product: Product
    quantity: int
    package_key: str | None
    price_fen: int  # per unit
    amount_fen: int
    goods_fen: int
    freight_fen: int
    install_fen: int
    deposit_fen: int
    rent_fen: int


def price_line(product: Product, quantity: int, package_key: str | None) -> PricedLine:
    """What one line costs, from the product alone: a sale pays the price; a rental the chosen
    package and the deposit; both pay freight and (with install service) the install fee, per
    unit."""
    if type(quantity) is not int or not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidInput(f"quantity must be 1..{MAX_QUANTITY}")
    goods = deposit = rent = 0
    if package_key is None:
        if not product.billing & Billing.SALE:
            raise InvalidInput(f"product {product.pid} is rented, not sold: choose a package")
        price = product.price_fen
        goods = price * quantity
    else:
        package = next((p for p in product.rent_packages if p["key"] == package_key), None)
        if package is None:
            raise InvalidInput(f"product {product.pid} has no rent package {package_key!r}")
        price = int(package["value"])
        rent = price * quantity
        deposit = product.deposit_fen * quantity
    freight = product.freight_fen * quantity
    install = product.install_cost_fen * quantity if product.install else 0
    return PricedLine(
        product=product, quantity=quantity, package_key=package_key, price_fen=price,
        amount_fen=goods + rent + deposit + freight + install, goods_fen=goods,
        freight_fen=freight, install_fen=install, deposit_fen=deposit, rent_fen=rent,
    )  # fmt: skip


# ----------------------------------------------------------------------------- scoping


def visible_orders(principal: Principal) -> QuerySet[Order]:
    """A member its own orders, a vendor its own, an agent or dealer its subtree's (orders are
    attributed to the member's node), the platform all; deleted (AD-15) orders are gone."""
    qs = Order.filter(deleted_at__isnull=True)
    if principal.role is Role.PLATFORM:
        return qs
    if principal.role is Role.MEMBER:
        return qs.filter(member_id=principal.subject)
    if principal.vendor_code is None:
        return Order.filter(id__in=[])
    qs = qs.filter(vendor_id=principal.vendor_code)
    if principal.role is Role.VENDOR:
        return qs
    if principal.agent_path:
        return qs.filter(agent__path__startswith=principal.agent_path)
    return Order.filter(id__in=[])


async def find_order(principal: Principal, oid: str) -> Order:
    order = None
    if is_valid_order_id(oid):
        order = await visible_orders(principal).filter(oid=oid).first()
    if order is None:
        raise NotFound(f"order {oid} not found")
    return order


# ----------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """AD-02 as a member sends it (amounts are never part of it)."""

    lines: Sequence[LineRequest]
    receiver: Mapping[str, Any]
    memo: str = ""
    idempotency_key: str | None = None
    referral_code: str | None = None  # seed FAQ 8: see resolve_referral


# ----------------------------------------------------------------------------- referrals

AGENT_CODE_RE = re.compile(r"^A([1-9][0-9]{0,9})$")


class ReferralInvalid(InvalidInput):
    """The referral code names nobody who may refer this member (the API answers 400)."""

    code = "referral_invalid"


def agent_referral_code(agent_id: int) -> str:
    """An agent's or dealer's referral code: `A` and its id, e.g. A12."""
    return f"A{agent_id}"


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who an order is attributed to: the agent node (scoping, commissions) and the referring
    member."""

    agent_id: int | None
    referrer_uid: str | None


async def resolve_referral(member: Member, code: str | None) -> Attribution:
    """Seed FAQ 8 (推荐码, optional at checkout). Without a code: the member's own agent and
    referrer. A member's uid: that member referred the order (not the buyer itself), the order
    goes to the referrer's agent node. An agent's or dealer's code (`A<id>`): that node, no
    referring member. Anything else, another vendor's code, a disabled agent or a disabled or
    deregistered member: ReferralInvalid."""
    if code is None:
        return Attribution(member.agent_id, member.referrer_id)
    code = code.strip().upper()
    refused = ReferralInvalid(f"referral code {code!r} is not valid for this shop")
    if is_valid_uid(code):
        if code == member.uid:
            raise ReferralInvalid(f"referral code {code!r} is the buyer's own: no self-referral")
        referrer = await Member.get_or_none(uid=code, vendor_id=member.vendor_id)
        if referrer is None or referrer.state in (MemberState.DISABLED, MemberState.DEREGISTERED):
            raise refused
        return Attribution(referrer.agent_id, referrer.uid)
    match = AGENT_CODE_RE.match(code)
    if match is None:
        raise refused
    agent = await Agent.get_or_none(id=int(match.group(1)), vendor_id=member.vendor_id)
    if agent is None or agent.state is AgentState.DISABLED:
        raise refused
    return Attribution(agent.id, None)


class IdempotencyKeyReused(RequestReused):
    """An Idempotency-Key sent again with another request than the one that made its order:
    answering that order would make the client think it made the order it asked for now."""

    def __init__(self, key: str, first: Order) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} made order {first.oid} from another request: "
            "a new order needs a new key",
            {"order_id": first.oid},
        )
        self.oid = first.oid


def request_digest(kind: str, request: Mapping[str, Any]) -> str:
    """What a create asked, as a digest: sha256 of its canonical JSON (sorted keys)."""
    canonical = json.dumps(
        [kind, request], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_digest(request: OrderRequest) -> str:
    """AD-02's request as a digest: lines, receiver, memo and referral code."""
    code = request.referral_code
    return request_digest(
        "order",
        {
            "lines": [[line.product_id, line.quantity, line.package] for line in request.lines],
            "receiver": dict(request.receiver),
            "memo": request.memo,
            "referral_code": code.strip().upper() if code is not None else None,
        },
    )


async def first_of_key(member_uid: str, key: str | None, digest: str) -> Order | None:
    """The order the member made with `key` before, when the request was the same; another
    request under that key is IdempotencyKeyReused. An order made before requests were
    recorded (no digest) answers as it did."""
    if key is None:
        return None
    first = await Order.get_or_none(member_id=member_uid, idempotency_key=key)
    if first is not None and first.request_hash not in (None, digest):
        raise IdempotencyKeyReused(key, first)
    return first


async def create_order(
    member: Member, request: OrderRequest, *, now: dt.datetime | None = None
) -> tuple[Order, bool]:
    """AD-02: price every line from the products, store the breakdown and the snapshots, and
    take the vendor's next order id, in one transaction. Returns (order, created): with an
    idempotency key used before for the same request, the first order and False (another
    request: IdempotencyKeyReused)."""
    key = request.idempotency_key
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    digest = order_digest(request)
    first = await first_of_key(member.uid, key, digest)
    if first is not None:
        return first, False
    if member.state not in LOGIN_ALLOWED:
        raise Conflict(f"member {member.uid} cannot order (disabled or deregistered)")
    if not 1 <= len(request.lines) <= MAX_LINES:
        raise InvalidInput(f"an order has 1..{MAX_LINES} lines")
    await shop_vendor(member.vendor_id)
    pids = {line.product_id for line in request.lines}
    products = {
        p.pid: p
        for p in await Product.filter(
            pid__in=pids, vendor_id=member.vendor_id, state=ProductState.PUBLISHED
        )
    }
    priced: list[PricedLine] = []
    for asked in request.lines:
        product = products.get(asked.product_id)
        if product is None:
            raise NotFound(f"product {asked.product_id} not found")
        priced.append(price_line(product, asked.quantity, asked.package))
    kind = OrderKind.RENTAL if any(p.package_key for p in priced) else OrderKind.PURCHASE
    attribution = await resolve_referral(member, request.referral_code)
    now = now or dt.datetime.now(dt.UTC)
    totals = {
        name: sum(getattr(p, name) for p in priced)
        for name in ("goods_fen", "freight_fen", "install_fen", "deposit_fen", "rent_fen")
    }
    try:
        async with in_transaction("default") as conn:
            serial = await next_serial(conn, member.vendor_id, "order")
            order = await Order.create(
                oid=format_order_id(now, member.vendor_id, serial),
                vendor_id=member.vendor_id, member_id=member.uid, agent_id=attribution.agent_id,
                referrer_uid=attribution.referrer_uid, kind=kind, receiver=dict(request.receiver),
                memo=request.memo, total_fen=sum(p.amount_fen for p in priced),
                idempotency_key=key, request_hash=digest, created_at=now, updated_at=now,
                **totals,
            )  # fmt: skip
            for position, line in enumerate(priced, start=1):
                await OrderLine.create(
                    order=order, product_id=line.product.pid, position=position,
                    quantity=line.quantity, package_key=line.package_key,
                    price_fen=line.price_fen, amount_fen=line.amount_fen,
                    snapshot=snapshot(line.product),
                )  # fmt: skip
    except IntegrityError:
        # The same key raced in from a retry: the one that committed first is the order.
        first = await first_of_key(member.uid, key, digest)
        if first is None:
            raise
        return first, False
    return order, True


async def fire(
    order: Order,
    event: OrderEvent,
    *,
    actor_role: str,
    actor_id: str,
    reason: str = "",
    now: dt.datetime | None = None,
) -> Order:
    """Move the order by `event` (one row of TRANSITIONS), record who and why, in one
    transaction that re-reads the order under a lock: two racing moves apply once."""
    now = now or dt.datetime.now(dt.UTC)
    from aquafleet.models.outbox import enqueue_order_event

    async with in_transaction("default") as conn:
        current = await Order.filter(id=order.id).select_for_update().get()
        target = next_state(current.state, event, actor_role)
        changes: dict[str, Any] = {"state": target, "updated_at": now}
        if target is OrderState.PAID:
            changes["paid_at"] = now
        if target is OrderState.DELIVERED:
            changes["delivered_at"] = now
        if target is OrderState.RECEIVED and current.received_at is None:
            changes["received_at"] = now  # a refused return keeps the window it was asked in
        if target in FINAL_STATES:
            changes["completed_at"] = now
        await OrderTransition.create(
            order_id=current.id, event=event.value, from_state=current.state, to_state=target,
            actor_role=actor_role, actor_id=actor_id[:64], reason=reason[:MAX_REASON],
            created_at=now,
        )  # fmt: skip
        await Order.filter(id=current.id).update(**changes)
        if target in COMMISSION_STATES:
            await _settle_commissions(current.oid, now)
        await enqueue_order_event(conn, current, event.value)  # 消息推送, in this transaction
    await order.refresh_from_db()
    return order


# Paid: the commission split is computed; done: it becomes available (models/commissions.py).
COMMISSION_STATES = frozenset({OrderState.PAID, OrderState.DONE})


async def _settle_commissions(oid: str, now: dt.datetime) -> None:
    from aquafleet.models.commissions import settle_order

    await settle_order(oid, now=now)


async def pay_order(
    order: Order,
    *,
    channel: str,
    payment_key: str,
    actor_role: str,
    actor_id: str,
    reason: str,
    apply_service: ServiceApplier | None = None,
    within: Callable[[Order], Awaitable[object]] | None = None,
    source: str | None = None,
    now: dt.datetime | None = None,
) -> Order:
    """The one paid step, for the internal one (`mark_paid`) and every channel's confirmed
    payment: fire PAY, book the payment in the money ledger (and `within`'s writes, e.g. the
    channel's payment row), in one transaction, once; an order paid before answers as it is. A
    renewal (kind 3) needs `apply_service`: paying it renews its device at once and the order is
    done (models/renewals.py); a retry finishes a renewal a failure left paid."""
    from aquafleet.models.money import record_order_payment
    from aquafleet.models.renewals import apply_renewal

    if order.kind is OrderKind.RENEWAL and apply_service is None:
        raise InvalidInput(f"order {order.oid} is a renewal: paying it needs the device service")
    if not await OrderTransition.exists(order_id=order.id, event=OrderEvent.PAY.value):
        try:
            async with in_transaction("default"):
                order = await fire(
                    order, OrderEvent.PAY, actor_role=actor_role, actor_id=actor_id,
                    reason=reason, now=now,
                )  # fmt: skip
                await record_order_payment(
                    order, channel=channel, payment_key=payment_key, actor=actor_id,
                    memo=reason, source=source,
                )  # fmt: skip
                if within is not None:
                    await within(order)
        except (IntegrityError, OrderStateConflict):
            # A concurrent payment moved it first (PostgreSQL's row lock shows the paid
            # state, SQLite's unique event per order refuses the second row): answer it.
            if not await OrderTransition.exists(order_id=order.id, event=OrderEvent.PAY.value):
                raise
            await order.refresh_from_db()
    else:
        # Paid already, perhaps by a racing call after the caller read `order`: answer the
        # order as it is now, not the caller's copy.
        await order.refresh_from_db()
    if apply_service is not None:
        order = await apply_renewal(order, apply_service, now=now)
    return order


async def platform_admin(username: str) -> Any:
    """The active platform admin account of that name (shell steps name one); Forbidden
    otherwise."""
    from aquafleet.models.accounts import AccountState, AdminAccount

    account = await AdminAccount.get_or_none(username__iexact=username)
    if account is None or account.role != Role.PLATFORM or account.state != AccountState.ACTIVE:
        raise Forbidden(f"{username!r} is not an active platform admin account")
    return account


async def mark_paid(
    oid: str,
    *,
    admin: str,
    reason: str,
    apply_service: ServiceApplier | None = None,
    now: dt.datetime | None = None,
) -> Order:
    """The internal paid step (channel `manual`): only a platform admin account (`admin`, its
    user name) may, with a reason; both are recorded. Idempotent (`pay_order`)."""

    account = await platform_admin(admin)
    if not reason.strip():
        raise InvalidInput("say why the order is marked paid (--reason)")
    order = await Order.get_or_none(oid=oid, deleted_at__isnull=True)
    if order is None:
        raise NotFound(f"order {oid} not found")
    actor = f"admin:{account.username}"
    return await pay_order(
        order, channel="manual", payment_key=actor, actor_role=PLATFORM, actor_id=actor,
        reason=reason.strip(), apply_service=apply_service, now=now,
    )  # fmt: skip


DELETABLE_STATES = frozenset({OrderState.CLOSE, OrderState.DONE})


class RentalDevicesHeld(Conflict):
    """AD-15 on a rental whose devices its member still holds: the rental goes on, and ending
    it (退租, which returns the deposit) needs the order."""

    code = "rental_devices_held"

    def __init__(self, message: str, devices: Sequence[str]) -> None:
        super().__init__(message)
        self.devices = list(devices)

    @property
    def data(self) -> dict[str, Any]:
        return {"devices": self.devices}


async def delete_order(order: Order, *, now: dt.datetime | None = None) -> None:
    """AD-15 (soft): a closed or done order leaves every list and read; its rows stay (its
    lines still reference their products, its moves stay recorded). A rental is deleted only
    once its member holds none of its devices (each given back through 退租, or returned)."""
    if order.state not in DELETABLE_STATES:
        raise OrderStateConflict(
            f"the order is {order.state.name.lower()}: only closed or done orders are deleted",
            order.state,
        )
    if order.kind is OrderKind.RENTAL:
        held = await rental_devices_held(order)
        if held:
            raise RentalDevicesHeld(
                f"order {order.oid} is a rental whose member still holds {', '.join(held)}: "
                "it is deleted once the rental is ended (退租 returns the deposit through it)",
                held,
            )
    now = now or dt.datetime.now(dt.UTC)
    await Order.filter(id=order.id, deleted_at__isnull=True).update(deleted_at=now, updated_at=now)


async def rental_devices_held(order: Order) -> list[str]:
    """The devices of a rental order (those it shipped, or the replacements an exchange gave
    for them) that its member still holds."""
    from aquafleet.models.returns import goods_of  # it imports this module

    goods = await goods_of(order)
    held = await Device.filter(did__in=goods, owner_id=order.member_id).values_list(
        "did", flat=True
    )
    return sorted(str(did) for did in held)


async def transitions_of(order: Order) -> list[OrderTransition]:
    return list(await OrderTransition.filter(order_id=order.id).order_by("id"))
