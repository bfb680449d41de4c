"""`aquafleet payments ...`: one pass of the payments sweep (due refunds executed, bills of
closed orders closed, late bills queried, numbers a bill left open at a provider closed there),
the day's reconciliation with the channel, and the one-off recording of the numbers bills moved
before moves closed them may have left open (`old-numbers`)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from typing import Any

from aquafleet.commands.output import add_json_flag, emit, parse_date
from aquafleet.commands.runtime import command_settings, run_with_database
from aquafleet.gateway.config import Settings

HTTP_TIMEOUT_S = 10.0
BEIJING = dt.timezone(dt.timedelta(hours=8))


def payment_service(settings: Settings, session: Any) -> Any:
    """The node's payment service, every channel included, for a one-off command (renewals
    paid by a query wait for the node's own sweep, which can change their device)."""
    from aquafleet.gateway import payments
    from aquafleet.gateway.metrics import Metrics
    from aquafleet.models.sealed import SecretBox

    box = SecretBox.from_master(settings.master_secret_bytes())
    return payments.payment_service(settings, session, box, Metrics())


def cmd_sweep(args: argparse.Namespace) -> int:
    settings = command_settings(args)

    async def action() -> int:
        import aiohttp

        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        ) as session:
            report = await payment_service(settings, session).sweep()
        data = dataclasses.asdict(report)

        def render(d: dict[str, Any]) -> str:
            line = (
                f"refunds sent {d['refunds_sent']}, settled {d['refunds_settled']}, failed "
                f"{d['refunds_failed']}; bills closed {d['bills_closed']}, queried "
                f"{d['bills_queried']}, found paid {d['bills_paid']}; old numbers asked "
                f"{d['old_numbers_asked']}, closed {d['old_numbers_closed']}, found paid "
                f"{d['old_numbers_paid']}; withdrawals checked "
                f"{d['payouts_checked']}, paid {d['payouts_paid']}, failed {d['payouts_failed']}"
            )
            return "\n".join([line, *(f"  deferred: {e}" for e in d["errors"])])

        emit(args, data, render)
        return 0

    return run_with_database(settings, action)


def cmd_old_numbers(args: argparse.Namespace) -> int:
    """Record every number each order bill made since `--since` had, at every provider channel
    its vendor has set up (but the one it has now), then ask about each once, as the sweep
    does: closed there, a payment found applied once. The sweep asks again about those the
    provider could not close or did not answer."""
    settings = command_settings(args)

    async def action() -> int:
        import aiohttp

        from aquafleet.gateway.old_numbers import record_guessed_numbers
        from aquafleet.gateway.payments import SWEEP_BATCH, SweepReport

        since = dt.datetime.combine(args.since, dt.time(), tzinfo=BEIJING)
        report = SweepReport()
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        ) as session:
            service = payment_service(settings, session)
            recorded = await record_guessed_numbers(service, since)
            started = dt.datetime.now(dt.UTC)  # each number asked once here, then the sweep's
            while await service.sweep_old_numbers(report, SWEEP_BATCH, asked_before=started):
                pass
        data = {
            "since": args.since.isoformat(), "recorded": recorded,
            "asked": report.old_numbers_asked, "closed": report.old_numbers_closed,
            "paid": report.old_numbers_paid, "errors": report.errors,
        }  # fmt: skip

        def render(d: dict[str, Any]) -> str:
            line = (
                f"bills made since {d['since']}: {d['recorded']} numbers recorded; asked "
                f"{d['asked']}, closed {d['closed']}, found paid {d['paid']}"
            )
            return "\n".join([line, *(f"  left to the sweep: {e}" for e in d["errors"])])

        emit(args, data, render)
        return 0

    return run_with_database(settings, action)


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = command_settings(args)

    async def action() -> int:
        import aiohttp

        from aquafleet.models.merchants import WEIXIN, PaymentMerchant

        day = args.date
        vendors = (
            [args.vid]
            if args.vid
            else sorted(
                await PaymentMerchant.filter(channel=WEIXIN).values_list("vendor_id", flat=True)
            )
        )
        found: list[dict[str, str]] = []
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        ) as session:
            service = payment_service(settings, session)
            for vendor in vendors:
                for difference in await service.wechat.reconcile(str(vendor), day):
                    found.append({"vid": str(vendor), **dataclasses.asdict(difference)})
        data = {"date": day.isoformat(), "vendors": [str(v) for v in vendors], "differences": found}

        def render(d: dict[str, Any]) -> str:
            head = f"{d['date']}: {len(d['vendors'])} vendors, {len(d['differences'])} differences"
            return "\n".join(
                [head]
                + [
                    f"  {x['vid']} {x['what']}: {x['subject']} (ours {x['ours']}, "
                    f"channel {x['theirs']})"
                    for x in d["differences"]
                ]
            )

        emit(args, data, render)
        return 1 if found else 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser("payments", help="payments: the sweep, reconciliation")
    payment_commands = parser.add_subparsers(dest="payments_command", required=True)
    sweep = payment_commands.add_parser(
        "sweep", help="execute due refunds, close bills of closed orders, query late bills"
    )
    sweep.set_defaults(func=cmd_sweep)
    reconcile = payment_commands.add_parser(
        "reconcile", help="compare WeChat Pay's trade bill of a day with our records"
    )
    reconcile.add_argument(
        "--date", required=True, type=parse_date, help="the bill's day, YYYY-MM-DD (Beijing)"
    )
    reconcile.add_argument("--vid", help="one vendor (default: every vendor with a merchant)")
    reconcile.set_defaults(func=cmd_reconcile)
    old_numbers = payment_commands.add_parser(
        "old-numbers",
        help="once: close at their provider the numbers bills moved before moves closed them "
        "may have left open, applying a payment found there once",
    )
    old_numbers.add_argument(
        "--since", required=True, type=parse_date,
        help="bills made since this day, YYYY-MM-DD (Beijing)",
    )  # fmt: skip
    old_numbers.set_defaults(func=cmd_old_numbers)
    for one in (sweep, reconcile, old_numbers):
        add_json_flag(one)
