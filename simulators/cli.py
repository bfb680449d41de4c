"""`aquafleet sim`: run virtual purifiers against a gateway and report what it did."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from aquafleet.simulators.options import DEVICES_PER_WORKER, SimError, SimOptions, load_devices


class _DeprecatedPort(argparse.Action):
    """`sim --port`: the old name of `--tcp-port`; still works, with a warning."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        print("aquafleet sim: --port is deprecated: use --tcp-port", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_sim_parser(commands: Any) -> None:
    sim = commands.add_parser(
        "sim",
        help="run simulated purifiers against a gateway (load test)",
        description="Run N virtual purifiers (TCP, MQTT or both) against a gateway, with a live "
        "progress line on stderr and a final report; exit 0 only when nothing unexpected "
        "happened and "
        "the exactly-once check held.",
    )
    sim.add_argument("--devices", type=int, required=True, help="virtual purifiers to run")
    sim.add_argument(
        "--from", dest="devices_csv", type=Path, required=True, help="CSV with header did,key"
    )
    sim.add_argument("--host", default="127.0.0.1", help="gateway TCP host (default 127.0.0.1)")
    sim.add_argument(
        "--tcp-port", dest="port", type=int, default=7700,
        help="gateway TCP port, as `serve --tcp-port` (default 7700)",
    )  # fmt: skip
    sim.add_argument(
        "--port", dest="port", type=int, action=_DeprecatedPort, help=argparse.SUPPRESS
    )
    sim.add_argument(
        "--duration", type=float, default=60.0, help="seconds of reporting (default 60)"
    )
    sim.add_argument(
        "--interval", type=float, default=10.0, help="seconds between reports (default 10)"
    )
    sim.add_argument(
        "--max-rate",
        action="store_true",
        help="report continuously, as fast as the window allows (each record adds 0-300 ml)",
    )
    sim.add_argument(
        "--window", type=int, default=1, help="unacked records in flight per device (default 1)"
    )
    sim.add_argument(
        "--draw-gap",
        type=float,
        default=30.0,
        help="mean idle seconds between two draws (default 30)",
    )
    sim.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        help="abrupt link drops per device per minute (default 0)",
    )
    sim.add_argument(
        "--reboot-rate",
        type=float,
        default=0.0,
        help="power cycles per device per minute (default 0)",
    )
    sim.add_argument(
        "--storm-at",
        type=float,
        default=None,
        help="seconds after start at which every device drops and reconnects at once",
    )
    sim.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"worker processes (default: ceil(devices / {DEVICES_PER_WORKER}))",
    )
    sim.add_argument(
        "--source-ips",
        type=int,
        default=4,
        help="spread connections over 127.0.0.1..127.0.0.K, loopback hosts only (default 4)",
    )
    sim.add_argument(
        "--connect-rate",
        type=float,
        default=5000.0,
        help="connection starts per second overall, 0 unlimited (default 5000)",
    )
    sim.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds a TCP connect may take before the device gives up and tries again "
        "(default 10; a modem's own is often 60-75)",
    )
    sim.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to wait at the end for every record to be acked (default 30)",
    )
    sim.add_argument(
        "--check",
        choices=["db", "none"],
        default="db",
        help="exactly-once check against the platform database (default db)",
    )
    sim.add_argument(
        "--check-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the ledger (default 60)",
    )
    sim.add_argument(
        "--database-url", default=None, help="database to check (default: the configuration's)"
    )
    sim.add_argument(
        "--use-watermark",
        action="store_true",
        help="at login, forget unacked records at or below AUTH_OK's watermark",
    )
    sim.add_argument(
        "--transport",
        choices=["tcp", "mqtt", "mixed"],
        default="tcp",
        help="tcp (GPRS), mqtt (ESP8266 through a broker) or mixed (default tcp)",
    )
    sim.add_argument(
        "--mqtt-fraction",
        type=float,
        default=0.5,
        help="with --transport mixed: the share of purifiers on MQTT (default 0.5)",
    )
    sim.add_argument("--mqtt-host", default="127.0.0.1", help="MQTT broker host")
    sim.add_argument("--mqtt-port", type=int, default=1883, help="MQTT broker port (1883)")
    sim.add_argument(
        "--mqtt-prefix", default="aq", help="topic prefix, the gateway's mqtt_topic_prefix (aq)"
    )
    sim.add_argument(
        "--mqtt-client-id-prefix",
        default="",
        help="client id = this + did (default none: the did, as the broker ACL expects)",
    )
    sim.add_argument("--report-json", type=Path, default=None, help="write the report here")
    sim.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    sim.add_argument("--quiet", action="store_true", help="no progress line")
    sim.set_defaults(func=cmd_sim)


def options_from_args(args: argparse.Namespace) -> SimOptions:
    devices = load_devices(args.devices_csv, args.devices)
    database_url = args.database_url
    if args.check == "db" and not database_url:
        from aquafleet.gateway.config_sources import load_settings

        settings = load_settings(args.config, data_dir=args.data_dir)
        settings.require_platform_data()  # the check would make an empty database, not read one
        database_url = settings.resolved_database_url
    options = SimOptions(
        devices=devices,
        host=args.host,
        port=args.port,
        duration_s=args.duration,
        interval_s=args.interval,
        max_rate=args.max_rate,
        window=args.window,
        draw_gap_s=args.draw_gap,
        drop_rate=args.drop_rate,
        reboot_rate=args.reboot_rate,
        storm_at_s=args.storm_at,
        workers=args.workers,
        source_ips=args.source_ips,
        connect_rate=args.connect_rate,
        connect_timeout_s=args.connect_timeout,
        drain_timeout_s=args.drain_timeout,
        check=args.check,
        check_timeout_s=args.check_timeout,
        database_url=database_url,
        use_watermark=args.use_watermark,
        seed=args.seed,
        transport=args.transport,
        mqtt_fraction=args.mqtt_fraction,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        mqtt_prefix=args.mqtt_prefix,
        mqtt_client_id_prefix=args.mqtt_client_id_prefix,
    )
    options.validate()
    return options


def cmd_sim(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except SimError as exc:
        print(f"aquafleet sim: {exc}", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(_main(options, args))


async def _main(options: SimOptions, args: argparse.Namespace) -> int:
    from aquafleet.simulators.progress import Progress
    from aquafleet.simulators.runner import run_simulation

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    progress = None if args.quiet else Progress(sys.stderr)
    try:
        report = await run_simulation(options, progress=progress, stop=stop, freeze_heap=True)
    except SimError as exc:
        print(f"aquafleet sim: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(report.render_text())
    sys.stdout.flush()
    if args.report_json is not None:
        report.write_json(args.report_json)
    return report.exit_code
