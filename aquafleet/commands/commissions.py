"""`aquafleet commissions ...`: check the commission invariants (paid = vendor share +
commissions + refunds, per order, and the money ledger's own check), record manual payouts of
withdrawals, fail a WeChat transfer WeChat Pay keeps refusing, and settle what an interrupted
node left undone (docs/commissions.md)."""

from __future__ import annotations

import argparse
from typing import Any

from aquafleet.commands.output import add_json_flag, emit
from aquafleet.commands.runtime import command_settings, run_with_database


def cmd_check(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models import commission_check, commissions, money

    async def action() -> int:
        problems = [
            {"what": p.what, "subject": p.subject, "detail": p.detail}
            for p in await money.check_ledger(guarded_prefixes=money.GUARDED_PREFIXES)
        ]
        problems += [
            {"what": p.what, "subject": p.subject, "detail": p.detail}
            for p in await commission_check.check_commissions()
        ]
        data = {
            "orders": await commissions.CommissionSplit.all().count(),
            "commissions": await commissions.Commission.all().count(),
            "transactions": await money.MoneyTransaction.all().count(),
            "problems": problems,
        }

        def render(d: dict[str, Any]) -> str:
            if not d["problems"]:
                return (
                    f"commissions ok: {d['commissions']} commissions of {d['orders']} orders, "
                    f"{d['transactions']} transactions; paid = vendor share + commissions + "
                    "refunds for every order"
                )
            lines = [f"commissions BROKEN: {len(d['problems'])} problems"]
            lines += [f"  {p['what']}: {p['subject']}: {p['detail']}" for p in d["problems"]]
            return "\n".join(lines)

        emit(args, data, render)
        return 1 if problems else 0

    return run_with_database(settings, action)


def cmd_payout(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models import withdrawals

    async def action() -> int:
        withdrawal = await withdrawals.settle_withdrawal(
            args.id, paid=args.paid, reason=args.reason, reference=args.reference or "",
            actor=f"cli:{args.by}" if args.by else "cli", channel="manual",
        )  # fmt: skip
        data = _withdrawal_summary(withdrawal)
        emit(
            args,
            data,
            lambda d: (
                f"withdrawal {d['id']} of {d['earner']} ({d['amount_fen']} fen): {d['state']}"
            ),
        )
        return 0

    return run_with_database(settings, action)


def _withdrawal_summary(withdrawal: Any) -> dict[str, Any]:
    """What settle and fail-transfer print of the withdrawal they changed."""
    return {
        "id": withdrawal.id,
        "earner": withdrawal.earner,
        "vid": withdrawal.vendor_code,
        "amount_fen": withdrawal.amount_fen,
        "state": withdrawal.state.name.lower(),
        "reason": withdrawal.reason,
        "update_tms": withdrawal.updated_at,
    }


def cmd_fail_transfer(args: argparse.Namespace) -> int:
    settings = command_settings(args)

    async def action() -> int:
        import aiohttp

        from aquafleet.commands.payments import HTTP_TIMEOUT_S, payment_service

        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        ) as session:
            withdrawal = await payment_service(settings, session).payout.fail_stopped(
                args.id, reason=args.reason, actor=f"cli:{args.by}" if args.by else "cli"
            )
        data = _withdrawal_summary(withdrawal)
        emit(
            args,
            data,
            lambda d: (
                f"withdrawal {d['id']} of {d['earner']} ({d['amount_fen']} fen): {d['state']}"
                f" ({d['reason']})"
            ),
        )
        return 0

    return run_with_database(settings, action)


def cmd_settle(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models import commissions

    async def action() -> int:
        count = await commissions.settle_all()
        emit(args, {"orders": count}, lambda d: f"settled {d['orders']} paid orders")
        return 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser(
        "commissions", help="commissions: check the invariants, record payouts, settle"
    )
    sub = parser.add_subparsers(dest="commissions_command", required=True)
    check = sub.add_parser(
        "check", help="paid = vendor share + commissions + refunds for every order; the ledger"
    )
    check.set_defaults(func=cmd_check)
    add_json_flag(check)
    payout = sub.add_parser(
        "payout", help="record a requested withdrawal as paid (the transfer made) or failed"
    )
    payout.add_argument("id", type=int, help="the withdrawal's id (AE-03's answer)")
    outcome = payout.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--paid", action="store_true", help="the transfer was made")
    outcome.add_argument(
        "--failed", dest="paid", action="store_false", help="it failed: back to available"
    )
    payout.add_argument("--reason", required=True, help="e.g. the bank transfer's number")
    payout.add_argument("--reference", help="the bank's or channel's reference")
    payout.add_argument("--by", help="who records it (kept with the withdrawal)")
    payout.set_defaults(func=cmd_payout)
    add_json_flag(payout)
    fail = sub.add_parser(
        "fail-transfer",
        help="stop sending a requested weixin withdrawal and fail it (back to available) once "
        "WeChat Pay has no batch under its number, or the batch failed or closed",
    )
    fail.add_argument("id", type=int, help="the withdrawal's id (AE-03's answer)")
    fail.add_argument("--reason", required=True, help="why it is given up (kept with it)")
    fail.add_argument("--by", help="who fails it (kept with the withdrawal)")
    fail.set_defaults(func=cmd_fail_transfer)
    add_json_flag(fail)
    settle = sub.add_parser(
        "settle", help="compute, activate and reverse whatever an interrupted node left undone"
    )
    settle.set_defaults(func=cmd_settle)
    add_json_flag(settle)
