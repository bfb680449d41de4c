"""WeChat transfers decided on the database's clock, on SQLite and PostgreSQL: a sweep node or
an operator's machine whose clock is minutes off the others' (the request's node, the node
that sent the latest create) never fails a withdrawal whose create WeChat Pay may still be
accepting (failed, its batch would pay it and the money come back to the earner too), against
the fake WeChat Pay."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

import pytest

from aquafleet.gateway.payouts import (
    STOP_GRACE,
    WechatTransferPayout,
    batch_no,
)
from aquafleet.models.commissions import Summary, Withdrawal, WithdrawalState, member_earner
from aquafleet.models.db import database_now
from aquafleet.models.errors import Conflict
from aquafleet.models.members import Member
from tests.commissions.test_scenario import of
from tests.commissions.test_wechat_payout import (
    OPENID,
    TRANSFERS,
    Wx,
    legacy_withdrawal,
    mch_id,
    older_nodes_create,
    wx,  # noqa: F401  # the fixture
)

pytestmark = pytest.mark.usefixtures("db")

# Further off than STOP_GRACE: a create sent a moment ago looks older than the grace to a
# clock this far ahead of the one that timed it.
OFF = STOP_GRACE + dt.timedelta(minutes=1)


def clock_off(by: dt.timedelta) -> Callable[[], dt.datetime]:
    """A machine's clock, `by` off the true time (that of the database's machine here)."""
    return lambda: dt.datetime.now(dt.UTC) + by


def node_with_clock(of_test: Wx, by: dt.timedelta) -> WechatTransferPayout:
    """Another node's (or the CLI's) WeChat transfer channel, on a machine whose clock is `by`
    off: the same WeChat Pay, database and merchant."""
    return WechatTransferPayout(of_test.payout.client, of_test.service.box, clock=clock_off(by))


async def test_the_database_clock_is_an_aware_utc_time():
    before = dt.datetime.now(dt.UTC)
    now = await database_now()
    after = dt.datetime.now(dt.UTC)
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)
    # This machine's: SQLite's and the test PostgreSQL's (milliseconds on SQLite).
    assert before - dt.timedelta(seconds=1) <= now <= after + dt.timedelta(seconds=1)


async def test_a_sweep_node_whose_clock_is_ahead_does_not_fail_a_create_being_accepted(
    wx: Wx,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    """The withdrawal's own create is still being accepted (a query answers 404) when the
    merchant loses its transfer permission and the sweep's create is refused NO_AUTH. The
    sweep then runs on a node whose clock is 11 minutes ahead: by its clock the refusal and the
    latest create are older than STOP_GRACE, by the database's they are seconds old. It sends
    the batch again and leaves the withdrawal requested: the batch pays it, once."""
    m2 = member_earner(wx.chain.m2)
    wx.fake.accept_slowly()
    withdrawal = await wx.withdraw(1000, "w-ahead")
    assert batch_no(withdrawal.id) in wx.fake.batches  # made, being accepted
    wx.fake.deny_transfers(mch_id(wx))
    report = await wx.payout.sweep()  # 404: sent again, refused NO_AUTH
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert (await Withdrawal.get(id=withdrawal.id)).transfer_refused_at is not None
    creates = wx.fake.requests.count(f"POST {TRANSFERS}")

    ahead = node_with_clock(wx, OFF)
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report = await ahead.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert wx.fake.requests.count(f"POST {TRANSFERS}") == creates + 1  # within the grace
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)
    logged = capsys.readouterr().out + caplog.text
    assert "payout_clock_skew" in logged  # the node's clock is off: said, not used

    wx.fake.finish_accepting()
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await ahead.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 1000
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    await wx.checks_clean()


async def test_fail_transfer_on_a_machine_whose_clock_is_ahead_waits_the_grace(
    wx: Wx,  # noqa: F811
):
    """An operator fails a withdrawal from a machine whose clock is 11 minutes ahead, its create
    sent a moment ago and still being accepted: 409, the grace counted on the database's clock;
    the batch pays it, once."""
    m2 = member_earner(wx.chain.m2)
    wx.fake.accept_slowly()
    withdrawal = await wx.withdraw(1000, "w-cli-ahead")
    ahead = node_with_clock(wx, OFF)
    with pytest.raises(Conflict, match="may still be accepting") as refused:
        await ahead.fail_stopped(withdrawal.id, reason="given up", actor="cli:ops")
    assert "the database's clock: in " in refused.value.message
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)

    wx.fake.finish_accepting()
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1  # stopped, still asked: the batch decides
    assert wx.fake.paid_out(OPENID) == 1000
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    await wx.checks_clean()


async def test_a_create_sent_by_a_node_whose_clock_is_behind_is_not_taken_for_old(
    wx: Wx,  # noqa: F811
):
    """The withdrawal's first create never reached WeChat Pay; the sweep sends it again from a
    node whose clock is 11 minutes behind, and WeChat Pay is still accepting it when an
    operator (a clock that agrees with the database's) fails the withdrawal: 409, the create's
    time is the database's, not the sending node's. The batch pays it, once."""
    m2 = member_earner(wx.chain.m2)
    wx.fake.fail_next(TRANSFERS, times=3)  # never received
    withdrawal = await wx.withdraw(1000, "w-behind")
    assert batch_no(withdrawal.id) not in wx.fake.batches
    wx.fake.accept_slowly()
    behind = node_with_clock(wx, -OFF)
    report = await behind.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert batch_no(withdrawal.id) in wx.fake.batches  # made, being accepted
    with pytest.raises(Conflict, match="may still be accepting"):
        await wx.payout.fail_stopped(withdrawal.id, reason="given up", actor="cli:ops")
    sent = (await Withdrawal.get(id=withdrawal.id)).transfer_sent_at
    assert sent is not None and abs(sent - await database_now()) < dt.timedelta(minutes=1)
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)

    wx.fake.finish_accepting()
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 1000
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    await wx.checks_clean()


async def test_a_refusal_waits_out_an_older_nodes_create_by_the_databases_clock(
    wx: Wx,  # noqa: F811
):
    """A row an older node stored without its payee: that node's create, of the binding of
    then, is still being accepted when the member rebinds to an openid WeChat Pay refuses (400
    PARAM_ERROR). The sweep fixes the new binding and is refused; a node whose clock is 11
    minutes ahead is refused again: by the database's clock the request and the fixing are
    seconds old, so the older create may still be accepted and the withdrawal stays requested.
    That batch pays it, once."""
    m2 = member_earner(wx.chain.m2)
    withdrawal = await legacy_withdrawal(wx, 600, "w-older-ahead")
    gate, older = await older_nodes_create(wx, withdrawal, 600)
    rebound = "oUpF8uMuAJO_otherapp00000000"
    wx.fake.refuse_openid(rebound)
    await Member.filter(uid=wx.chain.m2).update(wx_openid=rebound)
    report = await wx.payout.sweep()  # fixes the new binding: refused, requested
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert (await Withdrawal.get(id=withdrawal.id)).transfer_fixed_at is not None

    report = await node_with_clock(wx, OFF).sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert wx.fake.transfer_creates[-1]["transfer_detail_list"][0]["openid"] == rebound
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=659, payout=600, earned=1259)

    gate.set()
    await asyncio.wait_for(older, 5)
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 600
    assert await of(m2) == Summary(available=659, withdrawn=600, earned=1259)
    await wx.checks_clean()
