"""The numbers an order's bill left open at a provider (docs/payments.md, "Older numbers").

A bill takes another number, or another channel, when it moves (models/payments.py
`release_bill`); the provider order under the number it had there is closed first, and a
closed number takes no payment, so nothing needs to be remembered of it. What may still take
(or have taken) a payment is remembered here, one row per channel and number, until the
payments sweep has closed it there or applied the payment it found (gateway/payments.py
`PaymentService.sweep_old_numbers`):

- a number the provider did not have when the bill moved but may have later: an Alipay
  wap.pay URL the member never opened (no trade to close) opens a trade whenever the member
  opens it, until its `time_expire` (`payable_until`);
- a bill paid through one channel while it was open at another that could not be closed then
  (`PaymentService.close_elsewhere`: silent, refusing, still processing);
- the numbers a bill may have left open before moves closed them at their channel (WeChat Pay
  before session 14, Alipay and the card before session 15), which nothing remembers:
  `aquafleet payments old-numbers --since DAY` records each number the bill had at each
  provider channel its vendor has set up (`guessed`).

Without this a payment under such a number whose notification never came was found by
nothing: the sweep asked the provider about the bill's number now only.
"""

from __future__ import annotations

import datetime as dt
from enum import IntEnum

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model

from aquafleet.models.payments import MAX_BILL_NO, Payment


class NumberState(IntEnum):
    OPEN = 1  # may take, or may have taken, a payment at the provider: the sweep asks
    DONE = 2  # closed there, its payment applied, or past the time it could be paid


class OldBillNumber(Model):
    """A number an order's bill had at a provider channel, perhaps still open there."""

    id = fields.BigIntField(primary_key=True)
    payment_id = fields.BigIntField(db_index=True)
    bill_no = fields.CharField(max_length=MAX_BILL_NO)
    channel = fields.CharField(max_length=16)
    # The bill's prepay id there (the card's names its acquirer, `allinpay:...`).
    prepay_id = fields.CharField(max_length=64, default="")
    state = fields.IntEnumField(NumberState, default=NumberState.OPEN)
    # A number the provider did not have may appear there until then (an Alipay URL never
    # opened: its time_expire); null: once the provider says it has none, it never will.
    payable_until = fields.DatetimeField(null=True)
    guessed = fields.BooleanField(default=False)  # recorded by `payments old-numbers`
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()  # when last asked: the least recently asked first
    done_at = fields.DatetimeField(null=True)

    class Meta:
        table = "pay_old_number"
        unique_together = (("bill_no", "channel"),)
        indexes = (("state", "updated_at"),)


async def leave_number(
    payment: Payment,
    *,
    channel: str,
    bill_no: str,
    prepay_id: str = "",
    payable_until: dt.datetime | None = None,
    guessed: bool = False,
) -> bool:
    """Remember that `bill_no` at `channel` may still take a payment there (open again when
    it was remembered before). True when it was not open already."""
    now = dt.datetime.now(dt.UTC)
    values = {
        "payment_id": payment.id, "prepay_id": prepay_id[:64], "payable_until": payable_until,
        "updated_at": now, "guessed": guessed,
    }  # fmt: skip
    found = await OldBillNumber.get_or_none(bill_no=bill_no[:MAX_BILL_NO], channel=channel)
    if found is None:
        try:
            await OldBillNumber.create(
                bill_no=bill_no[:MAX_BILL_NO], channel=channel, created_at=now, **values
            )
            return True
        except IntegrityError:  # remembered by a racing call: as it says
            return False
    if found.state is NumberState.OPEN or guessed:
        return False  # a guess never reopens what was settled
    await OldBillNumber.filter(id=found.id).update(state=NumberState.OPEN, done_at=None, **values)
    return True


async def numbers_to_ask(asked_before: dt.datetime, limit: int) -> list[OldBillNumber]:
    """Open numbers not asked about since `asked_before`, the least recently asked first."""
    return list(
        await OldBillNumber.filter(state=NumberState.OPEN, updated_at__lte=asked_before)
        .order_by("updated_at", "id")
        .limit(limit)
    )


async def number_asked(number: OldBillNumber) -> None:
    """The sweep asked the provider about it: it goes to the back of the queue."""
    await OldBillNumber.filter(id=number.id).update(updated_at=dt.datetime.now(dt.UTC))


async def number_done(channel: str, bill_no: str) -> None:
    """The number is closed at `channel`, or the payment made under it applied: never asked
    again (unless the bill leaves it open again)."""
    now = dt.datetime.now(dt.UTC)
    await OldBillNumber.filter(
        channel=channel, bill_no=bill_no[:MAX_BILL_NO], state=NumberState.OPEN
    ).update(state=NumberState.DONE, done_at=now, updated_at=now)


def numbers_of_bill(order_oid: str, bill_no: str) -> list[str]:
    """Every number an order's bill has had: the order id, `{oid}-2`... up to `bill_no`."""
    _, dash, count = bill_no.removeprefix(order_oid).rpartition("-")
    last = int(count) if dash and bill_no.startswith(order_oid) and count.isdigit() else 1
    return [order_oid] + [f"{order_oid}-{n}"[:MAX_BILL_NO] for n in range(2, last + 1)]
