"""The `aquafleet` command: serve, sim, devices, vendors, admin, service, orders, billing, status,
migrate, config."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

from aquafleet.commands.output import add_json_flag, fields, whole_number
from aquafleet.gateway.config import Settings
from aquafleet.gateway.config_sources import hide_password, load_settings, settings_reference
from aquafleet.gateway.errors import ConfigError, GatewayError
from aquafleet.gateway.logs import configure_logging, get_logger

if TYPE_CHECKING:
    from aquafleet.gateway.startup import Listeners

log = get_logger("aquafleet.cli")


# ----------------------------------------------------------------------------- helpers


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(getattr(args, "config", None), **overrides)


def _run(coro_factory: Callable[[], Awaitable[int]]) -> int:
    async def main() -> int:
        return await coro_factory()

    return uvloop.run(main())


# ----------------------------------------------------------------------------- serve


class _StoppedWhileStarting(BaseException):
    """SIGTERM before the event loop handles it: unwind start-up, as a later one would."""


def _stop_while_starting(_signum: int, _frame: object) -> None:
    raise _StoppedWhileStarting


def cmd_serve(args: argparse.Namespace) -> int:
    # Until the loop takes SIGTERM over (after the node's modules are imported: a second or
    # two), its default action would kill the process with status 143 where a stop exits 0.
    signal.signal(signal.SIGTERM, _stop_while_starting)
    try:
        return _serve(args)
    except _StoppedWhileStarting:
        log.info("serve_stopped_while_starting")
        return 0


def _serve(args: argparse.Namespace) -> int:
    from aquafleet.gateway.startup import DataDirLock, bind_listeners

    settings = _settings(
        args,
        workers=args.workers,
        tcp_port=args.tcp_port,
        http_port=args.http_port,
        data_dir=args.data_dir,
    )
    configure_logging(settings.log_level, settings.log_format)
    # Taken before anything starts, so a second serve fails at once with a one-line reason
    # (gateway/startup.py): the data dir first (it names the serve that has it), then the ports.
    # Only a data dir holding an embedded Redis is one serve's own: with a configured Redis,
    # nodes may share one (and a database named in database_url).
    lock = DataDirLock(settings.data_dir)
    if settings.redis_url is None:
        lock.acquire()
    log.info("serve_starting", data_dir=str(settings.data_dir), workers=settings.workers)
    try:
        listeners = bind_listeners(
            settings.tcp_host,
            settings.tcp_port,
            settings.http_host,
            settings.http_port,
            tcp_sockets=settings.workers,
            tcp_backlog=settings.tcp_backlog,
        )
        _log_backlog(settings.tcp_backlog, settings.workers)
        try:
            if settings.workers > 1:
                return _serve_workers(settings, listeners)
            return uvloop.run(_serve_one(settings, listeners, _announce(settings, listeners)))
        finally:
            listeners.close()
    finally:
        lock.release()


def _log_backlog(requested: int, sockets: int) -> None:
    """Say what the device sockets' queues really hold: Linux caps a backlog at somaxconn
    without a word, and raising that is the operator's (docs/deploy.md), never ours."""
    from aquafleet.gateway.startup import effective_backlog

    backlog, somaxconn = effective_backlog(requested)
    if backlog < requested:
        log.warning(
            "tcp_backlog_capped",
            requested=requested,
            backlog=backlog,
            somaxconn=somaxconn,
            hint="sysctl -w net.core.somaxconn=N (docs/deploy.md)",
        )
    log.info("tcp_listening", sockets=sockets, backlog_each=backlog)


def _announce(settings: Settings, listeners: Listeners) -> Callable[[], None]:
    from aquafleet.gateway.startup import ready_line

    line = ready_line(listeners, mqtt_url=settings.mqtt_url, workers=settings.workers)
    return lambda: print(line, flush=True)


async def _serve_one(
    settings: Settings, listeners: Listeners, ready: Callable[[], None] | None = None
) -> int:
    from aquafleet.node import serve
    from aquafleet.process_gc import freeze_startup_heap

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_ready(_: object) -> None:
        # Everything the node set up lives as long as the process: out of the collector's
        # sight, so that a reconnect storm's collections visit only the connections' objects.
        freeze_startup_heap()
        if ready is not None:
            ready()

    await serve(settings, stop=stop, listeners=listeners, ready=on_ready)
    return 0


def _worker_main(
    overrides: dict[str, Any], config: str | None, listeners: Listeners, ready: Any, index: int
) -> None:
    from aquafleet.gateway.embedded_redis import die_with_parent

    # Ctrl-C reaches the whole process group: the supervisor turns it into our SIGTERM, and
    # until our loop handles signals an interrupted import would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # a worker stops (gracefully) when its supervisor is gone
    settings = load_settings(Path(config) if config else None, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    try:
        uvloop.run(_serve_one(settings, listeners, lambda: ready.put(index)))
    except Exception as exc:
        message = _failure(exc)
        if message is None:
            raise
        # One line, as `serve` itself says it, not multiprocessing's traceback of a worker.
        print(f"aquafleet: worker {index}: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


def _serve_workers(settings: Settings, listeners: Listeners) -> int:
    """Run N nodes as processes accepting on the listeners bound here, and one Redis."""
    return uvloop.run(_supervise_workers(settings, listeners))


async def _supervise_workers(settings: Settings, listeners: Listeners) -> int:
    import contextlib

    from aquafleet.gateway.embedded_redis import embedded_redis
    from aquafleet.gateway.metrics import share_worker_metrics, worker_gone
    from aquafleet.models.db import migrate
    from aquafleet.node import unless_stopped

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            server = embedded_redis(settings.data_dir, port=settings.embedded_redis_port)
            entered = asyncio.ensure_future(stack.enter_async_context(server))
            if not await unless_stopped(entered, stop):
                return 0
            redis_url = entered.result().url
        if settings.migrate_on_start and not await unless_stopped(
            migrate(settings.resolved_database_url), stop
        ):
            return 0
        base = settings.resolved_node_id
        metrics_dir = share_worker_metrics(settings.data_dir / "metrics" / base)
        stack.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
        context = multiprocessing.get_context("spawn")
        ready = context.SimpleQueue()
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
                # One copy of the registry in the Redis they share: one worker keeps it (the
                # others would each re-read and re-write every changed device, a device's
                # first records activate it, all of them in a fresh fleet's first minute).
                "registry_sync": settings.registry_sync and index == 0,
            }
            config = os.environ.get("AQUAFLEET_CONFIG")
            process = context.Process(
                target=_worker_main,
                args=(overrides, config, listeners.for_worker(index), ready, index),
                daemon=False,
            )
            process.start()
            processes.append(process)
        announce, started = _announce(settings, listeners), set[int]()
        # The workers hold the sockets now (each its own device socket). Ours would keep the
        # ports open after they closed theirs (stopping, or one dying): the kernel would go on
        # queueing connections on a socket nobody accepts from.
        listeners.close()
        log.info("workers_started", workers=len(processes), pids=[p.pid for p in processes])
        while not stop.is_set() and all(p.is_alive() for p in processes):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
            if len(started) < len(processes):
                while not ready.empty():
                    started.add(ready.get())
                if len(started) == len(processes):
                    announce()  # every worker serves: one line, once
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            await asyncio.to_thread(process.join, settings.shutdown_grace_s + 15)
            if process.pid is not None:
                worker_gone(metrics_dir, process.pid)
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
        from aquafleet.process_gc import LEDGER_GEN0_THRESHOLD, freeze_startup_heap

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # As a node does: the start-up heap (Tortoise's models, the migrations' modules) out of
        # the collector's sight. A ledger batch's rows live until it is committed: with
        # Python's 700 every batch pushed thousands of objects into the oldest generation and
        # set off full collections of the whole heap (gc_collect_main: ~8% of the writer's
        # samples at window 1, py-spy --native), and with a node's 10,000 young collections of
        # each batch's rows still cost ~3 us a record; young collections only after
        # LEDGER_GEN0_THRESHOLD allocations (aquafleet/process_gc.py).
        await run_ledger(
            settings,
            stop=stop,
            ready=lambda: freeze_startup_heap(LEDGER_GEN0_THRESHOLD),
            metrics_port=args.metrics_port,
        )
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


# ----------------------------------------------------------------------------- config


def cmd_config(args: argparse.Namespace) -> int:
    if args.docs:
        sys.stdout.write(settings_reference())
        return 0
    settings = _settings(args, data_dir=args.data_dir)
    shown = {
        name: hide_password(value) if isinstance(value, str) else value
        for name, value in settings.model_dump(mode="json").items()
    }
    shown["master_secret"] = "(set)" if settings.master_secret else "(data_dir/master.key)"
    shown["resolved_database_url"] = hide_password(settings.resolved_database_url)
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        print(fields([(name, json.dumps(v) if isinstance(v, dict | list) else v)
                      for name, v in shown.items()]))  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- parser


class CommandParser(argparse.ArgumentParser):
    """An unknown option is reported by the command it was given to, with that command's
    options (argparse's default names only the top-level usage: `serve --port` said nothing
    of `--tcp-port`)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self._subparsers:  # a leaf command: nobody below to take them
            self.error(self._unknown(extras))
        return parsed, extras

    def _unknown(self, extras: list[str]) -> str:
        import difflib

        options = sorted(
            {o for action in self._actions for o in action.option_strings if o.startswith("--")}
        )
        message = f"unrecognized arguments: {' '.join(extras)}"
        for extra in extras:
            name = extra.split("=", 1)[0]
            if not name.startswith("--"):
                continue
            close = difflib.get_close_matches(name, options, n=2, cutoff=0.5)
            close += [o for o in options if o.endswith(name[1:]) and o not in close]
            if close:
                message += f"; did you mean {' or '.join(close[:2])}?"
                break
        return message + f"\n{self.prog} takes: {', '.join(options)}"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
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
    ledger.add_argument(
        "--metrics-port", type=whole_number(1, 65535),
        help="serve the writer's Prometheus metrics (aquafleet_ledger_*) at /metrics on this "
        "port of http_host (default: none)",
    )  # fmt: skip
    ledger.set_defaults(func=cmd_ledger)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(func=cmd_migrate)

    from aquafleet.commands import (
        accounts,
        billing,
        commissions,
        devices,
        fleet,
        money,
        orders,
        payments,
        service,
        tickets,
    )

    accounts.add_parsers(commands)
    devices.add_parsers(commands)
    service.add_parsers(commands)
    orders.add_parsers(commands)
    billing.add_parsers(commands)
    money.add_parsers(commands)
    payments.add_parsers(commands)
    commissions.add_parsers(commands)
    tickets.add_parsers(commands)
    fleet.add_parsers(commands)

    config = commands.add_parser("config", help="show the effective configuration")
    config.add_argument("--docs", action="store_true", help="print the settings reference")
    add_json_flag(config)
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
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _failure(exc)
        if message is None:
            raise
        print(f"aquafleet: {message}", file=sys.stderr)
        return 1


def _failure(exc: Exception) -> str | None:
    """The one line an operator sees for a typed error (ours); None for a bug (a traceback)."""
    from aquafleet.models.errors import DomainError

    if isinstance(exc, GatewayError):
        return str(exc)
    if isinstance(exc, DomainError):
        return exc.message
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
