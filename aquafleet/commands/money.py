"""`aquafleet money ...`: the money ledger's invariants checked over all data
(models/money.py; the payment and commission commands add their own checks to it), with the
bills' (models/payments.py) and the closed billing periods' (models/billing.py)."""

from __future__ import annotations

import argparse
from typing import Any

from aquafleet.commands.output import add_json_flag, emit
from aquafleet.commands.runtime import command_settings, run_with_database


def cmd_check(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models import billing, money, payments

    async def action() -> int:
        problems = await money.check_ledger(guarded_prefixes=money.GUARDED_PREFIXES)
        problems += await payments.check_payments()
        problems += await billing.check_billing()
        transactions = await money.MoneyTransaction.all().count()
        data = {
            "transactions": transactions,
            "problems": [
                {"what": p.what, "subject": p.subject, "detail": p.detail} for p in problems
            ],
        }

        def render(d: dict[str, Any]) -> str:
            if not d["problems"]:
                return f"ledger ok: {d['transactions']} transactions, every invariant holds"
            lines = [f"ledger BROKEN: {len(d['problems'])} problems"]
            lines += [f"  {p['what']}: {p['subject']}: {p['detail']}" for p in d["problems"]]
            return "\n".join(lines)

        emit(args, data, render)
        return 1 if problems else 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    money_parser = commands.add_parser("money", help="the money ledger: check its invariants")
    money_commands = money_parser.add_subparsers(dest="money_command", required=True)
    check = money_commands.add_parser(
        "check",
        help="every transaction sums to zero, refunds within payments, no wallet below 0, "
        "no two closed billing periods overlap",
    )
    check.set_defaults(func=cmd_check)
    add_json_flag(check)
