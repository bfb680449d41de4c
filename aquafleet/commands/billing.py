"""`aquafleet billing ...`: billing plans (price and minimum consumption), which devices are
billed on which plan, and closing a period (models/billing.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from aquafleet.commands.output import add_json_flag, emit, fields, iso, parse_time, table
from aquafleet.commands.runtime import command_settings, named_dids, run_with_database

MODES = {"postpaid": 1, "prepaid": 2}
MODES_HELP = (
    "postpaid (1): water is billed at period end, due = max(water charge, minimum); "
    "prepaid (2): water was paid in advance (volume top-ups), due = what it fell short of "
    "the minimum"
)


def _mode(text: str) -> int:
    if text in MODES:
        return MODES[text]
    if text in {"1", "2"}:
        return int(text)
    raise argparse.ArgumentTypeError("mode is postpaid (1) or prepaid (2)")


def _fen(value: int) -> str:
    return f"{value / 100:,.2f} yuan ({value} fen)"


def _plan_json(plan: Any) -> dict[str, Any]:
    return {
        "id": plan.id,
        "vendor": plan.vendor_id,
        "name": plan.name,
        "mode": plan.mode.name.lower(),
        "minimum_fen": plan.minimum_fen,
        "price_fen": plan.price_fen,
        "price_unit_ml": plan.price_unit_ml,
        "created_at": iso(plan.created_at),
    }


def cmd_plans_add(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.billing import create_billing_plan

    async def action() -> int:
        plan = await create_billing_plan(
            args.vendor, args.name, mode=args.mode, minimum_fen=args.minimum_fen,
            price_fen=args.price_fen, price_unit_ml=args.price_unit_ml,
        )  # fmt: skip
        data = _plan_json(plan)
        emit(args, data, lambda d: (
            f"billing plan {d['id']} ({d['name']}) of vendor {d['vendor']} created: {d['mode']}, "
            f"minimum {_fen(d['minimum_fen'])} per period, {d['price_fen']} fen per "
            f"{d['price_unit_ml']} ml\nassign devices: aquafleet billing assign {d['id']} DID ..."
        ))  # fmt: skip
        return 0

    return run_with_database(settings, action)


def cmd_plans_list(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from tortoise.functions import Count

    from aquafleet.models.billing import BillingPlan

    async def action() -> int:
        query = BillingPlan.all().annotate(device_count=Count("devices")).order_by("id")
        if args.vendor:
            query = query.filter(vendor_id=args.vendor)
        plans = await query
        data = [{**_plan_json(p), "devices": int(getattr(p, "device_count", 0))} for p in plans]
        emit(args, data, lambda rows: table(
            ["id", "vendor", "name", "mode", "minimum_fen", "price", "devices"],
            [[r["id"], r["vendor"], r["name"], r["mode"], r["minimum_fen"],
              f"{r['price_fen']} fen / {r['price_unit_ml']} ml", r["devices"]] for r in rows],
        ) if rows else "no billing plans (aquafleet billing plans add --help)")  # fmt: skip
        return 0

    return run_with_database(settings, action)


def cmd_assign(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.billing import assign_billing_plan
    from aquafleet.models.errors import DomainError

    dids = named_dids(args)
    since = dt.datetime.fromtimestamp(args.since, dt.UTC) if args.since is not None else None

    async def action() -> int:
        when = since or dt.datetime.now(dt.UTC)
        failed: list[dict[str, str]] = []
        for did in dids:
            try:
                await assign_billing_plan(did, args.plan, when)
            except DomainError as exc:
                failed.append({"did": did, "code": exc.code, "message": exc.message})
        data = {
            "plan": args.plan,
            "since": iso(when),
            "assigned": len(dids) - len(failed),
            "failed": failed,
        }

        def render(d: dict[str, Any]) -> str:
            lines = [f"{d['assigned']} of {len(dids)} devices billed on plan {d['plan']} "
                     f"from {d['since']}"]  # fmt: skip
            lines += [f"{f['did']}: {f['code']}: {f['message']}" for f in d["failed"]]
            return "\n".join(lines)

        emit(args, data, render)
        return 1 if failed else 0

    return run_with_database(settings, action)


def cmd_close_period(args: argparse.Namespace) -> int:
    """Record what each device owes for a period (minimum consumption); safe to run twice."""
    settings = command_settings(args)
    from aquafleet.models.billing import (
        close_billing_period,
        parse_period,
        why_period_billed_little,
    )
    from aquafleet.models.errors import DomainError

    async def action() -> int:
        try:
            start, end = parse_period(args.period)
            summary = await close_billing_period(start, end)
        except DomainError as exc:
            print(f"aquafleet: {exc.code}: {exc.message}", file=sys.stderr)
            return 2
        data = summary.as_json()
        data["note"] = await why_period_billed_little(summary)

        def render(d: dict[str, Any]) -> str:
            text = fields([
                ("period", f"{d['period_start']} .. {d['period_end']}"),
                ("devices billed", d["devices"]),
                ("new this run", d["created"]),
                ("water", f"{d['usage_ml']:,} ml"),
                ("amount due", _fen(d["amount_due_fen"])),
            ])  # fmt: skip
            if d["note"]:
                text += f"\nnote: {d['note']}"
                if d["note"].startswith("no billing plan exists"):
                    text += (
                        "\n  aquafleet billing plans add --vendor CODE --name NAME --mode postpaid"
                        " --minimum-fen N --price-fen N"
                    )
                if d["devices"] == 0:
                    text += "\n  aquafleet billing assign PLAN_ID --from devices.csv --since START"
            return text

        emit(args, data, render)
        return 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    billing = commands.add_parser(
        "billing", help="billing plans, device assignments, periods (minimum consumption)"
    )
    sub = billing.add_subparsers(dest="billing_command", required=True)

    plans = sub.add_parser("plans", help="a vendor's billing plans")
    plan_commands = plans.add_subparsers(dest="plans_command", required=True)
    add = plan_commands.add_parser(
        "add", help="create a billing plan", description=f"Modes: {MODES_HELP}."
    )
    add.add_argument("--vendor", required=True, help="vendor code")
    add.add_argument("--name", required=True, help="1-64 characters")
    add.add_argument("--mode", type=_mode, required=True, help="postpaid or prepaid (see above)")
    add.add_argument(
        "--minimum-fen", type=int, required=True, help="minimum charge per period, fen"
    )
    add.add_argument(
        "--price-fen", type=int, required=True, help="price of --price-unit-ml of water, fen"
    )
    add.add_argument(
        "--price-unit-ml", type=int, default=1000, help="the volume --price-fen buys (1000)"
    )
    add_json_flag(add)
    add.set_defaults(func=cmd_plans_add)
    listing = plan_commands.add_parser("list", help="billing plans and how many devices each")
    listing.add_argument("--vendor", help="only this vendor's plans")
    add_json_flag(listing)
    listing.set_defaults(func=cmd_plans_list)

    assign = sub.add_parser(
        "assign", help="bill devices on a plan from a time on (replaces their previous plan)"
    )
    assign.add_argument("plan", type=int, help="billing plan id (billing plans list)")
    assign.add_argument("did", nargs="*", help="device ids")
    assign.add_argument("--from", dest="from_csv", help="also every did of this CSV (did,key)")
    assign.add_argument(
        "--since", type=parse_time,
        help="billed from this time on, ISO 8601 (2026-11-01T00:00:00Z); default now",
    )  # fmt: skip
    add_json_flag(assign)
    assign.set_defaults(func=cmd_assign)

    close = sub.add_parser(
        "close-period", help="record each device's amount due for a period (idempotent)"
    )
    close.add_argument("period", help="a UTC month (2026-11) or START/END in ISO 8601")
    add_json_flag(close)
    close.set_defaults(func=cmd_close_period)
