"""`aquafleet orders ...`: operators' view of orders, the internal paid step (platform admins
only, with who and why) and the order timers (models/orders.py, docs/api-shop.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from aquafleet.commands.output import add_json_flag, emit, iso, table
from aquafleet.commands.runtime import command_settings, run_with_database


def _order_json(order: Any) -> dict[str, Any]:
    return {
        "oid": order.oid,
        "state": order.state.name.lower(),
        "kind": order.kind.name.lower(),
        "member": order.member_id,
        "total_fen": order.total_fen,
    }


def _orders_table(rows: list[dict[str, Any]]) -> str:
    return table(
        ["oid", "state", "kind", "member", "total (fen)"],
        [[r["oid"], r["state"], r["kind"], r["member"], r["total_fen"]] for r in rows],
    )


def cmd_list(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models import orders

    async def action() -> int:
        qs = orders.Order.filter(deleted_at__isnull=True)
        if args.vid:
            qs = qs.filter(vendor_id=args.vid)
        if args.state is not None:
            qs = qs.filter(state=orders.OrderState[args.state.upper()])
        rows = [_order_json(o) for o in await qs.order_by("-id").limit(args.limit)]
        emit(args, rows, lambda data: _orders_table(data) if data else "no orders")
        return 0

    return run_with_database(settings, action)


def cmd_show(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models import orders

    async def action() -> int:
        found = await orders.Order.get_or_none(oid=args.oid)
        if found is None:
            print(f"aquafleet: order {args.oid} not found", file=sys.stderr)
            return 1
        data = _order_json(found)
        data["lines"] = [
            {"position": line.position, "product": line.product_id, "quantity": line.quantity,
             "package": line.package_key, "amount_fen": line.amount_fen}
            for line in await orders.OrderLine.filter(order_id=found.id).order_by("position")
        ]  # fmt: skip
        data["moves"] = [
            {"at": iso(move.created_at), "event": move.event,
             "from": move.from_state.name.lower(), "to": move.to_state.name.lower(),
             "by": f"{move.actor_role} {move.actor_id}", "reason": move.reason}
            for move in await orders.transitions_of(found)
        ]  # fmt: skip

        def render(d: dict[str, Any]) -> str:
            out = [_orders_table([d])]
            for line in d["lines"]:
                package = f" package {line['package']}" if line["package"] else ""
                out.append(
                    f"  {line['position']}. {line['product']} x{line['quantity']}{package}: "
                    f"{line['amount_fen']} fen"
                )
            for move in d["moves"]:
                out.append(
                    f"  {move['at']} {move['event']}: {move['from']} -> {move['to']} "
                    f"by {move['by']}: {move['reason']}"
                )
            return "\n".join(out)

        emit(args, data, render)
        return 0

    return run_with_database(settings, action)


def cmd_mark_paid(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models import orders

    async def action() -> int:
        # A renewal (kind 3) changes its device when paid: through Redis, as `aquafleet
        # service` does (a running node pushes it to the device). Without Redis, paying a
        # renewal is refused and other orders are paid as before.
        from aquafleet.commands.runtime import redis_for_commands
        from aquafleet.gateway.keys import Keyspace
        from aquafleet.gateway.redis_io import Scripts
        from aquafleet.gateway.service_state import ServiceStore
        from aquafleet.models import service

        client = await redis_for_commands(settings)
        try:
            apply = None
            if client is not None:
                scripts = Scripts()
                await scripts.load(client)
                keyspace = Keyspace(settings.redis_prefix, settings.redis_shards)
                store = ServiceStore(client, scripts, keyspace)
                actor = f"admin:{args.admin}"

                async def apply(did: str, change: service.ServiceChangeRequest) -> object:
                    return await service.apply_change(store, did, change, actor=actor)

            order = await orders.mark_paid(
                args.oid, admin=args.admin, reason=args.reason, apply_service=apply
            )
        finally:
            if client is not None:
                await client.aclose()
        emit(args, _order_json(order), lambda d: _orders_table([d]))
        return 0

    return run_with_database(settings, action)


def cmd_run_timers(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.order_timers import TimerSettings, sweep

    async def action() -> int:
        unpaid_h = args.unpaid_close_after_h
        receive_d = args.auto_receive_after_d
        timers = TimerSettings(
            unpaid_close_after=dt.timedelta(
                hours=settings.order_unpaid_close_h if unpaid_h is None else unpaid_h
            ),
            auto_receive_after=dt.timedelta(
                days=settings.order_auto_receive_days if receive_d is None else receive_d
            ),
        )
        result = await sweep(settings=timers)
        data = {"closed": result.closed, "received": result.received, "done": result.done}
        emit(
            args,
            data,
            lambda d: f"closed {d['closed']}, received {d['received']}, done {d['done']}",
        )
        return 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    order_parser = commands.add_parser("orders", help="orders: list, show, mark paid, timers")
    order_commands = order_parser.add_subparsers(dest="orders_command", required=True)
    listing = order_commands.add_parser("list", help="the newest orders")
    listing.add_argument("--vid", help="one vendor's")
    listing.add_argument("--state", help="obligation, paid, delivered, ... (docs/api-shop.md)")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_list)
    show_order = order_commands.add_parser("show", help="an order, its lines and its moves")
    show_order.add_argument("oid")
    show_order.set_defaults(func=cmd_show)
    paid = order_commands.add_parser(
        "mark-paid", help="record an order as paid (platform admins; who and why are kept)"
    )
    paid.add_argument("oid")
    paid.add_argument("--admin", required=True, help="your platform admin user name")
    paid.add_argument("--reason", required=True, help="why, e.g. the bank transfer's number")
    paid.set_defaults(func=cmd_mark_paid)
    timers = order_commands.add_parser(
        "run-timers", help="close unpaid, receive delivered and finish returned-window orders"
    )
    timers.add_argument(
        "--unpaid-close-after-h", type=int, help="default: the order_unpaid_close_h setting"
    )
    timers.add_argument(
        "--auto-receive-after-d", type=int, help="default: the order_auto_receive_days setting"
    )
    timers.set_defaults(func=cmd_run_timers)
    for parser in (listing, show_order, paid, timers):
        add_json_flag(parser)
