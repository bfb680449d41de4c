"""The commissions check (`aquafleet commissions check`, docs/commissions.md, "The check"):
every order's money adds up (paid = vendor share + commissions + refunds), the ledger holds
what the levels keep, no commission account crosses zero, and every earner's accounts plus
what it was paid out equal what its levels keep. The money ledger's own check
(models/money.py `check_ledger`) is run beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aquafleet.models.commissions import (
    Bucket,
    Commission,
    CommissionSplit,
    Withdrawal,
    WithdrawalState,
)
from aquafleet.models.money import MoneyEntry, Part, Refund, RefundState, Side, side_balance


@dataclass(frozen=True, slots=True)
class CommissionProblem:
    what: str
    subject: str
    detail: str


async def check_commissions() -> list[CommissionProblem]:
    """Every invariant of commissions over all data (docs/commissions.md, "The check");
    empty when they all hold. The money ledger's own check is run by the caller."""
    from aquafleet.models.orders import Order

    problems: list[CommissionProblem] = []
    paid: dict[str, int] = {}
    parts: dict[str, int] = {}
    refund_entries: dict[str, int] = {}
    ledger_commission: dict[str, int] = {}
    accounts: dict[str, int] = {}
    part_suffixes = tuple(f":{p.value}" for p in Part if p is not Part.REFUND)
    for oid, account, amount in await MoneyEntry.all().values_list(
        "order_oid", "account", "amount_fen"
    ):
        account, amount = str(account), int(amount)
        if account.startswith("commission:"):
            accounts[account] = accounts.get(account, 0) + amount
            if oid is not None:
                ledger_commission[oid] = ledger_commission.get(oid, 0) - amount
        if oid is None:
            continue
        if account.startswith(("channel:", "wallet:")) and amount > 0:
            paid[oid] = paid.get(oid, 0) + amount
        elif account.startswith("order:") and account.endswith(part_suffixes):
            parts[oid] = parts.get(oid, 0) - amount
        elif account.startswith("order:") and account.endswith(":refund"):
            refund_entries[oid] = refund_entries.get(oid, 0) + amount
    kept: dict[str, int] = {}
    earned: dict[str, int] = {}
    for row in await Commission.all():
        kept[row.order_oid] = kept.get(row.order_oid, 0) + row.kept_fen
        earned[row.earner] = earned.get(row.earner, 0) + row.kept_fen
        if row.reversed_fen < 0 or row.reversed_fen > row.amount_fen or row.amount_fen <= 0:
            problems.append(
                CommissionProblem(
                    "bad_level",
                    f"{row.order_oid}/{row.level}",
                    f"amount {row.amount_fen}, reversed {row.reversed_fen}",
                )
            )
    splits = {s.order_oid: s for s in await CommissionSplit.all()}
    refunds: dict[str, int] = {}
    for refund in await Refund.filter(state=RefundState.SUCCEEDED):
        refunds[refund.order_oid] = refunds.get(refund.order_oid, 0) + int(refund.amount_fen)
    oids = set(paid) | set(kept) | set(refunds) | set(ledger_commission) | set(parts)
    for oid in sorted(oids):
        p, c, r = paid.get(oid, 0), kept.get(oid, 0), refunds.get(oid, 0)
        vendor = parts.get(oid, 0) - refund_entries.get(oid, 0)
        if p != vendor + c + r:
            problems.append(
                CommissionProblem(
                    "order_unbalanced",
                    oid,
                    f"paid {p} != vendor share {vendor} + commissions {c} + refunds {r}",
                )
            )
        if ledger_commission.get(oid, 0) != c:
            problems.append(
                CommissionProblem(
                    "commission_mismatch",
                    oid,
                    f"ledger {ledger_commission.get(oid, 0)}, levels keep {c}",
                )
            )
        if vendor < 0:
            problems.append(CommissionProblem("negative_vendor_share", oid, f"{vendor} fen"))
        split = splits.get(oid)
        if oid in kept and split is None:
            problems.append(CommissionProblem("split_missing", oid, "levels without a split"))
        if split is not None and split.total_fen > split.base_fen:
            problems.append(
                CommissionProblem(
                    "levels_exceed_base", oid, f"{split.total_fen} > {split.base_fen}"
                )
            )
    if oids:
        known = set(await Order.filter(oid__in=sorted(oids)).values_list("oid", flat=True))
        for oid in sorted(oids - {str(o) for o in known}):
            problems.append(CommissionProblem("unknown_order", oid, "entries of no order"))
    paid_out: dict[str, int] = {}
    for w in await Withdrawal.filter(state=WithdrawalState.PAID):
        paid_out[w.earner] = paid_out.get(w.earner, 0) + int(w.amount_fen)
    holdings: dict[str, int] = {}
    in_bucket: dict[tuple[str, Bucket], int] = {}
    for account, raw in accounts.items():
        _prefix, rest = account.split(":", 1)
        earner, _, bucket_name = rest.rpartition(":")
        bucket = Bucket(bucket_name)
        side = Side.DEBIT if bucket is Bucket.DEBT else Side.CREDIT
        value = side_balance(raw, side)
        if value < 0:
            problems.append(CommissionProblem("negative_balance", account, f"{value} fen"))
        holdings[earner] = holdings.get(earner, 0) + (-value if bucket is Bucket.DEBT else value)
        in_bucket[earner, bucket] = value
    for (earner, bucket), value in sorted(in_bucket.items()):
        debt = in_bucket.get((earner, Bucket.DEBT), 0)
        if bucket is Bucket.AVAILABLE and value > 0 and debt > 0:
            # Money reaching available pays the debt first: both at once is owed money paid out.
            problems.append(
                CommissionProblem(
                    "debt_unpaid", earner, f"available {value} fen while it owes {debt} fen"
                )
            )
    for earner in sorted(set(holdings) | set(earned) | set(paid_out)):
        held = holdings.get(earner, 0) + paid_out.get(earner, 0)
        if held != earned.get(earner, 0):
            problems.append(
                CommissionProblem(
                    "earner_unbalanced",
                    earner,
                    f"accounts + paid out {held} != levels keep {earned.get(earner, 0)}",
                )
            )
    return problems
