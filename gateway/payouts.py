"""Withdrawals of commission paid out through WeChat Pay's merchant transfer (商家转账到零钱,
API v3 `/v3/transfer/batches`) to the earner's WeChat openid (docs/commissions.md).

One withdrawal is one transfer batch of one detail, numbered from the withdrawal's id
(`out_batch_no` AFW..., `out_detail_no` AFD...): WeChat Pay keys a batch by its number, so
sending it again (the client's retries, the sweep after a lost answer, two nodes) never pays
twice. The outcome is found by querying the batch (the payments sweep, under its lease): the
detail SUCCESS marks the withdrawal paid, FAIL or a closed batch marks it failed and the money
returns to the earner's available balance (models/commissions.py `settle_withdrawal`).
The requests are signed and the answers verified by the one WeChat Pay client
(gateway/providers/wechatpay.py): every refusal and every "no batch" (404) acted on here was
signed by WeChat Pay; one that was not (`AnswerNotVerified`, a WechatPayUnavailable) is no
answer, and the withdrawal stays requested.

Every create of a batch is the same request: it is built only from what the withdrawal stored
when it was requested (the merchant, its app, the member's openid then), never from the
member's binding of the moment, so a refusal of one create says the same of every other.
A row stored without them (before migration 0020, or by an older node) is fixed by its first
send, once for every sender; an older node's create of it may differ, so a refusal waits out
STOP_GRACE after the request and the fixing (`other_creates_until`).
A refusal 403 NO_AUTH (the merchant may not transfer) says nothing of an identical create sent
at another moment: the sweep sends the batch again for STOP_GRACE after the first such refusal
(`transfer_refused_at`), then no more, and fails it only when, asked STOP_GRACE after its latest
create, WeChat Pay has no batch under the number.
An operator gives up a withdrawal WeChat Pay keeps refusing for now with `fail_stopped`.

Every time these rules write or compare is the database's clock (`database_now`), never a
process's own: the request, the sweep (whichever node holds its lease) and an operator's CLI run
on different machines whose clocks may be minutes apart, and a create sent by one would look
STOP_GRACE old to another while WeChat Pay may still be accepting it (failed then, it is paid
and the money returned as well).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.providers.wechatpay import (
    WechatPayClient,
    WechatPayRefused,
    WechatPayUnavailable,
)
from aquafleet.models.commissions import Withdrawal, WithdrawalState, earner_of
from aquafleet.models.db import database_now
from aquafleet.models.errors import Conflict, DomainError, InvalidInput, NotFound
from aquafleet.models.members import Member
from aquafleet.models.merchants import PaymentNotConfigured, WechatPayMerchant, wechat_merchant
from aquafleet.models.sealed import SecretBox
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.vendors import Vendor
from aquafleet.models.withdrawals import (
    PAYOUT_CHANNELS,
    Payee,
    PayoutChannel,
    PayoutOutcome,
    PayoutResult,
    settle_withdrawal,
    stop_sending,
)

log = get_logger("aquafleet.payouts")

WEIXIN = "weixin"
MANUAL = "manual"
# WeChat Pay wants the payee's real name (encrypted) from 2,000 yuan per detail: larger
# withdrawals go through the manual channel.
MAX_WECHAT_TRANSFER_FEN = 200_000 - 1
REMARK = "佣金提现"
SWEEP_BATCH = 100
# Refusals of a create that WeChat Pay documents as the request's content being unacceptable
# (nothing accepted): the withdrawal fails if, asked after it, WeChat Pay has no batch under the
# number (every create of it is the same, so each is refused alike). Any other refusal (429
# FREQUENCY_LIMITED, 403 NOT_ENOUGH "原单重试", 400 INVALID_REQUEST "单号已存在但信息不一致" or
# a daily limit, a code not known yet; 403 NO_AUTH below) proves nothing about the batch
# another create may have made: the withdrawal stays requested and the sweep queries and sends
# it again under the same number, as WeChat Pay asks.
NOT_ACCEPTED = frozenset({"PARAM_ERROR"})
# The merchant may not transfer (the product closed or suspended): a refusal of the moment, not
# of the request. An identical create sent while the permission was there (before it was taken
# away, or after it was granted) may be accepted and still being accepted, a query answering
# 404 meanwhile: failing then would pay the batch and give the money back too. The sweep sends
# it again under the same number (as WeChat Pay asks) for STOP_GRACE after the first refusal,
# then stops sending and fails it once its latest create is STOP_GRACE old and there is no batch.
NOT_AUTHORISED = "NO_AUTH"
# An operator fails a withdrawal only once its latest create cannot still be on its way or being
# accepted (WeChat Pay answers a query 404 meanwhile): far longer than a create and its client
# retries take (3 x a 10 s timeout).
STOP_GRACE = dt.timedelta(minutes=10)
PAYEE_FIELDS = ("transfer_mchid", "transfer_appid", "transfer_openid", "transfer_fixed_at")
# This process's clock off the database's by more than this is logged. It decides nothing here
# (the database's does), but WeChat Pay refuses requests signed minutes off its own clock, and
# the logs of two machines read side by side disagree.
CLOCK_SKEW_LOGGED = dt.timedelta(seconds=30)


class WechatNotBound(Conflict):
    code = "wechat_not_bound"


class MerchantChanged(Conflict):
    """The vendor's merchant is not the one that sent the withdrawal's batch: neither sent
    nor asked under another merchant (its numbers are another merchant's)."""

    code = "merchant_changed"


class TransferStopped(Conflict):
    code = "transfer_stopped"


def batch_no(withdrawal_id: int) -> str:
    """out_batch_no: 5..32 letters and digits, one per withdrawal, never reused."""
    return f"AFW{withdrawal_id:016d}"


def detail_no(withdrawal_id: int) -> str:
    return f"AFD{withdrawal_id:016d}"


def other_creates_until(withdrawal: Withdrawal) -> dt.datetime | None:
    """Until when a create of the withdrawal's batch built from another payee than the stored
    one may still be being accepted: a row stored without its payee (from before 0020, or an
    older node's) was sent by such a node, from the binding of its moment, when it was
    requested and maybe until its payee was fixed. None: every create is the stored one."""
    if withdrawal.transfer_openid is not None and withdrawal.transfer_fixed_at is None:
        return None
    fixed = withdrawal.transfer_fixed_at
    return max(withdrawal.created_at, fixed or withdrawal.created_at) + STOP_GRACE


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def member_of_earner(earner: str) -> str | None:
    prefix, _, uid = earner.partition(":")
    return uid if prefix == "member" and uid else None


@dataclass(slots=True)
class PayoutSweep:
    checked: int = 0
    resent: int = 0
    paid: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


async def vendor_wechat_merchant(vendor_code: str, box: SecretBox) -> WechatPayMerchant:
    """The vendor's WeChat Pay merchant, opened; NotFound for no such vendor."""
    vendor = await Vendor.get_or_none(code=vendor_code)
    if vendor is None:
        raise NotFound(f"vendor {vendor_code} not found")
    return await wechat_merchant(vendor, box)


class WechatTransferPayout:
    """The `weixin` payout channel (PayoutChannel): a transfer batch per withdrawal."""

    name = WEIXIN

    def __init__(
        self, client: WechatPayClient, box: SecretBox, *, clock: Callable[[], dt.datetime] = utc_now
    ) -> None:
        self.client = client
        self.box = box
        self.clock = clock  # this process's: only compared with the database's, never decides

    async def database_now(self) -> dt.datetime:
        """The database's clock, on which every payout time is written and compared; this
        process's clock off it by more than CLOCK_SKEW_LOGGED is logged."""
        now = await database_now()
        ahead = self.clock() - now
        if abs(ahead) > CLOCK_SKEW_LOGGED:
            log.warning(
                "payout_clock_skew", clock_ahead_s=int(ahead.total_seconds()),
                decides="the database's clock",
            )  # fmt: skip
        return now

    async def merchant(self, vendor_code: str) -> WechatPayMerchant:
        return await vendor_wechat_merchant(vendor_code, self.box)

    @staticmethod
    async def openid(earner: str, vendor_code: str) -> str | None:
        """The earner's bound WeChat openid: members only (agents and dealers have none)."""
        uid = member_of_earner(earner)
        if uid is None:
            return None
        member = await Member.get_or_none(uid=uid, vendor_id=vendor_code)
        return member.wx_openid if member is not None and member.wx_openid else None

    async def payee(self, earner: str, vendor_code: str) -> Payee:
        """The transfer's merchant, app and payee as they are now, stored on the withdrawal
        when it is requested; refused (nothing moves) without an openid or a merchant."""
        openid = await self.openid(earner, vendor_code)
        if openid is None:
            raise WechatNotBound(f"{earner} has no WeChat account bound")
        merchant = await self.merchant(vendor_code)
        return Payee(merchant.mch_id, merchant.app_id, openid)

    async def merchant_of(self, withdrawal: Withdrawal) -> WechatPayMerchant:
        """The merchant that sends (and is asked about) the withdrawal's batch: the vendor's,
        only while it is the one stored with the withdrawal."""
        merchant = await self.merchant(withdrawal.vendor_code)
        stored = withdrawal.transfer_mchid
        if stored is not None and merchant.mch_id != stored:
            raise MerchantChanged(
                f"withdrawal {withdrawal.id} is sent by WeChat Pay merchant {stored}, the vendor's "
                f"merchant is now {merchant.mch_id}: set it back to settle the withdrawal"
            )
        return merchant

    async def fixed_payee(self, withdrawal: Withdrawal) -> Payee:
        """The stored payee. A row from before it was stored gets the binding of now, once:
        the first sender to store it wins and every other takes it, re-read (whatever row it
        holds), so two senders never send different creates; no binding is stored too (an
        empty openid: WechatNotBound for every sender, none sends)."""
        if withdrawal.transfer_openid is None:  # or only as this sender read the row
            await withdrawal.refresh_from_db(fields=list(PAYEE_FIELDS))
        if withdrawal.transfer_openid is None:
            openid = await self.openid(withdrawal.earner, withdrawal.vendor_code)
            fixed: dict[str, Any] = {
                "transfer_openid": openid or "",
                "transfer_fixed_at": await database_now(),
            }
            if openid is not None:
                merchant = await self.merchant(withdrawal.vendor_code)
                fixed.update(transfer_mchid=merchant.mch_id, transfer_appid=merchant.app_id)
            await Withdrawal.filter(id=withdrawal.id, transfer_openid__isnull=True).update(**fixed)
            await withdrawal.refresh_from_db(fields=list(PAYEE_FIELDS))
        if not withdrawal.transfer_openid:
            raise WechatNotBound(
                f"{withdrawal.earner} had no WeChat account bound when withdrawal "
                f"{withdrawal.id} was first sent"
            )
        return Payee(
            withdrawal.transfer_mchid, withdrawal.transfer_appid, withdrawal.transfer_openid
        )

    async def _create(self, withdrawal: Withdrawal) -> dict[str, Any]:
        """Send the withdrawal's batch, built from the stored payee only: every create of it is
        the same request. Its time (the database's) is written first, unless an operator
        stopped it."""
        payee = await self.fixed_payee(withdrawal)
        merchant = await self.merchant_of(withdrawal)
        sending = await Withdrawal.filter(
            id=withdrawal.id, state=WithdrawalState.REQUESTED, transfer_stopped_at__isnull=True
        ).update(transfer_sent_at=await database_now())
        if not sending:
            raise TransferStopped(f"withdrawal {withdrawal.id} is settled or stopped: not sent")
        amount = int(withdrawal.amount_fen)
        return await self.client.create_transfer_batch(
            merchant,
            {
                "appid": payee.appid, "out_batch_no": batch_no(withdrawal.id),
                "batch_name": REMARK, "batch_remark": REMARK, "total_amount": amount,
                "total_num": 1,
                "transfer_detail_list": [{
                    "out_detail_no": detail_no(withdrawal.id), "transfer_amount": amount,
                    "transfer_remark": REMARK, "openid": payee.openid,
                }],
            },
        )  # fmt: skip

    async def submit(self, withdrawal: Withdrawal) -> PayoutResult:
        """Send the transfer. Refused as unacceptable (NOT_ACCEPTED, or no openid any more)
        and no batch under the number when asked then: failed, the money returns. Any other
        refusal, or not answered: still requested (the sweep queries and sends it again): the
        sweep's create and this one may race, and the other may have made the batch."""
        try:
            answer = await self._create(withdrawal)
        except (WechatPayRefused, WechatNotBound) as exc:
            if isinstance(exc, WechatPayRefused) and exc.wx_code == NOT_AUTHORISED:
                return await self._not_authorised(withdrawal, exc)
            if isinstance(exc, WechatPayRefused) and exc.wx_code not in NOT_ACCEPTED:
                log.warning("payout_refused_for_now", withdrawal=withdrawal.id, why=str(exc))
                return PayoutResult(PayoutOutcome.REQUESTED)
            return await self._refused(withdrawal, exc)
        except DomainError as exc:  # unavailable, not configured, an answer not to trust
            log.warning("payout_deferred", withdrawal=withdrawal.id, why=str(exc))
            return PayoutResult(PayoutOutcome.REQUESTED)
        log.info("payout_sent", withdrawal=withdrawal.id, batch=batch_no(withdrawal.id))
        return PayoutResult(PayoutOutcome.REQUESTED, reference=str(answer.get("batch_id", "")))

    async def _not_authorised(self, withdrawal: Withdrawal, exc: DomainError) -> PayoutResult:
        """A create refused NO_AUTH: still requested (another create may be being accepted);
        the first such refusal's time (the database's) is kept, from which the sweep counts
        its retries."""
        await Withdrawal.filter(id=withdrawal.id, transfer_refused_at__isnull=True).update(
            transfer_refused_at=await database_now()
        )
        log.warning("payout_not_authorised", withdrawal=withdrawal.id, why=str(exc))
        return PayoutResult(PayoutOutcome.REQUESTED)

    @staticmethod
    def _unauthorised_outcome(withdrawal: Withdrawal, asked: dt.datetime) -> PayoutResult:
        """A withdrawal refused NO_AUTH for STOP_GRACE, not sent any more, that WeChat Pay,
        asked at `asked`, has no batch of: failed only if its latest create (and an older
        node's create of another payee) was sent STOP_GRACE before: none can still be being
        accepted. The failure holds only if no create was recorded since (`sent_before`)."""
        sent = withdrawal.transfer_sent_at
        ends = [sent + STOP_GRACE] if sent is not None else []
        ends += [t for t in [other_creates_until(withdrawal)] if t is not None]
        until = max(ends, default=None)
        if until is not None and asked < until:
            log.info("payout_not_authorised_waiting", withdrawal=withdrawal.id, until=str(until))
            return PayoutResult(PayoutOutcome.REQUESTED)
        refused = withdrawal.transfer_refused_at or asked
        return PayoutResult(
            PayoutOutcome.FAILED,
            reason=(
                f"wechat transfer refused: 403 {NOT_AUTHORISED} (the merchant may not transfer) "
                f"since {refused.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
            ),
            sent_before=asked - STOP_GRACE,
        )

    async def _refused(self, withdrawal: Withdrawal, exc: DomainError) -> PayoutResult:
        """A create refused as unacceptable: failed only if no batch is under the number (a
        batch made by another create decides by its own state), and never while a create of
        other content (an older node's, of a row whose payee was fixed late) may still be
        being accepted: its refusal would say nothing of that one."""
        until = other_creates_until(withdrawal)
        if until is not None and await database_now() < until:
            log.warning(
                "payout_refused_for_now", withdrawal=withdrawal.id, why=str(exc),
                older_create_until=until.isoformat(),
            )  # fmt: skip
            return PayoutResult(PayoutOutcome.REQUESTED)
        try:
            merchant = await self.merchant_of(withdrawal)
            answer = await self.client.query_transfer_batch(merchant, batch_no(withdrawal.id))
        except WechatPayRefused as query_exc:
            if query_exc.status != 404:
                log.warning("payout_deferred", withdrawal=withdrawal.id, why=str(query_exc))
                return PayoutResult(PayoutOutcome.REQUESTED)
            log.error("payout_refused", withdrawal=withdrawal.id, why=str(exc))
            return PayoutResult(PayoutOutcome.FAILED, reason=f"wechat transfer refused: {exc}")
        except DomainError as query_exc:
            log.warning("payout_deferred", withdrawal=withdrawal.id, why=str(query_exc))
            return PayoutResult(PayoutOutcome.REQUESTED)
        return await self._outcome(merchant, withdrawal, answer)

    async def check(self, withdrawal: Withdrawal) -> PayoutResult:
        """The transfer's state at WeChat Pay; a batch WeChat Pay never received is sent again
        (under the same number), unless an operator stopped sending it or WeChat Pay refused
        it NO_AUTH for longer than STOP_GRACE (then it fails once no create can be on its way)."""
        merchant = await self.merchant_of(withdrawal)
        asked = await database_now()  # before the query: its answer is at least as recent
        try:
            answer = await self.client.query_transfer_batch(merchant, batch_no(withdrawal.id))
        except WechatPayRefused as exc:
            if exc.status != 404:
                raise
            if withdrawal.transfer_stopped_at is not None:
                return PayoutResult(PayoutOutcome.REQUESTED)  # the operator's to fail
            refused = withdrawal.transfer_refused_at
            if refused is not None and asked >= refused + STOP_GRACE:
                return self._unauthorised_outcome(withdrawal, asked)
            return await self.submit(withdrawal)
        return await self._outcome(merchant, withdrawal, answer)

    async def fail_stopped(self, withdrawal_id: int, *, reason: str, actor: str) -> Withdrawal:
        """An operator gives up a withdrawal WeChat Pay keeps refusing for now (403
        NOT_ENOUGH, ...): it is no longer sent, and it fails (the money back to available,
        once) only when WeChat Pay, asked once its latest create cannot still be being
        accepted, has no batch under its number or the batch failed or closed. A batch that
        pays or may still pay is a Conflict (409): its outcome decides. Failed already: as is.
        Timed on the database's clock, whatever the operator's machine's says."""
        now = await self.database_now()
        withdrawal = await stop_sending(withdrawal_id, channel=self.name, now=now)
        if withdrawal.state is not WithdrawalState.REQUESTED:
            return withdrawal  # failed already: as it is
        number = batch_no(withdrawal.id)
        sent = withdrawal.transfer_sent_at
        ends = [sent + STOP_GRACE] if sent is not None else []
        ends += [t for t in [other_creates_until(withdrawal)] if t is not None]
        until = max(ends, default=None)
        if until is not None and now < until:
            last = f"last sent at {sent.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}" if sent else ""
            raise Conflict(
                f"withdrawal {withdrawal.id}: its batch {number} was "
                f"{last or 'stored without its payee, sent by an older node'} and WeChat Pay "
                f"may still be accepting it; it is no longer sent: try again from "
                f"{until.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ} (the database's clock: in "
                f"{int((until - now).total_seconds()) + 1} s)"
            )
        merchant = await self.merchant_of(withdrawal)
        try:
            answer = await self.client.query_transfer_batch(merchant, number)
        except WechatPayRefused as exc:
            if exc.status != 404:
                raise
            result = PayoutResult(PayoutOutcome.FAILED, reason=f"no wechat transfer: {reason}")
        else:
            result = await self._outcome(merchant, withdrawal, answer)
            if result.outcome is not PayoutOutcome.FAILED:
                status = (answer.get("transfer_batch") or {}).get("batch_status", "")
                raise Conflict(
                    f"withdrawal {withdrawal.id}: WeChat Pay has its batch {number} "
                    f"({status or 'unknown'}, {result.outcome.name.lower()}): the batch "
                    "decides, it cannot be failed by hand"
                )
            result = PayoutResult(
                PayoutOutcome.FAILED, result.reference, f"{result.reason}; {reason}"
            )
        log.warning("payout_failed_by_operator", withdrawal=withdrawal.id, by=actor)
        return await settle_withdrawal(
            withdrawal.id, paid=False, reason=result.reason, reference=result.reference,
            actor=actor, channel=self.name,
        )  # fmt: skip

    async def _outcome(
        self, merchant: WechatPayMerchant, withdrawal: Withdrawal, answer: dict[str, Any]
    ) -> PayoutResult:
        """The withdrawal's result from WeChat Pay's answer to a query of its batch."""
        batch = answer.get("transfer_batch") or {}
        if batch.get("mchid", merchant.mch_id) != merchant.mch_id:
            raise Conflict("the transfer batch is of another merchant")
        if int(batch.get("total_amount", -1)) != int(withdrawal.amount_fen):
            log.error(
                "payout_amount_mismatch", withdrawal=withdrawal.id,
                amount_fen=batch.get("total_amount"),
            )  # fmt: skip
            raise Conflict(f"the transfer batch of withdrawal {withdrawal.id} has another amount")
        ours = detail_no(withdrawal.id)
        detail: dict[str, Any] = next(
            (d for d in answer.get("transfer_detail_list") or [] if d.get("out_detail_no") == ours),
            {},
        )
        status = str(detail.get("detail_status", ""))
        reference = str(detail.get("detail_id") or batch.get("batch_id", ""))
        if status == "SUCCESS":
            return PayoutResult(PayoutOutcome.PAID, reference, "wechat transfer SUCCESS")
        if status == "FAIL" or batch.get("batch_status") == "CLOSED":
            why = str(batch.get("close_reason") or "")
            if status == "FAIL" and not why:
                why = await self._fail_reason(merchant, withdrawal)
            return PayoutResult(PayoutOutcome.FAILED, reference, f"wechat transfer failed: {why}")
        return PayoutResult(PayoutOutcome.REQUESTED, reference)

    async def _fail_reason(self, merchant: WechatPayMerchant, withdrawal: Withdrawal) -> str:
        """The failed detail's reason (ACCOUNT_FROZEN, REAL_NAME_CHECK_FAIL, ...)."""
        try:
            detail = await self.client.query_transfer_detail(
                merchant, batch_no(withdrawal.id), detail_no(withdrawal.id)
            )
        except WechatPayRefused:
            return "detail FAIL"
        return str(detail.get("fail_reason") or "detail FAIL")

    async def sweep(self, *, limit: int = SWEEP_BATCH) -> PayoutSweep:
        """One pass over the requested withdrawals of this channel, oldest first."""
        report = PayoutSweep()
        await self.database_now()  # says once a pass if this node's clock is off the database's
        rows = (
            await Withdrawal.filter(state=WithdrawalState.REQUESTED, channel=self.name)
            .order_by("id")
            .limit(limit)
        )
        for withdrawal in rows:
            report.checked += 1
            try:
                result = await self.check(withdrawal)
                if result.outcome is PayoutOutcome.REQUESTED:
                    continue
                settled = await settle_withdrawal(
                    withdrawal.id, paid=result.outcome is PayoutOutcome.PAID,
                    reason=result.reason, reference=result.reference,
                    actor=f"channel:{self.name}", channel=self.name,
                    sent_before=result.sent_before,
                )  # fmt: skip
                if settled.state is WithdrawalState.REQUESTED:
                    continue  # sent again meanwhile: that create decides
            except (WechatPayUnavailable, PaymentNotConfigured) as exc:
                report.errors.append(f"withdrawal {withdrawal.id}: {exc}")
                log.warning("payout_sweep_deferred", withdrawal=withdrawal.id, why=str(exc))
                continue
            except DomainError as exc:
                report.errors.append(f"withdrawal {withdrawal.id}: {exc}")
                log.error("payout_sweep_failed", withdrawal=withdrawal.id, why=str(exc))
                continue
            if result.outcome is PayoutOutcome.PAID:
                report.paid += 1
            else:
                report.failed += 1
            log.info(
                "payout_settled", withdrawal=withdrawal.id, outcome=result.outcome.name.lower()
            )
        return report


async def choose_payout(
    principal: Principal,
    amount_fen: int,
    wanted: str | None,
    wechat: WechatTransferPayout | None,
) -> PayoutChannel:
    """AE-03's channel: `manual` or `weixin` as asked; when not asked, `weixin` for a member
    with a bound WeChat account at a vendor whose WeChat Pay merchant is set up (and an amount
    under 2,000 yuan), else `manual`. Agents and dealers have no openid: always manual."""
    manual = PAYOUT_CHANNELS[MANUAL]
    if wanted == MANUAL:
        return manual
    if wanted not in (None, WEIXIN):
        raise InvalidInput(f"channel must be {MANUAL} or {WEIXIN}")
    earner = earner_of(principal)
    vendor_code = principal.vendor_code
    openid = (
        await WechatTransferPayout.openid(earner, vendor_code)
        if earner is not None and vendor_code is not None and principal.role is Role.MEMBER
        else None
    )
    reason = ""
    if wechat is None:
        reason = "WeChat transfers are not available on this node"
    elif openid is None:
        reason = "the earner has no WeChat account bound (agents and dealers never have)"
    elif amount_fen > MAX_WECHAT_TRANSFER_FEN:
        reason = "WeChat transfers of 2,000 yuan or more need the payee's name: use manual"
    else:
        try:
            assert vendor_code is not None
            await wechat.merchant(vendor_code)
        except PaymentNotConfigured as exc:
            reason = str(exc)
    if not reason and wechat is not None:
        return wechat
    if wanted == WEIXIN:
        if openid is None:
            raise WechatNotBound(reason)
        if amount_fen > MAX_WECHAT_TRANSFER_FEN:
            raise InvalidInput(reason)
        raise PaymentNotConfigured(reason)
    return manual
