"""AD-15: deleting an order (soft), and the rental whose devices its member still holds, which
is not deleted."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from aquafleet.models.devices import Device
from aquafleet.models.errors import Conflict
from aquafleet.models.order_states import OrderStateConflict
from aquafleet.models.orders import Order, OrderKind, OrderState
from aquafleet.models.returns import goods_of

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
    goods = await goods_of(order)
    held = await Device.filter(did__in=goods, owner_id=order.member_id).values_list(
        "did", flat=True
    )
    return sorted(str(did) for did in held)
