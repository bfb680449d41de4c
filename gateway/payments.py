"""The payment channels at work: WeChat Pay prepay, its notifications, and the sweep that
executes due refunds, closes the bills of closed orders and queries bills whose notification
is late. The decisions are models/payments.py's and models/money.py's; this module talks to
the channel (gateway/providers/wechatpay.py) and says what happened (log lines, metrics).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from aquafleet.gateway.alipay import AlipayPayments
from aquafleet.gateway.cards import CARD, AcquirerUnavailable, CardPayments, RefundResult
from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.lease import NodeLease
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.payouts import WechatNotBound, WechatTransferPayout
from aquafleet.gateway.providers.alipay import AlipayUnavailable
from aquafleet.gateway.providers.wechatpay import (
    WechatPayClient,
    WechatPayRefused,
    WechatPayUnavailable,
)
from aquafleet.gateway.redis_io import Scripts
from aquafleet.models.errors import DomainError, NotFound
from aquafleet.models.merchants import PaymentNotConfigured, WechatPayMerchant, wechat_merchant
from aquafleet.models.money import (
    Part,
    Refund,
    RefundState,
    move_refund,
    refund_part,
    settle_refund,
    wallet_account,
)
from aquafleet.models.orders import Order, OrderLine
from aquafleet.models.payments import (
    ChannelPayment,
    Outcome,
    Payment,
    PaymentState,
    apply_channel_payment,
    bills_to_close,
    close_bill,
    late_bills,
    open_order_bill,
    payment_of_order,
    set_prepay_id,
)
from aquafleet.models.reconcile import Difference, compare, parse_trade_bill
from aquafleet.models.sealed import SecretBox
from aquafleet.models.vendors import Vendor
from aquafleet.models.wallet import open_topup, settle_dispenses
from aquafleet.models.wechatpay import (
    WechatPayError,
    decrypt_resource,
    jsapi_parameters,
    nonce,
    verify_signed,
)

log = get_logger("aquafleet.payments")

WEIXIN = "weixin"
WALLET = "wallet"
ALIPAY = "alipay"
NOTIFY_PATH = "/api/v1/payments/weixin/notify/{vid}"
REFUND_NOTIFY_PATH = "/api/v1/payments/weixin/refund-notify/{vid}"
SWEEP_BATCH = 100


class NotificationRefused(WechatPayError):
    """A notification we cannot trust or read: answered as a failure, nothing changes."""

    code = "notification_refused"


@dataclass(slots=True)
class SweepReport:
    refunds_sent: int = 0
    refunds_settled: int = 0
    refunds_failed: int = 0
    bills_closed: int = 0
    bills_queried: int = 0
    bills_paid: int = 0
    dispenses_settled: int = 0
    payouts_checked: int = 0
    payouts_paid: int = 0
    payouts_failed: int = 0
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
    ) -> None:
        self.client = client
        self.box = box
        self.metrics = metrics
        self.notify_base_url = notify_base_url.rstrip("/")
        self.query_after = query_after
        self.apply_service = apply_service  # renewals change their device when paid
        self.payout = WechatTransferPayout(client, box)  # commission withdrawals (AE-03)
        self.cards: CardPayments | None = None  # the card acquirers (gateway/cards.py)
        self.alipay: AlipayPayments | None = None  # Alipay (gateway/alipay.py)

    async def merchant(self, vendor_code: str) -> WechatPayMerchant:
        vendor = await Vendor.get_or_none(code=vendor_code)
        if vendor is None:
            raise NotFound(f"vendor {vendor_code} not found")
        return await wechat_merchant(vendor, self.box)

    def _notify_url(self, path: str, vendor_code: str) -> str:
        if not self.notify_base_url:
            raise PaymentNotConfigured("payments_notify_url is not set: WeChat Pay cannot notify")
        return self.notify_base_url + path.format(vid=vendor_code)

    # ------------------------------------------------------------------------- AD-07

    async def wechat_prepay(self, order: Order, member: Any) -> tuple[Payment, dict[str, str]]:
        """Open the order's bill at WeChat Pay for the member's openid; the parameters the app
        opens the payment sheet with, signed with the merchant key."""
        if not member.wx_openid:
            raise WechatNotBound(f"member {member.uid} has no WeChat account bound (AA-08)")
        merchant = await self.merchant(order.vendor_id)
        notify_url = self._notify_url(NOTIFY_PATH, order.vendor_id)
        payment = await open_order_bill(order, member.uid, WEIXIN)
        line = await OrderLine.filter(order_id=order.id).order_by("position").first()
        description = str((line.snapshot or {}).get("name", "")) if line else ""
        try:
            prepay_id = await self.client.jsapi_prepay(
                merchant, out_trade_no=payment.bill_no, description=description or order.oid,
                total_fen=payment.amount_fen, openid=member.wx_openid, notify_url=notify_url,
            )  # fmt: skip
        except WechatPayRefused as exc:
            if exc.wx_code == "ORDERPAID":
                await self.query_bill(payment)  # the notification is late: ask
            raise
        await set_prepay_id(payment, prepay_id)
        params = jsapi_parameters(
            app_id=merchant.app_id, prepay_id=prepay_id, private_pem=merchant.private_key,
            timestamp=int(time.time()), nonce_str=nonce(),
        )  # fmt: skip
        return payment, params

    async def wechat_topup(self, member: Any, amount_fen: int) -> tuple[Payment, dict[str, str]]:
        """A wallet top-up through WeChat Pay: the bill, and the app's signed parameters."""
        if not member.wx_openid:
            raise WechatNotBound(f"member {member.uid} has no WeChat account bound (AA-08)")
        merchant = await self.merchant(member.vendor_id)
        notify_url = self._notify_url(NOTIFY_PATH, member.vendor_id)
        payment = await open_topup(member, amount_fen, WEIXIN)
        prepay_id = await self.client.jsapi_prepay(
            merchant, out_trade_no=payment.bill_no, description="钱包充值",
            total_fen=amount_fen, openid=member.wx_openid, notify_url=notify_url,
        )  # fmt: skip
        await set_prepay_id(payment, prepay_id)
        return payment, jsapi_parameters(
            app_id=merchant.app_id, prepay_id=prepay_id, private_pem=merchant.private_key,
            timestamp=int(time.time()), nonce_str=nonce(),
        )  # fmt: skip

    # ------------------------------------------------------------------------- notifications

    async def _verified(
        self, vendor_code: str, headers: Any, body: str
    ) -> tuple[WechatPayMerchant, dict[str, Any], dict[str, Any]]:
        """The merchant, the notification and its decrypted resource; NotificationRefused for
        a forged, stale, unreadable one or one of another merchant."""
        merchant = await self.merchant(vendor_code)
        try:
            verify_signed(
                headers, body, platform_serial=merchant.platform_serial,
                platform_pem=merchant.platform_public_key, now=int(time.time()),
            )  # fmt: skip
            notification = json.loads(body)
            if not isinstance(notification, dict) or not isinstance(
                notification.get("resource"), dict
            ):
                raise WechatPayError("not a notification")
            resource = decrypt_resource(notification["resource"], merchant.api_v3_key)
        except (WechatPayError, ValueError) as exc:
            self.metrics.payments_notices_refused += 1
            log.warning("wechatpay_notification_refused", vid=vendor_code, why=str(exc))
            raise NotificationRefused(str(exc)) from None
        if resource.get("mchid") != merchant.mch_id or (
            "appid" in resource and resource.get("appid") != merchant.app_id
        ):
            self.metrics.payments_notices_refused += 1
            log.warning("wechatpay_notification_refused", vid=vendor_code, why="other merchant")
            raise NotificationRefused("the notification is for another merchant or app")
        return merchant, notification, resource

    async def wechat_payment_notification(
        self, vendor_code: str, headers: Any, body: str
    ) -> Outcome:
        _merchant, notification, resource = await self._verified(vendor_code, headers, body)
        if notification.get("event_type") != "TRANSACTION.SUCCESS" or (
            resource.get("trade_state") != "SUCCESS"
        ):
            return Outcome.DUPLICATE  # nothing to do for other events; answered success
        notice = ChannelPayment(
            notice_id=str(notification.get("id", "")) or f"tx:{resource.get('transaction_id')}",
            channel=WEIXIN, vendor=vendor_code, bill_no=str(resource.get("out_trade_no", "")),
            transaction_no=str(resource.get("transaction_id", "")),
            amount_fen=int((resource.get("amount") or {}).get("total", -1)),
        )  # fmt: skip
        return await self.apply(notice)

    async def apply(self, notice: ChannelPayment) -> Outcome:
        """Apply a confirmed payment and say what happened (alerts for the odd outcomes)."""
        outcome = await apply_channel_payment(notice, apply_service=self.apply_service)
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

    async def wechat_refund_notification(self, vendor_code: str, headers: Any, body: str) -> str:
        _merchant, notification, resource = await self._verified(vendor_code, headers, body)
        refund_no = str(resource.get("out_refund_no", ""))
        refund = await Refund.get_or_none(refund_no=refund_no, vendor_code=vendor_code)
        if refund is None:
            log.warning("refund_notification_unknown", refund_no=refund_no[:64])
            return "unknown"
        status = str(resource.get("refund_status", ""))
        refunded = int((resource.get("amount") or {}).get("refund", -1))
        if status == "SUCCESS":
            if refunded != refund.amount_fen:
                self.metrics.payments_amount_mismatch += 1
                log.error("refund_amount_mismatch", refund_no=refund_no, amount_fen=refunded)
                return "amount_mismatch"
            await settle_refund(
                refund_no, channel=WEIXIN, channel_refund_id=str(resource.get("refund_id", ""))
            )
            return "settled"
        if status in ("CLOSED", "ABNORMAL"):
            await move_refund(refund_no, RefundState.FAILED, channel=WEIXIN, failure=status)
            return "failed"
        _ = notification
        return "pending"

    async def reconcile(self, vendor_code: str, day: dt.date) -> list[Difference]:
        """Download WeChat Pay's trade bill of `day` (Beijing) for the vendor and compare."""
        merchant = await self.merchant(vendor_code)
        text = await self.client.trade_bill(merchant, day.isoformat())
        return await compare(vendor_code, WEIXIN, day, parse_trade_bill(text))

    # ------------------------------------------------------------------------- the sweep

    async def query_bill(self, payment: Payment) -> Outcome | None:
        """Ask WeChat Pay about a bill (a late notification); apply what it says."""
        merchant = await self.merchant(payment.vendor_code)
        answer = await self.client.query_transaction(merchant, payment.bill_no)
        if answer.get("trade_state") not in ("SUCCESS", "REFUND"):
            return None
        if answer.get("mchid") != merchant.mch_id:
            raise NotificationRefused("the transaction is of another merchant")
        return await self.apply(
            ChannelPayment(
                notice_id=f"query:{answer.get('transaction_id', '')}", channel=WEIXIN,
                vendor=payment.vendor_code, bill_no=payment.bill_no,
                transaction_no=str(answer.get("transaction_id", "")),
                amount_fen=int((answer.get("amount") or {}).get("total", -1)),
            )
        )  # fmt: skip

    async def sweep(self, *, limit: int = SWEEP_BATCH) -> SweepReport:
        """One pass: due refunds executed, bills of closed orders closed, late bills queried,
        commission withdrawals sent through WeChat transfers queried (gateway/payouts.py)."""
        report = SweepReport()
        for refund in await Refund.filter(state=RefundState.DUE).order_by("id").limit(limit):
            await self._guarded(
                report, f"refund {refund.refund_no}", self._send_refund, refund, report
            )
        for refund in await Refund.filter(state=RefundState.REQUESTED, channel=WEIXIN).limit(limit):
            await self._guarded(
                report, f"refund {refund.refund_no}", self._check_refund, refund, report
            )
        for refund in await Refund.filter(state=RefundState.REQUESTED, channel=CARD).limit(limit):
            await self._guarded(
                report, f"refund {refund.refund_no}", self._check_card_refund, refund, report
            )
        for refund in await Refund.filter(state=RefundState.REQUESTED, channel=ALIPAY).limit(limit):
            await self._guarded(
                report, f"refund {refund.refund_no}", self._check_alipay_refund, refund, report
            )
        for payment in await bills_to_close(limit):
            await self._guarded(report, f"bill {payment.bill_no}", self._close, payment, report)
        report.dispenses_settled = await settle_dispenses(limit)
        for payment in await late_bills(self.query_after, limit):
            if payment.channel == WEIXIN:
                query = self.query_bill
            elif payment.channel == CARD and self.cards is not None:
                query = self.cards.query_bill
            elif payment.channel == ALIPAY and self.alipay is not None:
                query = self.alipay.query_bill
            else:
                continue
            report.bills_queried += 1
            outcome = await self._guarded(report, f"bill {payment.bill_no}", query, payment)
            if outcome in (Outcome.PAID, Outcome.TOPPED_UP, Outcome.REFUND_AFTER_CLOSE):
                report.bills_paid += 1
        payouts = await self.payout.sweep(limit=limit)
        report.payouts_checked, report.payouts_paid = payouts.checked, payouts.paid
        report.payouts_failed = payouts.failed
        report.errors.extend(payouts.errors)
        return report

    async def _guarded(self, report: SweepReport, what: str, step: Any, *args: Any) -> Any:
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
        prepay_id = payment.prepay_id
        cards = self.cards
        if refund.channel == CARD and cards is not None and cards.acquirer_of_bill(payment) is None:
            prepay_id = f"{(await cards.acquirer_of_vendor(payment.vendor_code)).name}:"
        return Payment(
            id=payment.id, bill_no=payment.bill_no, purpose=payment.purpose,
            order_oid=payment.order_oid, member_uid=payment.member_uid,
            vendor_code=payment.vendor_code, channel=refund.channel,
            amount_fen=refund.amount_fen, state=PaymentState.PAID, prepay_id=prepay_id,
        )  # fmt: skip

    async def _send_refund(self, refund: Refund, report: SweepReport) -> None:
        payment = await self._refund_bill(refund)
        if payment is not None and payment.state is PaymentState.PAID and payment.channel == WALLET:
            # Paid from the wallet: the refund goes back to it at once.
            await settle_refund(
                refund.refund_no, channel=WALLET, account=wallet_account(payment.member_uid)
            )
            report.refunds_settled += 1
            return
        if (
            payment is not None
            and payment.state is PaymentState.PAID
            and payment.channel == CARD
            and self.cards is not None
        ):
            result = await self.cards.send_refund(refund, payment)
            if result is RefundResult.FAILED:
                report.refunds_failed += 1
            elif result is not None:
                self.metrics.payments_refunds_sent += 1
                report.refunds_sent += 1
                report.refunds_settled += result is RefundResult.SUCCEEDED
            return
        if (
            payment is not None
            and payment.state is PaymentState.PAID
            and payment.channel == ALIPAY
            and self.alipay is not None
        ):
            self._count_refund(await self.alipay.send_refund(refund, payment), report)
            return
        if payment is None or payment.state is not PaymentState.PAID or payment.channel != WEIXIN:
            return  # not paid through WeChat Pay: another channel's (or a person's) refund
        merchant = await self.merchant(payment.vendor_code)
        try:
            answer = await self.client.refund(
                merchant, out_trade_no=payment.bill_no, out_refund_no=refund.refund_no,
                refund_fen=refund.amount_fen, total_fen=payment.amount_fen,
                reason=refund.reason or "退款",
                notify_url=self._notify_url(REFUND_NOTIFY_PATH, payment.vendor_code),
            )  # fmt: skip
        except WechatPayRefused as exc:
            await move_refund(
                refund.refund_no, RefundState.FAILED, channel=WEIXIN, failure=str(exc)
            )
            report.refunds_failed += 1
            log.error("refund_refused", refund_no=refund.refund_no, why=str(exc))
            return
        await move_refund(refund.refund_no, RefundState.REQUESTED, channel=WEIXIN)
        self.metrics.payments_refunds_sent += 1
        report.refunds_sent += 1
        if answer.get("status") == "SUCCESS":
            await settle_refund(
                refund.refund_no, channel=WEIXIN, channel_refund_id=str(answer.get("refund_id", ""))
            )
            report.refunds_settled += 1

    async def _check_refund(self, refund: Refund, report: SweepReport) -> None:
        payment = await self._refund_bill(refund)
        if payment is None:
            return
        answer = await self.client.query_refund(
            await self.merchant(payment.vendor_code), refund.refund_no
        )
        if answer.get("status") == "SUCCESS":
            await settle_refund(
                refund.refund_no, channel=WEIXIN, channel_refund_id=str(answer.get("refund_id", ""))
            )
            report.refunds_settled += 1
        elif answer.get("status") in ("CLOSED", "ABNORMAL"):
            await move_refund(
                refund.refund_no, RefundState.FAILED, channel=WEIXIN, failure=str(answer["status"])
            )
            report.refunds_failed += 1

    def _count_refund(self, result: RefundResult | None, report: SweepReport) -> None:
        if result is RefundResult.FAILED:
            report.refunds_failed += 1
        elif result is not None:
            self.metrics.payments_refunds_sent += 1
            report.refunds_sent += 1
            report.refunds_settled += result is RefundResult.SUCCEEDED

    async def _check_alipay_refund(self, refund: Refund, report: SweepReport) -> None:
        payment = await self._refund_bill(refund)
        if payment is None or self.alipay is None:
            return
        result = await self.alipay.check_refund(refund, payment)
        if result is RefundResult.SUCCEEDED:
            report.refunds_settled += 1
        elif result is RefundResult.FAILED:
            report.refunds_failed += 1

    async def _check_card_refund(self, refund: Refund, report: SweepReport) -> None:
        payment = await self._refund_bill(refund)
        if payment is None or self.cards is None:
            return
        result = await self.cards.check_refund(refund, payment)
        if result is RefundResult.SUCCEEDED:
            report.refunds_settled += 1
        elif result is None:
            await move_refund(refund.refund_no, RefundState.FAILED, channel=CARD, failure="failed")
            report.refunds_failed += 1

    async def _close(self, payment: Payment, report: SweepReport) -> None:
        if payment.channel == ALIPAY and self.alipay is not None:
            report.bills_closed += await self.alipay.close(payment)
            return
        if payment.channel != WEIXIN:
            await close_bill(payment)
            return
        merchant = await self.merchant(payment.vendor_code)
        try:
            await self.client.close_transaction(merchant, payment.bill_no)
        except WechatPayRefused as exc:
            if exc.wx_code != "ORDERPAID":
                raise
            await self.query_bill(payment)  # paid before it closed: refunded after close
            return
        await close_bill(payment)
        report.bills_closed += 1
        log.info("bill_closed", bill_no=payment.bill_no)


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
                        or report.payouts_paid or report.payouts_failed
                    ):  # fmt: skip
                        log.info(
                            "payments_swept", refunds_sent=report.refunds_sent,
                            bills_closed=report.bills_closed, bills_paid=report.bills_paid,
                            payouts_paid=report.payouts_paid, payouts_failed=report.payouts_failed,
                        )  # fmt: skip
            except (GatewayError, BaseORMException, DomainError) as exc:
                log.warning("payments_sweeper_error", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval_s)

    async def release(self) -> None:
        """Hand the lease over at once (shutdown) instead of letting it time out."""
        try:
            await self.lease.release()
        except GatewayError as exc:
            log.warning("payments_sweeper_release_failed", error=str(exc))
