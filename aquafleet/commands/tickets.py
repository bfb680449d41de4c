"""`aquafleet tickets ...`: the field-service queue from a shell: list (with the overdue ones
flagged by the `ticket_sla` setting), one ticket with its moves, and the counts (AE-02), for a
vendor or the whole platform. `tickets list --overdue --check` exits 1 when a ticket is
overdue, for a cron job's alert; `tickets stuck-exchanges --check` when an exchange is stuck
after its hand-over (docs/api-tickets.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from aquafleet.commands.output import LIMIT, add_json_flag, emit, iso, table, whole_number
from aquafleet.commands.runtime import command_settings, run_with_database


def _scope(vid: str | None) -> Any:
    """The platform's view, or one vendor's (the vendor's admins see exactly this)."""
    from aquafleet.models.tenancy import Principal, Role

    if vid:
        return Principal(Role.VENDOR, "cli", vendor_code=vid)
    return Principal(Role.PLATFORM, "cli")


def _named(enum_name: str, what: str) -> Any:
    """An argparse type taking a member of the ticket enum by name or number."""

    def parse(text: str) -> int:
        from aquafleet.models import tickets

        enum = getattr(tickets, enum_name)
        try:
            return int(text) if text.isdigit() else int(enum[text.strip().upper()])
        except KeyError:
            names = ", ".join(member.name.lower() for member in enum)
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}: {names}") from None

    return parse


def _ticket_json(ticket: Any, overdue: bool) -> dict[str, Any]:
    from aquafleet.models.tickets import TicketState, TicketType

    return {
        "ticket_id": ticket.ticket_id,
        "vid": ticket.vendor_id,
        "type": TicketType(ticket.type).name.lower(),
        "status": TicketState(ticket.state).name.lower(),
        "priority": ticket.priority,
        "device_id": ticket.device_id,
        "user_id": ticket.member_uid,
        "technician_id": ticket.technician_id,
        "detail": ticket.detail,
        "create_tms": iso(ticket.created_at),
        "appoint_tms": iso(ticket.appoint_at),
        "overdue": overdue,
    }


def _tickets_table(rows: list[dict[str, Any]]) -> str:
    headers = ["ticket", "vid", "type", "status", "pri", "device", "technician", "opened"]
    columns = ["ticket_id", "vid", "type", "status", "priority", "device_id", "technician_id"]
    cells = [[r[c] for c in columns] + [r["create_tms"], "OVERDUE" if r["overdue"] else ""]
             for r in rows]  # fmt: skip
    return table([*headers, "overdue"], cells)


def cmd_list(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.ticket_flow import is_overdue, parse_sla, visible_tickets
    from aquafleet.models.tickets import OPEN_STATES

    async def action() -> int:
        sla = parse_sla(settings.ticket_sla)
        now = dt.datetime.now(dt.UTC)
        qs = visible_tickets(_scope(args.vid))
        if args.status is not None:
            qs = qs.filter(state=args.status)
        if args.type is not None:
            qs = qs.filter(type=args.type)
        if args.overdue:
            qs = qs.filter(state__in=list(OPEN_STATES))
        rows: list[dict[str, Any]] = []
        # Overdue needs each ticket's type and appointment: read the open ones in pages and
        # keep the late ones, so --limit counts what is shown.
        offset, page = 0, 500 if args.overdue else args.limit
        while len(rows) < args.limit:
            found = list(await qs.order_by("-id").offset(offset).limit(page))
            for ticket in found:
                late = is_overdue(ticket, sla, now)
                if late or not args.overdue:
                    rows.append(_ticket_json(ticket, late))
            if len(found) < page or not args.overdue:
                break
            offset += page
        rows = rows[: args.limit]
        any_late = any(r["overdue"] for r in rows)
        emit(args, rows, lambda data: _tickets_table(data) if data else "no tickets")
        return 1 if args.check and any_late else 0

    return run_with_database(settings, action)


def cmd_show(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.ticket_flow import is_overdue, moves_of, parse_sla
    from aquafleet.models.tickets import Ticket

    async def action() -> int:
        ticket = await Ticket.get_or_none(ticket_id=args.tid)
        if ticket is None:
            print(f"aquafleet: ticket {args.tid} not found", file=sys.stderr)
            return 1
        now = dt.datetime.now(dt.UTC)
        data = _ticket_json(ticket, is_overdue(ticket, parse_sla(settings.ticket_sla), now))
        data["moves"] = [
            {"at": iso(move.created_at), "event": move.event,
             "from": move.from_state.name.lower(), "to": move.to_state.name.lower(),
             "by": f"{move.actor_role} {move.actor_id}", "technician_id": move.technician_id,
             "note": move.note}
            for move in await moves_of(ticket)
        ]  # fmt: skip

        def render(d: dict[str, Any]) -> str:
            out = [_tickets_table([d])]
            if d["detail"]:
                out.append(f"  detail: {d['detail']}")
            for move in d["moves"]:
                to = f" (technician {move['technician_id']})" if move["technician_id"] else ""
                note = f": {move['note']}" if move["note"] else ""
                out.append(
                    f"  {move['at']} {move['event']}: {move['from']} -> {move['to']}{to} "
                    f"by {move['by']}{note}"
                )
            return "\n".join(out)

        emit(args, data, render)
        return 0

    return run_with_database(settings, action)


def cmd_summary(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.ticket_flow import parse_sla, summary
    from aquafleet.models.tickets import TicketState, TicketType

    async def action() -> int:
        found = await summary(_scope(args.vid), parse_sla(settings.ticket_sla))
        data = {
            "vid": args.vid,
            "open": found.open,
            "overdue": found.overdue,
            "by_status": {
                TicketState(k).name.lower(): n for k, n in sorted(found.by_state.items())
            },
            "by_type": {TicketType(k).name.lower(): n for k, n in sorted(found.by_type.items())},
            "overdue_by_type": {
                TicketType(k).name.lower(): v for k, v in sorted(found.overdue_by_type.items())
            },
        }

        def render(d: dict[str, Any]) -> str:
            scope = f"vendor {d['vid']}" if d["vid"] else "all vendors"
            out = [f"tickets of {scope}: {d['open']} open, {d['overdue']} overdue"]
            out += [f"  {name}: {n}" for name, n in d["by_status"].items()]
            out += [f"  overdue {name}: {n}" for name, n in d["overdue_by_type"].items()]
            return "\n".join(out)

        emit(args, data, render)
        return 0

    return run_with_database(settings, action)


def cmd_stuck_exchanges(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.ticket_flow import visible_tickets
    from aquafleet.models.ticket_work import markers_expired, stuck_exchanges
    from aquafleet.models.tickets import TicketState

    async def action() -> int:
        now = dt.datetime.now(dt.UTC)
        older_than = dt.timedelta(hours=args.hours)
        found = stuck_exchanges(visible_tickets(_scope(args.vid)), older_than, now)
        rows = [
            {"ticket_id": t.ticket_id, "vid": t.vendor_id,
             "status": TicketState(t.state).name.lower(), "device_id": t.device_id,
             "handed_over_to": t.handed_over_to, "handed_over_tms": iso(t.handed_over_at),
             "user_id": t.member_uid, "technician_id": t.technician_id,
             "markers_expired": markers_expired(t, now)}
            for t in await found.limit(args.limit)
        ]  # fmt: skip

        def render(data: list[dict[str, Any]]) -> str:
            if not data:
                return f"no exchange stuck after its hand-over for {args.hours} h or more"
            headers = ["ticket", "vid", "status", "old device", "handed to", "handed over", ""]
            cells = [
                [r["ticket_id"], r["vid"], r["status"], r["device_id"], r["handed_over_to"],
                 r["handed_over_tms"], "MARKERS EXPIRED" if r["markers_expired"] else ""]
                for r in data
            ]  # fmt: skip
            return table(headers, cells)

        emit(args, rows, render)
        return 1 if args.check and rows else 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser("tickets", help="field service: list, show, summary")
    sub = parser.add_subparsers(dest="tickets_command", required=True)
    listing = sub.add_parser("list", help="the newest tickets, the overdue ones flagged")
    listing.add_argument("--vid", help="one vendor's (default: every vendor's)")
    listing.add_argument(
        "--status",
        type=_named("TicketState", "ticket state"),
        help="created, approved, dispatched, ...",
    )
    listing.add_argument(
        "--type",
        type=_named("TicketType", "ticket type"),
        help="install, exchange, return, fault, ...",
    )
    listing.add_argument(
        "--overdue", action="store_true", help="only open tickets past their SLA or appointment"
    )
    listing.add_argument(
        "--check", action="store_true", help="exit 1 when a listed ticket is overdue (alerts)"
    )
    listing.add_argument("--limit", type=LIMIT, default=50, help="most tickets listed (default 50)")
    listing.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="a ticket and its moves (who, when, from, to, note)")
    show.add_argument("tid", help="the ticket's id (工单号)")
    show.set_defaults(func=cmd_show)
    counts = sub.add_parser("summary", help="counts per status and type, and the overdue (AE-02)")
    counts.add_argument("--vid", help="one vendor's (default: every vendor's)")
    counts.set_defaults(func=cmd_summary)
    stuck = sub.add_parser(
        "stuck-exchanges",
        help="exchanges handed over N hours ago or more, neither done nor cancelled",
    )
    stuck.add_argument("--vid", help="one vendor's (default: every vendor's)")
    stuck.add_argument(
        "--hours",
        type=whole_number(0, 24 * 3660),
        default=24,
        help="handed over at least this long ago (default 24)",
    )
    stuck.add_argument("--check", action="store_true", help="exit 1 when one is listed (alerts)")
    stuck.add_argument(
        "--limit", type=LIMIT, default=100, help="most exchanges listed (default 100)"
    )
    stuck.set_defaults(func=cmd_stuck_exchanges)
    for each in (listing, show, counts, stuck):
        add_json_flag(each)
