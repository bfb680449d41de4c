"""`aquafleet service ...`: a device's billing mode, volume quota, rental expiry and locks,
changed or shown from the shell (models/service.py; the live state is in Redis)."""

from __future__ import annotations

import argparse
import getpass
import time
from typing import Any

from aquafleet.commands.output import (
    add_json_flag,
    emit,
    fields,
    iso,
    parse_time,
    table,
    whole_number,
)
from aquafleet.commands.runtime import (
    command_settings,
    named_dids,
    redis_for_commands,
    run_with_database,
)

MODE_NAMES = {1: "sale", 2: "time rental", 3: "volume rental", 4: "vending", 8: "test"}
MODE_HELP = (
    "billing mode: 1 sale (sold outright), 2 time rental (locks "
    "when the rental expires: --expires-at or --expires-in-days), 3 volume rental (prepaid "
    "water: locks when --remaining-ml runs out), 4 vending (pay per pour), 8 test"
)
HISTORY = 5  # changes `service show` lists
MANY = 20  # above this many devices a change prints a count, not a line each


def _mode_name(mode: int | None) -> str | None:
    return None if mode is None else MODE_NAMES.get(mode, str(mode))


def _state_json(did: str, state: Any) -> dict[str, Any]:
    from aquafleet.gateway.service_state import LOCK_REASONS

    bits = state.lock_bits
    return {
        "did": did,
        "mode": state.mode,
        "mode_name": _mode_name(state.mode),
        "locked": bits != 0,
        "lock_reasons": [name for bit, name in LOCK_REASONS.items() if bits & bit],
        "remaining_ml": state.remaining_ml,
        "rental_expires_at": iso(state.rental_expires_at),
        "version": state.version,
    }


def _change_line(args: argparse.Namespace, item: dict[str, Any]) -> str:
    did = item["did"]
    if "error" in item:
        return f"{did}: {item['error']['code']}: {item['error']['message']}"
    if item["already_applied"]:
        head = f"already applied (request id {getattr(args, 'request_id', None)}): nothing changed"
    elif not item["applied"]:
        head = "nothing to change"
    else:
        head = {
            "configure": f"configured as {item['mode_name']}",
            "top-up": f"topped up {getattr(args, 'ml', 0)} ml",
            "extend": "rental extended",
            "lock": "locked",
            "unlock": "lock lifted",
        }[args.service_command]
    now = []
    if item["remaining_ml"] is not None:
        now.append(f"remaining {item['remaining_ml']} ml")
    if item["rental_expires_at"] is not None:
        now.append(f"rental expires {item['rental_expires_at']}")
    now.append(f"locked ({', '.join(item['lock_reasons'])})" if item["locked"] else "not locked")
    return f"{did}: {head}; {', '.join(now)}"


async def _locks_and_history(did: str, state: dict[str, Any], limit: int) -> dict[str, Any]:
    """Each lock in force with who set it, when and why, and the device's latest changes."""
    from aquafleet.models.service import ChangeStage, ServiceChange

    changes = await ServiceChange.filter(did=did).order_by("-id").limit(limit)
    history = [
        {
            "at": iso(c.created_at), "op": c.op, "amount_ml": c.amount_ml,
            "seconds": c.seconds, "actor": c.actor, "reason": c.reason,
            "request_id": c.request_id, "pending": c.stage is ChangeStage.PENDING,
        }
        for c in changes
    ]  # fmt: skip
    locks = []
    for kind in state["lock_reasons"]:
        lock: dict[str, Any] = {"kind": kind, "by": None, "reason": None, "at": None}
        if kind == "rental_expired":
            lock.update(by="rental", reason="the rental expired", at=state["rental_expires_at"])
        else:  # a person's lock, or the meter's when the quota ran out
            op = "lock" if kind == "manual" else "quota_lock"
            last = (
                await ServiceChange.filter(did=did, op=op)
                .exclude(stage=ChangeStage.PENDING)  # not known to have run
                .order_by("-id")
                .first()
            )
            if last is not None:
                lock.update(by=last.actor, reason=last.reason, at=iso(last.created_at))
        locks.append(lock)
    return {"locks": locks, "history": history}


def _amount(change: dict[str, Any]) -> str | None:
    if change["amount_ml"] is not None:
        return f"{change['amount_ml']} ml"
    if change["seconds"] is not None:
        return f"{change['seconds'] // 86_400} days"
    return None


def _lock_text(lock: dict[str, Any]) -> str:
    text = str(lock["kind"])
    if lock["by"] is not None:
        text += f" (by {lock['by']} at {lock['at'] or '-'}: {lock['reason'] or '-'})"
    return text


def _render_show(items: list[dict[str, Any]]) -> str:
    blocks = []
    for item in items:
        if "error" in item:
            blocks.append(f"{item['did']}: {item['error']['code']}: {item['error']['message']}")
            continue
        mode = item["mode"]
        locked = "yes: " + "; ".join(map(_lock_text, item["locks"])) if item["locked"] else "no"
        text = item["did"] + "\n" + fields([
            ("mode", "not configured" if mode is None else f"{mode} {item['mode_name']}"),
            ("remaining", None if item["remaining_ml"] is None else f"{item['remaining_ml']} ml"),
            ("low balance", None if item["low_balance_ml"] is None
             else f"below {item['low_balance_ml']} ml"),
            ("rental expires", item["rental_expires_at"]),
            ("locked", locked),
            ("version", item["version"]),
        ], indent=2)  # fmt: skip
        if item["history"]:
            text += "\n  latest changes:\n" + table(
                ["at", "op", "amount", "actor", "reason", "request id"],
                [[h["at"], h["op"] + (" (pending)" if h["pending"] else ""), _amount(h),
                  h["actor"], h["reason"], h["request_id"]]
                 for h in item["history"]],
                indent=4,
            )  # fmt: skip
        blocks.append(text)
    return "\n".join(blocks)


def cmd_service(args: argparse.Namespace) -> int:
    """Change or show devices' service state (mode, quota, rental, locks) from the shell."""
    settings = command_settings(args)
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.redis_io import Scripts
    from aquafleet.gateway.service_state import ServiceStore
    from aquafleet.models import service
    from aquafleet.models.devices import Device
    from aquafleet.models.errors import DomainError, NotFound

    actor = args.actor or f"cli:{getpass.getuser()}"
    dids = named_dids(args)
    command = args.service_command

    async def apply(store: ServiceStore, did: str) -> dict[str, Any]:
        if command == "show":
            if not await Device.exists(did=did):
                raise NotFound(f"device {did} not found")
            state = await store.read(did)
            item = _state_json(did, state)
            item["low_balance_ml"] = state.low_balance_ml
            item.update(await _locks_and_history(did, item, args.history))
            return item
        if command == "configure":
            expires = args.expires_at
            if args.expires_in_days is not None:
                expires = int(time.time()) + args.expires_in_days * 86_400
            outcome = await service.configure(
                store, did, args.mode, remaining_ml=args.remaining_ml,
                rental_expires_at=expires, low_balance_ml=args.low_balance_ml,
                actor=actor, reason=args.reason,
            )  # fmt: skip
        elif command == "top-up":
            outcome = await service.top_up(
                store, did, args.ml, actor=actor, reason=args.reason, request_id=args.request_id
            )
        elif command == "extend":
            outcome = await service.extend_rental(
                store, did, package=args.package, days=args.days, actor=actor, reason=args.reason
            )
        else:
            change = service.lock if command == "lock" else service.unlock
            outcome = await change(store, did, actor=actor, reason=args.reason)
        item = _state_json(did, outcome)
        item.update(applied=outcome.applied, already_applied=outcome.already_applied)
        return item

    async def action() -> int:
        client = await redis_for_commands(settings)
        if client is None:
            print("aquafleet: Redis is not reachable (start `aquafleet serve` or set redis_url)")
            return 1
        try:
            scripts = Scripts()
            await scripts.load(client)
            store = ServiceStore(
                client,
                scripts,
                Keyspace.for_url(settings.redis_prefix, settings.redis_shards, settings.redis_url),
            )
            items = []
            for did in dids:
                try:
                    items.append(await apply(store, did))
                except DomainError as exc:
                    items.append({"did": did, "error": {"code": exc.code, "message": exc.message}})
        finally:
            await client.aclose()
        failed = sum(1 for item in items if "error" in item)

        def render(rows: list[dict[str, Any]]) -> str:
            if command == "show":
                return _render_show(rows)
            shown = rows if len(rows) <= MANY else [r for r in rows if "error" in r]
            lines = [_change_line(args, r) for r in shown]
            if len(rows) > MANY:
                lines.append(f"{len(rows) - failed} of {len(rows)} devices done")
            return "\n".join(lines)

        emit(args, items, render)
        return 1 if failed else 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    svc = commands.add_parser(
        "service", help="service state of devices: mode, volume quota, rental expiry, locks"
    )
    svc_commands = svc.add_subparsers(dest="service_command", required=True)

    def service_parser(name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = svc_commands.add_parser(name, help=text, description=text)
        sub.add_argument("did", nargs="*", help="device ids")
        sub.add_argument("--from", dest="from_csv", help="also every did of this CSV (did,key)")
        if name != "show":
            sub.add_argument("--actor", help="who makes the change (default cli:<user>)")
            sub.add_argument("--reason", default="", help="why (kept with the change)")
        add_json_flag(sub)
        sub.set_defaults(func=cmd_service, actor=None, reason="")
        return sub

    configure = service_parser("configure", "set the billing mode and its starting values")
    configure.add_argument(
        "--mode", type=int, required=True, choices=sorted(MODE_NAMES), help=MODE_HELP
    )
    configure.add_argument("--remaining-ml", type=int, help="volume rental: starting quota")
    configure.add_argument(
        "--expires-at", type=parse_time, help="time rental: ISO 8601 (2026-12-31T00:00:00Z)"
    )
    configure.add_argument("--expires-in-days", type=int, help="time rental: from now")
    configure.add_argument("--low-balance-ml", type=int, help="volume rental: warn below this")
    top_up = service_parser("top-up", "add water to a volume quota (unlocks above 0)")
    top_up.add_argument("--ml", type=int, required=True, help="water to add, ml")
    top_up.add_argument(
        "--request-id", help="applied once however often it is retried (a repeat says so)"
    )
    extend = service_parser("extend", "extend a time rental (unlocks an expired one)")
    extend_by = extend.add_mutually_exclusive_group(required=True)
    extend_by.add_argument(
        "--package", choices=["30d", "60d", "90d", "180d", "360d"], help="a rental package"
    )
    extend_by.add_argument("--days", type=int, help="or any number of days")
    service_parser("lock", "lock a device (until unlocked)")
    service_parser("unlock", "lift a person's lock")
    show = service_parser("show", "the live service state, who locked it and why, latest changes")
    show.add_argument(
        "--history",
        type=whole_number(0, 1000),
        default=HISTORY,
        help=f"changes to list (default {HISTORY})",
    )
