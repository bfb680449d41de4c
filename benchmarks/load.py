"""End-to-end load benchmark: a real gateway, Redis and simulator on this machine.

Starts `aquafleet serve` (and, with --ledger-process, `aquafleet ledger`) in a scratch directory
against a Redis (the embedded one by default, or --redis-url with a fresh key prefix), registers
devices, runs `aquafleet sim` with the given options, and reports the simulator's figures plus
what the processes cost: CPU per process over the run, CPU per durable record, and the gateway's
RSS per connected device. Every figure in docs/benchmarks.md comes from this script.

Examples:
  python benchmarks/load.py --devices 2000 --sim "--window 16 --max-rate --duration 30"
  python benchmarks/load.py --devices 15000 --sim "--interval 60 --duration 40 --storm-at 20"
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def tree(pid: int) -> list[int]:
    found = [pid]
    for child in children(pid):
        found += tree(child)
    return found


def tree_cpu(pid: int) -> float:
    total = 0.0
    for member in tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(member)
    return total


def wait_healthy(port: int, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gateway did not become healthy")


def metrics(port: int) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        line.split()[0].removeprefix("aquafleet_"): int(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def redis_server_pids(workdir: Path, redis_url: str | None) -> list[int]:
    """The Redis processes of the run: the embedded one, a cluster's (started in workdir), or
    the first redis-server found for another URL."""
    if redis_url is None:
        pattern = str(workdir / "aquafleet-data" / "redis")
    elif redis_url.startswith("redis+cluster://"):
        ports = "|".join(p.name for p in (workdir / "redis-cluster").iterdir())
        pattern = f"redis-server 127.0.0.1:({ports}) "
    else:
        pattern = "redis-server"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in out if Path(f"/proc/{p}/comm").read_text().strip() == "redis-server"]
    if redis_url is not None and redis_url.startswith("redis+cluster://"):
        return pids
    return pids[:1]


def process_cpu(
    gateway_pid: int, redis_pids: list[int], ledger: subprocess.Popen[bytes] | None
) -> dict[str, float]:
    """CPU seconds so far: the serve process tree (minus an embedded Redis in it), Redis, ledger."""
    redis = sum(cpu_seconds(pid) for pid in redis_pids)
    embedded = any(pid in tree(gateway_pid) for pid in redis_pids)
    return {
        "gateway": tree_cpu(gateway_pid) - (redis if embedded else 0.0),
        "redis": redis,
        "ledger": cpu_seconds(ledger.pid) if ledger else 0.0,
    }


class Sampler(threading.Thread):
    """Peak RSS of the gateway while the simulator runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
            except FileNotFoundError:
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--sim", default="", help="extra `aquafleet sim` options (one string)")
    parser.add_argument(
        "--redis-url", help="use this Redis (a fresh key prefix) not an embedded one"
    )
    parser.add_argument(
        "--redis-cluster", action="store_true",
        help="start a Redis Cluster (3 masters + 3 replicas on loopback) in the scratch "
        "directory and run against it",
    )  # fmt: skip
    parser.add_argument("--database-url", help="default: SQLite in the scratch directory")
    parser.add_argument(
        "--ledger-process", action="store_true", help="run `aquafleet ledger` apart"
    )
    parser.add_argument(
        "--ledger-nice", type=int, default=0, help="nice value of the ledger process (0..19)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SETTING=VALUE",
        help="extra AQUAFLEET_ setting for every process, e.g. --set backlog_pause_records=2000000",
    )  # fmt: skip
    parser.add_argument(
        "--volume-quota-ml", type=int,
        help="put every device on volume rental with this quota first (metering draws it down)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="gateway processes")
    parser.add_argument("--tcp-port", type=int, default=7950)
    parser.add_argument("--http-port", type=int, default=8250)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", help="write the combined report here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="aquafleet-load-"))
    with contextlib.ExitStack() as stack:
        if args.redis_cluster:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.redis_cluster import redis_cluster

            cluster = stack.enter_context(redis_cluster(workdir / "redis-cluster"))
            args.redis_url = cluster.url
        return run_load(args, workdir)


def run_load(args: argparse.Namespace, workdir: Path) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({"AQUAFLEET_LOG_LEVEL": "warning", "AQUAFLEET_MAX_CONNECTIONS": "100000"})
    if args.redis_url:
        env["AQUAFLEET_REDIS_URL"] = args.redis_url
        env["AQUAFLEET_REDIS_PREFIX"] = f"bench{uuid.uuid4().hex[:8]}"
    if args.database_url:
        env["AQUAFLEET_DATABASE_URL"] = args.database_url
    if args.ledger_process:
        env["AQUAFLEET_LEDGER_WRITER"] = "false"
    for item in args.set:
        name, _, value = item.partition("=")
        env[f"AQUAFLEET_{name.upper()}"] = value
    cli = [sys.executable, "-m", "aquafleet.cli"]

    def run(*command: str) -> None:
        subprocess.run(
            [*cli, *command], cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL
        )

    run("vendors", "add", "BNCH", "--name", "Benchmark")
    run(
        "devices",
        "register",
        "--vendor",
        "BNCH",
        "--count",
        str(args.devices),
        "--out",
        "devices.csv",
    )
    with (workdir / "devices.csv").open() as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == args.devices

    serve = subprocess.Popen(
        [*cli, "serve", "--tcp-port", str(args.tcp_port), "--http-port", str(args.http_port),
         "--workers", str(args.workers)],
        cwd=workdir, env=env, stdout=(workdir / "serve.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    ledger = None
    try:
        wait_healthy(args.http_port)
        if args.volume_quota_ml is not None:
            run("service", "configure", "--from", "devices.csv", "--mode", "3",
                "--remaining-ml", str(args.volume_quota_ml), "--actor", "benchmark")  # fmt: skip
        if args.ledger_process:
            ledger = subprocess.Popen(
                ["nice", "-n", str(args.ledger_nice), *cli, "ledger"], cwd=workdir, env=env,
                stdout=(workdir / "ledger.log").open("w"), stderr=subprocess.STDOUT,
            )  # fmt: skip
        redis_pid = redis_server_pids(workdir, args.redis_url)
        gateway_pid = serve.pid
        rss_idle = rss_bytes(gateway_pid)
        before = process_cpu(gateway_pid, redis_pid, ledger)
        sampler = Sampler(gateway_pid)
        sampler.start()
        report_path = workdir / "sim.json"
        sim_command = [
            *cli, "sim", "--devices", str(args.devices), "--from", "devices.csv",
            "--tcp-port", str(args.tcp_port), "--report-json", str(report_path), "--quiet",
            *shlex.split(args.sim),
        ]  # fmt: skip
        started = time.monotonic()
        reaped_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        sim = subprocess.Popen(sim_command, cwd=workdir, env=env, stdout=subprocess.PIPE, text=True)
        sim_out, _ = sim.communicate()
        # The simulator (and its workers, which it reaps) is the only child reaped meanwhile.
        reaped_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        elapsed = time.monotonic() - started
        sampler.stop.set()
        after = process_cpu(gateway_pid, redis_pid, ledger)
        gateway_metrics = metrics(args.http_port)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        cpu = {name: round(after[name] - before[name], 2) for name in before}
        cpu["simulator"] = round(
            reaped_after.ru_utime
            + reaped_after.ru_stime
            - reaped_before.ru_utime
            - reaped_before.ru_stime,
            2,
        )
        records = gateway_metrics.get("records_stored", 0) + gateway_metrics.get(
            "records_duplicate", 0
        )
        combined = {
            "devices": args.devices,
            "sim_options": args.sim,
            "volume_quota_ml": args.volume_quota_ml,
            "elapsed_s": round(elapsed, 2),
            "sim_exit": sim.returncode,
            "cpu_s": cpu,
            "cpu_us_per_record": {
                name: round(seconds / records * 1e6, 2) if records else None
                for name, seconds in cpu.items()
            },
            "gateway_rss_idle_mb": round(rss_idle / 2**20, 1),
            "gateway_rss_peak_mb": round(sampler.peak_rss / 2**20, 1),
            "gateway_rss_per_device_kb": round(
                (sampler.peak_rss - rss_idle) / args.devices / 1024, 2
            ),
            "gateway_metrics": gateway_metrics,
            "sim_report": report,
        }
        print(sim_out)
        print(
            json.dumps(
                {k: v for k, v in combined.items() if k not in ("sim_report", "gateway_metrics")},
                indent=2,
            )
        )
        if args.json:
            Path(args.json).write_text(json.dumps(combined, indent=2))
        return 0 if sim.returncode == 0 else 1
    finally:
        for process in (ledger, serve):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)])
        else:
            print(f"scratch directory kept: {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
