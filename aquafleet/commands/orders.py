"""`aquafleet orders ...`: operators' view of orders, the internal paid step (platform admins
only, with who and why) and the order timers (models/orders.py, docs/api-shop.md)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator
from typing import Any

from aquafleet.commands.output import LIMIT, add_json_flag, emit, iso, table
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
    from aquafleet.models.order_states import transitions_of

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
            for move in await transitions_of(found)
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


@contextlib.asynccontextmanager
async def service_applier(settings: Any, actor: str) -> AsyncIterator[Any]:
    """Applies service changes through Redis, as `aquafleet service` does (a running node pushes
    them to the device); None when Redis cannot be reached."""
    from aquafleet.commands.runtime import redis_for_commands
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.redis_io import Scripts
    from aquafleet.gateway.service_state import ServiceStore
    from aquafleet.models import service_requests

    client = await redis_for_commands(settings)
    if client is None:
        yield None
        return
    try:
        scripts = Scripts()
        await scripts.load(client)
        keyspace = Keyspace.for_url(
            settings.redis_prefix, settings.redis_shards, settings.redis_url
        )
        store = ServiceStore(client, scripts, keyspace)

        async def apply(did: str, change: service_requests.ServiceChangeRequest) -> object:
            return await service_requests.apply_change(store, did, change, actor=actor)

        yield apply
    finally:
        await client.aclose()


def cmd_mark_paid(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.order_payment import mark_paid

    async def action() -> int:
        # A renewal (kind 3) changes its device when paid: through Redis. Without Redis,
        # paying a renewal is refused and other orders are paid as before.
        async with service_applier(settings, f"admin:{args.admin}") as apply:
            order = await mark_paid(
                args.oid, admin=args.admin, reason=args.reason, apply_service=apply
            )
        emit(args, _order_json(order), lambda d: _orders_table([d]))
        return 0

    return run_with_database(settings, action)


def cmd_deliver(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.delivery import Parcel, deliver_order
    from aquafleet.models.order_payment import platform_admin
    from aquafleet.models.order_queries import find_order
    from aquafleet.models.tenancy import Principal, Role

    async def action() -> int:
        account = await platform_admin(args.admin)
        principal = Principal(Role.PLATFORM, f"admin:{account.username}")
        order = await find_order(principal, args.oid)
        parcel = Parcel(args.company, args.tracking, args.clerk)
        async with service_applier(settings, principal.subject) as apply:
            if apply is None:
                print(
                    "aquafleet: Redis is not reachable: delivering configures the devices "
                    "(set redis_url, or start the node)",
                    file=sys.stderr,
                )
                return 1
            order = await deliver_order(principal, order, parcel, args.did, apply)
        data = {**_order_json(order), "delivery": order.delivery}

        def render(d: dict[str, Any]) -> str:
            parcel = d["delivery"]
            return (
                f"{_orders_table([d])}\n  shipped {', '.join(parcel['devices'])} with "
                f"{parcel['company']} {parcel['tracking_num']} at {parcel['delivery_tms']}"
            )

        emit(args, data, render)
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
    order_parser = commands.add_parser(
        "orders", help="orders: list, show, mark paid, deliver, timers"
    )
    order_commands = order_parser.add_subparsers(dest="orders_command", required=True)
    listing = order_commands.add_parser("list", help="the newest orders")
    listing.add_argument("--vid", help="one vendor's")
    listing.add_argument("--state", help="obligation, paid, delivered, ... (docs/api-shop.md)")
    listing.add_argument("--limit", type=LIMIT, default=50, help="most orders listed (default 50)")
    listing.set_defaults(func=cmd_list)
    show_order = order_commands.add_parser("show", help="an order, its lines and its moves")
    show_order.add_argument("oid", help="the order's id")
    show_order.set_defaults(func=cmd_show)
    paid = order_commands.add_parser(
        "mark-paid", help="record an order as paid (platform admins; who and why are kept)"
    )
    paid.add_argument("oid", help="the order's id")
    paid.add_argument("--admin", required=True, help="your platform admin user name")
    paid.add_argument("--reason", required=True, help="why, e.g. the bank transfer's number")
    paid.set_defaults(func=cmd_mark_paid)
    deliver = order_commands.add_parser(
        "deliver", help="ship a paid order with its devices (AD-05: binds and configures them)"
    )
    deliver.add_argument("oid", help="the order's id")
    deliver.add_argument("--admin", required=True, help="your platform admin user name")
    deliver.add_argument("--company", required=True, help="物流公司, e.g. 顺丰速运")
    deliver.add_argument("--tracking", required=True, help="物流单号")
    deliver.add_argument("--clerk", default="", help="发货员")
    deliver.add_argument(
        "--did", action="append", required=True, help="a device shipped, one per unit, in order"
    )
    deliver.set_defaults(func=cmd_deliver)
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
    for parser in (listing, show_order, paid, deliver, timers):
        add_json_flag(parser)
