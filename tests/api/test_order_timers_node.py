"""The order timers inside the node (gateway/order_timers.py): two nodes on one Redis and one
database sweep under one lease, a due order moves once, and neither a handover nor a restart
moves it again. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from aquafleet.gateway.appkeys import ORDER_TIMERS
from aquafleet.gateway.node import stop_order_timers
from aquafleet.gateway.order_timers import OrderTimerLoop
from aquafleet.models.members import Member, member_uid
from aquafleet.models.order_placing import LineRequest, OrderRequest, create_order
from aquafleet.models.orders import Order, OrderState, OrderTransition

INTERVAL_S = 0.05
RECEIVER = {"name": "张三", "phone": "13900000000", "address": "南方软件园A123"}


async def until(check: Callable[[], Any], *, timeout_s: float = 10.0, what: str) -> None:
    """Wait for `check()` (sync or async) to hold, looking every 20 ms, at most timeout_s."""
    async with asyncio.timeout(timeout_s):
        while True:
            answer = check()
            if asyncio.iscoroutine(answer):
                answer = await answer
            if answer:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover (the timeout raises first)


async def _due_unpaid_order(vid: str) -> Order:
    from aquafleet.models.products import create_product
    from aquafleet.models.registry import create_vendor

    await create_vendor(vid, "Shop")
    member = await Member.create(uid=member_uid(vid, 1), vendor_id=vid, name="m", state=2)
    product = await create_product(
        vid, {"name": "净水机", "billing": 1, "price_fen": 100, "state": 1}
    )
    order, _ = await create_order(member, OrderRequest([LineRequest(product.pid)], RECEIVER))
    # Unpaid for 25 hours: past the default 24.
    created = dt.datetime.now(dt.UTC) - dt.timedelta(hours=25)
    await Order.filter(id=order.id).update(created_at=created)
    return order


async def test_two_nodes_close_a_due_order_once_and_a_restart_does_not_again(
    database_url: str, node_factory: Any
):
    node_a = await node_factory(database_url=database_url, order_timer_interval_s=INTERVAL_S)
    node_b = await node_factory(database_url=database_url, order_timer_interval_s=INTERVAL_S)
    loop_a: OrderTimerLoop = node_a.app[ORDER_TIMERS]
    loop_b: OrderTimerLoop = node_b.app[ORDER_TIMERS]
    await until(lambda: loop_a.owner or loop_b.owner, what="no node took the lease")
    owner, other = (loop_a, loop_b) if loop_a.owner else (loop_b, loop_a)
    owner_node, other_node = (node_a, node_b) if owner is loop_a else (node_b, node_a)

    order = await _due_unpaid_order("TIME")

    async def closed() -> bool:
        return (await Order.get(id=order.id)).state is OrderState.CLOSE

    await until(closed, what="the due order was not closed")
    # The order is closed before the sweep that closed it returns (it goes on to the other
    # timers) and counts its moves: wait for that sweep to count, then check who ran it.
    await until(lambda: owner.moved + other.moved >= 1, what="the closing sweep did not return")
    moves = await OrderTransition.filter(order_id=order.id)
    assert [(m.event, m.actor_role, m.reason) for m in moves] == [
        ("cancel", "system", "not paid in time")
    ]
    assert owner.moved == 1 and owner.passes >= 1
    assert not other.owner and other.passes == 0  # the lease kept the other node out

    # The owner's timers stop as its shutdown stops them: the lease is handed over at once,
    # the other node sweeps and moves nothing. (Both nodes share this process's database
    # connection, so the node itself stays up until the end.)
    await stop_order_timers(owner_node.app)
    assert not owner.owner
    await until(lambda: other.owner and other.passes >= 1, what="no handover")
    # Restart: every node stops, a new one starts on the same Redis and database and sweeps.
    await owner_node.stop()
    await other_node.stop()
    restarted = await node_factory(database_url=database_url, order_timer_interval_s=INTERVAL_S)
    loop_r: OrderTimerLoop = restarted.app[ORDER_TIMERS]
    await until(lambda: loop_r.owner and loop_r.passes >= 1, what="the restart did not sweep")
    assert other.moved == 0 and loop_r.moved == 0
    assert await OrderTransition.filter(order_id=order.id).count() == 1
    assert (await Order.get(id=order.id)).state is OrderState.CLOSE


async def test_a_node_without_order_timers_leaves_them_to_cron(
    database_url: str, node_factory: Any
):
    node = await node_factory(database_url=database_url, order_timers=False)
    assert ORDER_TIMERS not in node.app
    order = await _due_unpaid_order("CRON")
    from aquafleet.models.order_timers import sweep

    assert (await Order.get(id=order.id)).state is OrderState.OBLIGATION
    assert (await sweep()).closed == 1  # what `aquafleet orders run-timers` runs
    assert (await Order.get(id=order.id)).state is OrderState.CLOSE
