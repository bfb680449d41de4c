"""Reconciliation with a channel's bill: every difference between what the channel says happened
on a day and what we recorded (docs/payments.md).

The channel's day is its own (WeChat Pay's bills run on Beijing time), and things are on it
when the channel says they happened: a bill on the day it was paid (`paid_at`, WeChat Pay's
success_time), a refund on the day it succeeded (`succeeded_at`, its success_time; one still
requested on the day it was asked). A difference is one of:
- `missing_at_channel`: we have a paid bill or a refund the channel's bill does not list;
- `missing_here`: the channel lists a payment or refund we do not know;
- `amount_mismatch`: both know it, with different amounts;
- `state_mismatch`: both know it, in different states (paid at the channel, not here; a refund
  succeeded at one side only).

A payment the channel took for an order paid otherwise before (`paid_twice`, or a second
transaction after close) is booked here as such (`pay-twice:{channel}:{transaction_no}`) and
refunded on its own: it is no difference (its refund is reconciled as any other).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass

from tortoise.expressions import Q

from aquafleet.models.errors import InvalidInput
from aquafleet.models.money import Refund, RefundState, duplicate_payment_key, payment_booked
from aquafleet.models.payments import Payment, PaymentState

BEIJING = dt.timezone(dt.timedelta(hours=8))


@dataclass(frozen=True, slots=True)
class BillRow:
    """One row of a WeChat Pay trade bill (amounts in fen)."""

    bill_no: str  # 商户订单号
    transaction_no: str  # 微信订单号
    trade_state: str  # SUCCESS or REFUND
    amount_fen: int  # 应结订单金额
    refund_no: str  # 商户退款单号
    refund_fen: int  # 退款金额
    refund_state: str  # 退款状态


@dataclass(frozen=True, slots=True)
class Difference:
    what: str
    subject: str  # a bill number, or a refund number
    ours: str
    theirs: str


def fen_of(yuan: str) -> int:
    """'35.00' -> 3500, with no float on the way."""
    whole, _, cents = yuan.strip().partition(".")
    if not whole.lstrip("-").isdigit() or not (cents + "00")[:2].isdigit() or len(cents) > 2:
        raise InvalidInput(f"not an amount: {yuan!r}")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole)) * 100 + int((cents + "00")[:2]))


def parse_trade_bill(text: str) -> list[BillRow]:
    """The detail rows of WeChat Pay's trade bill (ALL): a header row, rows whose fields start
    with a backquote, then a summary header and row."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(reader, None)
    if header is None:
        return []
    index = {name: i for i, name in enumerate(header)}
    needed = (
        "微信订单号",
        "商户订单号",
        "交易状态",
        "应结订单金额",
        "商户退款单号",
        "退款金额",
        "退款状态",
    )
    if any(name not in index for name in needed):
        raise InvalidInput("not a WeChat Pay trade bill (its header lacks a column)")
    rows = []
    for raw in reader:
        if not raw or not raw[0].startswith("`"):
            break  # the summary follows the details
        field = [value.removeprefix("`") for value in raw]
        rows.append(
            BillRow(
                bill_no=field[index["商户订单号"]], transaction_no=field[index["微信订单号"]],
                trade_state=field[index["交易状态"]],
                amount_fen=fen_of(field[index["应结订单金额"]]),
                refund_no=_no_or_empty(field[index["商户退款单号"]]),
                refund_fen=fen_of(field[index["退款金额"]]),
                refund_state=field[index["退款状态"]],
            )
        )  # fmt: skip
    return rows


def _no_or_empty(value: str) -> str:
    return "" if value in ("", "0") else value


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The channel's day (Beijing) as UTC instants: SQLite compares the stored UTC text with
    the bound's text, so a +08:00 bound matched the wrong rows from 16:00 UTC on."""
    start = dt.datetime.combine(day, dt.time(), BEIJING)
    return start.astimezone(dt.UTC), (start + dt.timedelta(days=1)).astimezone(dt.UTC)


async def compare(vendor: str, channel: str, day: dt.date, rows: list[BillRow]) -> list[Difference]:
    """Every difference between the channel's rows for `day` and our records."""
    start, end = day_bounds(day)
    found: list[Difference] = []
    paid_rows = {r.bill_no: r for r in rows if r.trade_state == "SUCCESS"}
    refund_rows = {r.refund_no: r for r in rows if r.trade_state == "REFUND" and r.refund_no}
    ours = {
        p.bill_no: p
        for p in await Payment.filter(
            vendor_code=vendor, channel=channel, state=PaymentState.PAID,
            paid_at__gte=start, paid_at__lt=end,
        )
    }  # fmt: skip
    for bill_no, payment in ours.items():
        row = paid_rows.get(bill_no)
        if row is None:
            found.append(
                Difference("missing_at_channel", bill_no, f"paid {payment.amount_fen}", "-")
            )
        elif row.amount_fen != payment.amount_fen:
            found.append(
                Difference("amount_mismatch", bill_no, str(payment.amount_fen), str(row.amount_fen))
            )
    for bill_no, row in paid_rows.items():
        if bill_no in ours:
            continue
        known = await Payment.get_or_none(bill_no=bill_no, vendor_code=vendor)
        if await payment_booked(duplicate_payment_key(channel, row.transaction_no)):
            continue  # a second payment of a paid order, booked as such; its refund is a row
        if known is None:
            found.append(Difference("missing_here", bill_no, "-", f"paid {row.amount_fen}"))
        else:
            state = known.state.name.lower()
            found.append(Difference("state_mismatch", bill_no, state, "paid"))
    refunds = {r.refund_no: r for r in await refunds_of_day(vendor, channel, start, end)}
    for refund_no, refund in refunds.items():
        row = refund_rows.get(refund_no)
        state = refund.state.name.lower()
        if row is None:
            found.append(Difference("missing_at_channel", refund_no, f"refund {state}", "-"))
        elif row.refund_fen != refund.amount_fen:
            found.append(
                Difference(
                    "amount_mismatch", refund_no, str(refund.amount_fen), str(row.refund_fen)
                )
            )
        elif (row.refund_state == "SUCCESS") != (refund.state is RefundState.SUCCEEDED):
            found.append(Difference("state_mismatch", refund_no, state, row.refund_state.lower()))
    for refund_no, row in refund_rows.items():
        if refund_no in refunds:
            continue
        asked = await Refund.get_or_none(refund_no=refund_no, vendor_code=vendor, channel=channel)
        if asked is not None and (row.refund_state == "SUCCESS") != (
            asked.state is RefundState.SUCCEEDED
        ):
            # e.g. requested here the day before, succeeded there today, its notification not
            # here yet: the same state difference as on the day it was requested.
            state = asked.state.name.lower()
            found.append(Difference("state_mismatch", refund_no, state, row.refund_state.lower()))
        else:
            found.append(Difference("missing_here", refund_no, "-", f"refund {row.refund_fen}"))
    return found


async def refunds_of_day(
    vendor: str, channel: str, start: dt.datetime, end: dt.datetime
) -> list[Refund]:
    """Our refunds on the channel's day [start, end): a succeeded one on the day it succeeded
    (`succeeded_at`: WeChat Pay's success_time, as its bill lists refunds; one settled before
    that was recorded, on the day it was settled here), one still requested on the day it was
    asked. Counted by when it was asked, a refund asked at 23:59 and paid back at 00:01 was a
    difference on both days."""
    succeeded = Q(state=RefundState.SUCCEEDED) & (
        Q(succeeded_at__gte=start, succeeded_at__lt=end)
        | Q(succeeded_at__isnull=True, updated_at__gte=start, updated_at__lt=end)
    )
    requested = Q(state=RefundState.REQUESTED, created_at__gte=start, created_at__lt=end)
    return list(
        await Refund.filter(vendor_code=vendor, channel=channel).filter(succeeded | requested)
    )
