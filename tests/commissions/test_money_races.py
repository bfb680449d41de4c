"""Commission and refund money fired twice at once in the models, on SQLite and PostgreSQL
(two calls, two connections, meeting at row locks): withdrawals asked and settled twice, a
refund asked and settled twice, and the moves that decide between an earner's available
commission and its debt racing each other (a failed withdrawal coming back, an order done, a
refund reversing). Money moves once, no account crosses zero, and both checks
(`aquafleet commissions check`) find nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from aquafleet.models import commissions, withdrawals
from aquafleet.models.commissions import Summary, Withdrawal, WithdrawalState, member_earner
from aquafleet.models.errors import Conflict, RequestReused
from aquafleet.models.money import (
    InsufficientFunds,
    MoneyTransaction,
    Refund,
    RefundExceedsPayment,
    request_refund,
    settle_refund,
)
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.withdrawals import (
    ManualPayout,
    WithdrawalTooSoon,
    request_withdrawal,
    settle_withdrawal,
)
from tests.commissions.test_scenario import ADMIN, done, invariants, make_chain, of, order_of, paid

pytestmark = pytest.mark.usefixtures("db")

T = TypeVar("T")
RACE_TIMEOUT_S = 30


async def at_once(*calls: Awaitable[T]) -> list[T | BaseException]:
    """The calls at once, bounded, with what each answered or raised."""
    gathered = asyncio.gather(*calls, return_exceptions=True)
    return list(await asyncio.wait_for(gathered, RACE_TIMEOUT_S))


def slow_reads(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    """`module`'s balance reads take a moment longer (after reading): two transactions that
    each decide on a balance then overlap every time, as they can on any busy database."""
    read: Callable[[str], Awaitable[int]] = module.balance

    async def slowly(account: str) -> int:
        value = await read(account)
        await asyncio.sleep(0.2)
        return value

    monkeypatch.setattr(module, "balance", slowly)


# ----------------------------------------------------------------------------- withdrawals


async def test_one_withdrawal_asked_twice_at_once_moves_its_money_once():
    chain = await make_chain()
    await done(await paid(chain, quantity=4))  # M2: 2519 available
    earner, m2 = chain.member(chain.m2), member_earner(chain.m2)
    results = await at_once(
        *(request_withdrawal(earner, amount_fen=500, request_id="w", channel=ManualPayout())
          for _ in range(2))
    )  # fmt: skip
    assert not [r for r in results if isinstance(r, BaseException)], results
    made = [r for r in results if not isinstance(r, BaseException)]
    assert sorted(created for _w, created in made) == [False, True]
    assert made[0][0].id == made[1][0].id
    assert await Withdrawal.filter(earner=m2).count() == 1
    assert await of(m2) == Summary(available=2019, payout=500, earned=2519)
    # The same request id with another amount, at once with the first's retry: refused.
    results = await at_once(
        request_withdrawal(earner, amount_fen=500, request_id="w", channel=ManualPayout()),
        request_withdrawal(earner, amount_fen=700, request_id="w", channel=ManualPayout()),
    )
    assert isinstance(results[1], RequestReused) and not isinstance(results[0], BaseException)
    await invariants()


async def test_two_withdrawals_beyond_the_balance_at_once_let_one_through():
    """With the 30-second rule in force: the first passes, the other waits (rate_limited) or
    finds the balance short; never both, never below zero."""
    chain = await make_chain()
    await done(await paid(chain, quantity=4))
    earner, m2 = chain.member(chain.m2), member_earner(chain.m2)
    results = await at_once(
        *(request_withdrawal(earner, amount_fen=2000, request_id=f"w{i}", channel=ManualPayout())
          for i in range(2))
    )  # fmt: skip
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], WithdrawalTooSoon | InsufficientFunds)
    assert await of(m2) == Summary(available=519, payout=2000, earned=2519)
    await invariants()


async def test_a_withdrawal_settled_twice_at_once_moves_its_money_once():
    chain = await make_chain()
    await done(await paid(chain, quantity=4))
    earner, m2 = chain.member(chain.m2), member_earner(chain.m2)
    first, _ = await request_withdrawal(
        earner, amount_fen=1000, request_id="w1", channel=ManualPayout()
    )
    paid_twice = await at_once(
        *(settle_withdrawal(first.id, paid=True, reason="sent", actor="ops") for _ in range(2))
    )
    assert all(isinstance(w, Withdrawal) and w.state is WithdrawalState.PAID for w in paid_twice)
    assert await MoneyTransaction.filter(key=f"withdrawal-paid:{first.id}").count() == 1
    assert await of(m2) == Summary(available=1519, withdrawn=1000, earned=2519)

    # Paid and failed at once (the operator and the channel): one of them, money once.
    second, _ = await request_withdrawal(
        earner, amount_fen=1000, request_id="w2", channel=ManualPayout(),
        now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
    )  # fmt: skip
    ended = await at_once(
        settle_withdrawal(second.id, paid=True, reason="sent", actor="ops"),
        settle_withdrawal(second.id, paid=False, reason="bounced", actor="ops"),
    )
    assert len([r for r in ended if isinstance(r, Conflict)]) == 1, ended
    state = (await Withdrawal.get(id=second.id)).state
    if state is WithdrawalState.PAID:
        assert await of(m2) == Summary(available=519, withdrawn=2000, earned=2519)
    else:
        assert await of(m2) == Summary(available=1519, withdrawn=1000, earned=2519)
    await invariants()


async def test_a_withdrawal_failing_while_a_refund_reverses_its_commission_pays_the_debt(
    monkeypatch: pytest.MonkeyPatch,
):
    """All of M2's commission is on its way out when its order is refunded in full (a debt:
    the reversal finds nothing available) and, at the same moment, the transfer fails (the
    money comes back). The money coming back pays the debt: M2 has nothing to withdraw.
    Before, the two decided on balances read apart (the failure locked the debt, the reversal
    the available account): the failure read no debt and made the money available, the
    reversal read nothing available and made a debt, and M2 could withdraw the reversed
    commission again while owing it."""
    chain = await make_chain()
    order = await done(await paid(chain))
    m2 = member_earner(chain.m2)
    withdrawal, _ = await request_withdrawal(
        chain.member(chain.m2), amount_fen=1259, request_id="w", channel=ManualPayout()
    )
    await request_refund(order=order, amount_fen=order.total_fen, refund_no="all", reason="t",
                         actor="t")  # fmt: skip
    slow_reads(monkeypatch, withdrawals)
    slow_reads(monkeypatch, commissions)
    results = await at_once(
        settle_withdrawal(withdrawal.id, paid=False, reason="account closed"),
        settle_refund("all", channel="manual"),
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert await of(m2) == Summary(reversed=1259, earned=0)
    with pytest.raises(InsufficientFunds):
        await request_withdrawal(
            chain.member(chain.m2), amount_fen=1259, request_id="w-2", channel=ManualPayout(),
            now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
        )  # fmt: skip
    await invariants()


async def test_an_order_done_while_another_is_reversed_into_a_debt_pays_the_debt(
    monkeypatch: pytest.MonkeyPatch,
):
    """M2 withdrew the commission of its first order; that order is refunded in full (a debt)
    at the moment its second order is done (its commission becoming available pays the debt
    first). However they interleave, M2 ends with what the second order earned less the
    debt, not with both the debt and the whole commission available."""
    chain = await make_chain()
    first = await done(await paid(chain))
    m2 = member_earner(chain.m2)
    await request_withdrawal(
        chain.member(chain.m2), amount_fen=1259, request_id="w", channel=ManualPayout()
    )
    second = await paid(chain)
    await request_refund(order=first, amount_fen=first.total_fen, refund_no="all", reason="t",
                         actor="t")  # fmt: skip
    slow_reads(monkeypatch, commissions)
    results = await at_once(done(second), settle_refund("all", channel="manual"))
    assert not [r for r in results if isinstance(r, BaseException)], results
    summary = await of(m2)
    assert (summary.available, summary.debt) == (0, 0), summary
    await invariants()


# ----------------------------------------------------------------------------- refunds


async def test_refunds_asked_and_settled_twice_at_once_move_the_money_once():
    chain = await make_chain()
    order = await paid(chain)  # 6998 fen
    m2 = member_earner(chain.m2)
    # Two refunds whose sum is more than was paid, asked at once: one is refused.
    asked = await at_once(
        *(request_refund(order=order, amount_fen=4000, refund_no=f"r{i}", reason="t", actor="t")
          for i in range(2))
    )  # fmt: skip
    refused = [r for r in asked if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], RefundExceedsPayment), asked
    (due,) = await Refund.filter(order_oid=order.oid)
    # The same refund number asked twice at once: one refund.
    again = await at_once(
        *(request_refund(order=order, amount_fen=2998, refund_no="rest", reason="t", actor="t")
          for _ in range(2))
    )  # fmt: skip
    assert all(isinstance(r, Refund) for r in again) and again[0].id == again[1].id  # type: ignore[union-attr]
    # Each settled twice at once (the channel's notification and the sweep's query): once.
    for no in (due.refund_no, "rest"):
        settled = await at_once(*(settle_refund(no, channel="manual") for _ in range(2)))
        assert all(isinstance(r, Refund) for r in settled), settled
        assert await MoneyTransaction.filter(key=f"refund:{no}").count() == 1
        assert await MoneyTransaction.filter(key=f"commission-reversal:{no}").count() == 1
    assert await of(m2) == Summary(reversed=1259, earned=0)
    await invariants()


async def test_an_order_marked_paid_twice_at_once_is_paid_once():
    chain = await make_chain()
    order = await order_of(chain)
    results = await at_once(
        *(mark_paid(order.oid, admin=ADMIN, reason=f"cash {i}") for i in range(2))
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert await MoneyTransaction.filter(key=f"pay:{order.oid}").count() == 1
    assert await MoneyTransaction.filter(key=f"commission:{order.oid}").count() == 1
    await invariants()
