"""The payment channels at work: the sweep that executes due refunds, closes the bills of
closed orders and queries bills whose notification is late, each step dispatched to the bill's
channel (gateway/channels.py: WeChat Pay, the card acquirers, Alipay), and what a confirmed
payment does (`apply`). The decisions are models/payments.py's and models/money.py's; this
module says what happened (log lines, metrics).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from aquafleet.gateway.alipay import AlipayPayments
from aquafleet.gateway.cards import CARD, AcquirerUnavailable, CardPayments
from aquafleet.gateway.channels import Closing, PaymentChannel, RefundResult
from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.lease import NodeLease
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.old_numbers import sweep_old_numbers
from aquafleet.gateway.payouts import WechatTransferPayout
from aquafleet.gateway.providers.alipay import AlipayUnavailable
from aquafleet.gateway.providers.wechatpay import WechatPayClient, WechatPayUnavailable
from aquafleet.gateway.redis_io import Scripts
from aquafleet.gateway.wechatpay import WechatPayments
from aquafleet.models.bill_numbers import leave_number, number_done
from aquafleet.models.errors import DomainError
from aquafleet.models.merchants import PaymentNotConfigured
from aquafleet.models.money import (
    Part,
    Refund,
    RefundState,
    refund_part,
    settle_refund,
    wallet_account,
)
from aquafleet.models.orders import Order, OrderState
from aquafleet.models.payments import (
    ChannelPayment,
    Outcome,
    Payment,
    PaymentState,
    apply_channel_payment,
    bill_of_number,
    bill_queried,
    bill_tried,
    bills_to_close,
    close_bill,
    late_bills,
    number_of_second_payment,
    paid_otherwise,
    payment_of_order,
)
from aquafleet.models.renewals import RenewalsSwept, finish_paid_renewals
from aquafleet.models.sealed import SecretBox
from aquafleet.models.wallet import settle_dispenses

log = get_logger("aquafleet.payments")

WALLET = "wallet"
SWEEP_BATCH = 100
# Outcomes after which a number's payment is here (its one payment at the provider).
SETTLES_NUMBER = frozenset(
    {Outcome.PAID, Outcome.PAID_TWICE, Outcome.REFUND_AFTER_CLOSE, Outcome.DUPLICATE}
)


@dataclass(slots=True)
class SweepReport:
    refunds_sent: int = 0
    refunds_settled: int = 0
    refunds_failed: int = 0
    bills_closed: int = 0
    bills_queried: int = 0
    bills_paid: int = 0
    dispenses_settled: int = 0
    renewals_finished: int = 0
    renewals_refused: int = 0  # paid, not applied: the device refused (named in errors)
    payouts_checked: int = 0
    payouts_paid: int = 0
    payouts_failed: int = 0
    # Numbers a bill left open at a provider (gateway/old_numbers.py): asked about, closed
    # there, and found paid there (the payment applied: paid, or refunded as a second one).
    old_numbers_asked: int = 0
    old_numbers_closed: int = 0
    old_numbers_paid: int = 0
    errors: list[str] = field(default_factory=list)


class PaymentService:
    """One node's (or the CLI's) access to the payment channels."""

    def __init__(
        self,
        client: WechatPayClient,
        box: SecretBox,
        metrics: Metrics,
        *,
        notify_base_url: str,
        query_after: dt.timedelta = dt.timedelta(seconds=60),
        apply_service: Any = None,
        unpaid_close_after: dt.timedelta = dt.timedelta(hours=24),
    ) -> None:
        self.client = client
        self.box = box
        self.metrics = metrics
        self.notify_base_url = notify_base_url.rstrip("/")
        self.query_after = query_after
        # An order unpaid this long after it was made closes (order_unpaid_close_h): its
        # bill's payment deadline, which a channel that can bound its bill is told.
        self.unpaid_close_after = unpaid_close_after
        self.apply_service = apply_service  # renewals change their device when paid
        self.payout = WechatTransferPayout(client, box)  # commission withdrawals (AE-03)
        self.wechat = WechatPayments(client, box, self)  # WeChat Pay (gateway/wechatpay.py)
        self.cards: CardPayments | None = None  # the card acquirers (gateway/cards.py)
        self.alipay: AlipayPayments | None = None  # Alipay (gateway/alipay.py)

    @property
    def channels(self) -> dict[str, PaymentChannel]:
        """The channels this service has, by the name their bills and refunds carry."""
        found: list[PaymentChannel | None] = [self.wechat, self.cards, self.alipay]
        return {channel.name: channel for channel in found if channel is not None}

    async def apply(self, notice: ChannelPayment) -> Outcome:
        """Apply a confirmed payment and say what happened (alerts for the odd outcomes). A
        payment of a bill open at another channel meanwhile closes it there first
        (`close_elsewhere`)."""
        await self.close_elsewhere(notice)
        outcome = await apply_channel_payment(notice, apply_service=self.apply_service)
        if outcome in SETTLES_NUMBER:
            # The number's one payment is here: nothing more to find or close under it.
            await number_done(notice.channel, notice.bill_no)
        fields = {"bill_no": notice.bill_no, "transaction_no": notice.transaction_no}
        if outcome is Outcome.PAID or outcome is Outcome.TOPPED_UP:
            self.metrics.payments_paid += 1
            log.info("payment_confirmed", outcome=outcome.value, **fields)
        elif outcome is Outcome.AMOUNT_MISMATCH:
            self.metrics.payments_amount_mismatch += 1
            log.error("payment_amount_mismatch", amount_fen=notice.amount_fen, **fields)
        elif outcome in (Outcome.PAID_TWICE, Outcome.UNKNOWN_BILL, Outcome.REFUND_AFTER_CLOSE):
            log.warning(f"payment_{outcome.value}", amount_fen=notice.amount_fen, **fields)
        return outcome

    async def close_elsewhere(self, notice: ChannelPayment) -> None:
        """The member paid the bill through one channel (or under an older number of it)
        while it is open at another (WeChat Pay's sheet, a card code, an Alipay page under
        its number now): close it there before the payment marks it paid, which takes it out
        of the sweep's bills to close, so the member cannot pay there too. Paid there
        meanwhile: that payment was applied and this one is a second payment (booked and
        refunded). The other channel silent or refusing: the payment is applied anyway (the
        money came) and logged; paying there too is then a second payment, refunded."""
        payment = await bill_of_number(notice.bill_no, notice.vendor)
        if (
            payment is None or payment.state is not PaymentState.PENDING
            or not payment.prepay_id or payment.amount_fen != notice.amount_fen
            or (payment.channel, payment.bill_no) == (notice.channel, notice.bill_no)
        ):  # fmt: skip
            return
        channel = self.channels.get(payment.channel)
        if channel is None:
            return
        cannot: tuple[type[Exception], ...] = (
            *channel.unanswered, *channel.refusals, PaymentNotConfigured,
        )  # fmt: skip
        try:
            closing = await channel.close_to_move(payment)
        except cannot as exc:
            await self._left_open(payment, notice, str(exc))
            return
        if closing is Closing.OPEN:
            await self._left_open(payment, notice, "not closed yet")
            return
        until = await channel.may_appear_until(payment) if closing is Closing.NOT_THERE else None
        if until is not None:  # an Alipay URL never opened: it may still open and pay
            await leave_number(
                payment, channel=payment.channel, bill_no=payment.bill_no,
                prepay_id=payment.prepay_id, payable_until=until,
            )  # fmt: skip
        log.info(
            "bill_closed_elsewhere", bill_no=payment.bill_no, channel=payment.channel,
            paid_under=notice.bill_no, paid_at=notice.channel, found=closing.value,
        )  # fmt: skip

    async def _left_open(self, payment: Payment, notice: ChannelPayment, why: str) -> None:
        """The bill stays open at its channel while the payment marks it paid: remembered,
        so the sweep closes it there later and applies a payment made there meanwhile
        (gateway/old_numbers.py), even one whose notification never comes."""
        log.warning(
            "bill_left_open", bill_no=payment.bill_no, channel=payment.channel,
            paid_under=notice.bill_no, paid_at=notice.channel, why=why,
        )  # fmt: skip
        await leave_number(
            payment, channel=payment.channel, bill_no=payment.bill_no, prepay_id=payment.prepay_id
        )

    async def release_bill(self, order: Order, to: str) -> None:
        """Before the order's pending bill moves to channel `to` (the member pays it
        otherwise): the channel it is open at (WeChat Pay, Alipay, the card acquirer) closes
        it there, so it can no longer be paid there (`PaymentChannel.release`). Raises, and
        nothing moves, when that channel cannot be reached (503), refuses (502), says the bill
        was paid meanwhile (applied; 409 order_paid) or cannot close it yet (409)."""
        if order.state is not OrderState.OBLIGATION:
            return  # not payable: the move is refused (open_order_bill), nothing to close
        payment = await payment_of_order(order.oid)
        if (
            payment is None or payment.state is not PaymentState.PENDING
            or payment.channel == to or not payment.prepay_id
        ):  # fmt: skip
            return
        channel = self.channels.get(payment.channel)
        if channel is not None:
            await channel.release(payment)

    # ------------------------------------------------------------------------- the sweep

    async def sweep(self, *, limit: int = SWEEP_BATCH) -> SweepReport:
        """One pass: due refunds executed, bills of orders no longer awaiting payment closed
        (closed, or paid otherwise), late bills queried, commission withdrawals sent through
        WeChat transfers queried (gateway/payouts.py)."""
        report = SweepReport()
        # First, so that a second payment found there is refunded in the same pass.
        await self.sweep_old_numbers(report, limit)
        for refund in await Refund.filter(state=RefundState.DUE).order_by("id").limit(limit):
            await self.guarded(
                report, f"refund {refund.refund_no}", self._send_refund, refund, report
            )
        for name in self.channels:
            requested = Refund.filter(state=RefundState.REQUESTED, channel=name).limit(limit)
            for refund in await requested:
                await self.guarded(
                    report, f"refund {refund.refund_no}", self._check_refund, refund, report
                )
        for payment in await bills_to_close(limit):
            await self.guarded(report, f"bill {payment.bill_no}", self._close, payment, report)
        report.dispenses_settled = await settle_dispenses(limit)
        if self.apply_service is not None:  # the CLI's sweep has no devices: the node's does it
            paid_before = dt.datetime.now(dt.UTC) - self.query_after
            renewals = await self.guarded(
                report, "paid renewals", finish_paid_renewals, self.apply_service, limit,
                paid_before,
            )  # fmt: skip
            if renewals is not None:
                self._renewals_swept(renewals, report)
        for payment in await late_bills(self.query_after, limit):
            channel = self.channels.get(payment.channel)
            if channel is None:
                continue
            report.bills_queried += 1
            await bill_queried(payment, self.query_after)  # asked again after its backoff
            what = f"bill {payment.bill_no}"
            outcome = await self.guarded(report, what, channel.query_bill, payment)
            if outcome in (Outcome.PAID, Outcome.TOPPED_UP, Outcome.REFUND_AFTER_CLOSE):
                report.bills_paid += 1
        payouts = await self.payout.sweep(limit=limit)
        report.payouts_checked, report.payouts_paid = payouts.checked, payouts.paid
        report.payouts_failed = payouts.failed
        report.errors.extend(payouts.errors)
        return report

    async def sweep_old_numbers(
        self, report: SweepReport, limit: int, asked_before: dt.datetime | None = None
    ) -> int:
        """Numbers a bill left open at a provider, each asked at most once a `query_after`
        (gateway/old_numbers.py): closed there, a payment found there applied once. How many
        the batch took (0: none is left that was not asked since `asked_before`)."""
        before = asked_before or dt.datetime.now(dt.UTC) - self.query_after
        swept = await sweep_old_numbers(self, report, limit, before)
        report.old_numbers_asked += swept.asked
        report.old_numbers_closed += swept.closed
        report.old_numbers_paid += swept.paid
        return swept.taken

    def _renewals_swept(self, renewals: RenewalsSwept, report: SweepReport) -> None:
        """Counted, and each refused renewal logged and named in the report: the member paid
        and its device is not renewed until someone looks (GET /orders?type=3&state=1)."""
        report.renewals_finished = renewals.finished
        report.renewals_refused = len(renewals.refused)
        self.metrics.payments_renewals_refused += len(renewals.refused)
        for oid, why in renewals.refused:
            report.errors.append(f"renewal {oid}: {why}")
            log.error("renewal_not_applied", order_id=oid, why=why)

    async def guarded(self, report: SweepReport, what: str, step: Any, *args: Any) -> Any:
        try:
            return await step(*args)
        except (
            WechatPayUnavailable, AcquirerUnavailable, AlipayUnavailable, PaymentNotConfigured
        ) as exc:  # fmt: skip
            report.errors.append(f"{what}: {exc}")  # tried again at the next sweep
            log.warning("payments_sweep_deferred", what=what, why=str(exc))
        except DomainError as exc:
            report.errors.append(f"{what}: {exc}")
            log.error("payments_sweep_failed", what=what, why=str(exc))
        return None

    async def _refund_bill(self, refund: Refund) -> Payment | None:
        """The bill a refund goes back through: the order's; for the refund of a duplicate
        payment, the same bill as the channel that took the duplicate saw it (the order's bill
        may since have been paid from the wallet, or moved to another channel)."""
        payment = await payment_of_order(refund.order_oid)
        if payment is None or refund_part(refund) is not Part.DUPLICATE:
            return payment
        # Under the number the channel took it (the bill may have moved on to another since).
        paid_under = await number_of_second_payment(
            payment.order_oid or "", refund.channel, refund.refund_no
        )
        prepay_id = payment.prepay_id
        cards = self.cards
        if refund.channel == CARD and cards is not None and cards.acquirer_of_bill(payment) is None:
            prepay_id = f"{(await cards.acquirer_of_vendor(payment.vendor_code)).name}:"
        return Payment(
            id=payment.id, bill_no=paid_under or payment.bill_no, purpose=payment.purpose,
            order_oid=payment.order_oid, member_uid=payment.member_uid,
            vendor_code=payment.vendor_code, channel=refund.channel,
            amount_fen=refund.amount_fen, state=PaymentState.PAID, prepay_id=prepay_id,
        )  # fmt: skip

    async def _send_refund(self, refund: Refund, report: SweepReport) -> None:
        payment = await self._refund_bill(refund)
        if payment is None or payment.state is not PaymentState.PAID:
            return  # not paid: a person's refund
        if payment.channel == WALLET:
            # Paid from the wallet: the refund goes back to it at once.
            await settle_refund(
                refund.refund_no, channel=WALLET, account=wallet_account(payment.member_uid)
            )
            report.refunds_settled += 1
            return
        channel = self.channels.get(payment.channel)
        if channel is None:
            return  # a channel this service does not have: a person's refund
        result = await channel.send_refund(refund, payment)
        if result is RefundResult.FAILED:
            report.refunds_failed += 1
        elif result is not None:
            self.metrics.payments_refunds_sent += 1
            report.refunds_sent += 1
            report.refunds_settled += result is RefundResult.SUCCEEDED

    async def _check_refund(self, refund: Refund, report: SweepReport) -> None:
        payment = await self._refund_bill(refund)
        channel = self.channels.get(refund.channel)
        if payment is None or channel is None:
            return
        result = await channel.check_refund(refund, payment)
        if result is RefundResult.SUCCEEDED:
            report.refunds_settled += 1
        elif result is RefundResult.FAILED:
            report.refunds_failed += 1

    async def _close(self, payment: Payment, report: SweepReport) -> None:
        await bill_tried(payment)  # deferred by the channel: the others go first next time
        channel = self.channels.get(payment.channel)
        if channel is None:
            await close_bill(payment)  # no channel to tell (the wallet's, or one not set up)
            return
        # An order paid without the bill: ask the channel first. Money it took anyway was
        # applied as a second payment (booked, refunded in full); the bill is done with.
        if await paid_otherwise(payment) and await channel.query_bill(payment) is not None:
            await close_bill(payment)
            return
        report.bills_closed += await channel.close(payment)


def payment_service(
    settings: Any,
    session: Any,
    box: SecretBox,
    metrics: Metrics,
    *,
    apply_service: Any = None,
) -> PaymentService:
    """The payment service with every channel the platform has (WeChat Pay, the card
    acquirers, Alipay), on one HTTP session: the node's and the CLI's are the same."""
    from aquafleet.gateway.providers.alipay import AlipayClient
    from aquafleet.gateway.providers.allinpay import AllinpayAcquirer

    service = PaymentService(
        WechatPayClient(session, metrics, base_url=settings.wechatpay_api_url),
        box,
        metrics,
        notify_base_url=settings.payments_notify_url,
        query_after=dt.timedelta(seconds=settings.payments_query_after_s),
        apply_service=apply_service,
        unpaid_close_after=dt.timedelta(hours=settings.order_unpaid_close_h),
    )
    service.cards = CardPayments(
        [AllinpayAcquirer(session, box, base_url=settings.allinpay_api_url)], service
    )
    service.alipay = AlipayPayments(
        AlipayClient(session, gateway_url=settings.alipay_gateway_url), box, service
    )
    return service


class PaymentSweeper:
    """The payments sweep in the node, once per cluster: the holder of a Redis lease
    (gateway/lease.py) sweeps every `interval_s`; when it dies another node takes over within
    the lease time. Every step of a sweep is idempotent, so an overlap at a hand-over does
    nothing twice."""

    def __init__(
        self,
        service: PaymentService,
        client: aioredis.Redis,
        scripts: Scripts,
        *,
        lease_key: str,
        node_id: str,
        interval_s: float,
    ) -> None:
        self.service = service
        self.interval_s = interval_s
        self.lease = NodeLease(
            client=client, scripts=scripts, key=lease_key, node_id=node_id,
            lease_ms=max(5_000, int(interval_s * 3_000)), job="payments_sweeper",
        )  # fmt: skip
        self.passes = 0  # full sweeps done here (a barrier for tests and operators)

    @property
    def owner(self) -> bool:
        return self.lease.held

    async def run(self) -> None:
        from tortoise.exceptions import BaseORMException

        while True:
            try:
                if await self.lease.acquire():
                    report = await self.service.sweep()
                    self.passes += 1
                    if (
                        report.refunds_sent or report.bills_closed or report.bills_paid
                        or report.old_numbers_closed or report.old_numbers_paid
                        or report.payouts_paid or report.payouts_failed
                        or report.renewals_finished or report.renewals_refused
                    ):  # fmt: skip
                        log.info(
                            "payments_swept", refunds_sent=report.refunds_sent,
                            bills_closed=report.bills_closed, bills_paid=report.bills_paid,
                            payouts_paid=report.payouts_paid, payouts_failed=report.payouts_failed,
                            renewals_finished=report.renewals_finished,
                            renewals_refused=report.renewals_refused,
                            old_numbers_closed=report.old_numbers_closed,
                            old_numbers_paid=report.old_numbers_paid,
                        )  # fmt: skip
            except (GatewayError, BaseORMException, DomainError) as exc:
                log.warning("payments_sweeper_error", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval_s)

    async def release(self) -> None:
        """Hand the lease over at once (shutdown) instead of letting it time out."""
        await self.lease.hand_over()
