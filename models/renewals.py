"""Renewal orders (kind 3, seed FAQ 2): a member buys another rental period for a device it
already holds (is bound to).

The package is one of the device's product as the product is now (the product the delivering
order recorded on the device, `Device.product_id`; a retired product still renews the devices
it rented). The order costs the package's rent alone: no deposit, no freight, no install fee.
The device must be in time rental (the package must buy days) or volume rental (ml); a sale or
vending device is refused (409). The order's `delivery` names the device it renews
(`{"devices": [did]}`, no parcel): a renewal is never shipped.

Paying it (`models.order_payment.mark_paid`) applies the renewal at once through `models/service.py`
with the order's request id (`order:<oid>`, models.orders.order_request_id: extend by the days,
or top up the ml), then moves the order paid -> done (event `renew`, system). The service
change goes first: a failure leaves the order paid and a retried mark-paid applies it again,
once (the request id makes it a no-op in Redis); one paid through a channel, whose repeated
notification is a duplicate, is applied by the payments sweep (`finish_paid_renewals`) once it
is older than `payments_query_after_s`.

Who the order is attributed to (`referrer_uid`, `agent_id`, hence who earns its commission,
docs/commissions.md) is the order that brought the device to the member (`delivering_order`:
the newest of the member's orders, not a renewal, that shipped it, or the device an exchange
replaced with it), kept when the renewal is made: a renewal continues the rental its referrer
or node sold, whatever the member's own referrer or node is now (a referral code at checkout,
a referrer set or changed later, a member moved to another node). A device no order of the
member brought (bound with AB-11) is attributed as an order without a code: the member's own.

Paying re-checks that the member still holds the device: one unbound or returned since the
order was made is not renewed (RenewalDeviceGone, 409); the order stays paid, and a refund of
what was paid is requested (refund number `renewal-{oid}`, once however often it is retried)
for the payment channel to pay back (models/money.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Subquery
from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device, DeviceBound, check_usable, visible_devices
from aquafleet.models.errors import Conflict, DomainError, InvalidInput, NotFound
from aquafleet.models.members import LOGIN_ALLOWED, Member
from aquafleet.models.order_placing import first_of_key, request_digest
from aquafleet.models.order_referrals import Attribution
from aquafleet.models.order_states import SYSTEM, OrderStateConflict, fire
from aquafleet.models.orders import (
    MAX_IDEMPOTENCY_KEY,
    Order,
    OrderDevice,
    OrderEvent,
    OrderKind,
    OrderLine,
    OrderState,
    OrderTransition,
    applied_under_order_id,
    format_order_id,
    order_request_id,
)
from aquafleet.models.products import Product, ProductState, next_serial, shop_vendor, snapshot
from aquafleet.models.returns import goods_shipped_as
from aquafleet.models.service import DeviceService, ServiceMode
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.tickets import Ticket, TicketState, TicketType

if TYPE_CHECKING:
    from aquafleet.models.delivery import ServiceApplier

RENEWABLE_PRODUCT_STATES = (ProductState.PUBLISHED, ProductState.RETIRED)


async def _held_device(member: Member, did: str) -> Device:
    """The device if the member holds it: unknown, another tenant's or not visible to the
    member answers 404; visible (shared) but bound to someone else answers 409."""
    principal = Principal(Role.MEMBER, member.uid, vendor_code=member.vendor_id)
    device = await visible_devices(principal).filter(did=did).first()
    if device is None or device.vendor_id != member.vendor_id:
        raise NotFound(f"device {did} not found")
    if device.owner_id != member.uid:
        raise DeviceBound(
            f"device {did} is not held by member {member.uid}: only its holder renews"
        )
    check_usable(device)
    return device


async def delivering_order(member_uid: str, did: str) -> Order | None:
    """The order that brought `did` to the member: the newest of its orders (not a renewal,
    not given back with AD-14) whose goods are `did` now, shipped as such or given for a device
    it shipped by an exchange, or a chain of them (换机, models/returns.py goods_shipped_as).
    None when no order of the member brought it (bound with AB-11, say)."""
    stands_for, frontier = {did}, [did]
    while frontier:  # back through the exchanges that gave these devices
        replaced = await Ticket.filter(
            type=TicketType.EXCHANGE, state=TicketState.DONE, new_device_id__in=frontier,
            device_id__isnull=False,
        ).values_list("device_id", flat=True)  # fmt: skip
        frontier = [str(old) for old in replaced if str(old) not in stands_for]
        stands_for.update(frontier)
    shipped = await OrderDevice.filter(
        did__in=sorted(stands_for), order__member_id=member_uid,
        order__kind__not=OrderKind.RENEWAL, order__state__not=OrderState.REFUND,
    ).values_list("order_id", flat=True)  # fmt: skip
    for order in await Order.filter(id__in=set(shipped)).order_by("-delivered_at", "-id"):
        if did in await goods_shipped_as(order):
            return order
    return None


async def renewal_attribution(member: Member, did: str) -> Attribution:
    """Whom a renewal of `did` is attributed to: the order that brought the device to the
    member (its referrer and node as that order kept them), else the member's own."""
    brought = await delivering_order(member.uid, did)
    if brought is None:
        return Attribution(member.agent_id, member.referrer_id)
    return Attribution(brought.agent_id, brought.referrer_uid)


async def create_renewal(
    member: Member,
    did: str,
    package_key: str,
    *,
    memo: str = "",
    idempotency_key: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Order, bool]:
    """A renewal order for `did` with the package `package_key` of the device's product
    (see the module's docstring). Returns (order, created) as `create_order` does."""
    key = idempotency_key
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    digest = request_digest("renewal", {"did": did, "package": package_key, "memo": memo})
    first = await first_of_key(member.uid, key, digest)
    if first is not None:
        return first, False
    if member.state not in LOGIN_ALLOWED:
        raise Conflict(f"member {member.uid} cannot order (disabled or deregistered)")
    await shop_vendor(member.vendor_id)
    device = await _held_device(member, did)
    service = await DeviceService.get_or_none(did=did)
    mode = service.mode if service is not None else None
    if mode not in (ServiceMode.TIME_RENTAL, ServiceMode.VOLUME_RENTAL):
        raise Conflict(f"device {did} is not rented (time or volume): it has nothing to renew")
    product = None
    if device.product_id is not None:
        product = await Product.get_or_none(
            pid=device.product_id, vendor_id=member.vendor_id, state__in=RENEWABLE_PRODUCT_STATES
        )
    if product is None:
        raise Conflict(f"device {did} has no product to renew from")
    package = next((p for p in product.rent_packages if p["key"] == package_key), None)
    if package is None:
        raise InvalidInput(f"product {product.pid} has no rent package {package_key!r}")
    unit = "days" if mode is ServiceMode.TIME_RENTAL else "ml"
    if package.get(unit) is None:
        raise InvalidInput(
            f"package {package_key!r} does not buy {unit}, and device {did} is rented by {unit}"
        )
    rent = int(package["value"])
    attributed = await renewal_attribution(member, did)
    now = now or dt.datetime.now(dt.UTC)
    try:
        async with in_transaction("default") as conn:
            serial = await next_serial(conn, member.vendor_id, "order")
            order = await Order.create(
                oid=format_order_id(now, member.vendor_id, serial),
                vendor_id=member.vendor_id, member_id=member.uid, agent_id=attributed.agent_id,
                referrer_uid=attributed.referrer_uid, kind=OrderKind.RENEWAL, receiver={},
                memo=memo, rent_fen=rent, total_fen=rent, delivery={"devices": [did]},
                idempotency_key=key, request_hash=digest, created_at=now, updated_at=now,
            )  # fmt: skip
            await OrderDevice.create(order=order, did=did)
            await OrderLine.create(
                order=order, product_id=product.pid, position=1, quantity=1,
                package_key=package_key, price_fen=rent, amount_fen=rent,
                snapshot=snapshot(product),
            )  # fmt: skip
    except IntegrityError:
        first = await first_of_key(member.uid, key, digest)
        if first is None:
            raise
        return first, False
    return order, True


class RenewalDeviceGone(Conflict):
    """A renewal was paid for a device its member no longer holds: it is not applied."""

    code = "renewal_device_gone"


def renewal_change(line: OrderLine, oid: str) -> ServiceChangeRequest:
    """What paying the renewal does to the device: extend by the package's days (from the
    later of now and the current expiry) or top up its ml, with the order's request id."""
    packages = line.snapshot.get("rent", {}).get("config", [])
    package = next(p for p in packages if p["key"] == line.package_key)
    reason, request_id = f"renewal order {oid}", order_request_id(oid)
    if package.get("days") is not None:
        return ServiceChangeRequest(
            op="extend", days=int(package["days"]), reason=reason, request_id=request_id
        )
    return ServiceChangeRequest(
        op="top_up", ml=int(package["ml"]), reason=reason, request_id=request_id
    )


async def apply_renewal(
    order: Order, apply_service: ServiceApplier, *, now: dt.datetime | None = None
) -> Order:
    """A paid renewal: change the device, then paid -> done. Idempotent (see the module)."""
    if order.kind is not OrderKind.RENEWAL or order.state is not OrderState.PAID:
        return order
    line = await OrderLine.filter(order_id=order.id).order_by("position").first()
    if line is None or not order.delivery:
        raise Conflict(f"renewal order {order.oid} names no device")
    did = order.delivery["devices"][0]
    device = await Device.get_or_none(did=did)
    if device is None or device.owner_id != order.member_id:
        from aquafleet.models.money import order_refundable_fen, request_refund

        paid = await order_refundable_fen(order.oid)  # a duplicate payment is refunded apart
        if paid:  # the money goes back (once: the refund number is the order's)
            await request_refund(
                order=order, amount_fen=paid, refund_no=f"renewal-{order.oid}",
                reason=f"renewal of {did} not applied: the member no longer holds it",
                actor=SYSTEM,
            )  # fmt: skip
        raise RenewalDeviceGone(
            f"device {did} is no longer held by member {order.member_id} (unbound or returned "
            f"since renewal order {order.oid} was made): the renewal is not applied; the order "
            "stays paid and its payment is to be refunded"
        )
    check_usable(device)
    if not await applied_under_order_id(did, order.oid, f"renewal order {order.oid}"):
        await apply_service(did, renewal_change(line, order.oid))
    try:
        return await fire(
            order, OrderEvent.RENEW, actor_role=SYSTEM, actor_id=SYSTEM,
            reason=f"renewed {did}", now=now,
        )  # fmt: skip
    except (IntegrityError, OrderStateConflict):
        if not await OrderTransition.exists(order_id=order.id, event=OrderEvent.RENEW.value):
            raise
        await order.refresh_from_db()
        return order


@dataclass(frozen=True, slots=True)
class RenewalsSwept:
    """What one pass of `finish_paid_renewals` did: how many are done now, and the renewals
    refused (order id, why), each tried again at a later pass after the others."""

    finished: int = 0
    refused: tuple[tuple[str, str], ...] = ()


async def finish_paid_renewals(
    apply_service: ServiceApplier, limit: int, paid_before: dt.datetime
) -> RenewalsSwept:
    """Renewals a failure left paid after their payment was booked (the device change failed
    when the channel's notification or the wallet paid it: Redis away, the node stopped, and
    a resent notification is a duplicate that pays nothing): applied now, each once (the order
    request id says so). Only those paid before `paid_before`: a renewal paid a moment ago is
    being applied by the notification that paid it. One whose device left its member stays
    paid with its refund requested and is not tried again; one refused otherwise (a disabled
    device) is tried again at a later call. The least recently tried go first: each renewal
    tried goes to the back (its `updated_at`), so a batch of renewals refused every time never
    starves a newer one (as the sweep's late bills, models/payments.py `late_bills`)."""
    from aquafleet.models.money import Refund

    refunded = Refund.filter(refund_no__startswith="renewal-").values("order_oid")
    left_paid = Order.filter(
        kind=OrderKind.RENEWAL, state=OrderState.PAID, paid_at__lte=paid_before,
        deleted_at__isnull=True,
    ).exclude(oid__in=Subquery(refunded))  # fmt: skip
    finished, refused = 0, []
    for order in await left_paid.order_by("updated_at", "id").limit(limit):
        # To the back first: whatever this try ends in (a failure that is no DomainError
        # included), the next pass starts with the others.
        tried = dt.datetime.now(dt.UTC)
        await Order.filter(id=order.id, state=OrderState.PAID).update(updated_at=tried)
        try:
            order = await apply_renewal(order, apply_service)
        except DomainError as exc:  # gone (its refund is requested now), or refused
            refused.append((order.oid, f"{exc.code}: {exc}"))
            continue
        if order.state is OrderState.DONE:
            finished += 1
    return RenewalsSwept(finished, tuple(refused))
