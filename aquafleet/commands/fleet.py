"""`aquafleet fleet ...`: the fleet's water chart rollups (models/fleet_history.py)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from aquafleet.commands.output import add_json_flag, emit
from aquafleet.commands.runtime import command_settings, run_with_database


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day: use 2026-12-01") from None


def cmd_rebuild_water(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from tortoise.transactions import in_transaction

    from aquafleet.models.fleet_history import EARLIEST, rebuild_fleet_daily

    async def action() -> int:
        since = args.since or EARLIEST
        async with in_transaction("default") as conn:
            rows = await rebuild_fleet_daily(conn, since)
        data = {"since": None if args.since is None else since.isoformat(), "rows": rows}
        emit(args, data, lambda d: (
            f"fleet water rebuilt from {d['since'] or 'the first day'}: {d['rows']} "
            "(day, vendor, agent node) rows"
        ))  # fmt: skip
        return 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser("fleet", help="the fleet's water chart rollups")
    sub = parser.add_subparsers(dest="fleet_command", required=True)
    rebuild = sub.add_parser(
        "rebuild-water",
        help="recompute water per (day, vendor, agent node) from the per-device day rollups "
        "(PostgreSQL) or the raw ledger (SQLite), each device's days to its present group",
    )
    rebuild.add_argument(
        "--since", type=_day, help="first UTC day to recompute (default: every day)"
    )
    rebuild.set_defaults(func=cmd_rebuild_water)
    add_json_flag(rebuild)
