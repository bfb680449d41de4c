"""The `alipay` payment channel (pay_ch alipay, docs/payments.md): the H5 payment URL, Alipay's
asynchronous notifications, and the sweep's steps (late bills queried, bills of closed orders
closed, refunds sent and checked), each through the shared models (`open_order_bill`,
`apply_channel_payment` via PaymentService.apply, `settle_refund`), the protocol through
gateway/providers/alipay.py.

A payment's notice id is `alipay:{trade_no}:{fen}`: the notification and the query's answer of
the same payment are one notice (whichever comes second is a duplicate), and a notice naming
another amount is its own (an amount_mismatch does not hide the genuine one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from aquafleet.gateway.channels import Closing, PaymentChannel, RefundResult, bill_description
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.providers.alipay import AlipayClient, AlipayRefused, AlipayUnavailable
from aquafleet.models.alipay import AlipayMerchant, alipay_merchant, fen, verify_notification
from aquafleet.models.errors import DomainError
from aquafleet.models.merchants import ALIPAY
from aquafleet.models.money import Refund, settle_refund
from aquafleet.models.orders import Order
from aquafleet.models.payments import (
    ChannelPayment,
    Outcome,
    Payment,
    close_bill,
    set_prepay_id,
)

log = get_logger("aquafleet.alipay")

ALIPAY_NOTIFY_PATH = "/api/v1/payments/alipay/notify/{vid}"
PAID_STATES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
PREPAY_ID = "alipay:wap"  # the bill was handed to the member as a wap.pay URL
NOTIFY_ACK = "success"
# time_expire's range (alipay.trade.wap.pay: 1m~15d)
MIN_EXPIRE = dt.timedelta(minutes=1)
MAX_EXPIRE = dt.timedelta(days=15)
CLOCK_MARGIN = dt.timedelta(minutes=10)  # Alipay's clock reads time_expire, not ours


class AlipayNotificationRefused(DomainError):
    """A notification we cannot trust (signature, app, seller): nothing changes."""

    code = "notification_refused"


def _amount(value: Any) -> int:
    try:
        return fen(str(value))
    except ValueError:
        return -1  # never a bill's amount: an amount_mismatch


class AlipayPayments(PaymentChannel):
    """The channel (gateway/channels.py)."""

    name = ALIPAY
    label = "Alipay"
    unanswered = (AlipayUnavailable,)  # an answer not signed, or not verified, too
    refusals = (AlipayRefused,)
    unavailable_code = "alipay_unavailable"
    refused_code = "alipay_refused"

    def __init__(self, client: AlipayClient, box: Any, payments: Any) -> None:
        super().__init__(payments)
        self.client = client
        self.box = box

    async def merchant(self, vendor_code: str) -> AlipayMerchant:
        return await alipay_merchant(vendor_code, self.box)

    def _notice(self, vendor_code: str, fields: Mapping[str, Any], bill_no: str) -> ChannelPayment:
        trade_no = str(fields.get("trade_no", ""))
        amount = _amount(fields.get("total_amount", ""))
        return ChannelPayment(
            notice_id=f"alipay:{trade_no}:{amount}", channel=ALIPAY, vendor=vendor_code,
            bill_no=bill_no, transaction_no=trade_no, amount_fen=amount,
        )  # fmt: skip

    # ------------------------------------------------------------------------- prepay

    async def prepay(self, order: Order, member: Any) -> tuple[Payment, str]:
        """The order's bill with the channel alipay, and the signed wap.pay URL the member's
        browser opens to pay it (a new signature each time; the same bill)."""
        merchant = await self.merchant(order.vendor_id)
        notify_url = self.notify_url(ALIPAY_NOTIFY_PATH, vid=order.vendor_id)
        payment = await self.open_bill(order, member.uid)  # closed at another channel first
        url = self.client.wap_pay_url(
            merchant, bill_no=payment.bill_no, amount_fen=payment.amount_fen,
            subject=await bill_description(order), notify_url=notify_url,
            time_expire=self.pay_deadline(order),
        )  # fmt: skip
        await set_prepay_id(payment, PREPAY_ID)
        return payment, url

    def pay_deadline(self, order: Order) -> dt.datetime:
        """Until when Alipay takes a payment of the URL (its `time_expire`): when the unpaid
        order closes itself (`order_unpaid_close_h` after it was made), so a URL the member
        never opened (which cannot be closed at Alipay: no trade yet) does not stay payable
        after the order closed. Within what Alipay accepts (1 minute to 15 days ahead): an
        order due to close within the minute is paid or refunded after close as before; a
        longer timeout than 15 days is met by asking for the URL again, which signs anew."""
        now = dt.datetime.now(dt.UTC)
        unpaid_close_after: dt.timedelta = self.payments.unpaid_close_after
        deadline: dt.datetime = order.created_at + unpaid_close_after
        return min(max(deadline, now + MIN_EXPIRE), now + MAX_EXPIRE)

    # ------------------------------------------------------------------------- notifications

    async def notification(self, vendor_code: str, form: Mapping[str, str]) -> Outcome:
        """A verified trade notification applied; AlipayNotificationRefused otherwise."""
        merchant = await self.merchant(vendor_code)
        if not verify_notification(form, merchant.public_key):
            raise AlipayNotificationRefused("the notification's signature is not Alipay's")
        if form.get("app_id") != merchant.app_id or form.get("seller_id") != merchant.seller_id:
            raise AlipayNotificationRefused("the notification is for another app or seller")
        if form.get("trade_status") not in PAID_STATES:
            return Outcome.DUPLICATE  # WAIT_BUYER_PAY, TRADE_CLOSED: nothing to do; taken
        return await self.apply(self._notice(vendor_code, form, str(form.get("out_trade_no", ""))))

    # ------------------------------------------------------------------------- the sweep

    async def query_bill(self, payment: Payment) -> Outcome | None:
        """alipay.trade.query of a late bill; a paid trade applied as its notification."""
        answer = await self.client.query(await self.merchant(payment.vendor_code), payment.bill_no)
        if answer is None or answer.get("trade_status") not in PAID_STATES:
            return None
        return await self._apply_answer(payment, answer)

    async def _apply_answer(self, payment: Payment, answer: Mapping[str, Any]) -> Outcome:
        """A query's answer that names the trade paid, applied as its notification would be."""
        if answer.get("out_trade_no") != payment.bill_no:
            raise AlipayNotificationRefused("alipay answered about another trade")
        return await self.apply(self._notice(payment.vendor_code, answer, payment.bill_no))

    async def close_to_move(self, payment: Payment) -> Closing:
        """alipay.trade.close, so the wap.pay page the member holds can no longer pay the bill
        (Alipay refuses a closed trade's out_trade_no again). ACQ.TRADE_NOT_EXIST: the member
        never opened the URL, there is nothing to close (the bill keeps its number: should
        the URL be opened and paid after all, that payment still finds the bill, and is
        refunded as a second one). ACQ.TRADE_STATUS_ERROR: the trade is queried: paid
        meanwhile (applied), or closed before."""
        merchant = await self.merchant(payment.vendor_code)
        try:
            await self.client.close(merchant, payment.bill_no)
        except AlipayRefused as exc:
            if exc.sub_code == "ACQ.TRADE_NOT_EXIST":
                return Closing.NOT_THERE
            if exc.sub_code != "ACQ.TRADE_STATUS_ERROR":
                raise
            answer = await self.client.query(merchant, payment.bill_no)
            if answer is None:
                return Closing.NOT_THERE
            if answer.get("trade_status") in PAID_STATES:
                await self._apply_answer(payment, answer)
                return Closing.PAID
            return Closing.CLOSED if answer.get("trade_status") == "TRADE_CLOSED" else Closing.OPEN
        return Closing.CLOSED

    async def may_appear_until(self, payment: Payment) -> dt.datetime | None:
        """A wap.pay URL never opened has no trade at Alipay until the member opens it,
        which it may until its time_expire: at the latest the deadline a URL signed now
        would carry (`pay_deadline`; every URL of the bill was signed before), with a margin
        for Alipay's clock."""
        order = await Order.get_or_none(oid=payment.order_oid)
        if order is None:
            return None
        return self.pay_deadline(order) + CLOCK_MARGIN

    async def close(self, payment: Payment) -> bool:
        """Close the bill of a closed order at Alipay (alipay.trade.close), then here. A trade
        the member never opened is closed here only (its URL, opened later and paid, is
        refunded after close); one already paid is queried (refunded after close). True when
        closed."""
        merchant = await self.merchant(payment.vendor_code)
        try:
            await self.client.close(merchant, payment.bill_no)
        except AlipayRefused as exc:
            if exc.sub_code == "ACQ.TRADE_NOT_EXIST":
                await close_bill(payment)
                return True
            if exc.sub_code != "ACQ.TRADE_STATUS_ERROR":
                raise
            if await self.query_bill(payment) is None:
                await close_bill(payment)  # closed at Alipay before
                return True
            return False
        await close_bill(payment)
        log.info("bill_closed", bill_no=payment.bill_no, channel=ALIPAY)
        return True

    async def send_refund(self, refund: Refund, payment: Payment) -> RefundResult:
        """alipay.trade.refund, out_request_no our refund number: settled when the money
        moved (fund_change Y), requested otherwise (the sweep's query settles it), failed when
        Alipay refuses (an over-refund, a trade that cannot refund)."""
        merchant = await self.merchant(payment.vendor_code)

        async def send() -> tuple[bool, str, dt.datetime | None]:
            answer = await self.client.refund(
                merchant, bill_no=payment.bill_no, refund_no=refund.refund_no,
                refund_fen=refund.amount_fen, reason=refund.reason or "退款",
            )  # fmt: skip
            return answer.get("fund_change") == "Y", str(answer.get("trade_no", "")), None

        return await self.refund_sent(refund, send, AlipayRefused)

    async def check_refund(self, refund: Refund, payment: Payment) -> RefundResult:
        """alipay.trade.fastpay.refund.query of a requested refund: REFUND_SUCCESS settles it;
        otherwise Alipay did not take it (its documented rule: ask again with the same
        out_request_no), so the refund is sent again, which Alipay never executes twice."""
        merchant = await self.merchant(payment.vendor_code)
        answer = await self.client.query_refund(
            merchant, bill_no=payment.bill_no, refund_no=refund.refund_no
        )
        if answer.get("refund_status") == "REFUND_SUCCESS":
            if _amount(answer.get("refund_amount", "")) != refund.amount_fen:
                log.error("refund_amount_mismatch", refund_no=refund.refund_no)
                return RefundResult.PENDING  # a person's case: never settled on another amount
            await settle_refund(
                refund.refund_no, channel=ALIPAY, channel_refund_id=str(answer.get("trade_no", ""))
            )
            return RefundResult.SUCCEEDED
        return await self.send_refund(refund, payment)
