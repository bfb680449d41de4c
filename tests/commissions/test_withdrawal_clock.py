"""The 30-second rule between an earner's withdrawals, timed on the database's clock, on SQLite
and PostgreSQL: two API nodes whose clocks are a minute apart take an earner's withdrawals
one after the other. With each node's own clock, the node ahead (or the one after a node behind)
let a second withdrawal through at once, and the node behind (or the one after a node ahead)
refused one made more than 30 s after the last."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from types import SimpleNamespace
from unittest import mock

import pytest

from aquafleet.models import withdrawals
from aquafleet.models.commissions import Summary, Withdrawal, member_earner
from aquafleet.models.db import database_now
from aquafleet.models.withdrawals import (
    WITHDRAWAL_INTERVAL,
    ManualPayout,
    WithdrawalTooSoon,
    request_withdrawal,
    seconds_to_wait,
    settle_withdrawal,
)
from tests.commissions.test_scenario import Chain, done, invariants, make_chain, of, paid

pytestmark = pytest.mark.usefixtures("db")

OFF = dt.timedelta(minutes=1)  # further off than the interval, either way
AGREE = dt.timedelta(seconds=5)  # a time written "now" is this close to the database's now


@contextlib.contextmanager
def node_clock(off: dt.timedelta) -> Iterator[None]:
    """Run as a node whose clock is `off` the database's (what models/withdrawals.py reads as
    the time; the database's clock is this machine's)."""
    if not off:
        yield
        return

    class Skewed(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return dt.datetime.now(tz) + off

    module = SimpleNamespace(**{**vars(dt), "datetime": Skewed})
    with mock.patch.object(withdrawals, "dt", module):
        yield


async def chain_with_available() -> Chain:
    chain = await make_chain()
    await done(await paid(chain, quantity=4))  # M2: floor(11996 x 21%) = 2519 available
    return chain


async def withdraw(chain: Chain, request_id: str, *, clock: dt.timedelta) -> Withdrawal:
    with node_clock(clock):
        withdrawal, created = await request_withdrawal(
            chain.member(chain.m2), amount_fen=500, request_id=request_id, channel=ManualPayout()
        )
    assert created
    return withdrawal


@pytest.mark.parametrize(
    ("first", "second"),
    [(dt.timedelta(0), OFF), (-OFF, dt.timedelta(0))],
    ids=["second-node-ahead", "first-node-behind"],
)
async def test_a_second_withdrawal_within_30_s_is_refused_whatever_the_nodes_clocks(
    first: dt.timedelta, second: dt.timedelta
):
    """The second withdrawal comes at once, from a node whose clock is a minute ahead of the
    first's: by the two clocks it came a minute later; by the database's, at once. Refused,
    with the wait counted from the first on the database's clock."""
    chain = await chain_with_available()
    await withdraw(chain, "w-1", clock=first)
    with pytest.raises(WithdrawalTooSoon) as too_soon:
        await withdraw(chain, "w-2", clock=second)
    assert 25 <= too_soon.value.retry_after_s <= 30
    assert await of(member_earner(chain.m2)) == Summary(available=2019, payout=500, earned=2519)
    await invariants()


@pytest.mark.parametrize(
    ("first", "second"),
    [(OFF, dt.timedelta(0)), (dt.timedelta(0), -OFF)],
    ids=["first-node-ahead", "second-node-behind"],
)
async def test_a_withdrawal_more_than_30_s_after_the_last_passes_whatever_the_nodes_clocks(
    first: dt.timedelta, second: dt.timedelta
):
    """The second withdrawal comes 31 s after the first (its row made older, as time passing
    does), from a node whose clock is a minute behind the first's: by the two clocks it came
    before the first; by the database's, 31 s after. It passes."""
    chain = await chain_with_available()
    one = await withdraw(chain, "w-1", clock=first)
    made = (await Withdrawal.get(id=one.id)).created_at
    await Withdrawal.filter(id=one.id).update(created_at=made - WITHDRAWAL_INTERVAL - AGREE / 5)
    two = await withdraw(chain, "w-2", clock=second)
    assert await of(member_earner(chain.m2)) == Summary(available=1519, payout=1000, earned=2519)
    assert two.id != one.id
    await invariants()


async def test_a_withdrawal_is_written_on_the_databases_clock():
    """Requested and settled by a node whose clock is 11 minutes ahead: its times are the
    database's, so the next node (whatever its clock) times the 30 seconds from them."""
    chain = await chain_with_available()
    off = dt.timedelta(minutes=11)
    one = await withdraw(chain, "w-1", clock=off)
    stored = await Withdrawal.get(id=one.id)
    now = await database_now()
    assert abs(stored.created_at - now) < AGREE and abs(stored.updated_at - now) < AGREE
    with node_clock(off):
        settled = await settle_withdrawal(one.id, paid=True, reason="bank #1", actor="ops")
    assert abs(settled.updated_at - await database_now()) < AGREE
    await invariants()


async def test_the_30_second_rule():
    t0 = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
    assert seconds_to_wait(None, t0) == 0
    assert seconds_to_wait(t0, t0) == 30
    assert seconds_to_wait(t0, t0 + dt.timedelta(seconds=29, milliseconds=1)) == 1
    assert seconds_to_wait(t0, t0 + dt.timedelta(seconds=29, milliseconds=999)) == 1
    assert seconds_to_wait(t0, t0 + WITHDRAWAL_INTERVAL) == 0
    # A last withdrawal timed ahead of now (an older node whose clock was ahead wrote it):
    # waited for until 30 s after its time.
    assert seconds_to_wait(t0 + dt.timedelta(seconds=60), t0) == 90
