"""Due refunds are executed at WeChat Pay by the payments sweep: from the shell
(`aquafleet payments sweep`) and in the node, once per cluster under a Redis lease."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aquafleet.api.payments import PAYMENT_SWEEPER
from aquafleet.gateway.appkeys import TASKS
from aquafleet.models.money import Refund, RefundState, request_refund
from aquafleet.models.orders import Order
from tests.conftest import MASTER_SECRET
from tests.payments.test_wechat_pay_flow import Shop, assert_ledger_clean, shop
from tests.platform.test_cli import aquafleet, clean_env

__all__ = ["shop"]


async def _paid_with_refund_due(shop: Shop, refund_no: str, fen: int | None = None) -> str:
    oid = (await shop.order())["order_id"]
    bill = (await shop.prepay(oid)).data["bill_no"]
    await shop.fake.pay(bill)
    order = await Order.get(oid=oid)
    await request_refund(
        order=order, amount_fen=fen or order.total_fen, refund_no=refund_no, reason="退货",
        actor="test",
    )  # fmt: skip
    return oid


async def _refund_state(refund_no: str, want: RefundState, within_s: float = 15.0) -> RefundState:
    """The refund's state once it is `want`, or its state when `within_s` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        state = (await Refund.get(refund_no=refund_no)).state
        if state is want or loop.time() > deadline:
            return state
        await asyncio.sleep(0.05)


async def test_the_sweep_command_executes_due_refunds_once(
    shop: Shop, database_url: str, tmp_path: Any
):
    await _paid_with_refund_due(shop, "R-cli", 1200)
    # WeChat Pay confirms after the command ends (SQLite: one writer at a time across processes).
    shop.fake.refund_auto_succeed = False
    env = clean_env(
        data_dir=tmp_path / "cli", master_secret=MASTER_SECRET, database_url=database_url,
        wechatpay_api_url=shop.fake.url,
        payments_notify_url=f"http://127.0.0.1:{shop.node.http_port}",
    )  # fmt: skip
    code, out = await aquafleet(env, "payments", "sweep", "--json")
    assert code == 0, out
    lines = out.splitlines()
    report = json.loads("\n".join(lines[lines.index("{") : lines.index("}") + 1]))
    assert report["refunds_sent"] == 1 and report["errors"] == []
    assert (await Refund.get(refund_no="R-cli")).state is RefundState.REQUESTED
    await shop.fake.succeed_refund("R-cli")  # WeChat Pay notifies the node: refund succeeded
    assert (await Refund.get(refund_no="R-cli")).state is RefundState.SUCCEEDED
    code, out = await aquafleet(env, "payments", "sweep")
    assert code == 0 and "refunds sent 0" in out, out
    assert shop.fake.refunds["R-cli"].refund == 1200 and len(shop.fake.refunds) == 1
    code, out = await aquafleet(env, "money", "check")
    assert code == 0 and "ledger ok" in out, out
    await assert_ledger_clean()


async def test_the_node_sweeps_under_a_lease_that_passes_on(
    shop: Shop, database_url: str, node_factory: Any
):
    first = shop.node.app[PAYMENT_SWEEPER]
    assert first.owner  # the fixture's node took the lease at start (and sweeps hourly)
    second_node = await node_factory(
        database_url=database_url, wechatpay_api_url=shop.fake.url,
        payments_sweep_interval_s=0.1,
        payments_notify_url=f"http://127.0.0.1:{shop.node.http_port}",
    )  # fmt: skip
    second = second_node.app[PAYMENT_SWEEPER]
    await _paid_with_refund_due(shop, "R-node")
    passes = second.passes
    # The lease is the first node's: the second does not sweep, however often it tries.
    assert await _refund_state("R-node", RefundState.SUCCEEDED, within_s=0.5) is RefundState.DUE
    assert second.passes == passes == 0 and not second.owner
    # The first node's sweeper stops as at its shutdown, handing the lease over (stopping the
    # whole node would close the database this process shares).
    await shop.node.app[TASKS].stop("payments-sweeper")
    await first.release()
    assert await _refund_state("R-node", RefundState.REQUESTED) in (
        RefundState.REQUESTED, RefundState.SUCCEEDED,
    )  # fmt: skip
    assert second.owner
    await shop.fake.drain()
    assert await _refund_state("R-node", RefundState.SUCCEEDED) is RefundState.SUCCEEDED
    assert len(shop.fake.refunds) == 1
    await assert_ledger_clean()
