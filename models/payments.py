"""Payments through a channel (WeChat Pay, a card acquirer, the wallet): the bill a member pays
and what the channel told us about it (AD-07..10, docs/payments.md).

A `Payment` is one bill at a channel: its number (`bill_no`, WeChat Pay's out_trade_no; an
order's is its order id), what it is for (an order, or a wallet top-up), the amount in fen and
its state. The channel's confirmation (a verified notification, or a query when one is late)
goes through `apply_channel_payment`, which decides from the bill and the order, once per
notification id, and records every notice with its outcome:

- `paid`: the order is paid through `models.order_payment.pay_order` (PAY fired, the money booked
  and the bill marked paid in one transaction);
- `duplicate`: a notice seen before, or a bill already paid by the same transaction: nothing
  changes;
- `amount_mismatch`: the channel names another amount than the bill's: recorded, alerted by the
  caller, never paid;
- `refund_after_close`: the order closed before the money came: the money is booked and a full
  refund is requested, once per channel transaction (the first `close-{oid}`, a later one
  `twice-{transaction_no}` through its own channel), which the channel then pays back;
- `unknown_bill`: no bill here has or had that number (a payment under an older number of an
  order's bill, `{oid}` or `{oid}-n`, is that bill's: `bill_of_number`);
- `paid_twice`: the order was paid otherwise before (from the wallet, marked paid by an
  admin): the channel's money is booked as a duplicate and its refund in full requested through
  the same channel (`twice-{transaction_no}`), which the payments sweep executes; alerted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q, Subquery
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aquafleet.models.errors import Conflict, Forbidden
from aquafleet.models.order_payment import pay_order
from aquafleet.models.order_states import SYSTEM, OrderStateConflict
from aquafleet.models.orders import Order, OrderKind, OrderState, is_valid_order_id

MAX_BILL_NO = 32  # WeChat Pay's out_trade_no: 6..32 of [A-Za-z0-9_-|*]
MAX_NOTICE_ID = 64


class PaymentState(IntEnum):
    PENDING = 1  # the bill exists at the channel; the member has not paid (yet)
    PAID = 2
    CLOSED = 3  # closed at the channel: it can no longer be paid


class Purpose(StrEnum):
    ORDER = "order"
    TOPUP = "topup"  # a wallet top-up (models/wallet.py)


class Outcome(StrEnum):
    PAID = "paid"
    DUPLICATE = "duplicate"
    AMOUNT_MISMATCH = "amount_mismatch"
    REFUND_AFTER_CLOSE = "refund_after_close"
    UNKNOWN_BILL = "unknown_bill"
    PAID_TWICE = "paid_twice"  # the order was paid before: booked and refunded in full, alerted
    TOPPED_UP = "topped_up"


class Payment(Model):
    """One bill at a payment channel."""

    id = fields.BigIntField(primary_key=True)
    bill_no = fields.CharField(max_length=MAX_BILL_NO, unique=True)
    purpose = fields.CharField(max_length=8)
    order_oid = fields.CharField(max_length=24, null=True, db_index=True)
    member_uid = fields.CharField(max_length=20)
    vendor_code = fields.CharField(max_length=8)
    channel = fields.CharField(max_length=16)
    amount_fen = fields.BigIntField()
    state = fields.IntEnumField(PaymentState, default=PaymentState.PENDING)
    prepay_id = fields.CharField(max_length=64, default="")
    transaction_no = fields.CharField(max_length=64, default="")
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()
    paid_at = fields.DatetimeField(null=True)
    closed_at = fields.DatetimeField(null=True)
    # The sweep's late-bill queries of it (`late_bills`, `bill_queried`): how many so far, and
    # when the next is due (null: none yet, the first `query_after` after it was made).
    # Nullable, so a node of before (a rolling upgrade) still makes bills.
    queries = fields.IntField(null=True)
    next_query_at = fields.DatetimeField(null=True)

    class Meta:
        table = "pay_payment"
        # (state, updated_at): the sweep's queues, the least recently tried pending bill first.
        indexes = (("state", "created_at"), ("state", "updated_at"), ("state", "next_query_at"))


class PaymentNotice(Model):
    """What a channel told us about a bill (a notification, or a query's answer), once per id,
    with what we made of it."""

    id = fields.BigIntField(primary_key=True)
    notice_id = fields.CharField(max_length=MAX_NOTICE_ID, unique=True)
    bill_no = fields.CharField(max_length=MAX_BILL_NO, db_index=True)
    channel = fields.CharField(max_length=16)
    outcome = fields.CharField(max_length=24)
    amount_fen = fields.BigIntField()
    transaction_no = fields.CharField(max_length=64, default="")
    created_at = fields.DatetimeField()

    class Meta:
        table = "pay_notice"


class OrderAlreadyPaid(Conflict):
    code = "order_paid"


# Channels whose bill, once opened there, must be closed there before it moves to another
# channel (`release_bill`): until it is closed the member holds what pays it there (WeChat
# Pay's payment sheet, Alipay's wap.pay URL, the acquirer's UnionPay code). Every channel with
# a bill at a provider is one; the wallet (paid at once) and `manual` are not.
CLOSED_BEFORE_MOVING = frozenset({"weixin", "alipay", "card"})


class BillOpenAtChannel(Conflict):
    """The bill is open at a channel that must close it before it moves (the gateway's
    `PaymentService.release_bill` does, then the move is asked again), or that channel could
    not close it yet (the card acquirer still processing it)."""

    code = "bill_open_at_channel"


def next_bill_no(order_oid: str, bill_no: str) -> str:
    """The bill's number once its number is spent at a channel (closed there: WeChat Pay
    refuses a closed out_trade_no again, ORDERCLOSED; Alipay a closed trade's; Allinpay a
    used reqsn): the order id, then `{oid}-2`, `-3`..."""
    _, dash, count = bill_no.removeprefix(order_oid).rpartition("-")
    n = int(count) if dash and bill_no.startswith(order_oid) and count.isdigit() else 1
    return f"{order_oid}-{n + 1}"[:MAX_BILL_NO]


def order_of_bill_no(bill_no: str) -> str | None:
    """The order whose bill had the number `bill_no` at some time (`{oid}`, or `{oid}-n` once
    closed at a channel to move, `next_bill_no`); None for any other number (a top-up's)."""
    oid, dash, count = bill_no.rpartition("-")
    if dash and count.isdigit() and int(count) >= 2 and is_valid_order_id(oid):
        return oid
    return bill_no if is_valid_order_id(bill_no) else None


async def bill_of_number(bill_no: str, vendor: str) -> Payment | None:
    """The bill a channel's payment under `bill_no` is for: the bill of that number now, or
    the bill of the order `bill_no` was once a number of. A bill takes another number when it
    moves (`release_bill`), and what the member held under the old one may still pay there: an
    Alipay wap.pay URL never opened cannot be closed, so its trade only exists once the
    member opens it, perhaps after the bill moved on (docs/payments.md)."""
    payment = await Payment.get_or_none(bill_no=bill_no, vendor_code=vendor)
    if payment is not None:
        return payment
    oid = order_of_bill_no(bill_no)
    if oid is None:
        return None
    return await Payment.get_or_none(order_oid=oid, purpose=Purpose.ORDER.value, vendor_code=vendor)


async def open_order_bill(order: Order, member_uid: str, channel: str) -> Payment:
    """The bill a member pays its order with at `channel` (its number is the order id, or
    `{oid}-n` after it was closed at a channel to move): made once, answered again while
    pending. Only the member's own unpaid order. A bill open at a channel that must close it
    first (CLOSED_BEFORE_MOVING) does not move: BillOpenAtChannel."""
    if order.member_id != member_uid:
        raise Forbidden("only the member who ordered pays the order")
    if order.state is not OrderState.OBLIGATION:
        raise OrderStateConflict(
            f"the order is {order.state.name.lower()}: it cannot pay", order.state
        )
    if order.total_fen <= 0:
        raise Conflict(f"order {order.oid} costs nothing")
    now = dt.datetime.now(dt.UTC)
    existing = await payment_of_order(order.oid)
    if existing is None:
        try:
            existing = await Payment.create(
                bill_no=order.oid, purpose=Purpose.ORDER.value, order_oid=order.oid,
                member_uid=member_uid, vendor_code=order.vendor_id, channel=channel,
                amount_fen=order.total_fen, created_at=now, updated_at=now,
            )  # fmt: skip
        except IntegrityError:
            existing = await Payment.get(order_oid=order.oid, purpose=Purpose.ORDER.value)
    if existing.state is PaymentState.PAID:
        raise OrderAlreadyPaid(f"order {order.oid} is paid")
    if existing.channel != channel:
        if existing.prepay_id and existing.channel in CLOSED_BEFORE_MOVING:
            raise BillOpenAtChannel(
                f"the bill of order {order.oid} is open at {existing.channel}: it moves once "
                "closed there"
            )
        # The member chose another channel: the bill moves there while nobody has paid it
        # (and, from a channel that holds it open, once closed there: nobody can pay it
        # there any more).
        await Payment.filter(
            id=existing.id, state=PaymentState.PENDING, channel=existing.channel,
            prepay_id=existing.prepay_id,
        ).update(channel=channel, prepay_id="", updated_at=now)  # fmt: skip
        existing = await Payment.get(id=existing.id)
        if existing.state is PaymentState.PAID:
            raise OrderAlreadyPaid(f"order {order.oid} is paid")
        if existing.channel != channel:
            raise BillOpenAtChannel(f"the bill of order {order.oid} changed meanwhile; again")
    return existing


async def release_bill(payment: Payment, *, spent: bool = True) -> bool:
    """The channel closed the pending bill so that it may move (`open_order_bill`): no prepay.
    Its number is `spent` there (closed: the channel refuses it again), so the bill takes the
    next one (`next_bill_no`); a number the channel never had (nothing to close there) is kept,
    so a payment under it that comes later (an Alipay URL opened after all) still finds the
    bill. False when the bill changed meanwhile (paid, moved, opened again): nothing changed."""
    bill_no = next_bill_no(str(payment.order_oid), payment.bill_no) if spent else payment.bill_no
    released = await Payment.filter(
        id=payment.id, state=PaymentState.PENDING, bill_no=payment.bill_no,
        channel=payment.channel, prepay_id=payment.prepay_id,
    ).update(bill_no=bill_no, prepay_id="", updated_at=dt.datetime.now(dt.UTC))  # fmt: skip
    return bool(released)


async def set_prepay_id(payment: Payment, prepay_id: str) -> None:
    """The bill is open at its channel under `prepay_id` (unless it took another number
    meanwhile: released at a channel to move)."""
    await Payment.filter(id=payment.id, bill_no=payment.bill_no).update(
        prepay_id=prepay_id[:64], updated_at=dt.datetime.now(dt.UTC), queries=None,
        next_query_at=None,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChannelPayment:
    """A payment as the channel confirmed it (after its signature and merchant were checked)."""

    notice_id: str
    channel: str
    vendor: str  # whose merchant the notice came through
    bill_no: str
    transaction_no: str
    amount_fen: int
    # When the channel says the member paid (WeChat Pay's success_time): the bill's paid_at,
    # so the bill is paid on the day the channel's own bill lists it (reconciliation), not on
    # the day a late notification or query reached us. None: when it was applied here.
    paid_at: dt.datetime | None = None


async def _record(notice: ChannelPayment, outcome: Outcome, now: dt.datetime) -> None:
    await PaymentNotice.create(
        notice_id=notice.notice_id[:MAX_NOTICE_ID], bill_no=notice.bill_no[:MAX_BILL_NO],
        channel=notice.channel, outcome=outcome.value, amount_fen=notice.amount_fen,
        transaction_no=notice.transaction_no[:64], created_at=now,
    )  # fmt: skip


async def apply_channel_payment(notice: ChannelPayment, *, apply_service: Any = None) -> Outcome:
    """What the channel's confirmed payment does (see the module), once per notice id."""
    seen = await PaymentNotice.get_or_none(notice_id=notice.notice_id[:MAX_NOTICE_ID])
    if seen is not None:
        return Outcome.DUPLICATE
    now = dt.datetime.now(dt.UTC)
    payment = await bill_of_number(notice.bill_no, notice.vendor)
    outcome: Outcome
    if payment is None:
        outcome = Outcome.UNKNOWN_BILL
    elif payment.state is PaymentState.PAID and _same_payment(payment, notice):
        outcome = Outcome.DUPLICATE
    elif notice.amount_fen != payment.amount_fen:
        outcome = Outcome.AMOUNT_MISMATCH
    elif payment.state is PaymentState.PAID and payment.purpose == Purpose.ORDER.value:
        order = await Order.get(oid=payment.order_oid)
        if order.state is OrderState.CLOSE:
            # Paid after close by another transaction first: this one is refunded too.
            return await _refund_after_close(order, payment, notice, now)
        return await _paid_twice(order, notice, now)
    elif payment.state is PaymentState.PAID:
        outcome = Outcome.DUPLICATE  # a top-up paid by another transaction: a person's case
    elif payment.purpose == Purpose.TOPUP.value:
        from aquafleet.models.wallet import credit_topup

        return await credit_topup(payment, notice)
    else:
        return await _pay_order_bill(payment, notice, apply_service, now)
    try:
        await _record(notice, outcome, now)
    except IntegrityError:
        return Outcome.DUPLICATE
    return outcome


def _mark_paid_within(payment: Payment, notice: ChannelPayment, now: dt.datetime) -> Any:
    """The bill paid by the notice's payment, under the number that payment was made under
    (an older number of the bill, `bill_of_number`, too): the number its channel refunds and
    reconciles it by."""

    async def within(_order: Order | None = None) -> None:
        await Payment.filter(id=payment.id).update(
            state=PaymentState.PAID, transaction_no=notice.transaction_no[:64],
            channel=notice.channel, paid_at=notice.paid_at or now, updated_at=now,
            bill_no=notice.bill_no[:MAX_BILL_NO],
        )  # fmt: skip

    return within


async def _pay_order_bill(
    payment: Payment, notice: ChannelPayment, apply_service: Any, now: dt.datetime
) -> Outcome:

    order = await Order.get(oid=payment.order_oid)
    mark = _mark_paid_within(payment, notice, now)
    booked = False

    async def book(_order: Order) -> None:
        nonlocal booked
        await mark()
        await _record(notice, Outcome.PAID, now)
        booked = True

    if order.state is OrderState.OBLIGATION:
        try:
            order = await pay_order(
                order, channel=notice.channel, payment_key=notice.transaction_no,
                actor_role=SYSTEM, actor_id=f"{notice.channel}:{notice.transaction_no}"[:64],
                reason=f"paid at {notice.channel}", within=book,
                apply_service=apply_service if order.kind is OrderKind.RENEWAL else None,
            )  # fmt: skip
        except IntegrityError:
            return Outcome.DUPLICATE  # the same notice, applied by a racing delivery
        except OrderStateConflict:
            # Closed since it was read (the unpaid-order timer, the member): refunded below.
            await order.refresh_from_db()
            if order.state is not OrderState.CLOSE:
                raise
        else:
            if booked:
                return Outcome.PAID
            # pay_order found it paid by a racing call since it was read: by this payment
            # (a duplicate) or otherwise (paid twice), below.
    if order.state is not OrderState.CLOSE:
        # `payment` was read before the order: a racing delivery of this same payment under
        # another notice id (WeChat Pay's notification and the sweep's query) may have paid
        # the bill since; that is a duplicate, not a second payment to refund.
        await payment.refresh_from_db()
        if payment.state is PaymentState.PAID and _same_payment(payment, notice):
            with contextlib.suppress(IntegrityError):
                await _record(notice, Outcome.DUPLICATE, now)
            return Outcome.DUPLICATE
        return await _paid_twice(order, notice, now)
    # The order closed before the money came: book the money, and give it back in full.
    return await _refund_after_close(order, payment, notice, now)


async def _refund_after_close(
    order: Order, payment: Payment, notice: ChannelPayment, now: dt.datetime
) -> Outcome:
    """Money for an order that closed unpaid: booked and requested back in full, once per
    channel transaction. The first transaction is the order's payment (`pay:{oid}`, refund
    `close-{oid}`, the bill marked paid by it); a later one (the bill moved to another channel
    and was paid there too) is keyed by its transaction like a second payment
    (`pay-twice:{channel}:{transaction_no}`, refund `twice-{transaction_no}` through its own
    channel). The order row is locked while the bill is read again, so of two racing
    transactions one is first and the other later, never both first."""
    from aquafleet.models.money import record_order_payment, request_refund

    try:
        async with in_transaction("default"):
            await Order.filter(oid=order.oid).select_for_update().get()
            bill = await Payment.get(id=payment.id)
            if bill.state is PaymentState.PAID:
                if _same_payment(bill, notice):
                    await _record(notice, Outcome.DUPLICATE, now)
                    return Outcome.DUPLICATE
                return await _paid_twice(order, notice, now, Outcome.REFUND_AFTER_CLOSE)
            await record_order_payment(
                order, channel=notice.channel, payment_key=notice.transaction_no,
                actor=f"{notice.channel}:{notice.transaction_no}"[:64], memo="after close",
            )  # fmt: skip
            await _mark_paid_within(payment, notice, now)()
            await _record(notice, Outcome.REFUND_AFTER_CLOSE, now)
            await request_refund(
                order=order, amount_fen=payment.amount_fen, refund_no=f"close-{order.oid}",
                reason=f"paid after the order was {order.state.name.lower()}", actor=SYSTEM,
            )  # fmt: skip
    except IntegrityError:
        return Outcome.DUPLICATE
    return Outcome.REFUND_AFTER_CLOSE


def _same_payment(payment: Payment, notice: ChannelPayment) -> bool:
    """The notice is of the payment that paid the bill (a repeat), not of a second one."""
    return (payment.channel, payment.transaction_no) == (notice.channel, notice.transaction_no)


async def _paid_twice(
    order: Order, notice: ChannelPayment, now: dt.datetime, outcome: Outcome = Outcome.PAID_TWICE
) -> Outcome:
    """The order was paid before (from the wallet, by an admin, through another channel), or
    its closed bill was paid by another transaction first: the channel's money is booked and
    given back in full through it (models/money.py `record_duplicate_payment`), once per
    channel transaction; the same transaction under another notice id is a duplicate."""
    from aquafleet.models.money import (
        duplicate_payment_key,
        payment_booked,
        record_duplicate_payment,
    )

    if await payment_booked(duplicate_payment_key(notice.channel, notice.transaction_no)):
        with contextlib.suppress(IntegrityError):
            await _record(notice, Outcome.DUPLICATE, now)
        return Outcome.DUPLICATE
    closed = outcome is Outcome.REFUND_AFTER_CLOSE
    try:
        async with in_transaction("default"):
            await _record(notice, outcome, now)
            await record_duplicate_payment(
                order, channel=notice.channel, transaction_no=notice.transaction_no,
                amount_fen=notice.amount_fen,
                actor=f"{notice.channel}:{notice.transaction_no}"[:64],
                why="the order closed unpaid" if closed else "the order was paid before",
            )  # fmt: skip
    except IntegrityError:
        return Outcome.DUPLICATE
    return outcome


async def close_bill(payment: Payment) -> None:
    """The channel closed the bill (its order closed): it can no longer be paid."""
    now = dt.datetime.now(dt.UTC)
    await Payment.filter(id=payment.id, state=PaymentState.PENDING).update(
        state=PaymentState.CLOSED, closed_at=now, updated_at=now
    )


async def bills_to_close(limit: int = 100) -> list[Payment]:
    """Pending order bills whose order no longer awaits payment (it closed, or it was paid
    otherwise: from the wallet, by an admin, through another channel): close them at the
    channel, the least recently tried first (`bill_tried`), so bills a channel keeps
    deferring do not hold the others back."""
    awaiting = Subquery(Order.filter(state=OrderState.OBLIGATION).values("oid"))
    return list(
        await Payment.filter(state=PaymentState.PENDING, purpose=Purpose.ORDER.value)
        .exclude(prepay_id="")
        .exclude(order_oid__in=awaiting)
        .order_by("updated_at", "id")
        .limit(limit)
    )


async def paid_otherwise(payment: Payment) -> bool:
    """The bill's order was paid without it (closing it, the channel is asked first: money it
    took anyway is a second payment, booked and refunded)."""
    order = await Order.get_or_none(oid=payment.order_oid)
    return order is not None and order.state not in (OrderState.OBLIGATION, OrderState.CLOSE)


async def bill_tried(payment: Payment) -> None:
    """The sweep asked the channel about the bill: it goes to the back of the sweep's queues
    (`bills_to_close`, `late_bills` take the least recently tried first)."""
    await Payment.filter(id=payment.id, state=PaymentState.PENDING).update(
        updated_at=dt.datetime.now(dt.UTC)
    )


# How long after each of the sweep's queries of a pending bill the next is due, in
# `query_after`s (`payments_query_after_s`, 1 minute by default: 1, 2, 5, 10 and 30 minutes,
# then hourly) until the bill closes (its order's payment deadline closes it, one last close
# at the channel: `bills_to_close`). Asked every pass instead, one abandoned payment sheet cost
# a query every `payments_sweep_interval_s` for the day it stayed payable.
QUERY_BACKOFF = (1, 2, 5, 10, 30, 60)


def next_query_after(queries: int, query_after: dt.timedelta) -> dt.timedelta:
    """The wait after the bill's `queries`-th query (1: the first) until the next."""
    return query_after * QUERY_BACKOFF[min(max(queries, 1), len(QUERY_BACKOFF)) - 1]


async def late_bills(older_than: dt.timedelta, limit: int = 100) -> list[Payment]:
    """Pending bills, opened at the channel longer ago than `older_than`, whose notification
    has not come and whose next query is due (`bill_queried`'s backoff): ask the channel, the
    least recently tried first (`bill_tried`), so a hundred bills the channel keeps answering
    unpaid never starve a newer one."""
    now = dt.datetime.now(dt.UTC)
    due = Q(next_query_at__lte=now) | Q(
        next_query_at__isnull=True, created_at__lte=now - older_than
    )
    return list(
        await Payment.filter(due, state=PaymentState.PENDING)
        .exclude(prepay_id="")
        .order_by("updated_at", "id")
        .limit(limit)
    )


async def bill_queried(payment: Payment, query_after: dt.timedelta) -> None:
    """The sweep asked the channel about the late bill: to the back of the queue
    (`bill_tried`), and not asked again before its backoff (`QUERY_BACKOFF`) has passed.
    Counted on the row, so the schedule holds across restarts and nodes."""
    now = dt.datetime.now(dt.UTC)
    queries = int(payment.queries or 0) + 1
    await Payment.filter(id=payment.id, state=PaymentState.PENDING).update(
        queries=queries, next_query_at=now + next_query_after(queries, query_after),
        updated_at=now,
    )  # fmt: skip


async def number_of_second_payment(oid: str, channel: str, refund_no: str) -> str | None:
    """The bill number the channel took a second payment of order `oid` under (its refund
    `twice-{transaction_no}` goes back under that number: perhaps an older one than the
    bill's now, `bill_of_number`); None when no notice says."""
    from aquafleet.models.money import MAX_REFUND_NO

    seconds = PaymentNotice.filter(
        channel=channel, bill_no__startswith=oid,
        outcome__in=(Outcome.PAID_TWICE.value, Outcome.REFUND_AFTER_CLOSE.value),
    )  # fmt: skip
    for bill_no, transaction_no in await seconds.values_list("bill_no", "transaction_no"):
        if f"twice-{transaction_no}"[:MAX_REFUND_NO] == refund_no:
            return str(bill_no)
    return None


async def payment_of_order(oid: str) -> Payment | None:
    return await Payment.filter(order_oid=oid, purpose=Purpose.ORDER.value).first()


async def check_payments() -> list[Any]:
    """The bills against the money ledger (part of `aquafleet money check`): each paid order
    bill has its `pay:{oid}` posting taking the bill's amount from its channel (or the
    member's wallet), each paid top-up its `topup:{bill_no}`, and no channel payment of an
    order lacks a paid bill."""
    from aquafleet.models.money import LedgerProblem, MoneyEntry, MoneyTransaction

    problems: list[LedgerProblem] = []
    postings: dict[str, int] = {}
    for key, txn_id in await MoneyTransaction.filter(kind__in=("payment", "topup")).values_list(
        "key", "id"
    ):
        postings[str(key)] = int(txn_id)
    taken: dict[int, dict[str, int]] = {}
    for txn_id, account, amount in await MoneyEntry.filter(
        txn_id__in=list(postings.values())
    ).values_list("txn_id", "account", "amount_fen"):
        if int(amount) > 0:
            taken.setdefault(int(txn_id), {})[str(account)] = int(amount)
    billed: set[str] = set()
    for bill in await Payment.filter(state=PaymentState.PAID):
        key = (
            f"pay:{bill.order_oid}"
            if bill.purpose == Purpose.ORDER.value
            else (f"topup:{bill.bill_no}")
        )
        billed.add(key)
        source = (
            f"wallet:{bill.member_uid}"
            if bill.channel == "wallet"
            else f"channel:{bill.channel}:{bill.vendor_code}"
        )
        got = taken.get(postings.get(key, -1), {}).get(source)
        if got != bill.amount_fen:
            problems.append(
                LedgerProblem(
                    "bill_not_booked", bill.bill_no, f"{source} took {got} of {bill.amount_fen}"
                )
            )
    for key, txn_id in postings.items():
        channels = [
            a
            for a in taken.get(txn_id, {})
            if a.startswith(("channel:weixin", "channel:alipay", "channel:card", "wallet:"))
        ]
        if channels and key not in billed:
            problems.append(LedgerProblem("booked_without_bill", key, ", ".join(channels)))
    return problems
