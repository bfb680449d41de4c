"""An exchange ticket (换机) names the order whose goods its device is (`ticket.order_id`, a
column dismantle and install tickets already use): an order's goods follow only its own
exchanges (models/returns.py goods_shipped_as), so a device the vendor took back and shipped
again with another order no longer brings that order's replacements into the first one's
goods (its member could end their rental, 退租, and get its deposit back). No schema change.

The backfill gives the exchanges opened before this the order they were for, oldest first
(an exchange of a replacement comes after the one that gave it): the member's newest
purchase or rental delivered before the ticket was opened whose goods, as the exchanges
assigned so far make them, hold the device, and that had neither exchanged it away nor
ended its rental before. One no order accounts for keeps null (no order follows it)."""

import json
import re
from typing import Any

from tortoise import migrations
from tortoise.migrations import operations as ops

# ticket.type 2 exchange, ticket.state 6 done; shop_order.kind 1 purchase, 2 rental (a
# renewal, 3, ships nothing).
_LEGACY = (
    "SELECT id, vendor_id, device_id, member_uid FROM ticket WHERE type = 2 "
    "AND order_id IS NULL AND device_id IS NOT NULL AND member_uid IS NOT NULL ORDER BY id"
)
_ORDERS = (
    "SELECT id, oid, agent_id, delivery FROM shop_order WHERE vendor_id = $1 AND member_id = $2 "
    "AND kind IN (1, 2) AND delivery IS NOT NULL AND delivered_at IS NOT NULL "
    "AND delivered_at <= (SELECT created_at FROM ticket WHERE id = $3) ORDER BY id DESC"
)
_EXCHANGED = (
    "SELECT device_id, new_device_id FROM ticket WHERE type = 2 AND state = 6 "
    "AND order_id = $1 AND new_device_id IS NOT NULL AND id < $2 ORDER BY id"
)
_GONE = (
    "SELECT COUNT(*) AS n FROM ticket WHERE order_id = $1 AND device_id = $2 AND id < $3 "
    "AND state = 6 AND (type = 2 OR dedup_key = $4)"
)
_ASSIGN = "UPDATE ticket SET order_id = $1 WHERE id = $2 AND order_id IS NULL"


def _goods(delivery: Any, exchanged: list[dict[str, Any]]) -> set[str]:
    """The order's devices: those it shipped, then the replacements its exchanges gave."""
    if isinstance(delivery, str):
        delivery = json.loads(delivery)
    goods = {str(did) for did in (delivery or {}).get("devices", [])}
    for row in exchanged:  # oldest first: a chain's links come in order
        if str(row["device_id"]) in goods:
            goods.add(str(row["new_device_id"]))
    return goods


def dialect_sql(client: Any, text: str) -> str:
    """`text` with PostgreSQL's $n placeholders, as the client's dialect takes them."""
    return text if client.capabilities.dialect == "postgres" else re.sub(r"\$\d+", "?", text)


async def order_held_at(client: Any, ticket: dict[str, Any]) -> dict[str, Any] | None:
    """The order (`id`, `oid`, `agent_id`) whose goods the ticket's device was when the ticket
    (`id`, `vendor_id`, `device_id`, `member_uid`) was opened: the member's newest purchase or
    rental delivered by then that held it and had neither exchanged it away nor ended its
    rental; None when no order accounts for it. (Migration 0031 reuses it.)"""
    did, tid = str(ticket["device_id"]), ticket["id"]
    orders = await client.execute_query_dict(
        dialect_sql(client, _ORDERS), [ticket["vendor_id"], ticket["member_uid"], tid]
    )
    for order in orders:
        exchanged = await client.execute_query_dict(
            dialect_sql(client, _EXCHANGED), [order["id"], tid]
        )
        if did not in _goods(order["delivery"], exchanged):
            continue
        key = f"rental-end:{order['oid']}:{did}"
        gone = await client.execute_query_dict(
            dialect_sql(client, _GONE), [order["id"], did, tid, key]
        )
        if int(gone[0]["n"]):
            continue
        return dict(order)
    return None


async def assign_exchange_orders(client: Any) -> int:
    """Give each exchange ticket without an order the order it was for; how many got one."""
    assigned = 0
    for ticket in await client.execute_query_dict(_LEGACY):
        order = await order_held_at(client, ticket)
        if order is not None:
            await client.execute_query(dialect_sql(client, _ASSIGN), [order["id"], ticket["id"]])
            assigned += 1
    return assigned


async def backfill(apps: Any, schema_editor: Any) -> None:
    await assign_exchange_orders(schema_editor.client)


class Migration(migrations.Migration):
    dependencies = [('models', '0027_refund_succeeded_at')]

    initial = False

    operations = [
        ops.RunPython(backfill, ops.RunPython.noop),
    ]
