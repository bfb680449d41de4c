"""Which orders a caller sees: its scope, and one order by its id within it."""

from __future__ import annotations

from tortoise.queryset import QuerySet

from aquafleet.models.errors import NotFound
from aquafleet.models.orders import Order, is_valid_order_id
from aquafleet.models.tenancy import Principal, Role


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
