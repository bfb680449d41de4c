"""The `weixin` payment channel (WeChat Pay API v3, docs/payments.md): JSAPI prepay for orders
and wallet top-ups, the payment and refund notifications, the day's trade bill for
reconciliation, and the sweep's steps (gateway/channels.py), the protocol through
gateway/providers/wechatpay.py.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from aquafleet.gateway.channels import (
    Closing,
    PaymentChannel,
    RefundResult,
    bill_description,
)
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.payouts import WechatNotBound, vendor_wechat_merchant
from aquafleet.gateway.providers.wechatpay import (
    WechatPayClient,
    WechatPayRefused,
    WechatPayUnavailable,
)
from aquafleet.models.merchants import WechatPayMerchant
from aquafleet.models.money import Refund, RefundState, move_refund, settle_refund
from aquafleet.models.orders import Order
from aquafleet.models.payments import (
    ChannelPayment,
    Outcome,
    Payment,
    close_bill,
    set_prepay_id,
)
from aquafleet.models.reconcile import Difference, compare, parse_trade_bill
from aquafleet.models.sealed import SecretBox
from aquafleet.models.wallet import open_topup
from aquafleet.models.wechatpay import (
    WechatPayError,
    decrypt_resource,
    jsapi_parameters,
    nonce,
    verify_signed,
)

log = get_logger("aquafleet.payments")

WEIXIN = "weixin"
NOTIFY_PATH = "/api/v1/payments/weixin/notify/{vid}"
REFUND_NOTIFY_PATH = "/api/v1/payments/weixin/refund-notify/{vid}"


def success_time(transaction: dict[str, Any]) -> dt.datetime | None:
    """When WeChat Pay says the member paid, or a refund went back (`success_time`, RFC 3339
    with its offset), as an aware UTC datetime; None when it says none we can read."""
    try:
        at = dt.datetime.fromisoformat(str(transaction.get("success_time", "")))
    except ValueError:
        return None
    return at.astimezone(dt.UTC) if at.tzinfo is not None else None


class NotificationRefused(WechatPayError):
    """A notification we cannot trust or read: answered as a failure, nothing changes."""

    code = "notification_refused"


class WechatPayments(PaymentChannel):
    """The channel (gateway/channels.py)."""

    name = WEIXIN
    label = "WeChat Pay"
    unanswered = (WechatPayUnavailable,)  # an answer not verified too (AnswerNotVerified)
    refusals = (WechatPayRefused,)
    unavailable_code = "wechatpay_unavailable"
    refused_code = "wechatpay_refused"

    def __init__(self, client: WechatPayClient, box: SecretBox, payments: Any) -> None:
        super().__init__(payments)
        self.client = client
        self.box = box

    async def merchant(self, vendor_code: str) -> WechatPayMerchant:
        return await vendor_wechat_merchant(vendor_code, self.box)

    # ------------------------------------------------------------------------- AD-07

    async def prepay(self, order: Order, member: Any) -> tuple[Payment, dict[str, str]]:
        """Open the order's bill at WeChat Pay for the member's openid; the parameters the app
        opens the payment sheet with, signed with the merchant key."""
        if not member.wx_openid:
            raise WechatNotBound(f"member {member.uid} has no WeChat account bound (AA-08)")
        merchant = await self.merchant(order.vendor_id)
        notify_url = self.notify_url(NOTIFY_PATH, vid=order.vendor_id)
        payment = await self.open_bill(order, member.uid)  # closed at another channel first
        try:
            prepay_id = await self.client.jsapi_prepay(
                merchant, out_trade_no=payment.bill_no, description=await bill_description(order),
                total_fen=payment.amount_fen, openid=member.wx_openid, notify_url=notify_url,
            )  # fmt: skip
        except WechatPayRefused as exc:
            if exc.wx_code == "ORDERPAID":
                await self.query_bill(payment)  # the notification is late: ask
            raise
        await set_prepay_id(payment, prepay_id)
        return payment, self._sheet(merchant, prepay_id)

    async def topup(self, member: Any, amount_fen: int) -> tuple[Payment, dict[str, str]]:
        """A wallet top-up through WeChat Pay: the bill, and the app's signed parameters."""
        if not member.wx_openid:
            raise WechatNotBound(f"member {member.uid} has no WeChat account bound (AA-08)")
        merchant = await self.merchant(member.vendor_id)
        notify_url = self.notify_url(NOTIFY_PATH, vid=member.vendor_id)
        payment = await open_topup(member, amount_fen, WEIXIN)
        prepay_id = await self.client.jsapi_prepay(
            merchant, out_trade_no=payment.bill_no, description="钱包充值",
            total_fen=amount_fen, openid=member.wx_openid, notify_url=notify_url,
        )  # fmt: skip
        await set_prepay_id(payment, prepay_id)
        return payment, self._sheet(merchant, prepay_id)

    @staticmethod
    def _sheet(merchant: WechatPayMerchant, prepay_id: str) -> dict[str, str]:
        """The signed parameters the app opens the payment sheet with."""
        return jsapi_parameters(
            app_id=merchant.app_id, prepay_id=prepay_id, private_pem=merchant.private_key,
            timestamp=int(time.time()), nonce_str=nonce(),
        )  # fmt: skip

    # ------------------------------------------------------------------------- notifications

    async def _verified(
        self, vendor_code: str, headers: Any, body: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The notification and its decrypted resource; NotificationRefused for a forged,
        stale, unreadable one or one of another merchant."""
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
            raise NotificationRefused(str(exc)) from None
        if resource.get("mchid") != merchant.mch_id or (
            "appid" in resource and resource.get("appid") != merchant.app_id
        ):
            raise NotificationRefused("the notification is for another merchant or app")
        return notification, resource

    async def payment_notification(self, vendor_code: str, headers: Any, body: str) -> Outcome:
        notification, resource = await self._verified(vendor_code, headers, body)
        if notification.get("event_type") != "TRANSACTION.SUCCESS" or (
            resource.get("trade_state") != "SUCCESS"
        ):
            return Outcome.DUPLICATE  # nothing to do for other events; answered success
        notice = ChannelPayment(
            notice_id=str(notification.get("id", "")) or f"tx:{resource.get('transaction_id')}",
            channel=WEIXIN, vendor=vendor_code, bill_no=str(resource.get("out_trade_no", "")),
            transaction_no=str(resource.get("transaction_id", "")),
            amount_fen=int((resource.get("amount") or {}).get("total", -1)),
            paid_at=success_time(resource),
        )  # fmt: skip
        return await self.apply(notice)

    async def refund_notification(self, vendor_code: str, headers: Any, body: str) -> str:
        _notification, resource = await self._verified(vendor_code, headers, body)
        refund_no = str(resource.get("out_refund_no", ""))
        refund = await Refund.get_or_none(refund_no=refund_no, vendor_code=vendor_code)
        if refund is None:
            log.warning("refund_notification_unknown", refund_no=refund_no[:64])
            return "unknown"
        status = str(resource.get("refund_status", ""))
        refunded = int((resource.get("amount") or {}).get("refund", -1))
        if status == "SUCCESS":
            if refunded != refund.amount_fen:
                self.payments.metrics.payments_amount_mismatch += 1
                log.error("refund_amount_mismatch", refund_no=refund_no, amount_fen=refunded)
                return "amount_mismatch"
            await settle_refund(
                refund_no, channel=WEIXIN, channel_refund_id=str(resource.get("refund_id", "")),
                succeeded_at=success_time(resource),
            )  # fmt: skip
            return "settled"
        if status in ("CLOSED", "ABNORMAL"):
            await move_refund(refund_no, RefundState.FAILED, channel=WEIXIN, failure=status)
            return "failed"
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
                paid_at=success_time(answer),
            )
        )  # fmt: skip

    async def close(self, payment: Payment) -> bool:
        """Close the bill at WeChat Pay, then here; one paid before it closed is queried
        (refunded after close)."""
        merchant = await self.merchant(payment.vendor_code)
        try:
            await self.client.close_transaction(merchant, payment.bill_no)
        except WechatPayRefused as exc:
            if exc.wx_code != "ORDERPAID":
                raise
            await self.query_bill(payment)  # paid before it closed: refunded after close
            return False
        await close_bill(payment)
        log.info("bill_closed", bill_no=payment.bill_no)
        return True

    async def close_to_move(self, payment: Payment) -> Closing:
        """关闭订单, so the payment sheet the member holds can no longer pay the bill
        (idempotent: a closed order closes again; WeChat Pay refuses its out_trade_no again,
        ORDERCLOSED). ORDERPAID: paid meanwhile, the transaction queried and applied as its
        notification would be. ORDER_NOT_EXIST: WeChat Pay never made it."""
        merchant = await self.merchant(payment.vendor_code)
        try:
            await self.client.close_transaction(merchant, payment.bill_no)
        except WechatPayRefused as exc:
            if exc.wx_code == "ORDERPAID":
                await self.query_bill(payment)  # WeChat Pay silent here: nothing moves either
                return Closing.PAID
            if exc.wx_code == "ORDER_NOT_EXIST":
                return Closing.NOT_THERE
            raise
        return Closing.CLOSED

    async def send_refund(self, refund: Refund, payment: Payment) -> RefundResult:
        merchant = await self.merchant(payment.vendor_code)

        async def send() -> tuple[bool, str, dt.datetime | None]:
            answer = await self.client.refund(
                merchant, out_trade_no=payment.bill_no, out_refund_no=refund.refund_no,
                refund_fen=refund.amount_fen, total_fen=payment.amount_fen,
                reason=refund.reason or "退款",
                notify_url=self.notify_url(REFUND_NOTIFY_PATH, vid=payment.vendor_code),
            )  # fmt: skip
            settled = answer.get("status") == "SUCCESS"
            return settled, str(answer.get("refund_id", "")), success_time(answer)

        return await self.refund_sent(refund, send, WechatPayRefused)

    async def check_refund(self, refund: Refund, payment: Payment) -> RefundResult:
        answer = await self.client.query_refund(
            await self.merchant(payment.vendor_code), refund.refund_no
        )
        status = answer.get("status")
        if status == "SUCCESS":
            await settle_refund(
                refund.refund_no, channel=WEIXIN,
                channel_refund_id=str(answer.get("refund_id", "")),
                succeeded_at=success_time(answer),
            )  # fmt: skip
            return RefundResult.SUCCEEDED
        if status in ("CLOSED", "ABNORMAL"):
            await move_refund(
                refund.refund_no, RefundState.FAILED, channel=WEIXIN, failure=str(status)
            )
            return RefundResult.FAILED
        return RefundResult.PENDING
