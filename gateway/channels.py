"""What every payment channel shares (docs/payments.md, "Channels"): the notify URL, the bill's
description, a refund sent and its answer recorded, and the four steps the payments sweep
dispatches by the bill's channel (gateway/payments.py).

A channel (WeChat Pay, Alipay, the card acquirers) subclasses `PaymentChannel`, speaks its own
protocol through its client in gateway/providers/, and records what happened through the shared
models (`open_order_bill`, `apply_channel_payment` via PaymentService.apply, `move_refund`,
`settle_refund`). A new channel is one subclass and one entry in `PaymentService.channels`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from aquafleet.gateway.logs import get_logger
from aquafleet.models.merchants import PaymentNotConfigured
from aquafleet.models.money import Refund, RefundState, move_refund, settle_refund
from aquafleet.models.orders import Order, OrderLine
from aquafleet.models.payments import ChannelPayment, Outcome, Payment, close_bill

log = get_logger("aquafleet.payments")


class RefundResult(StrEnum):
    SUCCEEDED = "succeeded"
    PENDING = "pending"
    FAILED = "failed"  # refused: the refund is failed and its amount may be refunded again


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

    async def release(self, payment: Payment) -> None:
        """Before the pending bill moves to another channel: make sure it can no longer be
        paid here. A channel whose bills are not closed before moving
        (models/payments.py CLOSED_BEFORE_MOVING): nothing."""

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
