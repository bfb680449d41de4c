"""The `aquafleet` command: serve, sim, devices, vendors, admin, orders, status, migrate,
config."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import uvloop

from aquafleet.gateway.config import Settings, load_settings, settings_reference
from aquafleet.gateway.errors import ConfigError, GatewayError
from aquafleet.gateway.logs import configure_logging, get_logger

log = get_logger("aquafleet.cli")


# ----------------------------------------------------------------------------- helpers


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(getattr(args, "config", None), **overrides)


def _run(coro_factory: Callable[[], Awaitable[int]]) -> int:
    async def main() -> int:
        return await coro_factory()

    return uvloop.run(main())


async def _redis_for_commands(settings: Settings) -> Any:
    """A Redis client for one-off commands: the configured one, or a running embedded one."""
    from aquafleet.gateway.embedded_redis import running_url
    from aquafleet.gateway.redis_io import open_redis

    url = settings.redis_url or running_url(settings.data_dir)
    if url is None:
        return None
    client = open_redis(url, max_connections=4)
    try:
        await client.ping()
    except Exception:
        await client.aclose()
        return None
    return client


# ----------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args,
        workers=args.workers,
        tcp_port=args.tcp_port,
        http_port=args.http_port,
        data_dir=args.data_dir,
    )
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        return _serve_workers(settings)
    return uvloop.run(_serve_one(settings))


async def _serve_one(settings: Settings) -> int:
    from aquafleet.node import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop=stop)
    return 0


def _worker_main(overrides: dict[str, Any], config: str | None) -> None:
    from aquafleet.gateway.embedded_redis import die_with_parent

    die_with_parent()  # a worker stops (gracefully) when its supervisor is gone
    settings = load_settings(Path(config) if config else None, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    uvloop.run(_serve_one(settings))


def _serve_workers(settings: Settings) -> int:
    """Run N nodes as processes sharing the listeners (SO_REUSEPORT) and one Redis."""
    return uvloop.run(_supervise_workers(settings))


async def _supervise_workers(settings: Settings) -> int:
    import contextlib

    from aquafleet.gateway.embedded_redis import embedded_redis
    from aquafleet.models.db import migrate

    async with contextlib.AsyncExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            server = await stack.enter_async_context(
                embedded_redis(settings.data_dir, port=settings.embedded_redis_port)
            )
            redis_url = server.url
        if settings.migrate_on_start:
            await migrate(settings.resolved_database_url)
        base = settings.resolved_node_id
        context = multiprocessing.get_context("spawn")
        processes = []
        for index in range(settings.workers):
            overrides = {
                "redis_url": redis_url,
                "migrate_on_start": False,
                "node_id": f"{base}-w{index}",
                "workers": settings.workers,
                "data_dir": settings.data_dir,
                "tcp_port": settings.tcp_port,
                "http_port": settings.http_port,
                "database_url": settings.resolved_database_url,
            }
            config = os.environ.get("AQUAFLEET_CONFIG")
            process = context.Process(target=_worker_main, args=(overrides, config), daemon=False)
            process.start()
            processes.append(process)
        log.info("workers_started", workers=len(processes), pids=[p.pid for p in processes])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set() and all(p.is_alive() for p in processes):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            await asyncio.to_thread(process.join, settings.shutdown_grace_s + 15)
        failed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
        log.info("workers_stopped", exit_codes=[p.exitcode for p in processes])
        return 1 if failed and not stop.is_set() else 0
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    """A ledger writer in its own process (serve with AQUAFLEET_LEDGER_WRITER=false)."""
    from aquafleet.gateway.embedded_redis import running_url

    settings = _settings(args, data_dir=args.data_dir)
    if settings.redis_url is None:
        url = running_url(settings.data_dir)
        if url is None:
            raise GatewayError(
                "no Redis to drain: set AQUAFLEET_REDIS_URL or start `aquafleet serve` first"
            )
        settings = settings.model_copy(update={"redis_url": url})
    settings = settings.model_copy(
        update={"ledger_writer": True, "node_id": f"{settings.resolved_node_id}-ledger"}
    )
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> int:
        from aquafleet.node import run_ledger

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_ledger(settings, stop=stop)
        return 0

    return _run(run)


# ----------------------------------------------------------------------------- database


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.models.db import migrate

    async def run() -> int:
        await migrate(settings.resolved_database_url)
        print(f"database {settings.resolved_database_url.split('@')[-1]} is up to date")
        return 0

    return _run(run)


async def _with_database(settings: Settings, action: Callable[[], Awaitable[int]]) -> int:
    from aquafleet.models.db import database

    async with database(settings.resolved_database_url, run_migrations=settings.migrate_on_start):
        return await action()


# ----------------------------------------------------------------------------- vendors


def cmd_vendors_add(args: argparse.Namespace) -> int:
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.models.registry import create_vendor

    async def action() -> int:
        vendor = await create_vendor(args.code, args.name)
        print(f"vendor {vendor.code} ({vendor.name}) created")
        return 0

    return _run(lambda: _with_database(settings, action))


# ----------------------------------------------------------------------------- admin accounts


def _read_new_password(args: argparse.Namespace) -> str:
    """The password from --password-file or stdin (never the command line)."""
    import getpass

    if args.password_file is not None:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise GatewayError(f"cannot read {args.password_file}: {exc.strerror}") from None
        password = text.splitlines()[0] if text else ""
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise GatewayError("the passwords differ")
    else:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    if len(password) < 8:
        raise GatewayError("the password must have at least 8 characters")
    return password


def cmd_admin_create_platform(args: argparse.Namespace) -> int:
    import hashlib

    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role

    password = _read_new_password(args)
    # Clients send the MD5 of the password (the seed); the account stores a hash of that.
    password_md5 = hashlib.md5(password.encode()).hexdigest()

    async def action() -> int:
        account = await create_account(args.user, password_md5, Role.PLATFORM)
        print(f"platform admin {account.username} created (id {account.id})")
        return 0

    return _run(lambda: _with_database(settings, action))


# ----------------------------------------------------------------------------- devices


def cmd_devices_register(args: argparse.Namespace) -> int:
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.models.devices import DeviceState, DeviceType
    from aquafleet.models.registry import register_devices
    from aquafleet.protocol.crypto import derive_device_key

    out = Path(args.out)
    if out.exists() and not args.force:
        raise GatewayError(f"{out} exists: it may hold keys that are shown only once (--force)")
    master = settings.master_secret_bytes()

    async def action() -> int:
        issued = await register_devices(
            args.vendor,
            args.count,
            lambda did, version: derive_device_key(master, did, version),
            device_type=DeviceType(args.type),
            model=args.model,
        )
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["did", "key"])
            for device in issued:
                writer.writerow([device.did, device.key.hex()])
        pushed = await _push_registry(
            settings, [(d.did, int(DeviceState.INACTIVE), d.key_version) for d in issued]
        )
        print(
            f"registered {len(issued)} devices of vendor {args.vendor}: "
            f"{issued[0].did} .. {issued[-1].did}; keys written to {out} (mode 600, shown once)"
        )
        if not pushed:
            print("gateway not reachable: it picks the devices up within 5 s of its next start")
        return 0

    return _run(lambda: _with_database(settings, action))


async def _push_registry(settings: Settings, entries: list[tuple[str, int, int]]) -> bool:
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.registry_cache import write_entries

    client = await _redis_for_commands(settings)
    if client is None:
        return False
    try:
        await write_entries(client, Keyspace(settings.redis_prefix, settings.redis_shards), entries)
    finally:
        await client.aclose()
    return True


def cmd_devices_state(args: argparse.Namespace) -> int:
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.registry_cache import kick_everywhere
    from aquafleet.models.devices import LOGIN_ALLOWED, DeviceState
    from aquafleet.models.registry import set_device_state

    state = DeviceState.DISABLED if args.devices_command == "disable" else DeviceState.ACTIVE

    async def action() -> int:
        device = await set_device_state(args.did, state)
        await _push_registry(settings, [(device.did, int(device.state), device.key_version)])
        client = await _redis_for_commands(settings)
        if client is not None and device.state not in LOGIN_ALLOWED:
            try:
                keyspace = Keyspace(settings.redis_prefix, settings.redis_shards)
                await kick_everywhere(client, keyspace, [device.did])
            finally:
                await client.aclose()
        print(f"device {device.did} is now {device.state.name.lower()}")
        return 0

    return _run(lambda: _with_database(settings, action))


def cmd_devices_show(args: argparse.Namespace) -> int:
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.gateway.inspect import device_status

    async def action() -> int:
        client = await _redis_for_commands(settings)
        try:
            status = await device_status(settings, client, args.did)
        finally:
            if client is not None:
                await client.aclose()
        print(json.dumps(status, indent=2, default=str))
        return 0 if status.get("registered") else 1

    return _run(lambda: _with_database(settings, action))


# ----------------------------------------------------------------------------- service state


def _service_dids(args: argparse.Namespace) -> list[str]:
    dids = list(args.did)
    if args.from_csv:
        with open(args.from_csv, newline="") as handle:
            dids += [row["did"] for row in csv.DictReader(handle)]
    if not dids:
        raise SystemExit("aquafleet: name devices (DID ... or --from devices.csv)")
    return dids


def cmd_service(args: argparse.Namespace) -> int:
    """Change or show devices' service state (mode, quota, rental, locks) from the shell."""
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    import getpass

    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.redis_io import Scripts
    from aquafleet.gateway.service_state import ServiceStore
    from aquafleet.models import service
    from aquafleet.models.errors import DomainError

    actor = args.actor or f"cli:{getpass.getuser()}"
    dids = _service_dids(args)

    async def apply(store: ServiceStore, did: str) -> Any:
        command = args.service_command
        if command == "show":
            return await store.read(did)
        if command == "configure":
            expires = args.expires_at
            if args.expires_in_days is not None:
                expires = int(time.time()) + args.expires_in_days * 86_400
            return await service.configure(
                store, did, args.mode, remaining_ml=args.remaining_ml,
                rental_expires_at=expires, low_balance_ml=args.low_balance_ml,
                actor=actor, reason=args.reason,
            )  # fmt: skip
        if command == "top-up":
            return await service.top_up(
                store, did, args.ml, actor=actor, reason=args.reason, request_id=args.request_id
            )
        if command == "extend":
            return await service.extend_rental(
                store, did, package=args.package, days=args.days, actor=actor, reason=args.reason
            )
        change = service.lock if command == "lock" else service.unlock
        return await change(store, did, actor=actor, reason=args.reason)

    async def action() -> int:
        client = await _redis_for_commands(settings)
        if client is None:
            print("aquafleet: Redis is not reachable (start `aquafleet serve` or set redis_url)")
            return 1
        try:
            scripts = Scripts()
            await scripts.load(client)
            store = ServiceStore(
                client, scripts, Keyspace(settings.redis_prefix, settings.redis_shards)
            )
            failed = 0
            for did in dids:
                try:
                    outcome = await apply(store, did)
                except DomainError as exc:
                    failed += 1
                    print(f"{did}: {exc.code}: {exc.message}")
                    continue
                if len(dids) <= 20 or args.service_command == "show":
                    print(f"{did}: {outcome}")
            if len(dids) > 20:
                print(f"{len(dids) - failed} of {len(dids)} devices done")
            return 1 if failed else 0
        finally:
            await client.aclose()

    return _run(lambda: _with_database(settings, action))


def _order_line(order: Any) -> str:
    return (
        f"{order.oid}  {order.state.name.lower():<10}  {order.kind.name.lower():<8}  "
        f"{order.member_id}  total {order.total_fen} fen"
    )


def cmd_orders(args: argparse.Namespace) -> int:
    """Operators' view of orders, and the internal paid step (platform admins only)."""
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.models import orders

    async def action() -> int:
        command = args.orders_command
        if command == "list":
            qs = orders.Order.filter(deleted_at__isnull=True)
            if args.vid:
                qs = qs.filter(vendor_id=args.vid)
            if args.state is not None:
                qs = qs.filter(state=orders.OrderState[args.state.upper()])
            for order in await qs.order_by("-id").limit(args.limit):
                print(_order_line(order))
            return 0
        if command == "run-timers":
            import datetime as dt

            from aquafleet.models.order_timers import TimerSettings, sweep

            settings_ = TimerSettings(
                unpaid_close_after=dt.timedelta(hours=args.unpaid_close_after_h),
                auto_receive_after=dt.timedelta(days=args.auto_receive_after_d),
            )
            result = await sweep(settings=settings_)
            print(f"closed {result.closed}, received {result.received}, done {result.done}")
            return 0
        if command == "mark-paid":
            order = await orders.mark_paid(args.oid, admin=args.admin, reason=args.reason)
            print(_order_line(order))
            return 0
        found = await orders.Order.get_or_none(oid=args.oid)
        if found is None:
            print(f"aquafleet: order {args.oid} not found", file=sys.stderr)
            return 1
        print(_order_line(found))
        for line in await orders.OrderLine.filter(order_id=found.id).order_by("position"):
            package = f" package {line.package_key}" if line.package_key else ""
            print(f"  {line.position}. {line.product_id} x{line.quantity}{package}: "
                  f"{line.amount_fen} fen")  # fmt: skip
        for move in await orders.transitions_of(found):
            print(f"  {move.created_at:%Y-%m-%dT%H:%M:%SZ} {move.event}: "
                  f"{move.from_state.name.lower()} -> {move.to_state.name.lower()} "
                  f"by {move.actor_role} {move.actor_id}: {move.reason}")  # fmt: skip
        return 0

    return _run(lambda: _with_database(settings, action))


def cmd_billing_close(args: argparse.Namespace) -> int:
    """Record what each device owes for a period (minimum consumption); safe to run twice."""
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.models.billing import close_billing_period_command
    from aquafleet.models.errors import DomainError

    async def run() -> int:
        try:
            summary = await close_billing_period_command(
                settings.resolved_database_url, args.period
            )
        except DomainError as exc:
            print(f"aquafleet: {exc.code}: {exc.message}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2, default=str))
        return 0

    return _run(run)


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args, data_dir=args.data_dir)
    configure_logging(settings.log_level, "console")
    from aquafleet.gateway.inspect import platform_status

    async def action() -> int:
        client = await _redis_for_commands(settings)
        try:
            status = await platform_status(settings, client)
        finally:
            if client is not None:
                await client.aclose()
        print(json.dumps(status, indent=2, default=str))
        return 0

    return _run(lambda: _with_database(settings, action))


# ----------------------------------------------------------------------------- config


def cmd_config(args: argparse.Namespace) -> int:
    if args.docs:
        sys.stdout.write(settings_reference())
        return 0
    settings = _settings(args, data_dir=args.data_dir)
    shown = settings.model_dump(mode="json")
    shown["master_secret"] = "(set)" if settings.master_secret else "(data_dir/master.key)"
    shown["resolved_database_url"] = settings.resolved_database_url
    print(json.dumps(shown, indent=2))
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aquafleet", description="IoT cloud platform for smart water purifiers."
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--data-dir", type=Path, help="override AQUAFLEET_DATA_DIR")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the TCP gateway and the REST API")
    serve.add_argument("--workers", type=int, help="gateway processes (default 1)")
    serve.add_argument("--tcp-port", type=int, help="device TCP port (default 7700)")
    serve.add_argument("--http-port", type=int, help="REST API port (default 8080)")
    serve.set_defaults(func=cmd_serve)

    ledger = commands.add_parser(
        "ledger", help="run a ledger writer alone (Redis streams -> database)"
    )
    ledger.set_defaults(func=cmd_ledger)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(func=cmd_migrate)

    vendors = commands.add_parser("vendors", help="manage vendors (brands)")
    vendor_commands = vendors.add_subparsers(dest="vendors_command", required=True)
    add = vendor_commands.add_parser("add", help="create a vendor")
    add.add_argument("code", help="4 characters A-Z/0-9, the prefix of its ids")
    add.add_argument("--name", required=True)
    add.set_defaults(func=cmd_vendors_add)

    admin = commands.add_parser("admin", help="manage admin accounts")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    create_platform = admin_commands.add_parser(
        "create-platform-admin",
        help="create a platform admin account (password from stdin or --password-file)",
        allow_abbrev=False,  # `--password X` must not pass for `--password-file X`
    )
    create_platform.add_argument("--user", required=True, help="user name (3-64 characters)")
    create_platform.add_argument(
        "--password-file", type=Path, help="file whose first line is the password"
    )
    create_platform.set_defaults(func=cmd_admin_create_platform)

    devices = commands.add_parser("devices", help="register and manage devices")
    device_commands = devices.add_subparsers(dest="devices_command", required=True)
    register = device_commands.add_parser("register", help="register a batch of devices")
    register.add_argument("--vendor", required=True, help="vendor code")
    register.add_argument("--count", type=int, required=True)
    register.add_argument("--out", required=True, help="CSV file for did,key (written once)")
    register.add_argument("--type", type=int, default=0, choices=[0, 1, 2, 3, 4, 8])
    register.add_argument("--model", default="")
    register.add_argument("--force", action="store_true", help="overwrite --out")
    register.set_defaults(func=cmd_devices_register)
    for name, text in (
        ("disable", "refuse its logins and disconnect it"),
        ("enable", "allow logins"),
    ):
        sub = device_commands.add_parser(name, help=text)
        sub.add_argument("did")
        sub.set_defaults(func=cmd_devices_state)
    show = device_commands.add_parser("show", help="registry, presence, meter and latest report")
    show.add_argument("did")
    show.set_defaults(func=cmd_devices_show)

    svc = commands.add_parser(
        "service", help="service state of devices: mode, volume quota, rental expiry, locks"
    )
    svc_commands = svc.add_subparsers(dest="service_command", required=True)

    def service_parser(name: str, text: str) -> argparse.ArgumentParser:
        sub = svc_commands.add_parser(name, help=text)
        sub.add_argument("did", nargs="*", help="device ids")
        sub.add_argument("--from", dest="from_csv", help="also every did of this CSV (did,key)")
        sub.add_argument("--actor", help="who makes the change (default cli:<user>)")
        sub.add_argument("--reason", default="", help="why (kept with the change)")
        sub.set_defaults(func=cmd_service)
        return sub

    configure = service_parser("configure", "set the billing mode and its starting values")
    configure.add_argument("--mode", type=int, required=True, choices=[1, 2, 3, 4, 8])
    configure.add_argument("--remaining-ml", type=int, help="volume rental: starting quota")
    configure.add_argument("--expires-at", type=int, help="time rental: unix seconds")
    configure.add_argument("--expires-in-days", type=int, help="time rental: from now")
    configure.add_argument("--low-balance-ml", type=int, help="volume rental: warn below this")
    top_up = service_parser("top-up", "add water to a volume quota (unlocks above 0)")
    top_up.add_argument("--ml", type=int, required=True)
    top_up.add_argument("--request-id", help="applied once however often it is retried")
    extend = service_parser("extend", "extend a time rental (unlocks an expired one)")
    extend_by = extend.add_mutually_exclusive_group(required=True)
    extend_by.add_argument("--package", choices=["30d", "60d", "90d", "180d", "360d"])
    extend_by.add_argument("--days", type=int)
    service_parser("lock", "lock a device (until unlocked)")
    service_parser("unlock", "lift a person's lock")
    service_parser("show", "the live service state")

    order_parser = commands.add_parser("orders", help="orders: list, show, mark paid, timers")
    order_commands = order_parser.add_subparsers(dest="orders_command", required=True)
    listing = order_commands.add_parser("list", help="the newest orders")
    listing.add_argument("--vid", help="one vendor's")
    listing.add_argument("--state", help="obligation, paid, delivered, ... (docs/api-shop.md)")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_orders)
    show_order = order_commands.add_parser("show", help="an order, its lines and its moves")
    show_order.add_argument("oid")
    show_order.set_defaults(func=cmd_orders)
    paid = order_commands.add_parser(
        "mark-paid", help="record an order as paid (platform admins; who and why are kept)"
    )
    paid.add_argument("oid")
    paid.add_argument("--admin", required=True, help="your platform admin user name")
    paid.add_argument("--reason", required=True, help="why, e.g. the bank transfer's number")
    paid.set_defaults(func=cmd_orders)
    timers = order_commands.add_parser(
        "run-timers", help="close unpaid, receive delivered and finish returned-window orders"
    )
    timers.add_argument("--unpaid-close-after-h", type=int, default=24)
    timers.add_argument("--auto-receive-after-d", type=int, default=10)
    timers.set_defaults(func=cmd_orders)

    billing = commands.add_parser("billing", help="billing periods (minimum consumption)")
    billing_commands = billing.add_subparsers(dest="billing_command", required=True)
    close = billing_commands.add_parser(
        "close-period", help="record each device's amount due for a period (idempotent)"
    )
    close.add_argument("period", help="a month (2026-11) or START/END in ISO 8601")
    close.set_defaults(func=cmd_billing_close)

    status = commands.add_parser("status", help="platform-wide counts (online, ledger backlog)")
    status.set_defaults(func=cmd_status)

    config = commands.add_parser("config", help="show the effective configuration")
    config.add_argument("--docs", action="store_true", help="print the settings reference")
    config.set_defaults(func=cmd_config)

    from aquafleet.simulators.cli import add_sim_parser

    add_sim_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"aquafleet: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"aquafleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from aquafleet.models.errors import DomainError

        if isinstance(exc, DomainError):
            print(f"aquafleet: {exc.message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
