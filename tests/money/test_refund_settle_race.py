"""A refund settled while the channel's other answer (refused) is being recorded, and settled
twice at once, on SQLite and PostgreSQL: `settle_refund` decides under the refund row's lock
inside its transaction, so the money moves once and never for a refund that failed meanwhile
(whose amount may be refunded again)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aquafleet.models import money
from aquafleet.models.errors import Conflict
from aquafleet.models.money import (
    GUARDED_PREFIXES,
    MoneyTransaction,
    Part,
    Refund,
    RefundState,
    balance,
    channel_account,
    check_ledger,
    move_refund,
    order_account,
    request_refund,
    settle_refund,
)
from tests.money.test_ledger import _paid_order

pytestmark = pytest.mark.usefixtures("db")

RACE_TIMEOUT_S = 30  # a lock that never frees fails here, not at the suite's timeout


async def _requested(amount_fen: int = 2000) -> Any:
    order = await _paid_order()  # 3500 fen through `manual`
    await request_refund(order=order, amount_fen=amount_fen, refund_no="R1", reason="x", actor="t")
    await move_refund("R1", RefundState.REQUESTED, channel="manual")
    return order


async def test_two_settles_at_once_move_the_money_once():
    order = await _requested()
    settled = await asyncio.wait_for(
        asyncio.gather(*(settle_refund("R1", channel="manual") for _ in range(2))),
        RACE_TIMEOUT_S,
    )
    assert [r.state for r in settled] == [RefundState.SUCCEEDED] * 2
    assert await MoneyTransaction.filter(key="refund:R1").count() == 1
    assert await balance(order_account(order.oid, Part.REFUND)) == 2000
    assert await balance(channel_account("manual", "MONY")) == 1500
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []


async def test_a_refund_refused_while_it_is_settled_moves_no_money(
    monkeypatch: pytest.MonkeyPatch,
):
    """The channel answers the refund both ways at once (its refund refused to the sweep's
    resend, its success in a notification): the refusal is recorded first, the refund's
    amount is refunded again, and the settle that had read the refund still requested before
    its transaction posted the money anyway and marked the failed refund succeeded: paid out
    twice. Now the settle decides under the row's lock: the refund is failed, nothing moves."""
    order = await _requested()
    failed = asyncio.Event()
    real = money.in_transaction

    @contextlib.asynccontextmanager
    async def after_the_refusal(*args: Any) -> AsyncIterator[Any]:
        await failed.wait()  # the settle's transaction starts once the refusal is recorded
        async with real(*args) as connection:
            yield connection

    monkeypatch.setattr(money, "in_transaction", after_the_refusal)

    async def settle() -> Any:
        try:
            return await settle_refund("R1", channel="manual", channel_refund_id="CH-1")
        except Conflict as exc:
            return exc

    async def refuse() -> None:
        await move_refund("R1", RefundState.FAILED, channel="manual", failure="refused")
        failed.set()

    settled, _ = await asyncio.wait_for(asyncio.gather(settle(), refuse()), RACE_TIMEOUT_S)
    monkeypatch.setattr(money, "in_transaction", real)
    assert isinstance(settled, Conflict), settled
    assert (await Refund.get(refund_no="R1")).state is RefundState.FAILED
    assert not await MoneyTransaction.exists(key="refund:R1")
    # The failed refund's amount is refunded again, once: the order gets back what it paid.
    await request_refund(order=order, amount_fen=2000, refund_no="R2", reason="x", actor="t")
    await settle_refund("R2", channel="manual")
    assert await balance(order_account(order.oid, Part.REFUND)) == 2000
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []


async def test_a_settle_and_a_refusal_at_once_leave_one_answer():
    """Unforced: whichever wins, the refund and the ledger agree."""
    order = await _paid_order()
    for n in range(3):
        no = f"RR{n}"
        await request_refund(order=order, amount_fen=500, refund_no=no, reason="x", actor="t")
        await move_refund(no, RefundState.REQUESTED, channel="manual")
        await asyncio.wait_for(
            asyncio.gather(
                settle_refund(no, channel="manual"),
                move_refund(no, RefundState.FAILED, channel="manual", failure="refused"),
                return_exceptions=True,
            ),
            RACE_TIMEOUT_S,
        )
        refund = await Refund.get(refund_no=no)
        assert refund.state in (RefundState.SUCCEEDED, RefundState.FAILED)
        assert await MoneyTransaction.exists(key=f"refund:{no}") == (
            refund.state is RefundState.SUCCEEDED
        )
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []
