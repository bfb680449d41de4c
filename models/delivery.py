"""Delivering an order (AD-04/05/06): the parcel, and the devices it carries.

Delivering names the devices shipped (one per unit of the order's lines, in line order). Each
is bound to the member, remembers its product, gets its service from the line it fills (sale;
time rental for the package's days from now; volume rental with the package's ml) through
`models/service.py` with the order's request id (`order:<oid>`), and gets the product's
filters; an install ticket opens per device when the product has install service.

Order of effects: one transaction locks the order's row and checks its state there (of two
racing deliveries only one changes anything), applies the service changes (each once per device
and order id), moves the order to delivered and binds the devices. Redis keeps a service change
the transaction cannot take back; a retried delivery re-applies nothing. A delivery that fails
half way can be sent again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from aquafleet.models.devices import (
    Device,
    DeviceBound,
    DeviceType,
    check_usable,
    visible_devices,
)
from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.filters import set_device_filter_spec
from aquafleet.models.members import Member
from aquafleet.models.order_states import OrderStateConflict, fire, next_state
from aquafleet.models.orders import (
    Order,
    OrderDevice,
    OrderEvent,
    OrderKind,
    OrderLine,
    OrderState,
    applied_under_order_id,
    order_request_id,
)
from aquafleet.models.service import (
    DAY_S,
    PERSON_LOCK,
    DeviceService,
    ServiceMode,
)
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import Principal
from aquafleet.models.tickets import AutomaticTicket, TicketType, open_automatic_ticket

DELIVERY_FIELDS = ("company", "tracking_num", "delivery_tms", "delivery_clerk")


class ServiceApplier(Protocol):
    """Applies a service change to a device (the API passes the gateway facade's)."""

    async def __call__(self, did: str, change: ServiceChangeRequest) -> object: ...


@dataclass(frozen=True, slots=True)
class Parcel:
    """The seed's delivery block: company, tracking number, time, clerk."""

    company: str
    tracking_num: str
    delivery_clerk: str
    delivery_tms: dt.datetime | None = None

    def as_json(self, when: dt.datetime) -> dict[str, Any]:
        sent = (self.delivery_tms or when).astimezone(dt.UTC)
        return {
            "company": self.company,
            "tracking_num": self.tracking_num,
            "delivery_tms": sent.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "delivery_clerk": self.delivery_clerk,
        }


def service_change(line: OrderLine, oid: str, now: dt.datetime) -> ServiceChangeRequest:
    """The service a device of this line starts with: a sale, or the rental its package buys
    (the rental period starts at delivery)."""
    reason, request_id = f"order {oid}", order_request_id(oid)
    if line.package_key is None:
        return ServiceChangeRequest(
            op="configure", mode=ServiceMode.SALE, reason=reason, request_id=request_id
        )
    rent = line.snapshot.get("rent", {})
    package = next(p for p in rent.get("config", []) if p["key"] == line.package_key)
    if package.get("days") is not None:
        days = int(package["days"]) + int(rent.get("trial_days") or 0)  # free days first
        expires = int(now.timestamp()) + days * DAY_S
        # A retried delivery counts the rental from its own now: the same change all the same.
        return ServiceChangeRequest(
            op="configure", mode=ServiceMode.TIME_RENTAL, rental_expires_at=expires,
            reason=reason, request_id=request_id, retry_recomputes=True,
        )  # fmt: skip
    return ServiceChangeRequest(
        op="configure", mode=ServiceMode.VOLUME_RENTAL, remaining_ml=int(package["ml"]),
        reason=reason, request_id=request_id,
    )  # fmt: skip


async def _devices_for(
    principal: Principal, order: Order, dids: Sequence[str], lines: Sequence[OrderLine]
) -> list[tuple[Device, OrderLine]]:
    """The shipped devices, each with the line it fills; refused unless one device per unit,
    each of the order's vendor, visible to the caller, usable and not bound to someone else."""
    units = [line for line in lines for _ in range(line.quantity)]
    if len(dids) != len(units):
        raise InvalidInput(f"the order has {len(units)} units: name {len(units)} devices")
    if len(set(dids)) != len(dids):
        raise InvalidInput("a device is named twice")
    found = {d.did: d for d in await visible_devices(principal).filter(did__in=list(dids))}
    pairs = []
    for did, line in zip(dids, units, strict=True):
        device = found.get(did)
        if device is None or device.vendor_id != order.vendor_id:
            raise NotFound(f"device {did} not found")
        check_usable(device)
        if device.type == DeviceType.TEST:
            raise Conflict(
                f"device {did} is a test (quality-check) device, type 8: it pours without "
                "billing; give it its real type (AB-04) before shipping it"
            )
        if device.owner_id not in (None, order.member_id):
            raise DeviceBound(f"device {did} is bound to another member")
        pairs.append((device, line))
    return pairs


async def _lift_stock_lock(did: str, oid: str, apply_service: ServiceApplier) -> None:
    """A device shipped from stock (bound to nobody) starts afresh for its new holder: the
    person's lock it came back with (a return, a dismantle, an exchange) is lifted. The
    configure just made moved the database's copy up to the live state, which says whether
    there is one."""
    copy = await DeviceService.get_or_none(did=did)
    if copy is not None and copy.lock_bits & PERSON_LOCK:
        await apply_service(
            did, ServiceChangeRequest(op="unlock", reason=f"shipped from stock with order {oid}")
        )


async def deliver_order(
    principal: Principal,
    order: Order,
    parcel: Parcel,
    dids: Sequence[str],
    apply_service: ServiceApplier,
    *,
    now: dt.datetime | None = None,
) -> Order:
    """AD-05: ship the order with these devices (see the module's docstring)."""
    now = now or dt.datetime.now(dt.UTC)
    if order.kind is OrderKind.RENEWAL:
        raise OrderStateConflict("a renewal order is never delivered", order.state)
    next_state(order.state, OrderEvent.DELIVER, principal.role.value)  # refuse early
    lines = list(await OrderLine.filter(order_id=order.id).order_by("position"))
    pairs = await _devices_for(principal, order, dids, lines)
    member = await Member.get(uid=order.member_id)
    async with in_transaction("default"):
        # The locked state decides before any effect: of two racing deliveries (of different
        # devices, say) the one that waited sees the order delivered and configures nothing.
        current = await Order.filter(id=order.id).select_for_update().get()
        next_state(current.state, OrderEvent.DELIVER, principal.role.value)
        for device, line in pairs:
            if not await applied_under_order_id(device.did, order.oid, f"order {order.oid}"):
                await apply_service(device.did, service_change(line, order.oid, now))
            if device.owner_id is None:
                await _lift_stock_lock(device.did, order.oid, apply_service)
        delivery = {**parcel.as_json(now), "devices": list(dids)}
        await fire(
            order, OrderEvent.DELIVER, actor_role=principal.role.value,
            actor_id=principal.subject, reason=f"shipped {len(dids)} devices", now=now,
        )  # fmt: skip
        await Order.filter(id=order.id).update(delivery=delivery)
        await OrderDevice.bulk_create([OrderDevice(order_id=order.id, did=did) for did in dids])
        for device, line in pairs:
            free = Q(owner_id__isnull=True) | Q(owner_id=member.uid)
            taken = await Device.filter(free, did=device.did).update(
                owner_id=member.uid, bound_at=now, product_id=line.product_id, updated_at=now
            )
            if not taken:  # bound to someone else since it was checked
                raise DeviceBound(f"device {device.did} is bound to another member")
    for device, line in pairs:
        filters = line.snapshot.get("specification", {}).get("filters") or []
        if filters:
            await set_device_filter_spec(device.did, filters)
        if line.snapshot.get("install"):
            await open_automatic_ticket(
                AutomaticTicket(
                    dedup_key=f"install:{order.oid}:{device.did}", type=TicketType.INSTALL,
                    vendor_code=order.vendor_id, did=device.did, member_uid=order.member_id,
                    detail=f"install for order {order.oid}", about_order_id=order.id,
                )
            )  # fmt: skip
    await order.refresh_from_db()
    return order


async def change_delivery(order: Order, changes: Mapping[str, Any]) -> Order:
    """AD-06 (customer service): correct the parcel's company, number, time or clerk of a
    delivered order; the devices shipped do not change here."""
    renewal = order.kind is OrderKind.RENEWAL  # names the device it renewed, never a parcel
    if order.delivery is None or renewal or order.state in (OrderState.OBLIGATION, OrderState.PAID):
        raise OrderStateConflict(
            f"the order is {order.state.name.lower()}: it has no delivery to change", order.state
        )
    unknown = set(changes) - set(DELIVERY_FIELDS)
    if unknown:
        raise InvalidInput(f"not a delivery field: {sorted(unknown)[0]}")
    if not changes:
        return order
    async with in_transaction("default"):
        current = await Order.filter(id=order.id).select_for_update().get()
        if current.delivery is None:
            raise Conflict("the order has no delivery to change")
        await Order.filter(id=order.id).update(
            delivery={**current.delivery, **changes}, updated_at=dt.datetime.now(dt.UTC)
        )
    await order.refresh_from_db()
    return order
