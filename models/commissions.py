"""Commissions (佣金管理, seed section 七; 三级分销): who earns what from a paid order, when it may
be withdrawn, and how a refund takes it back (docs/commissions.md).

Every fen moves through the money ledger (models/money.py), never through a second one:

- paying an order computes its split once (`commission_split` + one `commission` row per
  level) and moves the commission out of the order's goods (then rent) part into each earner's
  `commission:{earner}:pending` (key `commission:{oid}`);
- the order becoming done moves it to `...:available`, paying the earner's debt first (key
  `commission-available:{oid}`);
- a succeeded refund of the order reverses each level in proportion to the commissionable
  money (goods and rent) it gave back: a deposit, freight or install fee refunded leaves the
  commission whole (key `commission-reversal:{refund_no}`): from pending, or from available,
  and what the earner already withdrew becomes `...:debt`;
- a withdrawal moves available to `...:payout` (key `withdrawal:{id}`), then out of the vendor's
  channel when paid, or back to available when it failed (models/withdrawals.py).

The check of all of it is models/commission_check.py.

`settle_order(oid)` brings an order's commissions in line with its state and its refunds, once:
it is called from the order's moves (models/order_states.py `fire`) and from `settle_refund`, inside
their transactions, and by `aquafleet commissions settle` for anything an interrupted node left.
Every step is keyed, so running it again, or on two nodes at once, changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from fractions import Fraction
from typing import Any

from tortoise import fields
from tortoise.functions import Sum
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.account_locks import lock_accounts
from aquafleet.models.agents import Agent, AgentState, path_ids
from aquafleet.models.members import LOGIN_ALLOWED, Member
from aquafleet.models.money import (
    Guard,
    Leg,
    MoneyEntry,
    MoneyTransaction,
    Part,
    Refund,
    RefundState,
    Side,
    balance,
    order_account,
    order_parts,
    post,
    refund_part,
    side_balance,
)
from aquafleet.models.tenancy import Principal, Role

MAX_LEVELS = 3
DEFAULT_LEVELS = 3  # the vendor option `commission_levels` (AX-08) when unset
MAX_REQUEST_ID = 64
MAX_EARNER = 40
MAX_REASON = 255


class CommissionState(IntEnum):
    PENDING = 1  # 待激活: the order can still be returned
    AVAILABLE = 2  # 可用: the order is done
    REVERSED = 3  # refunded in full (a partial refund keeps the state and fills `reversed_fen`)


class WithdrawalState(IntEnum):
    REQUESTED = 1
    PAID = 2
    FAILED = 3  # the money went back to available


class Bucket(StrEnum):
    """The accounts of one earner (docs/money.md)."""

    PENDING = "pending"  # credit
    AVAILABLE = "available"  # credit, guarded
    PAYOUT = "payout"  # credit: withdrawals on their way
    DEBT = "debt"  # debit, guarded: reversed after it was withdrawn


def commission_account(earner: str, bucket: Bucket) -> str:
    return f"commission:{earner}:{bucket.value}"


def member_earner(uid: str) -> str:
    return f"member:{uid}"


def agent_earner(agent_id: int) -> str:
    return f"agent:{agent_id}"


def earner_of(principal: Principal) -> str | None:
    """The earner a caller is: a member, an agent or a dealer; None for vendors and the
    platform (they pay commissions, they earn none)."""
    if principal.role is Role.MEMBER:
        return member_earner(principal.subject)
    if principal.role in (Role.AGENT, Role.DEALER) and principal.agent_path:
        return agent_earner(path_ids(principal.agent_path)[-1])
    return None


# ----------------------------------------------------------------------------- models


class CommissionSplit(Model):
    """One per paid order whose split was computed (even when it pays nobody): its presence
    is what makes computing the split again do nothing."""

    id = fields.BigIntField(primary_key=True)
    order_oid = fields.CharField(max_length=24, unique=True)
    vendor_code = fields.CharField(max_length=8)
    base_fen = fields.BigIntField(description="the commissionable amount: goods and rent")
    total_fen = fields.BigIntField(description="the levels together, at computation")
    computed_at = fields.DatetimeField()

    class Meta:
        table = "commission_split"


class Commission(Model):
    """What one level earns from one order."""

    id = fields.BigIntField(primary_key=True)
    order_oid = fields.CharField(max_length=24)
    vendor_code = fields.CharField(max_length=8)
    level = fields.SmallIntField()
    earner = fields.CharField(max_length=MAX_EARNER)
    earner_path = fields.CharField(max_length=64, null=True, description="an agent earner's")
    buyer_uid = fields.CharField(max_length=20)
    base_fen = fields.BigIntField()
    amount_fen = fields.BigIntField()
    reversed_fen = fields.BigIntField(default=0)
    state = fields.IntEnumField(CommissionState, default=CommissionState.PENDING)
    created_at = fields.DatetimeField()
    activated_at = fields.DatetimeField(null=True)
    updated_at = fields.DatetimeField()

    class Meta:
        table = "commission"
        unique_together = (("order_oid", "level"),)
        indexes = (("earner", "created_at"), ("vendor_code", "created_at"), ("earner_path",))

    @property
    def kept_fen(self) -> int:
        return int(self.amount_fen) - int(self.reversed_fen)


class Withdrawal(Model):
    """An earner's withdrawal of available commission (AE-03)."""

    id = fields.BigIntField(primary_key=True)
    vendor_code = fields.CharField(max_length=8)
    earner = fields.CharField(max_length=MAX_EARNER)
    earner_path = fields.CharField(max_length=64, null=True)
    request_id = fields.CharField(max_length=MAX_REQUEST_ID)
    amount_fen = fields.BigIntField()
    state = fields.IntEnumField(WithdrawalState, default=WithdrawalState.REQUESTED)
    channel = fields.CharField(max_length=16)
    channel_ref = fields.CharField(max_length=64, default="")
    reason = fields.CharField(max_length=MAX_REASON, default="")
    requested_by = fields.CharField(max_length=64, default="")
    settled_by = fields.CharField(max_length=64, default="")
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()
    # WeChat Pay transfers (gateway/payouts.py): what every create of the withdrawal's batch is
    # built from, fixed when it is requested (null: a row from before, fixed at its next send,
    # then with transfer_fixed_at; an empty openid: none was bound then).
    transfer_mchid = fields.CharField(
        max_length=32, null=True, description="weixin: the merchant that sends the batch"
    )
    transfer_appid = fields.CharField(
        max_length=32, null=True, description="weixin: the app the openid belongs to"
    )
    transfer_openid = fields.CharField(
        max_length=64, null=True, description="weixin: the payee, as bound when requested"
    )
    transfer_sent_at = fields.DatetimeField(
        null=True, description="weixin: when the latest create of its batch was sent"
    )
    transfer_stopped_at = fields.DatetimeField(
        null=True, description="weixin: an operator stopped sending it (failing it)"
    )
    transfer_fixed_at = fields.DatetimeField(
        null=True, description="weixin: a send fixed the payee of a row stored without one"
    )
    transfer_refused_at = fields.DatetimeField(
        null=True, description="weixin: WeChat Pay first refused a create of it NO_AUTH"
    )

    class Meta:
        table = "commission_withdrawal"
        unique_together = (("earner", "request_id"),)
        indexes = (("earner", "created_at"), ("vendor_code", "state"))


# ----------------------------------------------------------------------------- pure rules


@dataclass(frozen=True, slots=True)
class LineBase:
    """One order line as commissions see it: its commissionable fen and its percents."""

    base_fen: int
    percents: Sequence[int]


def line_base(
    *, price_fen: int, quantity: int, snapshot: Mapping[str, Any], renewal: bool
) -> LineBase:
    """A line earns on its goods or rent (price x quantity: never freight, install fee or
    deposit), when its product's `commis` (as bought) is enabled, and for a renewal only when
    `commis.renewal` (default true)."""
    commis = snapshot.get("commis") or {}
    if not commis.get("enabled") or (renewal and not commis.get("renewal", True)):
        return LineBase(0, ())
    percents = [int(p) for p in commis.get("config") or []][:MAX_LEVELS]
    return LineBase(int(price_fen) * int(quantity), percents)


def split_levels(lines: Iterable[LineBase], levels: int) -> list[int]:
    """Fen per level, rounded down once over the whole order:
    level_i = floor(sum(base x percent_i) / 100). Each line's percents sum to at most 100, so
    the levels together never exceed the commissionable amount."""
    lines = list(lines)
    out = []
    for i in range(max(0, min(levels, MAX_LEVELS))):
        exact = sum(
            line.base_fen * (line.percents[i] if i < len(line.percents) else 0) for line in lines
        )
        out.append(exact // 100)
    return out


COMMISSIONABLE_PARTS = frozenset({Part.GOODS, Part.RENT})


def commissionable_left(
    parts: Mapping[Part, int], refunds: Iterable[tuple[Part | None, int]]
) -> Fraction:
    """The share (0 to 1) of an order's commissionable money (its goods and rent parts) still
    paid after `refunds`, in the order they succeeded. Each part keeps what is left of it: a
    refund that names its part takes from that part (a deposit, freight or install fee back
    leaves goods and rent whole); one that names none gives back the order as a whole, taking
    from every part in proportion to what is left of it; what a named refund asks beyond its
    part's rest is taken the same way. So refunds that name no part count in proportion to
    what was paid, and an order given back entirely leaves no commission."""
    base = sum(parts.get(p, 0) for p in COMMISSIONABLE_PARTS)
    if base <= 0:
        return Fraction(0)
    left = {part: Fraction(amount) for part, amount in parts.items() if amount > 0}
    for part, amount in refunds:
        rest = Fraction(amount)
        if part is not None and part in left:
            taken = min(rest, left[part])
            left[part] -= taken
            rest -= taken
        total = sum(left.values(), Fraction(0))
        if rest > 0 and total > 0:
            ratio = min(rest / total, Fraction(1))
            for name in left:
                left[name] -= left[name] * ratio
    kept = sum((left.get(p, Fraction(0)) for p in COMMISSIONABLE_PARTS), Fraction(0)) / base
    return min(Fraction(1), max(Fraction(0), kept))


def kept_after_refunds(amount_fen: int, share_left: Fraction) -> int:
    """What a level keeps of its `amount_fen` once only `share_left` of the commissionable money
    is still paid, rounded down (so reversals never leave more than the proportion)."""
    if share_left <= 0:
        return 0
    return int(amount_fen * min(share_left, Fraction(1)) // 1)


def source_split(goods_fen: int, amount_fen: int) -> tuple[int, int]:
    """Where `amount_fen` of commission comes from: the order's goods part first, then rent."""
    from_goods = min(max(goods_fen, 0), amount_fen)
    return from_goods, amount_fen - from_goods


def part_legs(oid: str, goods_fen: int, before_fen: int, after_fen: int) -> list[Leg]:
    """The order-part entries that take the order's commission from `before_fen` to
    `after_fen`: a debit of its goods (then rent) part when it grows, a credit back when it
    shrinks (rent first, then goods)."""
    g0, r0 = source_split(goods_fen, before_fen)
    g1, r1 = source_split(goods_fen, after_fen)
    return [
        Leg(order_account(oid, part), amount)
        for part, amount in ((Part.GOODS, g1 - g0), (Part.RENT, r1 - r0))
        if amount
    ]


# ----------------------------------------------------------------------------- settling an order


@dataclass(frozen=True, slots=True)
class Earner:
    earner: str
    path: str | None


async def earners_of(order: Any, levels: int) -> list[Earner | None]:
    """The chain of earners, level 1 first (docs/commissions.md): the buyer's referrer and its
    referrers, then the buyer's agent node and that node's parent. One who cannot earn keeps
    its place as None."""
    chain: list[Earner | None] = []
    uid: str | None = order.referrer_uid
    seen: set[str] = {order.member_id}
    while uid and len(chain) < levels and uid not in seen:
        seen.add(uid)
        member = await Member.get_or_none(uid=uid)
        if member is None or member.vendor_id != order.vendor_id:
            break
        chain.append(Earner(member_earner(uid), None) if member.state in LOGIN_ALLOWED else None)
        uid = member.referrer_id
    node_id: int | None = order.agent_id
    while node_id is not None and len(chain) < levels:
        agent = await Agent.get_or_none(id=node_id)
        if agent is None or agent.vendor_id != order.vendor_id:
            break
        able = agent.state != AgentState.DISABLED
        chain.append(Earner(agent_earner(agent.id), agent.path) if able else None)
        node_id = agent.parent_id
    return chain


async def _commission_levels(vendor_code: str) -> int:
    from aquafleet.models.vendors import Vendor

    vendor = await Vendor.get_or_none(code=vendor_code)
    config = (vendor.config if vendor is not None else None) or {}
    value = config.get("commission_levels", DEFAULT_LEVELS)
    return max(0, min(int(value), MAX_LEVELS))


async def settle_order(oid: str, *, now: dt.datetime | None = None) -> None:
    """Bring the order's commissions in line with it, once: compute and post the split of a
    paid order, reverse for each succeeded refund, make them available when the order is done.
    The order row is locked meanwhile (two nodes settle it one after the other)."""
    from aquafleet.models.orders import Order, OrderState

    now = now or dt.datetime.now(dt.UTC)
    async with in_transaction("default"):
        order = await Order.filter(oid=oid).select_for_update().first()
        if order is None or order.paid_at is None:
            return
        await _compute(order, now)
        # Every account the moves below decide on, locked in one call (in name order): each
        # move locking its own set as it came let two transactions take the same accounts in
        # opposite orders (a deadlock on PostgreSQL); the moves' own calls find them held.
        await lock_accounts(await _deciding_accounts_of(order))
        await _reverse(order, now)
        if order.state is OrderState.DONE:
            await _activate(order, now)


async def _compute(order: Any, now: dt.datetime) -> None:
    from aquafleet.models.orders import OrderKind, OrderLine

    if await CommissionSplit.exists(order_oid=order.oid):
        return
    renewal = order.kind is OrderKind.RENEWAL
    lines = [
        line_base(
            price_fen=line.price_fen,
            quantity=line.quantity,
            snapshot=line.snapshot,
            renewal=renewal,
        )
        for line in await OrderLine.filter(order_id=order.id).order_by("position")
    ]
    base = sum(line.base_fen for line in lines)
    levels = await _commission_levels(order.vendor_id)
    amounts = split_levels(lines, levels)
    earners = await earners_of(order, levels) if any(amounts) else []
    rows = []
    for level, amount in enumerate(amounts, start=1):
        earner = earners[level - 1] if level <= len(earners) else None
        if amount > 0 and earner is not None:
            rows.append((level, earner, amount))
    total = sum(amount for _level, _earner, amount in rows)
    await CommissionSplit.create(
        order_oid=order.oid, vendor_code=order.vendor_id, base_fen=base, total_fen=total,
        computed_at=now,
    )  # fmt: skip
    for level, earner, amount in rows:
        await Commission.create(
            order_oid=order.oid, vendor_code=order.vendor_id, level=level, earner=earner.earner,
            earner_path=earner.path, buyer_uid=order.member_id, base_fen=base,
            amount_fen=amount, created_at=now, updated_at=now,
        )  # fmt: skip
    if total:
        legs = part_legs(order.oid, order.goods_fen, 0, total) + [
            Leg(commission_account(earner.earner, Bucket.PENDING), -amount)
            for _level, earner, amount in rows
        ]
        await post(
            f"commission:{order.oid}", kind="commission", vendor=order.vendor_id,
            legs=legs, order_oid=order.oid, now=now,
            memo=f"levels {', '.join(str(a) for a in amounts)} of {base}",
        )  # fmt: skip


async def _deciding_accounts_of(order: Any) -> list[str]:
    """The accounts `_reverse` and `_activate` may decide on for the order now: those of its
    available levels when a succeeded refund is not reversed yet, of its pending ones when
    it is done and not yet made available."""
    from aquafleet.models.orders import OrderState

    rows = list(await Commission.filter(order_oid=order.oid))
    if not rows:
        return []
    refunds = await Refund.filter(order_oid=order.oid, state=RefundState.SUCCEEDED)
    keys = [
        f"commission-reversal:{r.refund_no}"
        for r in refunds
        if refund_part(r) is not Part.DUPLICATE
    ]
    reversing = len(keys) > await MoneyTransaction.filter(key__in=keys).count() if keys else False
    activating = order.state is OrderState.DONE and not await MoneyTransaction.exists(
        key=f"commission-available:{order.oid}"
    )
    earners = {
        r.earner
        for r in rows
        if (reversing and r.state is CommissionState.AVAILABLE)
        or (activating and r.state is CommissionState.PENDING)
    }
    return [name for earner in earners for name in deciding_accounts(earner)]


def deciding_accounts(earner: str) -> list[str]:
    """The earner's accounts a move splits money between by their balances (available, debt):
    a reversal takes from available and owes the rest, an activation and a failed withdrawal
    repay the debt and make the rest available. Each such move locks both, so two of them for
    one earner decide one after the other; locking only the one each reads let a reversal
    read nothing available (a debt) while an activation read no debt (all available), and the
    earner held the reversed commission and the debt for it at once."""
    return [commission_account(earner, Bucket.AVAILABLE), commission_account(earner, Bucket.DEBT)]


async def _reverse(order: Any, now: dt.datetime) -> None:
    rows = list(await Commission.filter(order_oid=order.oid).order_by("level"))
    if not rows:
        return
    refunds = list(
        await Refund.filter(order_oid=order.oid, state=RefundState.SUCCEEDED).order_by("id")
    )
    if not refunds:
        return
    # A duplicate payment and its refund are not the order's money: they leave commissions be.
    refunds = [r for r in refunds if refund_part(r) is not Part.DUPLICATE]
    # In the order they succeeded (their ledger postings'), not the order they were asked in:
    # each reversal takes the levels to what the refunds succeeded so far leave, so one asked
    # first and paid out last must see the others, or it reverses nothing.
    posted = dict(
        await MoneyTransaction.filter(
            key__in=[f"refund:{r.refund_no}" for r in refunds]
        ).values_list("key", "id")
    )
    refunds.sort(key=lambda r: (posted.get(f"refund:{r.refund_no}", 0), r.id))
    parts = order_parts(order)
    paid = sum(parts.values())
    succeeded: list[tuple[Part | None, int]] = []
    for refund in refunds:
        succeeded.append((refund_part(refund), int(refund.amount_fen)))
        key = f"commission-reversal:{refund.refund_no}"
        if await MoneyTransaction.exists(key=key):
            continue
        share = commissionable_left(parts, succeeded)
        await _reverse_to(order, rows, share, key, _reversal_memo(succeeded, paid), now)


def _reversal_memo(succeeded: list[tuple[Part | None, int]], paid: int) -> str:
    refunded = sum(amount for _part, amount in succeeded)
    part = succeeded[-1][0]
    return f"{refunded} of {paid} refunded" + (f", the last of the {part.value}" if part else "")


async def _reverse_to(
    order: Any, rows: list[Commission], share: Fraction, key: str, memo: str, now: dt.datetime
) -> None:
    deltas = {row.id: row.kept_fen - kept_after_refunds(int(row.amount_fen), share) for row in rows}
    if not any(deltas.values()):
        return
    taken = [r for r in rows if deltas[r.id] and r.state is CommissionState.AVAILABLE]
    available = [commission_account(r.earner, Bucket.AVAILABLE) for r in taken]
    await lock_accounts(name for r in taken for name in deciding_accounts(r.earner))
    before = sum(r.kept_fen for r in rows)
    after = before - sum(deltas.values())
    legs = part_legs(order.oid, order.goods_fen, before, after)
    for row in rows:
        delta = deltas[row.id]
        if not delta:
            continue
        if row.state is CommissionState.AVAILABLE:
            account = commission_account(row.earner, Bucket.AVAILABLE)
            covered = min(delta, max(0, side_balance(await balance(account), Side.CREDIT)))
            if covered:
                legs.append(Leg(account, covered))
            if delta - covered:
                legs.append(Leg(commission_account(row.earner, Bucket.DEBT), delta - covered))
        else:
            legs.append(Leg(commission_account(row.earner, Bucket.PENDING), delta))
    await post(
        key, kind="commission_reversal", vendor=order.vendor_id,
        legs=legs, order_oid=order.oid, now=now,
        guards=[Guard(a, Side.CREDIT) for a in available],
        memo=memo,
    )  # fmt: skip
    for row in rows:
        delta = deltas[row.id]
        if not delta:
            continue
        row.reversed_fen = int(row.reversed_fen) + delta
        if row.kept_fen == 0:
            row.state = CommissionState.REVERSED
        row.updated_at = now
        await Commission.filter(id=row.id).update(
            reversed_fen=row.reversed_fen, state=row.state, updated_at=now
        )


async def _activate(order: Any, now: dt.datetime) -> None:
    key = f"commission-available:{order.oid}"
    if await MoneyTransaction.exists(key=key):
        return
    rows = [
        r
        for r in await Commission.filter(order_oid=order.oid, state=CommissionState.PENDING)
        if r.kept_fen > 0
    ]
    if not rows:
        return
    debts = [commission_account(r.earner, Bucket.DEBT) for r in rows]
    await lock_accounts(name for r in rows for name in deciding_accounts(r.earner))
    legs: list[Leg] = []
    for row in rows:
        amount = row.kept_fen
        debt = commission_account(row.earner, Bucket.DEBT)
        repay = min(amount, max(0, side_balance(await balance(debt), Side.DEBIT)))
        legs.append(Leg(commission_account(row.earner, Bucket.PENDING), amount))
        if repay:
            legs.append(Leg(debt, -repay))
        if amount - repay:
            legs.append(Leg(commission_account(row.earner, Bucket.AVAILABLE), -(amount - repay)))
    await post(
        key, kind="commission_available", vendor=order.vendor_id, legs=legs,
        order_oid=order.oid, now=now, guards=[Guard(d, Side.DEBIT) for d in debts],
    )  # fmt: skip
    await Commission.filter(id__in=[r.id for r in rows]).update(
        state=CommissionState.AVAILABLE, activated_at=now, updated_at=now
    )


async def settle_all(*, now: dt.datetime | None = None) -> int:
    """`settle_order` for every paid order (what `aquafleet commissions settle` runs)."""
    from aquafleet.models.orders import Order

    count = 0
    async for oid in _paid_oids(Order):
        await settle_order(oid, now=now)
        count += 1
    return count


async def _paid_oids(order_model: Any) -> Any:
    last = 0
    while True:
        batch = list(
            await order_model.filter(paid_at__isnull=False, id__gt=last)
            .order_by("id")
            .limit(500)
            .values_list("id", "oid")
        )
        if not batch:
            return
        for _order_id, oid in batch:
            yield str(oid)
        last = int(batch[-1][0])


# ----------------------------------------------------------------------------- reading


def visible_commissions(principal: Principal) -> QuerySet[Commission]:
    """AE-01's scope: the platform all, a vendor its own, every earner its own."""
    if principal.role is Role.PLATFORM:
        return Commission.all()
    if principal.role is Role.VENDOR and principal.vendor_code:
        return Commission.filter(vendor_code=principal.vendor_code)
    earner = earner_of(principal)
    if earner is None or principal.vendor_code is None:
        return Commission.filter(id__in=[])
    return Commission.filter(vendor_code=principal.vendor_code, earner=earner)


def subtree_commissions(vendor_code: str, path: str) -> QuerySet[Commission]:
    """What a node and the nodes under it earned (佣金列表)."""
    return Commission.filter(vendor_code=vendor_code, earner_path__startswith=path)


@dataclass(frozen=True, slots=True)
class Summary:
    """AE-02: fen in each state. `earned` is what the levels keep (amount - reversed)."""

    pending: int = 0
    available: int = 0
    payout: int = 0
    withdrawn: int = 0
    reversed: int = 0
    debt: int = 0
    earned: int = 0


async def summary(*, vendor_code: str | None, earner: str | None) -> Summary:
    """One earner's summary, or the whole of a vendor's (or of every vendor's: both None)."""
    rows = Commission.all()
    withdrawals = Withdrawal.filter(state=WithdrawalState.PAID)
    if vendor_code is not None:
        rows = rows.filter(vendor_code=vendor_code)
        withdrawals = withdrawals.filter(vendor_code=vendor_code)
    if earner is not None:
        rows = rows.filter(earner=earner)
        withdrawals = withdrawals.filter(earner=earner)
    amounts = await rows.annotate(a=Sum("amount_fen"), r=Sum("reversed_fen")).values("a", "r")
    amount = int(amounts[0]["a"] or 0) if amounts else 0
    reversed_ = int(amounts[0]["r"] or 0) if amounts else 0
    paid = await withdrawals.annotate(w=Sum("amount_fen")).values("w")
    buckets = await bucket_totals(vendor_code=vendor_code, earner=earner)
    return Summary(
        pending=buckets.get(Bucket.PENDING, 0),
        available=buckets.get(Bucket.AVAILABLE, 0),
        payout=buckets.get(Bucket.PAYOUT, 0),
        debt=buckets.get(Bucket.DEBT, 0),
        withdrawn=int(paid[0]["w"] or 0) if paid else 0,
        reversed=reversed_,
        earned=amount - reversed_,
    )


async def bucket_totals(*, vendor_code: str | None, earner: str | None) -> dict[Bucket, int]:
    """The commission accounts' balances on their normal sides, summed per bucket."""
    entries = MoneyEntry.all()
    if earner is not None:
        entries = entries.filter(account__in=[commission_account(earner, b) for b in Bucket])
    else:
        entries = entries.filter(account__startswith="commission:")
    if vendor_code is not None:
        entries = entries.filter(txn__vendor_code=vendor_code)
    totals: dict[Bucket, int] = {}
    rows = await entries.annotate(t=Sum("amount_fen")).group_by("account").values("account", "t")
    for row in rows:
        bucket = Bucket(str(row["account"]).rsplit(":", 1)[1])
        side = Side.DEBIT if bucket is Bucket.DEBT else Side.CREDIT
        totals[bucket] = totals.get(bucket, 0) + side_balance(int(row["t"] or 0), side)
    return totals
