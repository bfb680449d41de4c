"""WeChat transfers decided only on answers WeChat Pay signed, on SQLite and PostgreSQL: a 404
NOT_FOUND to the query of a withdrawal's batch (which may fail the withdrawal, the money back to
available) answered in WeChat Pay's place, its signature made with another key or absent, is no
answer: the withdrawal stays requested and is asked about again, counted and logged. Taken on
trust, it failed a withdrawal whose batch then paid the member: the money twice. WeChat Pay's
own signed 404 still fails one that has no batch, under the rules there were."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from aquafleet.gateway.payouts import STOP_GRACE, batch_no
from aquafleet.gateway.providers.wechatpay import AnswerNotVerified
from aquafleet.models.commissions import Summary, Withdrawal, WithdrawalState, member_earner
from tests.commissions.test_scenario import of
from tests.commissions.test_wechat_payout import (
    OPENID,
    TRANSFERS,
    Wx,
    fail_by_cli,
    mch_id,
    sent_long_ago,
    wx,  # noqa: F401  # the fixture
)
from tests.fakes.wechatpay_signing import FORGED, UNSIGNED

pytestmark = pytest.mark.usefixtures("db")

SIGNATURES = pytest.mark.parametrize("signature", [FORGED, UNSIGNED])


def query_path(withdrawal: Withdrawal) -> str:
    return f"{TRANSFERS}/out-batch-no/{batch_no(withdrawal.id)}"


async def refused_long_ago(withdrawal: Withdrawal) -> None:
    """Refused NO_AUTH, and last sent, longer ago than a create can take to be accepted."""
    long_ago = dt.datetime.now(dt.UTC) - STOP_GRACE - dt.timedelta(seconds=1)
    await Withdrawal.filter(id=withdrawal.id).update(
        transfer_refused_at=long_ago, transfer_sent_at=long_ago
    )


@SIGNATURES
async def test_a_forged_not_found_does_not_fail_a_transfer_whose_batch_pays(
    wx: Wx,  # noqa: F811
    signature: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    """The withdrawal's create is accepted while the merchant's permission is taken away (the
    sweep's is refused NO_AUTH); 10 minutes on, the sweep's query, which fails a withdrawal
    WeChat Pay has no batch of, is answered 404 NOT_FOUND by someone else. Not taken: the
    withdrawal stays requested, the money on its way; the batch pays it, once."""
    m2 = member_earner(wx.chain.m2)
    wx.fake.accept_slowly()
    withdrawal = await wx.withdraw(1000, f"w-forged-{signature}")
    wx.fake.deny_transfers(mch_id(wx))
    report = await wx.payout.sweep()  # 404 while accepting: sent again, refused NO_AUTH
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    wx.fake.finish_accepting()  # WeChat Pay has the batch
    await refused_long_ago(withdrawal)

    wx.fake.forge_next(query_path(withdrawal), 404, "NOT_FOUND", signature=signature, times=3)
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report = await wx.payout.sweep()
    assert (report.checked, report.paid, report.failed) == (1, 0, 0)
    assert len(report.errors) == 1 and "not verified" in report.errors[0]
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)
    assert wx.service.metrics.wechatpay_answers_unverified == 3  # a try and two retries
    assert "wechatpay_answer_not_verified" in capsys.readouterr().out + caplog.text

    # Asked again, WeChat Pay answers: its batch, which pays the member once.
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 1000
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    await wx.checks_clean()


@SIGNATURES
async def test_a_forged_not_found_does_not_let_an_operator_fail_a_batch_that_pays(
    wx: Wx,  # noqa: F811
    signature: str,
):
    """`fail-transfer` fails a withdrawal WeChat Pay has no batch of; its query is answered 404
    by someone else while WeChat Pay is carrying the batch out. Refused (unknown, exit 1): the
    withdrawal stays requested and its batch pays it, once."""
    m2 = member_earner(wx.chain.m2)
    withdrawal = await wx.withdraw(700, f"w-op-{signature}")
    await sent_long_ago(withdrawal)
    wx.fake.forge_next(query_path(withdrawal), 404, "NOT_FOUND", signature=signature, times=3)
    code, out = await fail_by_cli(wx, withdrawal)
    assert code == 1 and "not verified" in out, out
    wx.fake.forge_next(query_path(withdrawal), 404, "NOT_FOUND", signature=signature, times=3)
    with pytest.raises(AnswerNotVerified):
        await wx.payout.fail_stopped(withdrawal.id, reason="given up", actor="test")
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=559, payout=700, earned=1259)

    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1  # stopped, still asked: the batch decides
    assert wx.fake.paid_out(OPENID) == 700
    assert await of(m2) == Summary(available=559, withdrawn=700, earned=1259)
    await wx.checks_clean()


async def test_wechat_pays_own_not_found_still_fails_a_transfer_it_has_no_batch_of(
    wx: Wx,  # noqa: F811
):
    """Refused NO_AUTH from the start (no batch made), 10 minutes on: a forged 404 fails
    nothing; WeChat Pay's signed 404 fails it, the money back to available, once."""
    m2 = member_earner(wx.chain.m2)
    wx.fake.deny_transfers(mch_id(wx))
    withdrawal = await wx.withdraw(1000, "w-none")
    await refused_long_ago(withdrawal)
    wx.fake.forge_next(query_path(withdrawal), 404, "NOT_FOUND", times=3)
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, len(report.errors)) == (1, 0, 1)
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)

    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 1, [])
    failed = await Withdrawal.get(id=withdrawal.id)
    assert failed.state is WithdrawalState.FAILED and "NO_AUTH" in failed.reason
    assert await of(m2) == Summary(available=1259, earned=1259)
    assert (await wx.payout.sweep()).checked == 0 and not wx.fake.batches
    assert wx.service.metrics.wechatpay_answers_unverified == 3
    await wx.checks_clean()
