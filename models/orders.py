"""Orders (订单, seed AD-01..15): what a member bought or rented, what it costs, and where it is
in the seed's state machine. This module holds the order's rows (the order, its lines, the
devices it names, its moves), its states, kinds and events, and its ids; the rest lives beside
it:

- models/order_states.py: the state machine (TRANSITIONS, who may fire what) and `fire`;
- models/order_placing.py: AD-02, pricing the lines and the Idempotency-Key (request hash);
- models/order_referrals.py: the referral code at checkout (seed FAQ 8);
- models/order_payment.py: the one paid step (`pay_order`, `mark_paid`);
- models/order_queries.py: which orders a caller sees (`visible_orders`, `find_order`);
- models/order_deletion.py: AD-15.

Order id (OID), per the seed (section 1.2): `YYYYMMDD` (UTC date of creation) + the vendor's
4-character code + a 12-digit serial of that vendor (never reused), 24 characters, e.g.
20261206ACME000000000042; the front end shows it with a `D` in front, the database never stores
the `D`.

Every amount is computed from the products as they are when the order is made (a price a
client sends is never read) and kept in fen with its breakdown; each line keeps a snapshot of its
product, so a later edit of the product never changes an order.

Every move of the state machine is one row of `TRANSITIONS` (state x event -> state, and who may
fire the event); any other move is refused with the order's current state. Each move is recorded
in `OrderTransition` with who made it and why.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import IntEnum, StrEnum
from typing import Any

from tortoise import fields
from tortoise.models import Model

from aquafleet.models.agents import Agent
from aquafleet.models.errors import InvalidInput
from aquafleet.models.ids import check_vendor_code
from aquafleet.models.members import Member
from aquafleet.models.products import Product

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
    from aquafleet.models.service import ChangeStage, ServiceChange

    return (
        await ServiceChange.filter(did=did, request_id=oid, reason=reason)
        .exclude(stage=ChangeStage.PENDING)
        .exists()
    )
