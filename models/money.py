"""The money ledger: double-entry bookkeeping in integer fen (DESIGN.md, "Commerce").

Every movement of money is one `MoneyTransaction` with two or more `MoneyEntry` rows whose
amounts sum to zero. A positive amount is a debit, a negative one a credit. Balances are sums of
entries, never counters updated in place. A transaction carries a key the caller supplies (an
order id, a refund number, a notification id): posting the same key again changes nothing and
answers the first transaction, so a retry, a duplicate notification or two nodes racing apply
once.

The accounts (names are structured strings; the `*_account` functions build them):

- `channel:{ch}:{vendor}`: money a payment channel (weixin, alipay, card, manual) holds for
  the vendor; normally a debit balance.
- `order:{oid}:{part}`: what an order's money is for (goods, freight, install, deposit, rent),
  normally credit; `order:{oid}:duplicate`, money a channel took for an order already paid
  (a member who paid twice), credit until its refund; and `order:{oid}:refund`, the refunds
  paid back, debit.
- `wallet:{uid}`: what the platform owes a member (its wallet balance), credit; guarded, never
  below zero.

Paying an order debits the channel with the order's total and credits each part of the order's
breakdown; a refund credits the channel and debits `order:{oid}:refund`. So for every order the
channel's net (paid minus refunded) equals the sum of its parts minus its refunds, and
`check_ledger` verifies it together with every transaction summing to zero and no guarded
account crossing zero.

Refunds are requested here (`request_refund`, idempotent by refund number, never more than was
paid and not yet refunded or due) and executed by the payment channel, which posts the money
movement when the channel confirms it (`settle_refund`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.functions import Sum
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aquafleet.models.account_locks import lock_accounts
from aquafleet.models.errors import Conflict, InvalidInput, NotFound

MAX_KEY = 128
MAX_ACCOUNT = 96
MAX_MEMO = 255
MAX_REFUND_NO = 64


class Part(StrEnum):
    """What an order's money is for (its breakdown), and the refunds against it."""

    GOODS = "goods"
    FREIGHT = "freight"
    INSTALL = "install"
    DEPOSIT = "deposit"
    RENT = "rent"
    REFUND = "refund"
    DUPLICATE = "duplicate"  # a second payment of an order already paid, refunded in full


ORDER_PARTS = (Part.GOODS, Part.FREIGHT, Part.INSTALL, Part.DEPOSIT, Part.RENT)
REFUNDABLE_PARTS = (*ORDER_PARTS, Part.DUPLICATE)
CHANNELS = frozenset({"weixin", "alipay", "wallet", "card", "manual"})


class Side(StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"


def channel_account(channel: str, vendor: str) -> str:
    if channel not in CHANNELS:
        raise InvalidInput(f"unknown payment channel {channel!r}")
    return f"channel:{channel}:{vendor}"


def order_account(oid: str, part: Part) -> str:
    return f"order:{oid}:{part.value}"


def wallet_account(member_uid: str) -> str:
    return f"wallet:{member_uid}"


@dataclass(frozen=True, slots=True)
class Leg:
    """One entry of a transaction to post: + debit, - credit, integer fen, never zero."""

    account: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Guard:
    """An account whose balance on `side` must never go below zero after a posting (a wallet:
    the platform never owes a member less than nothing)."""

    account: str
    side: Side


class MoneyTransaction(Model):
    """One movement of money, whose entries sum to zero (`key` makes posting idempotent)."""

    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=MAX_KEY, unique=True)
    kind = fields.CharField(max_length=32)
    vendor_code = fields.CharField(max_length=8)
    order_oid = fields.CharField(max_length=24, null=True, db_index=True)
    actor = fields.CharField(max_length=64, default="")
    memo = fields.CharField(max_length=MAX_MEMO, default="")
    created_at = fields.DatetimeField()

    class Meta:
        table = "money_txn"


class MoneyEntry(Model):
    """One side of a transaction: + debit, - credit, in fen."""

    id = fields.BigIntField(primary_key=True)
    txn: fields.ForeignKeyRelation[MoneyTransaction] = fields.ForeignKeyField(
        "models.MoneyTransaction", related_name="entries", on_delete=fields.RESTRICT
    )
    account = fields.CharField(max_length=MAX_ACCOUNT)
    amount_fen = fields.BigIntField()
    order_oid = fields.CharField(max_length=24, null=True)

    txn_id: int

    class Meta:
        table = "money_entry"
        indexes = (("account",), ("order_oid",))


def check_legs(legs: Sequence[Leg]) -> None:
    """The rules every transaction keeps: two or more legs, integer fen, none zero, sum zero."""
    if len(legs) < 2:
        raise InvalidInput("a money transaction has at least two entries")
    for leg in legs:
        if type(leg.amount_fen) is not int:
            raise InvalidInput(f"amounts are integer fen, not {type(leg.amount_fen).__name__}")
        if leg.amount_fen == 0:
            raise InvalidInput(f"a zero entry for {leg.account}")
        if not leg.account or len(leg.account) > MAX_ACCOUNT:
            raise InvalidInput(f"bad account name {leg.account!r}")
    total = sum(leg.amount_fen for leg in legs)
    if total != 0:
        raise InvalidInput(f"entries sum to {total} fen, not zero")


def _same_legs(entries: Iterable[MoneyEntry], legs: Sequence[Leg]) -> bool:
    return sorted((e.account, e.amount_fen) for e in entries) == sorted(
        (leg.account, leg.amount_fen) for leg in legs
    )


def side_balance(raw_sum: int, side: Side) -> int:
    """An account's balance seen from its normal side."""
    return raw_sum if side is Side.DEBIT else -raw_sum


async def balance(account: str) -> int:
    """The raw balance (debits minus credits) of one account."""
    rows = (
        await MoneyEntry.filter(account=account).annotate(total=Sum("amount_fen")).values("total")
    )
    return int(rows[0]["total"] or 0) if rows else 0


async def post(
    key: str,
    *,
    kind: str,
    vendor: str,
    legs: Sequence[Leg],
    order_oid: str | None = None,
    actor: str = "",
    memo: str = "",
    guards: Sequence[Guard] = (),
    now: dt.datetime | None = None,
) -> tuple[MoneyTransaction, bool]:
    """Post one transaction, once per key: answers (transaction, created). A key posted before
    with the same entries answers the first; with other entries it is a Conflict. A guard whose
    account would cross zero refuses the posting (Conflict) and posts nothing."""
    if not key or len(key) > MAX_KEY:
        raise InvalidInput(f"bad transaction key {key!r}")
    check_legs(legs)
    existing = await MoneyTransaction.get_or_none(key=key)
    if existing is not None:
        return await _answer_existing(existing, legs), False
    now = now or dt.datetime.now(dt.UTC)
    try:
        async with in_transaction("default"):
            await lock_accounts(g.account for g in guards)
            txn = await MoneyTransaction.create(
                key=key, kind=kind, vendor_code=vendor, order_oid=order_oid,
                actor=actor[:64], memo=memo[:MAX_MEMO], created_at=now,
            )  # fmt: skip
            await MoneyEntry.bulk_create(
                [
                    MoneyEntry(
                        txn_id=txn.id,
                        account=leg.account,
                        amount_fen=leg.amount_fen,
                        order_oid=order_oid,
                    )
                    for leg in legs
                ]
            )
            for guard in guards:
                after = side_balance(await balance(guard.account), guard.side)
                if after < 0:
                    raise InsufficientFunds(
                        f"{guard.account} would be {after} fen", account=guard.account
                    )
    except IntegrityError:
        # The same key committed first in another task or node: that one is the transaction.
        existing = await MoneyTransaction.get_or_none(key=key)
        if existing is None:
            raise
        return await _answer_existing(existing, legs), False
    return txn, True


async def _answer_existing(txn: MoneyTransaction, legs: Sequence[Leg]) -> MoneyTransaction:
    entries = await MoneyEntry.filter(txn_id=txn.id)
    if not _same_legs(entries, legs):
        raise Conflict(f"money transaction {txn.key!r} was posted before with other entries")
    return txn


class InsufficientFunds(Conflict):
    code = "insufficient_funds"

    def __init__(self, message: str, *, account: str) -> None:
        super().__init__(message)
        self.account = account


# ----------------------------------------------------------------------------- orders


def payment_legs(
    oid: str, channel: str, vendor: str, parts: dict[Part, int], *, source: str | None = None
) -> list[Leg]:
    """The entries of paying an order: the channel (or `source`, e.g. a wallet) is debited with
    the total, each non-zero part of the breakdown credited."""
    legs = [Leg(order_account(oid, part), -amount) for part, amount in parts.items() if amount]
    total = sum(parts.values())
    legs.insert(0, Leg(source or channel_account(channel, vendor), total))
    return legs


def order_parts(order: Any) -> dict[Part, int]:
    """An order's breakdown in fen, as the shop computed it (models/order_placing.py)."""
    return {
        Part.GOODS: order.goods_fen,
        Part.FREIGHT: order.freight_fen,
        Part.INSTALL: order.install_fen,
        Part.DEPOSIT: order.deposit_fen,
        Part.RENT: order.rent_fen,
    }


async def record_order_payment(
    order: Any,
    *,
    channel: str,
    payment_key: str,
    actor: str = "",
    memo: str = "",
    source: str | None = None,
) -> tuple[MoneyTransaction | None, bool]:
    """The money of a paid order, once per order (key `pay:{oid}`): a repeat answers the first
    posting whatever channel it names; the payment layer refunds a second payment of an order
    it finds already paid. An order that costs nothing moves no money: (None, False)."""
    if order.total_fen <= 0:
        return None, False
    key = f"pay:{order.oid}"
    existing = await MoneyTransaction.get_or_none(key=key)
    if existing is not None:
        return existing, False
    legs = payment_legs(order.oid, channel, order.vendor_id, order_parts(order), source=source)
    # Paid from a wallet (`source`): the wallet is guarded, it never goes below zero.
    guards = [Guard(source, Side.CREDIT)] if source and source.startswith("wallet:") else []
    return await post(
        key, kind="payment", vendor=order.vendor_id, legs=legs, order_oid=order.oid,
        actor=actor, memo=_payment_memo(channel, payment_key, memo), guards=guards,
    )  # fmt: skip


async def payment_of(oid: str) -> MoneyTransaction | None:
    return await MoneyTransaction.get_or_none(key=f"pay:{oid}")


def _payment_memo(channel: str, payment_key: str, memo: str) -> str:
    return f"{channel} {payment_key}" + (f": {memo}" if memo else "")


async def paid_fen(oid: str) -> int:
    """What the channels took for an order (its payments), before refunds."""
    total = 0
    async for entry in MoneyEntry.filter(order_oid=oid):
        if entry.account.startswith(("channel:", "wallet:")) and entry.amount_fen > 0:
            total += entry.amount_fen
    return total


async def order_refundable_fen(oid: str) -> int:
    """What may still be given back of the order's own payment: what its channels took, less
    the money they took again for it once it was paid (booked on `order:{oid}:duplicate`, each
    refunded on its own), less the refunds due, in flight or done that give the order back. A
    return or a renewal not applied refunds this, never a duplicate a second time."""
    duplicates = side_balance(await balance(order_account(oid, Part.DUPLICATE)), Side.CREDIT)
    refunds = [
        r for r in await Refund.filter(order_oid=oid) if refund_part(r) is not Part.DUPLICATE
    ]
    return max(0, refundable_fen(await paid_fen(oid) - duplicates, refunds))


def duplicate_payment_key(channel: str, transaction_no: str) -> str:
    """The ledger key of a channel transaction booked as a second payment of an order."""
    return f"pay-twice:{channel}:{transaction_no}"[:MAX_KEY]


async def payment_booked(key: str) -> bool:
    return await MoneyTransaction.exists(key=key)


async def record_duplicate_payment(
    order: Any,
    *,
    channel: str,
    transaction_no: str,
    amount_fen: int,
    actor: str,
    why: str = "the order was paid before",
) -> Refund:
    """A channel took money for an order that was already paid (the member paid its bill at
    WeChat Pay after paying from its wallet, or after an admin marked the order paid), or that
    closed unpaid and was paid by another transaction first (`why` says which): book it (key
    `pay-twice:{channel}:{transaction_no}`: the channel debited, `order:{oid}:duplicate`
    credited) and request its refund in full through that channel (refund number
    `twice-{transaction_no}`), once per channel transaction."""
    async with in_transaction("default"):
        await post(
            duplicate_payment_key(channel, transaction_no), kind="payment_twice",
            vendor=order.vendor_id, order_oid=order.oid,
            legs=[Leg(channel_account(channel, order.vendor_id), amount_fen),
                  Leg(order_account(order.oid, Part.DUPLICATE), -amount_fen)],
            actor=actor, memo=f"{channel} {transaction_no}: {why}",
        )  # fmt: skip
        return await request_refund(
            order=order, amount_fen=amount_fen, refund_no=f"twice-{transaction_no}"[:MAX_REFUND_NO],
            reason=f"paid twice: {why}", actor=actor, part=Part.DUPLICATE, channel=channel,
        )  # fmt: skip


# ----------------------------------------------------------------------------- refunds


class RefundState(IntEnum):
    DUE = 1  # recorded, waiting for the channel
    REQUESTED = 2  # the channel accepted the request
    SUCCEEDED = 3  # the channel paid it out; the ledger has its entries
    FAILED = 4  # the channel refused it; nothing moved


R = RefundState
REFUND_TRANSITIONS: dict[RefundState, frozenset[RefundState]] = {
    R.DUE: frozenset({R.REQUESTED, R.SUCCEEDED, R.FAILED}),
    R.REQUESTED: frozenset({R.SUCCEEDED, R.FAILED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset(),
}
OUTSTANDING_REFUNDS = frozenset({R.DUE, R.REQUESTED, R.SUCCEEDED})


class Refund(Model):
    """A refund of (part of) an order's money, identified by its refund number."""

    id = fields.BigIntField(primary_key=True)
    refund_no = fields.CharField(max_length=MAX_REFUND_NO, unique=True)
    order_oid = fields.CharField(max_length=24, db_index=True)
    vendor_code = fields.CharField(max_length=8)
    amount_fen = fields.BigIntField()
    part = fields.CharField(
        max_length=12, default="", description="the order part it gives back, empty: the whole"
    )
    reason = fields.CharField(max_length=MAX_MEMO, default="")
    state = fields.IntEnumField(RefundState, default=RefundState.DUE)
    requested_by = fields.CharField(max_length=64, default="")
    channel = fields.CharField(max_length=16, default="")
    channel_refund_id = fields.CharField(max_length=64, default="")
    failure = fields.CharField(max_length=MAX_MEMO, default="")
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()
    # When the channel says the money went back (WeChat Pay's success_time; else when it was
    # settled here): the day reconciliation counts the refund on, as the channel's bill does.
    succeeded_at = fields.DatetimeField(null=True)

    class Meta:
        table = "money_refund"
        indexes = (("state", "created_at"),)


def refundable_fen(paid: int, refunds: Iterable[Refund]) -> int:
    """What may still be refunded: paid minus every refund due, in flight or done."""
    return paid - sum(int(r.amount_fen) for r in refunds if r.state in OUTSTANDING_REFUNDS)


def refund_part(refund: Refund) -> Part | None:
    """The order part a refund gives back, or None when it gives back the order as a whole."""
    return Part(refund.part) if refund.part else None


def part_refundable_fen(part_fen: int, part: Part, refunds: Iterable[Refund]) -> int:
    """What may still be refunded of one part of an order: the part minus the refunds due, in
    flight or done that name it (refunds of the whole order are bounded by the total only)."""
    return part_fen - sum(
        int(r.amount_fen)
        for r in refunds
        if r.state in OUTSTANDING_REFUNDS and refund_part(r) is part
    )


async def request_refund(
    *,
    order: Any,
    amount_fen: int,
    refund_no: str,
    reason: str,
    actor: str,
    part: Part | None = None,
    channel: str = "",
) -> Refund:
    """Record a refund as due, once per refund number (the same number again answers the first
    refund; with another order, amount or part it is a Conflict). Never more than was paid and
    not yet refunded, and when it names a `part` of the order (a deposit back when a rental
    ends), never more than that part less the refunds that named it before: the order row is
    locked while that is checked, so racing requests cannot together exceed it. What it gives
    back decides the commission it reverses (models/commissions.py). The payment channel
    executes due refunds (`settle_refund`); `channel` names it ahead where the refund must go
    back through another channel than the order's bill (a duplicate payment's)."""
    if type(amount_fen) is not int or amount_fen <= 0:
        raise InvalidInput("a refund is a positive integer amount of fen")
    if part is not None and part not in REFUNDABLE_PARTS:
        raise InvalidInput(f"a refund gives back one of {', '.join(REFUNDABLE_PARTS)}, not {part}")
    if not refund_no or len(refund_no) > MAX_REFUND_NO:
        raise InvalidInput(f"bad refund number {refund_no!r}")
    from aquafleet.models.orders import Order

    now = dt.datetime.now(dt.UTC)
    try:
        async with in_transaction("default"):
            await Order.filter(oid=order.oid).select_for_update().get()
            existing = await Refund.get_or_none(refund_no=refund_no)
            if existing is not None:
                return _same_refund(existing, order.oid, amount_fen, part)
            before = list(await Refund.filter(order_oid=order.oid))
            left = refundable_fen(await paid_fen(order.oid), before)
            if amount_fen > left:
                raise RefundExceedsPayment(
                    f"order {order.oid}: {amount_fen} fen asked, {left} fen left to refund"
                )
            if part is not None:
                part_fen = (
                    side_balance(await balance(order_account(order.oid, part)), Side.CREDIT)
                    if part is Part.DUPLICATE
                    else order_parts(order)[part]
                )
                part_left = part_refundable_fen(part_fen, part, before)
                if amount_fen > part_left:
                    raise RefundExceedsPayment(
                        f"order {order.oid}: {amount_fen} fen of its {part.value} asked, "
                        f"{part_left} fen of it left to refund"
                    )
            return await Refund.create(
                refund_no=refund_no, order_oid=order.oid, vendor_code=order.vendor_id,
                amount_fen=amount_fen, part=part.value if part else "",
                reason=reason[:MAX_MEMO], requested_by=actor[:64], channel=channel[:16],
                created_at=now, updated_at=now,
            )  # fmt: skip
    except IntegrityError:
        existing = await Refund.get_or_none(refund_no=refund_no)
        if existing is None:
            raise
        return _same_refund(existing, order.oid, amount_fen, part)


def _same_refund(refund: Refund, oid: str, amount_fen: int, part: Part | None) -> Refund:
    if refund.order_oid != oid or refund.amount_fen != amount_fen or refund_part(refund) != part:
        raise Conflict(f"refund {refund.refund_no} was requested before for another amount or part")
    return refund


class RefundExceedsPayment(Conflict):
    code = "refund_exceeds_payment"


async def settle_refund(
    refund_no: str,
    *,
    channel: str,
    channel_refund_id: str = "",
    account: str | None = None,
    succeeded_at: dt.datetime | None = None,
) -> Refund:
    """The channel paid the refund out: post its money (credit the channel, or `account`: a
    member's wallet the refund goes back to; debit the order's refunds) and mark it succeeded,
    once; a repeat answers the settled refund. `succeeded_at`: when the channel says the money
    went back (WeChat Pay's success_time), the refund's day in reconciliation; None: now.

    Decided under the refund row's lock, inside the transaction that posts the money: read
    before it, a refund failed meanwhile (the channel's refusal recorded by a racing call, its
    amount then refunded again) was posted and marked succeeded all the same: paid out twice."""
    async with in_transaction("default"):
        refund = await Refund.filter(refund_no=refund_no).select_for_update().first()
        if refund is None:
            raise NotFound(f"refund {refund_no} not found")
        if refund.state is RefundState.SUCCEEDED:
            return refund
        _check_refund_move(refund.state, RefundState.SUCCEEDED)
        await post(
            f"refund:{refund_no}", kind="refund", vendor=refund.vendor_code,
            legs=[
                Leg(account or channel_account(channel, refund.vendor_code), -refund.amount_fen),
                Leg(order_account(refund.order_oid, Part.REFUND), refund.amount_fen),
            ],
            order_oid=refund.order_oid, memo=f"{channel} {channel_refund_id}".strip(),
        )  # fmt: skip
        now = dt.datetime.now(dt.UTC)
        await Refund.filter(id=refund.id).update(
            state=RefundState.SUCCEEDED, channel=channel,
            channel_refund_id=channel_refund_id[:64], updated_at=now,
            succeeded_at=succeeded_at or now,
        )  # fmt: skip
        from aquafleet.models.commissions import settle_order

        await settle_order(refund.order_oid)  # the commission on what went back is reversed
    await refund.refresh_from_db()
    return refund


async def move_refund(
    refund_no: str, target: RefundState, *, channel: str = "", failure: str = ""
) -> Refund:
    """Mark a refund requested or failed (SUCCEEDED goes through `settle_refund`)."""
    if target is RefundState.SUCCEEDED:
        raise InvalidInput("a refund succeeds through settle_refund, which posts its money")
    refund = await Refund.get_or_none(refund_no=refund_no)
    if refund is None:
        raise NotFound(f"refund {refund_no} not found")
    if refund.state is target:
        return refund
    if target is RefundState.REQUESTED and refund.state in (R.SUCCEEDED, R.FAILED):
        # The channel's answer (its notification) came before we marked the request taken:
        # the refund is past requested; answer it as it is.
        return refund
    _check_refund_move(refund.state, target)
    await Refund.filter(id=refund.id, state=refund.state).update(
        state=target, channel=channel or refund.channel, failure=failure[:MAX_MEMO],
        updated_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    await refund.refresh_from_db()
    return refund


def _check_refund_move(current: RefundState, target: RefundState) -> None:
    if target not in REFUND_TRANSITIONS[current]:
        raise Conflict(f"refund is {current.name.lower()}: it cannot become {target.name.lower()}")


# ----------------------------------------------------------------------------- the check


@dataclass(frozen=True, slots=True)
class LedgerProblem:
    what: str
    subject: str
    detail: str


async def check_ledger(*, guarded_prefixes: Sequence[tuple[str, Side]] = ()) -> list[LedgerProblem]:
    """Every invariant of the money ledger over all data; an empty list means it holds.

    - every transaction has two or more entries and they sum to zero;
    - every order's refunds (succeeded) never exceed what its channels took, and the refunds
      due, in flight or done never exceed it either;
    - each succeeded refund has its ledger transaction, and no refund transaction lacks one;
    - no channel (or wallet) gave an order back more than it took for it: what went back
      through a channel the order was not paid with (or beyond what it took) is money the
      platform paid out of nothing;
    - accounts under a guarded prefix (wallets: credit side) are never below zero.
    """
    problems: list[LedgerProblem] = []
    sums: dict[int, list[int]] = {}
    for txn_id, amount in await MoneyEntry.all().values_list("txn_id", "amount_fen"):
        sums.setdefault(int(txn_id), []).append(int(amount))
    for txn_id, key in await MoneyTransaction.all().values_list("id", "key"):
        amounts = sums.get(int(txn_id), [])
        if len(amounts) < 2:
            problems.append(LedgerProblem("too_few_entries", str(key), f"{len(amounts)} entries"))
        elif sum(amounts) != 0:
            problems.append(LedgerProblem("unbalanced", str(key), f"sums to {sum(amounts)} fen"))
    paid: dict[str, int] = {}
    refunded: dict[str, int] = {}
    through: dict[tuple[str, str], int] = {}  # (order, channel or wallet): net taken for it
    for oid, account, amount in await MoneyEntry.filter(order_oid__not_isnull=True).values_list(
        "order_oid", "account", "amount_fen"
    ):
        if str(account).startswith(("channel:", "wallet:")):
            through[(oid, account)] = through.get((oid, account), 0) + int(amount)
            if amount > 0:
                paid[oid] = paid.get(oid, 0) + int(amount)
        if str(account).endswith(":refund"):
            refunded[oid] = refunded.get(oid, 0) + int(amount)
    for (oid, account), net in sorted(through.items()):
        if net < 0:
            problems.append(
                LedgerProblem("refund_exceeds_channel", oid, f"{account} gave back {-net} more")
            )
    refunds = list(await Refund.all())
    outstanding: dict[str, int] = {}
    for refund in refunds:
        if refund.state in OUTSTANDING_REFUNDS:
            outstanding[refund.order_oid] = outstanding.get(refund.order_oid, 0) + refund.amount_fen
    for oid, amount in refunded.items():
        if amount > paid.get(oid, 0):
            problems.append(
                LedgerProblem("refund_exceeds_payment", oid, f"{amount} > {paid.get(oid, 0)}")
            )
    for oid, amount in outstanding.items():
        if amount > paid.get(oid, 0):
            problems.append(
                LedgerProblem("refunds_exceed_payment", oid, f"{amount} > {paid.get(oid, 0)}")
            )
    refund_keys: set[str] = {
        str(key)
        for key in await MoneyTransaction.filter(kind="refund").values_list("key", flat=True)
    }
    requested = {f"refund:{refund.refund_no}" for refund in refunds}
    for key in sorted(refund_keys - requested):
        problems.append(LedgerProblem("refund_without_request", key, "no money_refund row"))
    for refund in refunds:
        key = f"refund:{refund.refund_no}"
        if (refund.state is RefundState.SUCCEEDED) != (key in refund_keys):
            problems.append(
                LedgerProblem(
                    "refund_state_mismatch",
                    refund.refund_no,
                    f"state {refund.state.name.lower()}, ledger entry {key in refund_keys}",
                )
            )
    for prefix, side in guarded_prefixes:
        totals: dict[str, int] = {}
        for account, amount in await MoneyEntry.filter(account__startswith=prefix).values_list(
            "account", "amount_fen"
        ):
            totals[account] = totals.get(account, 0) + int(amount)
        for account, raw in totals.items():
            if side_balance(raw, side) < 0:
                problems.append(LedgerProblem("negative_balance", account, f"{raw} fen"))
    return problems


GUARDED_PREFIXES: tuple[tuple[str, Side], ...] = (("wallet:", Side.CREDIT),)
