"""The guarded accounts' row locks are taken in one global order (by name) within every
transaction, on SQLite and PostgreSQL: a call that would lock an account sorting before one
the transaction holds is refused (AccountLockOrder), and `settle_order`, the one transaction
that decided on accounts in several calls (a reversal per refund, then the activation), locks
them all in one call first, so its later calls only find them held."""

from __future__ import annotations

from typing import Any

import pytest
from tortoise.transactions import in_transaction

from aquafleet.models import commissions
from aquafleet.models.account_locks import AccountLockOrder, lock_accounts
from aquafleet.models.commissions import CommissionState, settle_order
from tests.commissions.test_scenario import (
    done,
    invariants,
    levels,
    make_chain,
    paid,
    refund,
)

pytestmark = pytest.mark.usefixtures("db")


async def test_a_lock_before_one_held_in_the_same_transaction_is_refused():
    async with in_transaction("default"):
        await lock_accounts(["commission:b:available"])
        await lock_accounts(["commission:b:available", "commission:c:debt"])  # after: fine
        with pytest.raises(AccountLockOrder, match="commission:a:debt"):
            await lock_accounts(["commission:a:debt"])
    async with in_transaction("default"):  # another transaction starts afresh
        await lock_accounts(["commission:a:debt"])


async def test_settle_order_locks_every_account_it_decides_on_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
):
    chain = await make_chain()
    order = await done(await paid(chain))
    assert {state for *_, state in await levels(order.oid)} == {CommissionState.AVAILABLE}
    # Two refunds succeed before their commissions are settled (a node stopped between, or
    # `aquafleet commissions settle` catching up): one settle reverses both.
    monkeypatch.setattr(commissions, "settle_order", _not_yet)
    await refund(order, 700, "R1")
    await refund(order, 1300, "R2")
    monkeypatch.undo()
    calls: list[list[str]] = []
    real = commissions.lock_accounts

    async def recorded(names: Any) -> None:
        names = sorted(set(names))
        calls.append(names)
        await real(names)

    monkeypatch.setattr(commissions, "lock_accounts", recorded)
    await settle_order(order.oid)
    taken = [c for c in calls if c]
    assert taken, calls
    first = set(taken[0])
    assert all(set(c) <= first for c in taken[1:]), calls  # the later calls find them held
    assert all(reversed_fen > 0 for *_, reversed_fen, _state in await levels(order.oid))
    await invariants()


async def _not_yet(oid: str, **_kwargs: Any) -> None:
    return None
