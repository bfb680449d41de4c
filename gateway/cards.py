"""Card payments (AD-08 credit, AD-09 debit) through a card acquirer (docs/payments.md).

`CardAcquirer` is the channel interface: an adapter opens a bill, verifies the acquirer's
notification, queries and closes a bill and refunds, each in the acquirer's own protocol, and
answers in the terms below. Everything else (the bill, the order's PAY through `pay_order` with
channel `card`, the ledger, refunds due) is shared with the other channels (models/payments.py,
models/money.py). A bill the member has not paid stays payable at the acquirer until it is
closed there: the sweep closes the bills of orders closed or paid otherwise (`close`), and a
bill moving to another channel is closed there first (`close_to_move`). A
second acquirer is one more adapter in `CardPayments.acquirers`; orders and the ledger do not
change.

A vendor uses the acquirer whose merchant it has set up; the bill remembers which one opened
it (`prepay_id` is `{acquirer}:{its transaction id}`), so queries and refunds go back there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aquafleet.gateway.channels import Closing, PaymentChannel, RefundResult, bill_description
from aquafleet.gateway.logs import get_logger
from aquafleet.models.errors import DomainError, Unavailable
from aquafleet.models.merchants import PaymentNotConfigured, configured_channels
from aquafleet.models.money import Refund, RefundState, move_refund, settle_refund
from aquafleet.models.orders import Order
from aquafleet.models.payments import (
    ChannelPayment,
    Outcome,
    Payment,
    close_bill,
    set_prepay_id,
)

log = get_logger("aquafleet.payments")

__all__ = ["RefundResult"]  # the acquirers' answers (gateway/channels.py)

CARD = "card"  # the ledger's channel for every acquirer
CARD_NOTIFY_PATH = "/api/v1/payments/card/{acquirer}/notify/{vid}"


class CardKind(StrEnum):
    CREDIT = "credit"  # AD-08
    DEBIT = "debit"  # AD-09: the acquirer is told to refuse credit cards


class CloseResult(StrEnum):
    """What closing an unpaid bill at the acquirer found."""

    CLOSED = "closed"  # it takes no payment any more (closed now, or finished unpaid before)
    PAID = "paid"  # paid before it closed: the bill is queried and its payment applied
    OPEN = "open"  # still payable (the acquirer is processing it): the next sweep tries again


class AcquirerUnavailable(Unavailable):
    """The acquirer did not answer (timeout, connection, 5xx): trying again later may work."""

    code = "acquirer_unavailable"


class AcquirerRefused(DomainError):
    """The acquirer answered, and refused."""

    code = "acquirer_refused"


class CardNotificationRefused(DomainError):
    """A notification we cannot trust: answered as a failure, nothing changes."""

    code = "notification_refused"


@dataclass(frozen=True, slots=True)
class CardPrepay:
    transaction_no: str  # the acquirer's id of the bill (may be empty until paid)
    pay_info: str  # what the app opens to let the member pay (a URL or the acquirer's data)


@dataclass(frozen=True, slots=True)
class CardResult:
    """A bill the acquirer says is paid (a verified notification, or its answer to a query)."""

    notice_id: str
    bill_no: str
    transaction_no: str
    amount_fen: int


class CardAcquirer(Protocol):
    """One acquirer's protocol. `merchant` is whatever `merchant()` answered for the vendor."""

    name: str
    notify_ack: str  # the body the acquirer expects for a notification taken

    async def merchant(self, vendor_code: str) -> Any: ...

    async def pay(
        self, merchant: Any, *, bill_no: str, amount_fen: int, description: str,
        kind: CardKind, notify_url: str,
    ) -> CardPrepay: ...  # fmt: skip

    def verify_notification(self, merchant: Any, form: Mapping[str, str]) -> CardResult | None:
        """The paid bill of a notification; None for one that reports no payment;
        CardNotificationRefused for a forged one or another merchant's."""
        ...

    async def query(self, merchant: Any, bill_no: str) -> CardResult | None: ...

    async def close(self, merchant: Any, bill_no: str) -> CloseResult:
        """Close an unpaid bill so the member can no longer pay it (the same answer when it
        was closed before)."""
        ...

    async def refund(
        self, merchant: Any, *, bill_no: str, refund_no: str, refund_fen: int, total_fen: int,
        reason: str,
    ) -> RefundResult: ...  # fmt: skip

    async def query_refund(self, merchant: Any, refund_no: str) -> RefundResult | None: ...


class CardNotConfigured(PaymentNotConfigured):
    code = "card_not_configured"


class CardPayments(PaymentChannel):
    """The card channel (gateway/channels.py): picks the vendor's acquirer and applies what it
    confirms; the bills of orders closed or paid otherwise are closed at the acquirer."""

    name = CARD
    label = "the acquirer"
    unanswered = (AcquirerUnavailable,)  # an answer not verified too
    refusals = (AcquirerRefused,)
    unavailable_code = "acquirer_unavailable"
    refused_code = "acquirer_refused"

    def __init__(self, acquirers: list[CardAcquirer], payments: Any) -> None:
        super().__init__(payments)
        self.acquirers = {a.name: a for a in acquirers}

    async def acquirer_of_vendor(self, vendor_code: str) -> CardAcquirer:
        for channel in await configured_channels(vendor_code):
            if channel in self.acquirers:
                return self.acquirers[channel]
        raise CardNotConfigured(f"vendor {vendor_code} has no card acquirer set up")

    def acquirer_of_bill(self, payment: Payment) -> CardAcquirer | None:
        name = payment.prepay_id.partition(":")[0]
        return self.acquirers.get(name)

    async def prepay(self, order: Order, member: Any, kind: CardKind) -> tuple[Payment, str, str]:
        """The order's bill at the vendor's acquirer: the bill, the acquirer's name and what
        the app opens to pay."""
        acquirer = await self.acquirer_of_vendor(order.vendor_id)
        merchant = await acquirer.merchant(order.vendor_id)
        notify_url = self.notify_url(CARD_NOTIFY_PATH, acquirer=acquirer.name, vid=order.vendor_id)
        payment = await self.open_bill(order, member.uid)  # closed at another channel first
        answer = await acquirer.pay(
            merchant, bill_no=payment.bill_no, amount_fen=payment.amount_fen,
            description=await bill_description(order), kind=kind, notify_url=notify_url,
        )  # fmt: skip
        await set_prepay_id(payment, f"{acquirer.name}:{answer.transaction_no or payment.bill_no}")
        return payment, acquirer.name, answer.pay_info

    async def notification(
        self, acquirer_name: str, vendor_code: str, form: Mapping[str, str]
    ) -> Outcome:
        acquirer = self.acquirers.get(acquirer_name)
        if acquirer is None:
            raise CardNotificationRefused(f"no acquirer {acquirer_name[:32]!r}")
        merchant = await acquirer.merchant(vendor_code)
        result = acquirer.verify_notification(merchant, form)
        if result is None:
            return Outcome.DUPLICATE  # nothing to do (not a payment); answered as taken
        return await self.apply(self._notice(acquirer, vendor_code, result))

    def _notice(
        self, acquirer: CardAcquirer, vendor_code: str, result: CardResult
    ) -> ChannelPayment:
        return ChannelPayment(
            notice_id=f"{acquirer.name}:{result.notice_id}", channel=CARD, vendor=vendor_code,
            bill_no=result.bill_no, transaction_no=result.transaction_no,
            amount_fen=result.amount_fen,
        )  # fmt: skip

    async def query_bill(self, payment: Payment) -> Outcome | None:
        acquirer = self.acquirer_of_bill(payment)
        if acquirer is None:
            return None
        result = await acquirer.query(await acquirer.merchant(payment.vendor_code), payment.bill_no)
        if result is None:
            return None
        # Keyed by the acquirer's transaction, as its notification is: whichever comes
        # second is a duplicate.
        return await self.apply(self._notice(acquirer, payment.vendor_code, result))

    async def close(self, payment: Payment) -> bool:
        """Close the bill of an order no longer awaiting payment at its acquirer, then here, so
        the member can no longer pay it. One paid before it closed is queried and applied
        (refunded after close, or as paid twice); one the acquirer still holds open is left to
        the next sweep. True when closed."""
        acquirer = self.acquirer_of_bill(payment)
        if acquirer is None:
            return await super().close(payment)  # no acquirer of ours to tell: here only
        merchant = await acquirer.merchant(payment.vendor_code)
        result = await acquirer.close(merchant, payment.bill_no)
        if result is CloseResult.PAID:
            await self.query_bill(payment)
            return False
        if result is CloseResult.OPEN:
            log.warning("bill_close_deferred", bill_no=payment.bill_no, channel=CARD)
            return False
        await close_bill(payment)
        log.info("bill_closed", bill_no=payment.bill_no, channel=CARD)
        return True

    async def close_to_move(self, payment: Payment) -> Closing:
        """Close the bill at its acquirer (Allinpay: 订单关闭), so the card code the member
        holds can no longer pay it: paid there meanwhile, the payment is queried and applied;
        still processing there, it is not closed yet. A bill of no acquirer of ours: nothing
        we can close."""
        acquirer = self.acquirer_of_bill(payment)
        if acquirer is None:
            return Closing.NOT_THERE
        merchant = await acquirer.merchant(payment.vendor_code)
        result = await acquirer.close(merchant, payment.bill_no)
        if result is CloseResult.PAID:
            await self.query_bill(payment)
            return Closing.PAID
        return Closing.OPEN if result is CloseResult.OPEN else Closing.CLOSED

    async def send_refund(self, refund: Refund, payment: Payment) -> RefundResult | None:
        """Execute a due refund of a card-paid bill: requested, or settled when the acquirer
        answers at once; failed when it refuses. None: not an acquirer of ours."""
        acquirer = self.acquirer_of_bill(payment)
        if acquirer is None:
            return None
        merchant = await acquirer.merchant(payment.vendor_code)

        async def send() -> tuple[bool, str, dt.datetime | None]:
            result = await acquirer.refund(
                merchant, bill_no=payment.bill_no, refund_no=refund.refund_no,
                refund_fen=refund.amount_fen, total_fen=payment.amount_fen,
                reason=refund.reason or "退款",
            )  # fmt: skip
            return result is RefundResult.SUCCEEDED, "", None

        return await self.refund_sent(refund, send, AcquirerRefused)

    async def check_refund(self, refund: Refund, payment: Payment) -> RefundResult:
        """The acquirer's answer about a requested refund; one it does not know (or a bill of
        no acquirer of ours) failed."""
        acquirer = self.acquirer_of_bill(payment)
        result = None
        if acquirer is not None:
            result = await acquirer.query_refund(
                await acquirer.merchant(payment.vendor_code), refund.refund_no
            )
        if result is RefundResult.SUCCEEDED:
            await settle_refund(refund.refund_no, channel=CARD)
        elif result is None:
            await move_refund(refund.refund_no, RefundState.FAILED, channel=CARD, failure="failed")
            return RefundResult.FAILED
        return result
