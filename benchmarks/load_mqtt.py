"""End-to-end MQTT load benchmark: `benchmarks/load.py` with the purifiers on MQTT.

Starts a private Mosquitto on a free port (so the run disturbs no other broker user), then runs
load.py (gateway, Redis, simulator) with the gateway's bridge pointed at it and every simulated
purifier on MQTT; `--workers N` gives N gateway processes, i.e. N bridge consumers sharing the
uplink. Reports load.py's figures plus Mosquitto's CPU over the run, and every process's CPU
per record the simulator saw acked (`cpu_us_per_acked_record`, which needs no `/metrics`;
load.py's own per-record figures divide by the node's `/metrics` count, all workers included).

Examples (docs/benchmarks.md, "MQTT transport", has the measured ones):
  python benchmarks/load_mqtt.py --devices 500 \
      --sim "--window 8 --max-rate --duration 20 --workers 2"
  python benchmarks/load_mqtt.py --devices 500 --workers 2 \
      --sim "--window 8 --max-rate --duration 20 --workers 2"
  python benchmarks/load_mqtt.py --devices 500 --reference tcp --rounds 2 \
      --sim "--window 8 --max-rate --duration 20 --seed 1 --workers 2"
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import load  # benchmarks/load.py, beside this file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(port: int) -> subprocess.Popen[bytes]:
    broker = subprocess.Popen(
        ["mosquitto", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return broker
        time.sleep(0.05)
    broker.kill()
    raise SystemExit("mosquitto did not start")


def per_acked_record(combined: dict[str, Any]) -> dict[str, float | None]:
    """Every process's CPU per record the simulator saw acked, in µs."""
    acked = combined.get("sim_report", {}).get("records", {}).get("acked") or 0
    return {
        name: round(seconds / acked * 1e6, 1) if acked else None
        for name, seconds in combined["cpu_s"].items()
    }


def run_tcp(args: argparse.Namespace) -> dict[str, Any]:
    """The same load on the TCP path (the reference of `--reference tcp`)."""
    report = Path(tempfile.mkstemp(prefix="aquafleet-tcp-", suffix=".json")[1])
    try:
        sys.argv = [
            "load.py", "--devices", str(args.devices), "--workers", str(args.workers),
            "--sim", args.sim, "--json", str(report), *args.load_args,
        ]  # fmt: skip
        code = load.main()
        combined = json.loads(report.read_text()) if report.stat().st_size else {}
    finally:
        report.unlink(missing_ok=True)
    sim = combined.get("sim_report", {})
    return {
        "exit": code,
        "durable_per_s": sim.get("records", {}).get("durable_per_s"),
        "acked": sim.get("records", {}).get("acked"),
        "check_passed": sim.get("check", {}).get("passed"),
        "cpu_us_per_acked_record": per_acked_record(combined),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--sim", default="", help="extra `aquafleet sim` options (one string)")
    parser.add_argument("--workers", type=int, default=1, help="gateway processes (bridges)")
    parser.add_argument("--json", help="write the combined report here")
    parser.add_argument(
        "--reference", choices=["tcp"],
        help="after each MQTT run, the same load over TCP; prints the gateway's CPU per record "
        "on MQTT over TCP's, per round",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="MQTT runs (each with its reference)")
    parser.add_argument(
        "load_args", nargs="*", help="more load.py options, after --, e.g. -- --redis-url ..."
    )
    args = parser.parse_args()
    if not args.reference:
        return run_mqtt(args)
    rows = []
    code = 0
    for number in range(1, args.rounds + 1):
        print(f"--- round {number}/{args.rounds}: mqtt", file=sys.stderr, flush=True)
        mqtt_json = Path(tempfile.mkstemp(prefix="aquafleet-mqtt-round-", suffix=".json")[1])
        one = argparse.Namespace(**{**vars(args), "json": str(mqtt_json)})
        code = run_mqtt(one) or code
        mqtt = json.loads(mqtt_json.read_text()) if mqtt_json.stat().st_size else {}
        mqtt_json.unlink(missing_ok=True)
        print(f"--- round {number}/{args.rounds}: tcp", file=sys.stderr, flush=True)
        tcp = run_tcp(args)
        code = tcp["exit"] or code
        ours = mqtt.get("cpu_us_per_acked_record", {}).get("gateway")
        theirs = tcp["cpu_us_per_acked_record"].get("gateway")
        rows.append({
            "round": number,
            "mqtt_durable_per_s": mqtt.get("sim_report", {}).get("records", {}).get(
                "durable_per_s"),
            "tcp_durable_per_s": tcp["durable_per_s"],
            "mqtt_cpu_us_per_acked_record": mqtt.get("cpu_us_per_acked_record"),
            "tcp_cpu_us_per_acked_record": tcp["cpu_us_per_acked_record"],
            "gateway_ratio_mqtt_over_tcp": round(ours / theirs, 2) if ours and theirs else None,
            "exactly_once": [mqtt.get("sim_report", {}).get("check", {}).get("passed"),
                             tcp["check_passed"]],
        })  # fmt: skip
    report = {"reference": "the same load over TCP, interleaved", "rounds": rows}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return code


def run_mqtt(args: argparse.Namespace) -> int:
    port = free_port()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    broker = start_broker(port)
    report = Path(tempfile.mkstemp(prefix="aquafleet-mqtt-", suffix=".json")[1])
    try:
        before = load.cpu_seconds(broker.pid)
        sys.argv = [
            "load.py", "--devices", str(args.devices), "--workers", str(args.workers),
            "--set", f"mqtt_url=mqtt://127.0.0.1:{port}", "--set", f"mqtt_topic_prefix={prefix}",
            "--sim", f"--transport mqtt --mqtt-port {port} --mqtt-prefix {prefix} {args.sim}",
            "--json", str(report), *args.load_args,
        ]  # fmt: skip
        code = load.main()
        broker_cpu = load.cpu_seconds(broker.pid) - before
        combined = json.loads(report.read_text()) if report.stat().st_size else {}
        metrics = combined.get("gateway_metrics", {})
        records = metrics.get("records_stored_total", 0) + metrics.get("records_duplicate_total", 0)
        combined["cpu_s"]["mosquitto"] = round(broker_cpu, 2)
        combined["cpu_us_per_record"]["mosquitto"] = (
            round(broker_cpu / records * 1e6, 2) if records else None
        )
        sim = combined.get("sim_report", {})
        acked = sim.get("records", {}).get("acked") or 0
        combined["cpu_us_per_acked_record"] = per_acked_record(combined)
        summary = {
            "devices": args.devices,
            "bridges": args.workers,
            "durable_per_s": sim.get("records", {}).get("durable_per_s"),
            "acked": acked,
            # Resent by devices after 5 s without an ACK: messages the broker or the bridge
            # dropped (the bridge counts its own drops in mqtt_uplinks_dropped).
            "resent": sim.get("records", {}).get("resent"),
            "ack_latency_ms": sim.get("ack_latency_ms"),
            "check_passed": sim.get("check", {}).get("passed"),
            "cpu_s": combined["cpu_s"],
            "cpu_us_per_acked_record": combined["cpu_us_per_acked_record"],
            "mqtt": {k: v for k, v in metrics.items() if k.startswith("mqtt_")},
        }
        print(json.dumps(summary, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(combined, indent=2))
        return code
    finally:
        broker.terminate()
        broker.wait(10)
        report.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
