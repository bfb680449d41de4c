"""Placing an order (AD-02): every line priced from the products as they are (a price a client
sends is never read), the breakdown and the products' snapshots stored, the vendor's next order
id taken, in one transaction. An Idempotency-Key sent again with the same request answers the
order it made; with another request (its digest, `request_hash`) it is refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from aquafleet.models.errors import Conflict, InvalidInput, NotFound, RequestReused
from aquafleet.models.members import LOGIN_ALLOWED, Member
from aquafleet.models.order_referrals import resolve_referral
from aquafleet.models.orders import (
    MAX_IDEMPOTENCY_KEY,
    MAX_LINES,
    MAX_QUANTITY,
    Order,
    OrderKind,
    OrderLine,
    format_order_id,
)
from aquafleet.models.products import (
    Billing,
    Product,
    ProductState,
    next_serial,
    shop_vendor,
    snapshot,
)


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


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """AD-02 as a member sends it (amounts are never part of it)."""

    lines: Sequence[LineRequest]
    receiver: Mapping[str, Any]
    memo: str = ""
    idempotency_key: str | None = None
    referral_code: str | None = None  # seed FAQ 8: see resolve_referral


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
