"""The money ledger (models/money.py) on SQLite and PostgreSQL: postings balance and apply once,
guarded wallets never go below zero under concurrent spends, an order's payment and refunds
keep their invariants, and the check finds each planted break."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from aquafleet.models.accounts import create_account
from aquafleet.models.errors import Conflict, InvalidInput
from aquafleet.models.members import Member, member_uid
from aquafleet.models.money import (
    GUARDED_PREFIXES,
    Guard,
    InsufficientFunds,
    Leg,
    MoneyEntry,
    MoneyTransaction,
    Part,
    Refund,
    RefundExceedsPayment,
    RefundState,
    Side,
    balance,
    channel_account,
    check_ledger,
    move_refund,
    order_account,
    paid_fen,
    post,
    request_refund,
    settle_refund,
    wallet_account,
)
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.order_placing import LineRequest, OrderRequest, create_order
from aquafleet.models.products import create_product
from aquafleet.models.registry import create_vendor
from aquafleet.models.tenancy import Role
from tests.conftest import MASTER_SECRET
from tests.platform.test_cli import aquafleet, clean_env

pytestmark = pytest.mark.usefixtures("db")

ADMIN = "ops"
RECEIVER = {"name": "张三", "mobile": "13800138000", "address": "上海"}


async def _paid_order(price_fen: int = 3000, freight_fen: int = 500) -> Any:
    await create_vendor("MONY", "Money")
    await create_account(ADMIN, "0" * 32, Role.PLATFORM)
    member = await Member.create(uid=member_uid("MONY", 1), vendor_id="MONY", name="m", state=2)
    product = await create_product(
        "MONY",
        {
            "name": "滤芯",
            "billing": 1,
            "price_fen": price_fen,
            "freight_fen": freight_fen,
            "state": 1,
        },
    )
    order, _ = await create_order(member, OrderRequest([LineRequest(product.pid)], RECEIVER))
    return await mark_paid(order.oid, admin=ADMIN, reason="cash at the shop")


async def test_a_posting_balances_and_a_repeat_changes_nothing():
    legs = [Leg("channel:weixin:MONY", 700), Leg("wallet:MONY000000000001", -700)]
    first, created = await post("topup:1", kind="topup", vendor="MONY", legs=legs)
    again, created_again = await post("topup:1", kind="topup", vendor="MONY", legs=legs)
    assert created and not created_again and again.id == first.id
    assert await MoneyEntry.filter(txn_id=first.id).count() == 2
    assert await balance("wallet:MONY000000000001") == -700
    with pytest.raises(Conflict, match="other entries"):
        await post("topup:1", kind="topup", vendor="MONY", legs=[Leg("a", 1), Leg("b", -1)])


@pytest.mark.parametrize(
    "legs, message",
    [
        ([Leg("a", 5)], "at least two"),
        ([Leg("a", 5), Leg("b", -4)], "sum to 1"),
        ([Leg("a", 0), Leg("b", 0)], "zero entry"),
        ([Leg("a", 1.5), Leg("b", -1.5)], "integer fen"),  # type: ignore[arg-type]
        ([Leg("a", True), Leg("b", -1)], "integer fen"),
    ],
)
async def test_unbalanced_fractional_or_empty_postings_are_refused(legs: list[Leg], message: str):
    with pytest.raises(InvalidInput, match=message):
        await post("bad", kind="x", vendor="MONY", legs=legs)
    assert await MoneyTransaction.filter(key="bad").count() == 0


async def test_concurrent_spends_cannot_overdraw_a_wallet():
    wallet = wallet_account("MONY000000000001")
    await post(
        "topup",
        kind="topup",
        vendor="MONY",
        legs=[Leg("channel:weixin:MONY", 1000), Leg(wallet, -1000)],
    )
    guard = [Guard(wallet, Side.CREDIT)]

    async def spend(n: int) -> bool:
        try:
            await post(
                f"spend:{n}", kind="spend", vendor="MONY",
                legs=[Leg(wallet, 300), Leg(f"order:X{n}:goods", -300)], guards=guard,
            )  # fmt: skip
        except InsufficientFunds:
            return False
        return True

    results = await asyncio.gather(*(spend(n) for n in range(6)))
    assert sum(results) == 3  # 3 x 300 fit in 1000, the fourth would overdraw
    assert await balance(wallet) == -100
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []


async def test_mark_paid_books_the_orders_breakdown_once():
    order = await _paid_order()
    assert order.total_fen == 3500
    assert await paid_fen(order.oid) == 3500
    assert await balance(channel_account("manual", "MONY")) == 3500
    assert await balance(order_account(order.oid, Part.GOODS)) == -3000
    assert await balance(order_account(order.oid, Part.FREIGHT)) == -500
    await mark_paid(order.oid, admin=ADMIN, reason="asked twice")
    assert await paid_fen(order.oid) == 3500
    assert await MoneyTransaction.filter(order_oid=order.oid).count() == 1
    assert await check_ledger() == []


async def test_refunds_never_exceed_what_was_paid_and_apply_once():
    order = await _paid_order()
    first = await request_refund(
        order=order, amount_fen=2000, refund_no="R1", reason="x", actor="t"
    )
    assert first.state is RefundState.DUE
    assert (
        await request_refund(order=order, amount_fen=2000, refund_no="R1", reason="x", actor="t")
    ).id == first.id
    with pytest.raises(Conflict, match="another amount"):
        await request_refund(order=order, amount_fen=100, refund_no="R1", reason="x", actor="t")
    with pytest.raises(RefundExceedsPayment, match="1500 fen left"):
        await request_refund(order=order, amount_fen=1501, refund_no="R2", reason="x", actor="t")
    racing = await asyncio.gather(
        *(
            request_refund(
                order=order, amount_fen=1000, refund_no=f"race{n}", reason="x", actor="t"
            )
            for n in range(3)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Refund) for r in racing) == 1  # 1500 left: one of 1000 fits
    assert all(isinstance(r, (Refund, RefundExceedsPayment)) for r in racing)
    settled = await settle_refund("R1", channel="manual", channel_refund_id="CH-1")
    assert settled.state is RefundState.SUCCEEDED
    await settle_refund("R1", channel="manual", channel_refund_id="CH-1")
    assert await balance(channel_account("manual", "MONY")) == 1500
    assert await balance(order_account(order.oid, Part.REFUND)) == 2000
    failed = next(r for r in racing if isinstance(r, Refund))
    await move_refund(failed.refund_no, RefundState.FAILED, failure="card closed")
    # a failed refund gives its amount back to what may be refunded
    await request_refund(order=order, amount_fen=1500, refund_no="R3", reason="x", actor="t")
    with pytest.raises(Conflict, match="succeeded"):
        await move_refund("R1", RefundState.FAILED)
    assert await check_ledger() == []


async def test_the_check_finds_each_planted_break():
    order = await _paid_order()
    await request_refund(order=order, amount_fen=500, refund_no="R1", reason="x", actor="t")
    assert await check_ledger() == []
    txn = await MoneyTransaction.get(key=f"pay:{order.oid}")
    await MoneyEntry.create(txn_id=txn.id, account="order:x:goods", amount_fen=7, order_oid=None)
    lone = await MoneyTransaction.create(
        key="lone", kind="x", vendor_code="MONY", created_at=txn.created_at
    )
    await MoneyEntry.create(txn_id=lone.id, account="a", amount_fen=1)
    await Refund.filter(refund_no="R1").update(state=RefundState.SUCCEEDED)  # no ledger entries
    overdrawn = await MoneyTransaction.create(
        key="overdraw", kind="x", vendor_code="MONY", created_at=txn.created_at
    )
    await MoneyEntry.create(txn_id=overdrawn.id, account=wallet_account("U1"), amount_fen=50)
    await MoneyEntry.create(txn_id=overdrawn.id, account="order:y:goods", amount_fen=-50)
    found = {(p.what, p.subject) for p in await check_ledger(guarded_prefixes=GUARDED_PREFIXES)}
    assert found == {
        ("unbalanced", f"pay:{order.oid}"),
        ("too_few_entries", "lone"),
        ("refund_state_mismatch", "R1"),
        ("negative_balance", wallet_account("U1")),
    }


async def test_the_check_finds_money_refunded_out_of_nothing():
    """Two breaks each posting still balances: a refund's money moved with no refund asked
    for (a `refund:` transaction without its money_refund row), and a refund paid out through
    a channel that never took the order's money (the order was paid by hand, the refund went
    out through WeChat Pay). Both are money that left the platform for no payment."""
    order = await _paid_order()  # 3500 fen, channel manual
    await post(
        "refund:GHOST", kind="refund", vendor="MONY", order_oid=order.oid,
        legs=[Leg(channel_account("manual", "MONY"), -100),
              Leg(order_account(order.oid, Part.REFUND), 100)],
    )  # fmt: skip
    await request_refund(order=order, amount_fen=500, refund_no="R2", reason="x", actor="t")
    await settle_refund("R2", channel="weixin")
    found = {(p.what, p.subject) for p in await check_ledger(guarded_prefixes=GUARDED_PREFIXES)}
    assert found == {
        ("refund_without_request", "refund:GHOST"),
        ("refund_exceeds_channel", order.oid),
    }


async def test_the_check_command_says_ok_or_lists_each_problem(db: str, tmp_path: Any):
    order = await _paid_order()
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=db)
    code, out = await aquafleet(env, "money", "check")
    assert code == 0 and "ledger ok: 1 transactions" in out, out
    txn = await MoneyTransaction.get(key=f"pay:{order.oid}")
    await MoneyEntry.create(txn_id=txn.id, account="order:x:goods", amount_fen=7)
    code, out = await aquafleet(env, "money", "check", "--json")
    assert code == 1, out
    assert json.loads(out)["problems"] == [
        {"what": "unbalanced", "subject": f"pay:{order.oid}", "detail": "sums to 7 fen"}
    ]
