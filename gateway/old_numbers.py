"""The payments sweep's step for the numbers an order's bill left open at a provider
(models/bill_numbers.py, docs/payments.md "Older numbers"): each is closed there the way a
moving bill is (`PaymentChannel.close_to_move`), which finds a payment made under it and
applies it once through `PaymentService.apply` (paid, or a second payment refunded under the
number it was paid under); and the one-off recording of the numbers bills moved before moves
closed them may have left open (`aquafleet payments old-numbers`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tortoise.transactions import in_transaction

from aquafleet.gateway.channels import Closing
from aquafleet.gateway.logs import get_logger
from aquafleet.models.bill_numbers import (
    OldBillNumber,
    leave_number,
    number_asked,
    number_done,
    numbers_of_bill,
    numbers_to_ask,
)
from aquafleet.models.merchants import configured_channels
from aquafleet.models.payments import Payment, PaymentState, Purpose

log = get_logger("aquafleet.payments")


@dataclass(slots=True)
class OldNumbersSwept:
    taken: int = 0  # the batch's numbers, asked or not (a channel this service lacks)
    asked: int = 0
    closed: int = 0
    paid: int = 0  # a payment found under the number, applied (paid, or refunded)


def held_under(payment: Payment, number: OldBillNumber) -> Payment:
    """The bill as the provider holds it under the old number (not saved)."""
    return Payment(
        id=payment.id, bill_no=number.bill_no, purpose=payment.purpose,
        order_oid=payment.order_oid, member_uid=payment.member_uid,
        vendor_code=payment.vendor_code, channel=number.channel, amount_fen=payment.amount_fen,
        state=PaymentState.PENDING, prepay_id=number.prepay_id, created_at=payment.created_at,
        updated_at=payment.updated_at,
    )  # fmt: skip


async def ask_old_number(service: Any, number: OldBillNumber, swept: OldNumbersSwept) -> None:
    """Close the number at its provider, applying a payment found there (once: a payment is
    one notice, whoever brings it). Done once closed there, its payment applied, or (a number
    the provider does not have) past the time it could appear; left to the next pass when the
    provider cannot close it yet, or does not answer."""
    await number_asked(number)  # first: a failure below puts it at the back of the queue
    channel = service.channels.get(number.channel)
    if channel is None:
        return  # a channel this service does not have: left for one that has it
    async with in_transaction("default"):
        # The bill's lock, held until the provider has closed the number: the bill cannot
        # move to that channel under that number meanwhile (a move updates the bill's row),
        # so what is closed there is an old number, never the sheet the member was just
        # handed. Checked before taking it, the bill could move there between the check and
        # the close, and the close took the member's fresh sheet (`payments old-numbers`).
        payment = await Payment.filter(id=number.payment_id).select_for_update().first()
        if payment is None:
            return
        if payment.state is PaymentState.PENDING and (payment.channel, payment.bill_no) == (
            number.channel, number.bill_no,
        ):  # fmt: skip
            # The bill's number now (it came back there): the late bills' query asks about it.
            await number_done(number.channel, number.bill_no)
            return
        swept.asked += 1
        closing = await _close_there(channel, payment, number)
    now = dt.datetime.now(dt.UTC)
    if closing is Closing.OPEN:
        log.warning("old_number_still_open", bill_no=number.bill_no, channel=number.channel)
        return
    if closing is Closing.NOT_THERE and number.payable_until and now < number.payable_until:
        return  # it may still appear there (an Alipay URL not opened yet): asked again later
    swept.closed += closing is Closing.CLOSED
    swept.paid += closing is Closing.PAID
    await number_done(number.channel, number.bill_no)
    log.info(
        "old_number_done", bill_no=number.bill_no, channel=number.channel, found=closing.value,
        bill=payment.bill_no,
    )  # fmt: skip


async def _close_there(channel: Any, payment: Payment, number: OldBillNumber) -> Closing:
    """Close the number at its provider (`close_to_move`); a guessed number the provider
    refuses is one it does not have (Allinpay answers a trade it never had with a refusal)."""
    try:
        closing: Closing = await channel.close_to_move(held_under(payment, number))
    except channel.refusals as exc:
        if not number.guessed:
            raise
        log.info("old_number_refused", bill_no=number.bill_no, channel=number.channel, why=str(exc))
        return Closing.NOT_THERE
    return closing


async def sweep_old_numbers(
    service: Any, report: Any, limit: int, asked_before: dt.datetime
) -> OldNumbersSwept:
    """One batch of the open old numbers not asked about since `asked_before`."""
    swept = OldNumbersSwept()
    for number in await numbers_to_ask(asked_before, limit):
        swept.taken += 1
        what = f"old number {number.bill_no} at {number.channel}"
        await service.guarded(report, what, ask_old_number, service, number, swept)
    return swept


async def provider_channels(service: Any, vendor_code: str) -> list[tuple[str, str]]:
    """The provider channels the vendor has set up, each with the prepay id a bill opened
    there would carry as far as asking about it needs (the card's names its acquirer)."""
    found: dict[str, str] = {}
    for name in await configured_channels(vendor_code):
        if name in service.channels:
            found.setdefault(name, "")
        elif service.cards is not None and name in service.cards.acquirers:
            found.setdefault("card", f"{name}:")
    return list(found.items())


async def record_guessed_numbers(service: Any, since: dt.datetime, batch: int = 500) -> int:
    """Every number each order bill made since `since` had, at every provider channel its
    vendor has set up, but the one it has now: remembered as open (guessed), for the sweep
    to close there. How many were new. Bills moved before moves closed them at their channel
    left their provider order open there, and nothing else remembers where."""
    recorded, after = 0, 0
    since = since.astimezone(dt.UTC)  # SQLite compares the stored text: in UTC, as stored
    while True:
        bills = await (
            Payment.filter(purpose=Purpose.ORDER.value, created_at__gte=since, id__gt=after)
            .order_by("id")
            .limit(batch)
        )
        if not bills:
            return recorded
        for bill in bills:
            after = bill.id
            for channel, prepay_id in await provider_channels(service, bill.vendor_code):
                for bill_no in numbers_of_bill(str(bill.order_oid), bill.bill_no):
                    if (channel, bill_no) == (bill.channel, bill.bill_no):
                        continue
                    recorded += await leave_number(
                        bill, channel=channel, bill_no=bill_no, prepay_id=prepay_id, guessed=True
                    )
