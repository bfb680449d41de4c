"""Tickets opened before tickets took the node that sold their device (models/tickets.py
ticket_node) get the node that rule gives, and install tickets their order. No schema change.

Until then a device ticket took the device's own node, and none when the device had none (the
vendor's stock shipped for a node's order): the node that sold the device, and those above it,
could neither see nor work the ticket. A ticket with a node kept it (the device's node when it
opened is the rule's first step, and a device moved since moves no ticket); each one without a
node, open or closed (a node's history and AE-02 counts include its closed tickets), gets:

- the node of the order it is for: its `order_id` (a 退租, an exchange, given theirs by 0028),
  else the order its key names (`install:<oid>:<did>`, an AD-14 return's `return:<oid>:<did>`);
- else, for a device ticket, the node of the order whose goods the device was when the ticket
  opened (0028's rule: the member's newest purchase or rental delivered by then that held it);
  an order the vendor sold itself leaves the ticket the vendor's;
- else the node of its member: the member's node now (where it was when the ticket opened is
  not recorded).

An install ticket opened from a delivery without its order (`order_id`) gets the order its key
names. Running it again changes nothing."""

import importlib
from typing import Any

from tortoise import migrations
from tortoise.migrations import operations as ops

from aquafleet.models.tickets import NodeFacts, choose_node

_held = importlib.import_module("aquafleet.models.migrations.0028_exchange_order")

# ticket.type 1 install
_INSTALLS = (
    "SELECT id, vendor_id, dedup_key FROM ticket WHERE type = 1 AND order_id IS NULL "
    "AND dedup_key LIKE 'install:%' ORDER BY id"
)
_NODELESS = (
    "SELECT id, vendor_id, device_id, member_uid, order_id, dedup_key FROM ticket "
    "WHERE agent_id IS NULL ORDER BY id"
)
_ORDER_BY_ID = "SELECT id, agent_id FROM shop_order WHERE id = $1 AND vendor_id = $2"
_ORDER_BY_OID = "SELECT id, agent_id FROM shop_order WHERE oid = $1 AND vendor_id = $2"
_MEMBER = "SELECT agent_id FROM member WHERE uid = $1 AND vendor_id = $2"
_SET_ORDER = "UPDATE ticket SET order_id = $1 WHERE id = $2 AND order_id IS NULL"
_SET_NODE = "UPDATE ticket SET agent_id = $1 WHERE id = $2 AND agent_id IS NULL"
_KEYED = ("install", "return")  # keys naming the order a ticket is about: kind:<oid>:<did>


async def _one(client: Any, query: str, args: list[Any]) -> dict[str, Any] | None:
    rows = await client.execute_query_dict(_held.dialect_sql(client, query), args)
    return dict(rows[0]) if rows else None


def _keyed_oid(dedup_key: str | None) -> str | None:
    """The order id an install's or a return's key names."""
    kind, _, rest = (dedup_key or "").partition(":")
    oid = rest.partition(":")[0]
    return oid if kind in _KEYED and oid else None


async def assign_install_orders(client: Any) -> int:
    """Give each install ticket without an order the order its key names; how many got one."""
    assigned = 0
    for ticket in await client.execute_query_dict(_INSTALLS):
        oid = _keyed_oid(ticket["dedup_key"])
        order = await _one(client, _ORDER_BY_OID, [oid, ticket["vendor_id"]])
        if order is not None:
            await client.execute_query(
                _held.dialect_sql(client, _SET_ORDER), [order["id"], ticket["id"]]
            )
            assigned += 1
    return assigned


async def _order_of(client: Any, ticket: dict[str, Any]) -> dict[str, Any] | None:
    """The order a ticket is for or about, else the one whose goods its device was."""
    vid = ticket["vendor_id"]
    if ticket["order_id"] is not None:
        return await _one(client, _ORDER_BY_ID, [ticket["order_id"], vid])
    oid = _keyed_oid(ticket["dedup_key"])
    if oid is not None:
        return await _one(client, _ORDER_BY_OID, [oid, vid])
    if ticket["device_id"] is None or ticket["member_uid"] is None:
        return None
    held: dict[str, Any] | None = await _held.order_held_at(client, ticket)
    return held


async def assign_ticket_nodes(client: Any) -> int:
    """Give each ticket without a node the one ticket_node's rule gives; how many got one."""
    assigned = 0
    for ticket in await client.execute_query_dict(_NODELESS):
        order = await _order_of(client, ticket)
        member = None
        if order is None and ticket["member_uid"] is not None:
            member = await _one(client, _MEMBER, [ticket["member_uid"], ticket["vendor_id"]])
        node = choose_node(
            NodeFacts(
                has_order=order is not None,
                order_node=None if order is None else order["agent_id"],
                member_node=None if member is None else member["agent_id"],
            )
        )
        if node is not None:
            await client.execute_query(_held.dialect_sql(client, _SET_NODE), [node, ticket["id"]])
            assigned += 1
    return assigned


async def backfill(apps: Any, schema_editor: Any) -> None:
    await assign_install_orders(schema_editor.client)
    await assign_ticket_nodes(schema_editor.client)


class Migration(migrations.Migration):
    dependencies = [("models", "0030_old_bill_numbers")]

    initial = False

    operations = [
        ops.RunPython(backfill, ops.RunPython.noop),
    ]
