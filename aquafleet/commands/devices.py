"""`aquafleet devices ...` and `aquafleet status`: register devices, enable or disable them,
and look at one device or at the platform."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

from aquafleet.commands.output import add_json_flag, emit, fields, table
from aquafleet.commands.runtime import (
    command_settings,
    reach_redis,
    redis_for_commands,
    run_with_database,
)
from aquafleet.gateway.config import Settings
from aquafleet.gateway.errors import GatewayError

SESSIONS = 10  # connections `devices show` lists
MAX_SESSIONS = 1000  # the largest presence history a gateway keeps (presence_history_size)


async def push_registry(settings: Settings, entries: list[tuple[str, int, int]]) -> bool:
    """Tell a running gateway about new or changed devices at once (else it polls)."""
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.registry_cache import write_entries

    client = await redis_for_commands(settings)
    if client is None:
        return False
    try:
        await write_entries(
            client,
            Keyspace.for_url(settings.redis_prefix, settings.redis_shards, settings.redis_url),
            entries,
        )
    finally:
        await client.aclose()
    return True


def cmd_register(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.devices import DeviceState, DeviceType
    from aquafleet.models.registry import register_devices
    from aquafleet.protocol.crypto import derive_device_key

    out = Path(args.out)
    existed = out.exists()
    if existed and not args.force:
        raise GatewayError(f"{out} exists: it may hold keys that are shown only once (--force)")
    master = settings.master_secret_bytes()
    _check_writable(out)

    registered = False

    async def action() -> int:
        nonlocal registered
        issued = await register_devices(
            args.vendor,
            args.count,
            lambda did, version: derive_device_key(master, did, version),
            device_type=DeviceType(args.type),
            model=args.model,
        )
        registered = True
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["did", "key"])
            for device in issued:
                writer.writerow([device.did, device.key.hex()])
        pushed = await push_registry(
            settings, [(d.did, int(DeviceState.INACTIVE), d.key_version) for d in issued]
        )
        data = {
            "vendor": args.vendor, "registered": len(issued), "first": issued[0].did,
            "last": issued[-1].did, "keys_file": str(out), "gateway_told": pushed,
        }  # fmt: skip

        def render(d: dict[str, Any]) -> str:
            text = (
                f"registered {d['registered']} devices of vendor {d['vendor']}: {d['first']} .. "
                f"{d['last']}; keys written to {d['keys_file']} (mode 600, shown once)"
            )
            if not pushed:
                text += "\ngateway not reachable: it picks the devices up within 5 s of its start"
            return text

        emit(args, data, render)
        return 0

    try:
        return run_with_database(settings, action)
    except BaseException:
        if not registered and not existed:  # ours and empty: a retry must not find it
            out.unlink(missing_ok=True)
        raise


def _check_writable(out: Path) -> None:
    """Before any device is registered: its keys are written once, and a file that cannot be
    written (no such directory, no permission) used to fail after the devices were made. Not
    truncated here: with --force the old keys stay until the new ones replace them."""
    try:
        os.close(os.open(out, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        raise GatewayError(
            f"--out {out}: cannot write it ({exc.strerror or exc}); no device was registered"
        ) from None


def cmd_state(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.registry_cache import kick_everywhere
    from aquafleet.models.devices import LOGIN_ALLOWED, DeviceState
    from aquafleet.models.registry import set_device_state

    state = DeviceState.DISABLED if args.devices_command == "disable" else DeviceState.ACTIVE

    async def action() -> int:
        device = await set_device_state(args.did, state)
        await push_registry(settings, [(device.did, int(device.state), device.key_version)])
        client = await redis_for_commands(settings)
        if client is not None and device.state not in LOGIN_ALLOWED:
            try:
                keyspace = Keyspace.for_url(
                    settings.redis_prefix, settings.redis_shards, settings.redis_url
                )
                await kick_everywhere(client, keyspace, [device.did])
            finally:
                await client.aclose()
        data = {"did": device.did, "state": device.state.name.lower()}
        emit(args, data, lambda d: f"device {d['did']} is now {d['state']}")
        return 0

    return run_with_database(settings, action)


def _report_lines(title: str, report: dict[str, Any]) -> str:
    where = f"boot {report['boot']} rec {report['rec']}, " if "boot" in report else ""
    text = f"  {title}:\n" + fields([
        ("received", report["received_at"]),
        ("record", where.rstrip(", ") or None),
        ("flow total", f"{report['flow_total_ml']} ml"),
        ("TDS in/out", f"{report['tds_in_ppm']} / {report['tds_out_ppm']} ppm"),
        ("temperature", None if report["temperature_dc"] is None
         else f"{report['temperature_dc'] / 10:.1f} °C"),
        ("signal", report["signal"]),
        ("fault bits", report["fault_bits"]),
        ("state bits", report["state_bits"]),
    ], indent=4)  # fmt: skip
    if report.get("filters"):
        rows = [[f["stage"], f["work_h"], f["power_on_h"], f["reset_count"]]
                for f in report["filters"]]  # fmt: skip
        text += "\n    filters:\n" + table(
            ["stage", "work_h", "power_on_h", "reset_count"], rows, indent=6
        )
    return text


def _sessions_lines(sessions: list[dict[str, Any]], kept: int) -> str:
    if not sessions:
        return "  sessions: none kept"
    rows = [
        [s["since"], "online now" if s["online"] else s["ended_at"], s["duration_s"],
         s["reason"], s["node"], s["last_seen"]]
        for s in sessions
    ]  # fmt: skip
    return f"  sessions (latest {len(sessions)} of {kept} kept, newest first):\n" + table(
        ["since", "ended", "duration_s", "reason", "node", "last seen"], rows, indent=4
    )


def render_device(status: dict[str, Any]) -> str:
    did = status["did"]
    if not status["registered"]:
        return f"{did}: not registered"
    lines = [did + "\n" + fields([
        ("vendor", status["vendor"]),
        ("type", status["type"]),
        ("model", status["model"]),
        ("state", status["state"]),
        ("key version", status["key_version"]),
        ("activated", status["activated_at"]),
        ("login allowed", status.get("login_allowed")),
        ("ledger", f"{status['ledger_metered_ml']} ml in {status['ledger_records']} records"),
    ], indent=2)]  # fmt: skip
    if "redis" in status:
        lines.append(f"  redis: {status['redis']}")
    elif status.get("online"):
        p = status["presence"]
        lines.append(
            f"  online: yes, on node {p['node']} since {p['since']}, last seen {p['last_seen']}"
        )
    else:
        lines.append("  online: no")
    if "sessions" in status:
        lines.append(_sessions_lines(status["sessions"], status["sessions_total"]))
    meter = status.get("meter")
    if meter:
        mark = meter["watermark"]
        lines.append(
            f"  meter: {meter['metered_ml']} ml in {meter['records']} records (highest counter "
            f"{meter['highest_counter_ml']} ml, counter epoch {meter['cnt_epoch']}, acked up to "
            + (f"boot {mark[0]} rec {mark[1]})" if mark else "-)")
        )
    if status.get("live_report"):
        lines.append(_report_lines("live report (Redis)", status["live_report"]))
    if status.get("latest_report"):
        lines.append(_report_lines("latest report (database)", status["latest_report"]))
    return "\n".join(lines)


def session_count(text: str) -> int:
    """`--sessions N`: 0 .. MAX_SESSIONS."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= count <= MAX_SESSIONS:
        raise argparse.ArgumentTypeError(f"{count} is not in 0..{MAX_SESSIONS}")
    return count


def cmd_show(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.gateway.inspect import device_status

    async def action() -> int:
        client, problem = await reach_redis(settings)
        try:
            status = await device_status(settings, client, args.did, sessions=args.sessions)
        finally:
            if client is not None:
                await client.aclose()
        if problem is not None and status.get("registered"):
            status["redis"] = problem
        emit(args, status, render_device)
        if not status.get("registered"):
            return 1
        if problem is not None:
            # The database's part is printed above; presence, sessions and the meter are not
            # known. Like `aquafleet status`, a script must not read this as a healthy device
            # (it exited 0).
            print(f"aquafleet: device status incomplete: {problem}", file=sys.stderr)
            return 1
        return 0

    return run_with_database(settings, action)


def render_platform(status: dict[str, Any]) -> str:
    pairs: list[tuple[str, Any]] = [
        ("devices", status["devices"]),
        (
            "ledger records",
            f"~{status['ledger_records']} (estimate)"
            if status.get("ledger_records_estimated")
            else status["ledger_records"],
        ),
    ]
    if "redis" in status:
        pairs.append(("redis", status["redis"]))
    else:
        pairs += [
            ("online", status["online"]),
            ("ledger backlog", f"{status['ledger_backlog_records']} records"),
        ]
    text = fields(pairs)
    if status.get("online_by_node"):
        text += "\n" + table(["node", "online"], sorted(status["online_by_node"].items()))
    return text


def cmd_status(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.gateway.inspect import platform_status

    async def action() -> int:
        client, problem = await reach_redis(settings)
        try:
            status = await platform_status(settings, client)
        finally:
            if client is not None:
                await client.aclose()
        if problem is not None:
            status["redis"] = problem
        emit(args, status, render_platform)
        if problem is not None:
            # What the database says is printed above; online and the ledger backlog are not
            # known. A monitoring script that runs `aquafleet status` must not read this as
            # healthy (it exited 0).
            print(f"aquafleet: status incomplete: {problem}", file=sys.stderr)
            return 1
        return 0

    return run_with_database(settings, action)


def add_parsers(commands: Any) -> None:
    devices = commands.add_parser("devices", help="register and manage devices")
    device_commands = devices.add_subparsers(dest="devices_command", required=True)
    register = device_commands.add_parser("register", help="register a batch of devices")
    register.add_argument("--vendor", required=True, help="vendor code")
    register.add_argument("--count", type=int, required=True, help="devices to register")
    register.add_argument("--out", required=True, help="CSV file for did,key (written once)")
    register.add_argument(
        "--type", type=int, default=0, choices=[0, 1, 2, 3, 4, 8],
        help="device type: 0 unset, 1 sale, 2 time rental, 3 volume rental, 4 vending, 8 test",
    )  # fmt: skip
    register.add_argument("--model", default="", help="model name recorded on each device")
    register.add_argument("--force", action="store_true", help="overwrite --out")
    add_json_flag(register)
    register.set_defaults(func=cmd_register)
    for name, text in (
        ("disable", "refuse its logins and disconnect it"),
        ("enable", "allow logins"),
    ):
        sub = device_commands.add_parser(name, help=text)
        sub.add_argument("did", help="device id, e.g. DEMO00000001DA9F")
        add_json_flag(sub)
        sub.set_defaults(func=cmd_state)
    show = device_commands.add_parser(
        "show", help="registry, presence and latest sessions, meter and latest report"
    )
    show.add_argument("did", help="device id, e.g. DEMO00000001DA9F")
    show.add_argument(
        "--sessions", type=session_count, default=SESSIONS, metavar="N",
        help=f"latest connections to list, newest first (default {SESSIONS}; 0: none)",
    )  # fmt: skip
    add_json_flag(show)
    show.set_defaults(func=cmd_show)

    status = commands.add_parser("status", help="platform-wide counts (online, ledger backlog)")
    add_json_flag(status)
    status.set_defaults(func=cmd_status)
