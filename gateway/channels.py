"""What every payment channel shares (docs/payments.md, "Channels"): the notify URL, the bill's
description, a refund sent and its answer recorded, and the four steps the payments sweep
dispatches by the bill's channel (gateway/payments.py).

A channel (WeChat Pay, Alipay, the card acquirers) subclasses `PaymentChannel`, speaks its own
protocol through its client in gateway/providers/, and records what happened through the shared
models (`open_order_bill`, `apply_channel_payment` via PaymentService.apply, `move_refund`,
`settle_refund`). A new channel is one subclass and one entry in `PaymentService.channels`.

An order's bill moves between channels while nobody has paid it; one open at a channel is first
closed there (`release`, the same rule for every channel; each says only how it closes a bill,
`close_to_move`), so what the member holds (a payment sheet, a URL, a card code) cannot pay the
order a second time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from aquafleet.gateway.logs import get_logger
from aquafleet.models.bill_numbers import leave_number
from aquafleet.models.errors import DomainError, Unavailable
from aquafleet.models.merchants import PaymentNotConfigured
from aquafleet.models.money import Refund, RefundState, move_refund, settle_refund
from aquafleet.models.orders import Order, OrderLine
from aquafleet.models.payments import (
    BillOpenAtChannel,
    ChannelPayment,
    OrderAlreadyPaid,
    Outcome,
    Payment,
    close_bill,
    open_order_bill,
    release_bill,
)

log = get_logger("aquafleet.payments")


class RefundResult(StrEnum):
    SUCCEEDED = "succeeded"
    PENDING = "pending"
    FAILED = "failed"  # refused: the refund is failed and its amount may be refunded again


class Closing(StrEnum):
    """What closing a pending bill at its channel, to move it, found (`close_to_move`)."""

    CLOSED = "closed"  # closed there now (or before): it takes no payment; its number is spent
    NOT_THERE = "not_there"  # the channel has no such bill (never opened): nothing to close
    PAID = "paid"  # paid there meanwhile: the payment is applied, the move refused
    OPEN = "open"  # still payable there (the channel could not close it yet): not moved


class BillNotReleased(Unavailable):
    """The channel did not answer (or not verifiably) while the bill was being closed there to
    move it: it stays where it is, open there (503, the channel's `..._unavailable` code)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class BillCloseRefused(DomainError):
    """The channel refused to close the bill (a refusal other than "paid"): it stays open
    there and does not move (502, the channel's `..._refused` code)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


async def bill_description(order: Order) -> str:
    """What the member sees the bill as: its first line's product name, else the order's id."""
    line = await OrderLine.filter(order_id=order.id).order_by("position").first()
    description = str((line.snapshot or {}).get("name", "")) if line else ""
    return description or order.oid


class PaymentChannel:
    """One channel's steps; `payments` is gateway/payments.py's PaymentService (the notify base
    URL, `apply` with its metrics and alerts)."""

    name: str  # the channel of its bills and refunds (`Payment.channel`, `Refund.channel`)
    label: str  # how an operator's message names it ("Alipay cannot notify")
    # Its client's "did not answer" and "refused" errors, and the API codes they are answered
    # with when a bill was being closed to move (`release`).
    unanswered: tuple[type[Exception], ...] = ()
    refusals: tuple[type[Exception], ...] = ()
    unavailable_code = "service_unavailable"
    refused_code = "conflict"

    def __init__(self, payments: Any) -> None:
        self.payments = payments

    def notify_url(self, path: str, **names: str) -> str:
        """Where the channel posts its notifications: `path` under `payments_notify_url`."""
        base = str(self.payments.notify_base_url).rstrip("/")
        if not base:
            why = f"payments_notify_url is not set: {self.label} cannot notify"
            raise PaymentNotConfigured(why)
        return base + path.format(**names)

    async def apply(self, notice: ChannelPayment) -> Outcome:
        """A payment the channel confirmed, applied (the bill, the order, the ledger)."""
        outcome: Outcome = await self.payments.apply(notice)
        return outcome

    async def refund_sent(
        self,
        refund: Refund,
        send: Callable[[], Awaitable[tuple[bool, str, dt.datetime | None]]],
        refused: type[Exception],
    ) -> RefundResult:
        """Send a due refund with `send` (whether the money moved at once, the channel's
        refund id, and when the channel says it moved: None, now): requested, settled when it
        moved; failed when the channel refuses."""
        try:
            settled, channel_refund_id, succeeded_at = await send()
        except refused as exc:
            await move_refund(
                refund.refund_no, RefundState.FAILED, channel=self.name, failure=str(exc)
            )
            log.error("refund_refused", refund_no=refund.refund_no, why=str(exc))
            return RefundResult.FAILED
        await move_refund(refund.refund_no, RefundState.REQUESTED, channel=self.name)
        if not settled:
            return RefundResult.PENDING
        await settle_refund(
            refund.refund_no, channel=self.name, channel_refund_id=channel_refund_id,
            succeeded_at=succeeded_at,
        )  # fmt: skip
        return RefundResult.SUCCEEDED

    # ------------------------------------------------------------------------- the sweep

    async def query_bill(self, payment: Payment) -> Outcome | None:
        """Ask the channel about a bill whose notification is late; apply a payment it names."""
        return None

    async def open_bill(self, order: Order, member_uid: str) -> Payment:
        """The order's bill at this channel (`open_order_bill`): one open at another channel
        is closed there first (`PaymentService.release_bill`), then moves here."""
        await self.payments.release_bill(order, self.name)
        return await open_order_bill(order, member_uid, self.name)

    async def release(self, payment: Payment) -> None:
        """Before the pending bill moves to another channel (the member pays it otherwise):
        close it here, so what the member holds cannot pay the order a second time, then let
        it move (models/payments.py `release_bill`: closed, its number is spent and it takes
        the next; the channel never had it, it keeps its number). Nothing moves when the
        channel does not answer (BillNotReleased, 503), refuses (BillCloseRefused, 502), says
        it was paid meanwhile (that payment applied; OrderAlreadyPaid, 409) or could not close
        it yet (BillOpenAtChannel, 409): the member may ask again."""
        try:
            closing = await self.close_to_move(payment)
        except self.unanswered as exc:
            raise BillNotReleased(
                f"{self.label} did not answer while the order's bill there was being closed to "
                f"pay it otherwise; nothing changed, try again ({exc})",
                self.unavailable_code,
            ) from None
        except self.refusals as exc:
            raise BillCloseRefused(
                f"{self.label} refused to close the order's bill, so it cannot be paid "
                f"otherwise: {exc}",
                self.refused_code,
            ) from None
        if closing is Closing.PAID:
            log.warning("bill_paid_while_moving", bill_no=payment.bill_no, channel=self.name)
            raise OrderAlreadyPaid(f"order {payment.order_oid} was paid at {self.label} meanwhile")
        if closing is Closing.OPEN:
            log.warning("bill_release_deferred", bill_no=payment.bill_no, channel=self.name)
            raise BillOpenAtChannel(
                f"the bill of order {payment.order_oid} is still payable at {self.label}, which "
                "could not close it yet; try again"
            )
        until = await self.may_appear_until(payment) if closing is Closing.NOT_THERE else None
        if until is not None:
            # Not at the channel yet, but what the member holds may still open it there and
            # pay (an Alipay URL): the sweep asks there until then (models/bill_numbers.py).
            await leave_number(
                payment, channel=self.name, bill_no=payment.bill_no,
                prepay_id=payment.prepay_id, payable_until=until,
            )  # fmt: skip
        await release_bill(payment, spent=closing is Closing.CLOSED)
        log.info("bill_released", bill_no=payment.bill_no, channel=self.name, found=closing.value)

    async def close_to_move(self, payment: Payment) -> Closing:
        """Close the pending bill at the channel so that it may move (`release`); what that
        found. Raises one of `unanswered` or `refusals` when it cannot tell. A channel with
        nothing to close: NOT_THERE."""
        return Closing.NOT_THERE

    async def may_appear_until(self, payment: Payment) -> dt.datetime | None:
        """Until when a bill the channel did not have (`Closing.NOT_THERE`) may still appear
        there, opened by what the member holds; None: never (it only ever has the bills we
        open there)."""
        return None

    async def close(self, payment: Payment) -> bool:
        """Close the bill of a closed order; True when closed at the channel. A channel
        without a close step: closed here only."""
        await close_bill(payment)
        return False

    async def send_refund(self, refund: Refund, payment: Payment) -> RefundResult | None:
        """Execute a due refund of a bill the channel was paid; None: not one of its bills."""
        return None

    async def check_refund(self, refund: Refund, payment: Payment) -> RefundResult | None:
        """Ask the channel about a requested refund: settled, still pending, or failed (each
        recorded); None: not one of its bills."""
        return None
