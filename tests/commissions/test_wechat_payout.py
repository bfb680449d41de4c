"""Withdrawals paid out through WeChat Pay's merchant transfer (商家转账到零钱), against the fake,
on SQLite and PostgreSQL: paid end to end, a failed or refused transfer returns the money (a
refusal for now, or of a create racing the sweep's, does not), a create retried (lost answers,
never received) never pays twice; which channel a withdrawal takes. `commissions check` and
`money check` hold after each."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aquafleet.api.errors import from_domain
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.payments import PaymentService
from aquafleet.gateway.payouts import (
    MAX_WECHAT_TRANSFER_FEN,
    REMARK,
    STOP_GRACE,
    WechatNotBound,
    WechatTransferPayout,
    batch_no,
    choose_payout,
    detail_no,
)
from aquafleet.gateway.providers.wechatpay import WechatPayClient
from aquafleet.models.commissions import Summary, Withdrawal, WithdrawalState, member_earner
from aquafleet.models.errors import Conflict, InvalidInput
from aquafleet.models.members import Member
from aquafleet.models.merchants import PaymentMerchant, PaymentNotConfigured, set_wechat_merchant
from aquafleet.models.money import balance
from aquafleet.models.sealed import SecretBox
from aquafleet.models.vendors import Vendor
from aquafleet.models.withdrawals import (
    PAYOUT_CHANNELS,
    PayoutOutcome,
    request_withdrawal,
    settle_withdrawal,
)
from tests.commissions.test_scenario import VID, Chain, done, invariants, make_chain, of, paid
from tests.conftest import MASTER_SECRET
from tests.fakes.wechatpay import FakeWechatPay
from tests.platform.test_cli import aquafleet, clean_env

pytestmark = pytest.mark.usefixtures("db")

OPENID = "oUpF8uMuAJO_M2wxxxxxxxxxxxxx"
TRANSFERS = "/v3/transfer/batches"


@dataclass
class Wx:
    fake: FakeWechatPay
    chain: Chain
    payout: WechatTransferPayout
    service: PaymentService
    db: str
    tmp: Path

    @property
    def m2(self) -> Any:
        return self.chain.member(self.chain.m2)

    async def withdraw(self, amount: int, request_id: str, **kwargs: Any) -> Withdrawal:
        channel = await choose_payout(self.m2, amount, None, self.payout)
        assert channel is self.payout
        withdrawal, created = await request_withdrawal(
            self.m2, amount_fen=amount, request_id=request_id, channel=channel, **kwargs
        )
        assert created and withdrawal.channel == "weixin"
        return withdrawal

    async def state(self, withdrawal: Withdrawal) -> WithdrawalState:
        return (await Withdrawal.get(id=withdrawal.id)).state

    async def checks_clean(self) -> None:
        """In process, then as the operator runs them."""
        await invariants()
        env = clean_env(
            data_dir=self.tmp / "cli", master_secret=MASTER_SECRET, database_url=self.db
        )
        for group in ("commissions", "money"):
            code, out = await aquafleet(env, group, "check", "--json")
            assert code == 0, out


@pytest.fixture
async def wx(db: str, tmp_path: Path) -> AsyncIterator[Wx]:
    fake = FakeWechatPay()
    await fake.start()
    merchant = fake.add_merchant()
    chain = await make_chain()
    box = SecretBox.from_master(bytes.fromhex(MASTER_SECRET))
    await Vendor.filter(code=VID).update(mch_gid=merchant.mch_id, mch_appid=merchant.app_id)
    await set_wechat_merchant(
        VID,
        {
            "mch_apiv3_key": merchant.api_v3_key, "mch_private_key": merchant.private_pem,
            "mch_cert_serial": merchant.key_serial, "wxpay_serial": fake.platform_serial,
            "wxpay_public_key": fake.platform_public,
        },
        box,
    )  # fmt: skip
    await Member.filter(uid=chain.m2).update(wx_openid=OPENID)
    await done(await paid(chain))  # M2 has 1259 fen available (levels 1259 / 539 / 179)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        metrics = Metrics()
        client = WechatPayClient(session, metrics, base_url=fake.url)
        service = PaymentService(client, box, metrics, notify_base_url="")
        yield Wx(fake, chain, service.payout, service, db, tmp_path)
    await fake.stop()


async def test_a_withdrawal_is_paid_to_the_members_wechat_end_to_end(wx: Wx):
    m2 = member_earner(wx.chain.m2)
    assert await of(m2) == Summary(available=1259, earned=1259)
    withdrawal = await wx.withdraw(1000, "w-1")
    assert withdrawal.state is WithdrawalState.REQUESTED
    batch = wx.fake.batches[batch_no(withdrawal.id)]
    assert batch["details"] == [
        {"out_detail_no": detail_no(withdrawal.id), "transfer_amount": 1000,
         "transfer_remark": "佣金提现", "openid": OPENID}
    ]  # fmt: skip
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)
    await wx.checks_clean()

    # WeChat Pay is still carrying it out: the sweep finds it processing and leaves it.
    report = await wx.service.sweep()
    assert (report.payouts_checked, report.payouts_paid, report.errors) == (1, 0, [])
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED
    # An operator cannot record a WeChat transfer's outcome (failed + paid would pay twice).
    env = clean_env(data_dir=wx.tmp / "cli", master_secret=MASTER_SECRET, database_url=wx.db)
    code, out = await aquafleet(
        env, "commissions", "payout", str(withdrawal.id), "--failed", "--reason", "by hand"
    )
    assert code != 0 and "through weixin" in out, out
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED

    wx.fake.finish_batch(batch_no(withdrawal.id))
    report = await wx.service.sweep()
    assert (report.payouts_paid, report.payouts_failed) == (1, 0)
    settled = await Withdrawal.get(id=withdrawal.id)
    assert settled.state is WithdrawalState.PAID
    assert settled.channel_ref == batch["detail_ids"][detail_no(withdrawal.id)]
    assert wx.fake.paid_out(OPENID) == 1000
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    assert await balance(f"channel:weixin:{VID}") == -1000
    await wx.checks_clean()

    # Settled once: the next sweep has nothing to ask.
    assert (await wx.service.sweep()).payouts_checked == 0


async def test_a_failed_or_refused_transfer_returns_the_money(wx: Wx):
    m2 = member_earner(wx.chain.m2)
    t0 = dt.datetime.now(dt.UTC)
    # WeChat Pay carries the batch out but the detail fails (a frozen account).
    first = await wx.withdraw(1000, "w-fail", now=t0)
    wx.fake.finish_batch(
        batch_no(first.id), failed=(detail_no(first.id),), reason="REAL_NAME_CHECK_FAIL"
    )
    report = await wx.payout.sweep()
    assert (report.paid, report.failed) == (0, 1)
    failed = await Withdrawal.get(id=first.id)
    assert failed.state is WithdrawalState.FAILED and "REAL_NAME_CHECK_FAIL" in failed.reason
    assert await of(m2) == Summary(available=1259, earned=1259)
    await wx.checks_clean()

    # The batch is closed before it is paid: failed too, with WeChat Pay's reason.
    second = await wx.withdraw(1200, "w-closed", now=t0 + dt.timedelta(seconds=31))
    wx.fake.close_batch(batch_no(second.id), "MERCHANT_REVOCATION")
    assert (await wx.payout.sweep()).failed == 1
    closed = await Withdrawal.get(id=second.id)
    assert closed.state is WithdrawalState.FAILED and "MERCHANT_REVOCATION" in closed.reason
    assert await of(m2) == Summary(available=1259, earned=1259)

    # WeChat Pay refuses the batch for now (the merchant's balance is short: "原单重试"): the
    # money stays on its way and the sweep sends the batch again under the same number.
    wx.fake.fail_next(TRANSFERS, status=403, code="NOT_ENOUGH")
    third, _ = await request_withdrawal(
        wx.m2, amount_fen=500, request_id="w-short", channel=wx.payout,
        now=t0 + dt.timedelta(seconds=62),
    )  # fmt: skip
    assert third.state is WithdrawalState.REQUESTED
    assert batch_no(third.id) not in wx.fake.batches
    assert await of(m2) == Summary(available=759, payout=500, earned=1259)
    assert (await wx.payout.sweep()).failed == 0
    assert batch_no(third.id) in wx.fake.batches

    # WeChat Pay refuses the batch as unacceptable and has no batch under its number: failed
    # at once, the money returns.
    wx.fake.fail_next(TRANSFERS, status=400, code="PARAM_ERROR")
    fourth, _ = await request_withdrawal(
        wx.m2, amount_fen=300, request_id="w-refused", channel=wx.payout,
        now=t0 + dt.timedelta(seconds=93),
    )  # fmt: skip
    assert fourth.state is WithdrawalState.FAILED and "PARAM_ERROR" in fourth.reason
    assert wx.fake.paid_out(OPENID) == 0 and batch_no(fourth.id) not in wx.fake.batches
    assert await of(m2) == Summary(available=759, payout=500, earned=1259)
    await wx.checks_clean()


async def test_a_retried_create_never_pays_twice(wx: Wx):
    m2 = member_earner(wx.chain.m2)
    t0 = dt.datetime.now(dt.UTC)
    # The batch is made but every answer is lost: the client's retries send the same number,
    # WeChat Pay keeps one batch; the withdrawal waits for the sweep.
    wx.fake.lose_answers(TRANSFERS, times=3)
    first = await wx.withdraw(600, "w-lost", now=t0)
    assert first.state is WithdrawalState.REQUESTED
    assert wx.fake.requests.count(f"POST {TRANSFERS}") == 3
    assert list(wx.fake.batches) == [batch_no(first.id)]
    # The same request again answers the first withdrawal and sends nothing.
    again, created = await request_withdrawal(
        wx.m2, amount_fen=600, request_id="w-lost", channel=wx.payout
    )
    assert not created and again.id == first.id
    # Submitting it again (another node, an operator) finds the same batch.
    await wx.payout.submit(first)
    assert len(wx.fake.batches) == 1
    assert (await wx.payout.sweep()).checked == 1  # processing: nothing sent again
    wx.fake.finish_batch(batch_no(first.id))
    assert (await wx.payout.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 600
    await wx.checks_clean()

    # A create WeChat Pay never received (5xx before it): the sweep asks, finds no batch and
    # sends it under the same number, once.
    wx.fake.fail_next(TRANSFERS, times=3)
    second = await wx.withdraw(600, "w-unsent", now=t0 + dt.timedelta(seconds=31))
    assert second.state is WithdrawalState.REQUESTED
    assert batch_no(second.id) not in wx.fake.batches
    report = await wx.payout.sweep()
    assert (report.checked, report.paid, report.errors) == (1, 0, [])
    assert batch_no(second.id) in wx.fake.batches
    await wx.payout.sweep()
    wx.fake.finish_batch(batch_no(second.id))
    assert (await wx.payout.sweep()).paid == 1
    assert len(wx.fake.batches) == 2 and wx.fake.paid_out(OPENID) == 1200
    assert await of(m2) == Summary(available=59, withdrawn=1200, earned=1259)
    await wx.checks_clean()


async def test_a_create_racing_the_sweeps_create_pays_once(wx: Wx):
    """The sweep sends the batch while the withdrawal's own create is still being accepted:
    WeChat Pay answers a query of the number 404 then (受理中). The member rebound WeChat in
    between, but both creates are built from what the withdrawal stored (the openid bound
    when it was requested), so they are the same batch: it is made once and pays once."""
    m2 = member_earner(wx.chain.m2)
    gate = wx.fake.hold_next_create()
    request = asyncio.create_task(wx.withdraw(1000, "w-race"))
    await asyncio.wait_for(wx.fake.create_held.wait(), 5)
    withdrawal = await Withdrawal.get(request_id="w-race")
    rebound = "oUpF8uMuAJO_M2wrebound0000000"
    await Member.filter(uid=wx.chain.m2).update(wx_openid=rebound)
    # The sweep: no batch under the number yet, so it sends it (to the stored openid): made.
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert wx.fake.batches[batch_no(withdrawal.id)]["details"][0]["openid"] == OPENID
    # The withdrawal's own create, the same batch, is answered with it.
    gate.set()
    answered = await asyncio.wait_for(request, 5)
    assert answered.state is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1
    assert await wx.state(withdrawal) is WithdrawalState.PAID
    assert wx.fake.paid_out(rebound) + wx.fake.paid_out(OPENID) == 1000
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    await wx.checks_clean()


async def test_every_create_of_a_withdrawal_is_the_same_whatever_the_member_binds(wx: Wx):
    """The withdrawal's create is still being accepted (a query answers 404) when the sweep
    sends it again. The member rebound WeChat to an openid WeChat Pay refuses (400 PARAM_ERROR)
    or unbound it in between: the sweep's create is still the first one, to the openid bound
    when the withdrawal was requested, so no refusal can fail a withdrawal whose batch pays."""
    m2 = member_earner(wx.chain.m2)
    t0 = dt.datetime.now(dt.UTC)
    gate = wx.fake.hold_next_create()
    request = asyncio.create_task(wx.withdraw(1000, "w-rebind", now=t0))
    await asyncio.wait_for(wx.fake.create_held.wait(), 5)
    withdrawal = await Withdrawal.get(request_id="w-rebind")
    rebound = "oUpF8uMuAJO_otherapp00000000"
    wx.fake.refuse_openid(rebound)
    await Member.filter(uid=wx.chain.m2).update(wx_openid=rebound)
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    first, resent = wx.fake.transfer_creates
    assert resent == first and first["transfer_detail_list"][0]["openid"] == OPENID
    gate.set()
    assert (await asyncio.wait_for(request, 5)).state is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1
    assert (wx.fake.paid_out(OPENID), wx.fake.paid_out(rebound)) == (1000, 0)
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    await wx.checks_clean()

    # Unbound while the create is being accepted: the sweep sends the same batch again.
    await Member.filter(uid=wx.chain.m2).update(wx_openid=OPENID)
    gate = wx.fake.hold_next_create()
    request = asyncio.create_task(wx.withdraw(259, "w-unbind", now=t0 + dt.timedelta(seconds=31)))
    await asyncio.wait_for(wx.fake.create_held.wait(), 5)
    second = await Withdrawal.get(request_id="w-unbind")
    await Member.filter(uid=wx.chain.m2).update(wx_openid=None)
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    gate.set()
    assert (await asyncio.wait_for(request, 5)).state is WithdrawalState.REQUESTED
    assert [c["transfer_detail_list"][0]["openid"] for c in wx.fake.transfer_creates] == [
        OPENID
    ] * 4
    wx.fake.finish_batch(batch_no(second.id))
    assert (await wx.payout.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 1259
    assert await of(m2) == Summary(withdrawn=1259, earned=1259)
    await wx.checks_clean()


async def test_a_withdrawal_stored_before_its_payee_is_fixed_at_its_next_send(wx: Wx):
    """A row from before the payee was stored (or an older node's): its next send fixes the
    binding of then, once; every create after it is the same."""
    wx.fake.fail_next(TRANSFERS, times=3)  # never received
    withdrawal = await wx.withdraw(600, "w-legacy")
    await Withdrawal.filter(id=withdrawal.id).update(
        transfer_mchid=None, transfer_appid=None, transfer_openid=None
    )
    assert (await wx.payout.sweep()).errors == []
    fixed = await Withdrawal.get(id=withdrawal.id)
    merchant = next(iter(wx.fake.merchants.values()))
    assert (fixed.transfer_mchid, fixed.transfer_appid, fixed.transfer_openid) == (
        merchant.mch_id, merchant.app_id, OPENID
    )  # fmt: skip
    await Member.filter(uid=wx.chain.m2).update(wx_openid="oUpF8uMuAJO_M2wrebound0000000")
    await wx.payout.submit(fixed)  # sent again (another node): the same batch
    first, again = wx.fake.transfer_creates
    assert again == first and first["transfer_detail_list"][0]["openid"] == OPENID
    assert len(wx.fake.batches) == 1
    # A vendor that changed its merchant: nothing is sent or asked under the new one.
    await Withdrawal.filter(id=withdrawal.id).update(transfer_mchid="1900000999")
    sent = len(wx.fake.requests)
    report = await wx.payout.sweep()
    assert len(report.errors) == 1 and "merchant 1900000999" in report.errors[0]
    assert len(wx.fake.requests) == sent
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED


async def legacy_withdrawal(wx: Wx, amount: int, request_id: str, **kwargs: Any) -> Withdrawal:
    """A requested withdrawal stored without its payee (from before 0020, or an older node's)
    whose batch WeChat Pay never received."""
    wx.fake.fail_next(TRANSFERS, times=3)  # never received
    withdrawal = await wx.withdraw(amount, request_id, **kwargs)
    await Withdrawal.filter(id=withdrawal.id).update(
        transfer_mchid=None, transfer_appid=None, transfer_openid=None
    )
    assert batch_no(withdrawal.id) not in wx.fake.batches
    return await Withdrawal.get(id=withdrawal.id)


async def older_nodes_create(
    wx: Wx, withdrawal: Withdrawal, amount: int
) -> tuple[asyncio.Event, asyncio.Task[Any]]:
    """An older node's create of the withdrawal's batch, built from the binding of then
    (OPENID), held by WeChat Pay while it is being accepted: set the gate to let it answer."""
    merchant = await wx.payout.merchant(VID)
    body = {
        "appid": merchant.app_id, "out_batch_no": batch_no(withdrawal.id), "batch_name": REMARK,
        "batch_remark": REMARK, "total_amount": amount, "total_num": 1,
        "transfer_detail_list": [{
            "out_detail_no": detail_no(withdrawal.id), "transfer_amount": amount,
            "transfer_remark": REMARK, "openid": OPENID,
        }],
    }  # fmt: skip
    gate = wx.fake.hold_next_create()
    older = asyncio.create_task(wx.payout.client.create_transfer_batch(merchant, body))
    await asyncio.wait_for(wx.fake.create_held.wait(), 5)
    return gate, older


async def test_a_send_that_finds_the_member_unbound_uses_the_payee_another_send_fixed(wx: Wx):
    """A row without a stored payee, read by two senders (the sweeps of two nodes). One fixes
    the binding of then and its create is still being accepted (a query answers 404) when the
    member unbinds WeChat and the other, holding the row as it read it, finds no binding: it
    takes the payee the first stored, so it sends the same batch instead of failing a
    withdrawal whose batch then pays (the money paid out and back to available)."""
    m2 = member_earner(wx.chain.m2)
    withdrawal = await legacy_withdrawal(wx, 600, "w-stale")
    stale = await Withdrawal.get(id=withdrawal.id)
    gate = wx.fake.hold_next_create()
    first = asyncio.create_task(wx.payout.submit(await Withdrawal.get(id=withdrawal.id)))
    await asyncio.wait_for(wx.fake.create_held.wait(), 5)
    await Member.filter(uid=wx.chain.m2).update(wx_openid=None)
    assert (await wx.payout.check(stale)).outcome is PayoutOutcome.REQUESTED
    gate.set()
    assert (await asyncio.wait_for(first, 5)).outcome is PayoutOutcome.REQUESTED
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED
    sent = [c["transfer_detail_list"][0]["openid"] for c in wx.fake.transfer_creates]
    assert sent == [OPENID, OPENID]
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 600
    assert await of(m2) == Summary(available=659, withdrawn=600, earned=1259)
    await wx.checks_clean()


async def test_a_refusal_waits_out_an_older_nodes_create_of_another_content(wx: Wx):
    """A row an older node stored without its payee: that node's create, built from the
    binding of then, is still being accepted (a query answers 404) when the member rebinds
    WeChat to an openid WeChat Pay refuses (400 PARAM_ERROR) and the sweep fixes and sends the
    new binding. The refusal says nothing of the older create, which differs: the withdrawal
    stays requested until that create cannot be being accepted any more (STOP_GRACE after the
    request and after the payee was fixed); the batch it made decides."""
    m2 = member_earner(wx.chain.m2)
    t0 = dt.datetime.now(dt.UTC)
    withdrawal = await legacy_withdrawal(wx, 600, "w-older", now=t0)
    gate, older = await older_nodes_create(wx, withdrawal, 600)
    rebound = "oUpF8uMuAJO_otherapp00000000"
    wx.fake.refuse_openid(rebound)
    await Member.filter(uid=wx.chain.m2).update(wx_openid=rebound)
    report = await wx.payout.sweep()
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

    # No older create after all: once it cannot be being accepted any more, the refusal of
    # the fixed payee's create fails the withdrawal and the money returns, once.
    second = await legacy_withdrawal(wx, 659, "w-older-2", now=t0 + dt.timedelta(seconds=31))
    assert (await wx.payout.sweep()).failed == 0  # fixed to the refused openid, refused
    fixed = await Withdrawal.get(id=second.id)
    assert fixed.transfer_openid == rebound and fixed.state is WithdrawalState.REQUESTED
    long_ago = dt.datetime.now(dt.UTC) - STOP_GRACE - dt.timedelta(seconds=1)
    await Withdrawal.filter(id=second.id).update(created_at=long_ago, transfer_fixed_at=long_ago)
    assert (await wx.payout.sweep()).failed == 1
    failed = await Withdrawal.get(id=second.id)
    assert failed.state is WithdrawalState.FAILED and "PARAM_ERROR" in failed.reason
    assert await of(m2) == Summary(available=659, withdrawn=600, earned=1259)
    await wx.checks_clean()


async def fail_by_cli(wx: Wx, withdrawal: Withdrawal, *args: str) -> tuple[int, str]:
    env = clean_env(
        data_dir=wx.tmp / "cli", master_secret=MASTER_SECRET, database_url=wx.db,
        wechatpay_api_url=wx.fake.url,
    )  # fmt: skip
    return await aquafleet(
        env, "commissions", "fail-transfer", str(withdrawal.id), "--reason", "given up",
        "--by", "ops", *args,
    )  # fmt: skip


async def sent_long_ago(withdrawal: Withdrawal) -> None:
    """The latest create was sent longer ago than it can take to be accepted."""
    long_ago = dt.datetime.now(dt.UTC) - STOP_GRACE - dt.timedelta(seconds=1)
    await Withdrawal.filter(id=withdrawal.id).update(transfer_sent_at=long_ago)


async def test_an_operator_fails_a_transfer_wechat_pay_keeps_refusing(wx: Wx):
    """403 NOT_ENOUGH keeps a withdrawal requested and sent again at every sweep: an operator
    stops it and fails it, once WeChat Pay has no batch under its number; the money returns
    to available exactly once."""
    m2 = member_earner(wx.chain.m2)
    t0 = dt.datetime.now(dt.UTC)
    wx.fake.fail_next(TRANSFERS, status=403, code="NOT_ENOUGH")
    short = await wx.withdraw(500, "w-short", now=t0)
    assert await wx.state(short) is WithdrawalState.REQUESTED
    creates = wx.fake.requests.count(f"POST {TRANSFERS}")
    assert creates == 1

    # Just sent: WeChat Pay may still be accepting a create, so it cannot fail yet; but it is
    # no longer sent, by the sweep or anyone.
    with pytest.raises(Conflict) as refused:
        await wx.payout.fail_stopped(short.id, reason="given up", actor="test")
    assert from_domain(refused.value).status == 409
    assert "may still be accepting" in refused.value.message
    assert (await wx.payout.sweep()).errors == []
    resent = await wx.payout.submit(await Withdrawal.get(id=short.id))
    assert resent.outcome is PayoutOutcome.REQUESTED
    assert wx.fake.requests.count(f"POST {TRANSFERS}") == creates
    assert await of(m2) == Summary(available=759, payout=500, earned=1259)

    # Later: WeChat Pay has no batch under its number: failed, back to available, once.
    await sent_long_ago(short)
    code, out = await fail_by_cli(wx, short, "--json")
    assert code == 0, out
    failed = await Withdrawal.get(id=short.id)
    assert failed.state is WithdrawalState.FAILED and "given up" in failed.reason
    assert failed.settled_by == "cli:ops"
    assert await of(m2) == Summary(available=1259, earned=1259)
    code, out = await fail_by_cli(wx, short)
    assert code == 0 and "failed" in out, out
    assert await of(m2) == Summary(available=1259, earned=1259)
    assert wx.fake.requests.count(f"POST {TRANSFERS}") == creates and wx.fake.paid_out(OPENID) == 0
    await wx.checks_clean()


async def test_an_operator_cannot_fail_a_transfer_whose_batch_exists(wx: Wx):
    m2 = member_earner(wx.chain.m2)
    t0 = dt.datetime.now(dt.UTC)
    accepted = await wx.withdraw(700, "w-accepted", now=t0)
    await sent_long_ago(accepted)
    code, out = await fail_by_cli(wx, accepted)
    assert code == 1 and "WeChat Pay has its batch" in out and "ACCEPTED" in out, out
    with pytest.raises(Conflict) as refused:
        await wx.payout.fail_stopped(accepted.id, reason="given up", actor="test")
    assert from_domain(refused.value).status == 409
    assert await wx.state(accepted) is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=559, payout=700, earned=1259)
    # Stopped, it is still asked about: the batch decides.
    wx.fake.finish_batch(batch_no(accepted.id))
    assert (await wx.payout.sweep()).paid == 1
    with pytest.raises(Conflict, match="is paid"):
        await wx.payout.fail_stopped(accepted.id, reason="given up", actor="test")
    assert await of(m2) == Summary(available=559, withdrawn=700, earned=1259)

    # A closed batch: failed with WeChat Pay's reason and the operator's, once.
    closed = await wx.withdraw(400, "w-closed", now=t0 + dt.timedelta(seconds=31))
    wx.fake.close_batch(batch_no(closed.id), "MERCHANT_REVOCATION")
    await sent_long_ago(closed)
    for _ in range(2):
        done_ = await wx.payout.fail_stopped(closed.id, reason="given up", actor="test")
        assert done_.state is WithdrawalState.FAILED
        assert "MERCHANT_REVOCATION" in done_.reason and "given up" in done_.reason
    assert await of(m2) == Summary(available=559, withdrawn=700, earned=1259)
    # A manual withdrawal is recorded with `commissions payout`.
    manual, _ = await request_withdrawal(
        wx.m2, amount_fen=100, request_id="w-manual", channel=PAYOUT_CHANNELS["manual"],
        now=t0 + dt.timedelta(seconds=62),
    )  # fmt: skip
    with pytest.raises(Conflict, match="commissions payout"):
        await wx.payout.fail_stopped(manual.id, reason="given up", actor="test")
    await wx.checks_clean()


async def test_which_channel_a_withdrawal_takes(wx: Wx):
    manual = PAYOUT_CHANNELS["manual"]
    m1 = wx.chain.member(wx.chain.m1)  # no WeChat bound
    dealer = wx.chain.dealer_principal  # agents and dealers have no openid
    assert await choose_payout(wx.m2, 500, None, wx.payout) is wx.payout
    assert await choose_payout(wx.m2, 500, "manual", wx.payout) is manual
    assert await choose_payout(m1, 500, None, wx.payout) is manual
    assert await choose_payout(dealer, 500, None, wx.payout) is manual
    assert await choose_payout(wx.m2, 500, None, None) is manual
    with pytest.raises(WechatNotBound):
        await choose_payout(dealer, 500, "weixin", wx.payout)
    with pytest.raises(WechatNotBound):
        await choose_payout(m1, 500, "weixin", wx.payout)
    # 2,000 yuan and more need the payee's name at WeChat Pay: manual.
    big = MAX_WECHAT_TRANSFER_FEN + 1
    assert await choose_payout(wx.m2, big, None, wx.payout) is manual
    with pytest.raises(InvalidInput):
        await choose_payout(wx.m2, big, "weixin", wx.payout)
    # A vendor without a WeChat Pay merchant pays manually.
    await PaymentMerchant.filter(vendor_id=VID).delete()
    assert await choose_payout(wx.m2, 500, None, wx.payout) is manual
    with pytest.raises(PaymentNotConfigured):
        await choose_payout(wx.m2, 500, "weixin", wx.payout)


def mch_id(wx: Wx) -> str:
    return next(iter(wx.fake.merchants))


async def test_a_create_refused_no_auth_while_an_identical_one_is_accepted_pays_once(wx: Wx):
    """NO_AUTH depends on the moment, not on the request: the withdrawal's own create arrives
    while the merchant may transfer and is still being accepted (a query answers 404) when the
    permission is taken away and the sweep's identical create is refused NO_AUTH. The refusal
    says nothing of the first create: the withdrawal stays requested and its batch pays, once
    (failed, the money would come back to the member as well)."""
    m2 = member_earner(wx.chain.m2)
    gate = wx.fake.hold_next_create()
    request = asyncio.create_task(wx.withdraw(1000, "w-revoked"))
    await asyncio.wait_for(wx.fake.create_held.wait(), 5)
    withdrawal = await Withdrawal.get(request_id="w-revoked")
    wx.fake.deny_transfers(mch_id(wx))
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)
    gate.set()
    assert (await asyncio.wait_for(request, 5)).state is WithdrawalState.REQUESTED
    first, refused = wx.fake.transfer_creates
    assert refused == first
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 1000
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    await wx.checks_clean()


async def test_a_create_refused_no_auth_before_the_permission_is_granted_pays_once(wx: Wx):
    """The withdrawal's own create is refused NO_AUTH, its answer slow; the merchant is granted
    the permission meanwhile and the sweep's identical create is accepted (a query answers 404
    while it is). The refusal arriving then leaves the withdrawal requested: its batch pays,
    once, and the member's money is not given back too."""
    m2 = member_earner(wx.chain.m2)
    wx.fake.deny_transfers(mch_id(wx))
    gate = wx.fake.hold_next_create()
    request = asyncio.create_task(wx.withdraw(1000, "w-granted"))
    await asyncio.wait_for(wx.fake.create_held.wait(), 5)
    withdrawal = await Withdrawal.get(request_id="w-granted")
    wx.fake.grant_transfers(mch_id(wx))
    wx.fake.accept_slowly()
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert batch_no(withdrawal.id) in wx.fake.batches  # made, being accepted
    gate.set()
    answered = await asyncio.wait_for(request, 5)
    assert answered.state is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)
    # Still being accepted: sent again under the same number, the same batch; not failed.
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert len(wx.fake.batches) == 1
    wx.fake.finish_accepting()
    wx.fake.finish_batch(batch_no(withdrawal.id))
    assert (await wx.payout.sweep()).paid == 1
    assert wx.fake.paid_out(OPENID) == 1000
    assert await of(m2) == Summary(available=259, withdrawn=1000, earned=1259)
    await wx.checks_clean()


async def test_a_merchant_without_transfer_permission_sees_its_withdrawals_failed(wx: Wx):
    """WeChat Pay keeps refusing NO_AUTH: the sweep sends the batch again under the same number
    for STOP_GRACE after the first refusal (the permission may be granted meanwhile), then no
    more, and fails the withdrawal (the money back to available, once) when asked again once no
    create of it can still be being accepted and WeChat Pay has no batch under the number."""
    m2 = member_earner(wx.chain.m2)
    wx.fake.deny_transfers(mch_id(wx))
    withdrawal = await wx.withdraw(1000, "w-noauth")
    assert withdrawal.state is WithdrawalState.REQUESTED
    refused = await Withdrawal.get(id=withdrawal.id)
    assert refused.transfer_refused_at is not None
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)
    creates = f"POST {TRANSFERS}"
    report = await wx.payout.sweep()  # within the grace: sent again, refused again
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert wx.fake.requests.count(creates) == 2
    again = await Withdrawal.get(id=withdrawal.id)
    assert again.transfer_refused_at == refused.transfer_refused_at  # the first refusal's

    # Refused for longer than the grace: no more creates; the latest may still be on its way.
    long_ago = dt.datetime.now(dt.UTC) - STOP_GRACE - dt.timedelta(seconds=1)
    await Withdrawal.filter(id=withdrawal.id).update(transfer_refused_at=long_ago)
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 0, [])
    assert wx.fake.requests.count(creates) == 2
    assert await wx.state(withdrawal) is WithdrawalState.REQUESTED

    # A failure decided on a row read before another sender recorded a create does not hold.
    await sent_long_ago(withdrawal)
    stale = await Withdrawal.get(id=withdrawal.id)
    await Withdrawal.filter(id=withdrawal.id).update(transfer_sent_at=dt.datetime.now(dt.UTC))
    result = await wx.payout.check(stale)
    assert result.outcome is PayoutOutcome.FAILED and result.sent_before is not None
    kept = await settle_withdrawal(
        withdrawal.id, paid=False, reason=result.reason, sent_before=result.sent_before,
        actor="channel:weixin", channel="weixin",
    )  # fmt: skip
    assert kept.state is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(available=259, payout=1000, earned=1259)

    # Nothing sent for longer than a create can take, no batch: failed, the money back, once.
    await sent_long_ago(withdrawal)
    report = await wx.payout.sweep()
    assert (report.checked, report.failed, report.errors) == (1, 1, [])
    failed = await Withdrawal.get(id=withdrawal.id)
    assert failed.state is WithdrawalState.FAILED and "NO_AUTH" in failed.reason
    assert wx.fake.requests.count(creates) == 2 and not wx.fake.batches
    assert await of(m2) == Summary(available=1259, earned=1259)
    assert (await wx.payout.sweep()).checked == 0
    await wx.checks_clean()
