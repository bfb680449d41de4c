"""The simulator's CPU per storm reconnect: one gateway worker, one simulator process.

Starts `aquafleet serve --workers 1` in a scratch directory (embedded Redis, SQLite), registers
the devices and runs `aquafleet sim --workers 1` (the fleet runs in the sim process itself, on
uvloop). A thread reads the simulator's, the gateway's and Redis' own CPU clocks (utime + stime
from /proc/<pid>/stat; the simulator's user and system apart too) every 0.25 s; the storm's
moment is the sample after which the simulator's open descriptors (one per connection) fell by
half. It reports, per dropped device:

- storm: the CPU used in [storm - 0.5 s, storm + --window s] (the drop, the reconnects, the
  logins, the first acks) less what the same process uses per second in the steady part
  before the storm ([storm - 16 s, storm - 1 s]) times the window's length;
- the storm's recovery time, the exactly-once check and the login failures, as the simulator
  reports them (a run whose logins failed redid them: not comparable).

The window is fixed (not "until the last device is back") so runs that recover at different
speeds are compared over the same span; it must cover the recovery (the script says when not).

Example (about two minutes a run):
  python benchmarks/sim_storm_cpu.py --devices 15000
  python benchmarks/sim_storm_cpu.py --devices 15000 --py-spy storm.txt  # Python lines
  python benchmarks/sim_storm_cpu.py --devices 15000 --perf storm.data  # on-CPU, kernel too
  python benchmarks/sim_storm_cpu.py --devices 15000 --py-spy gw.txt --profile gateway
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from load import CLK_TCK, cpu_seconds, free_port, tree, wait_healthy  # benchmarks/load.py

SAMPLE_S = 0.25
STEADY_FROM_S, STEADY_TO_S = 16.0, 1.0  # before the storm
STORM_LEAD_S = 0.5


class CpuTimeline(threading.Thread):
    """(wall time, {name: CPU seconds}) every SAMPLE_S until stopped; and the storm's moment:
    from `watch_from` (wall) on, the simulator's open descriptors are counted at each sample
    until they fall by half (every connection is one): the storm came after the sample before."""

    def __init__(self, pids: dict[str, list[int]], sim_pid: int, watch_from: float) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.sim_pid = sim_pid
        self.watch_from = watch_from
        self.storm_after: float | None = None
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def watch_storm(self, now: float, last: tuple[float, int] | None) -> tuple[float, int] | None:
        if self.storm_after is not None or now < self.watch_from:
            return last
        try:
            files = len(os.listdir(f"/proc/{self.sim_pid}/fd"))
        except FileNotFoundError:
            return last
        if last is not None and files < last[1] // 2:
            self.storm_after = last[0]
        return (now, files)

    def read(self) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for name, pids in self.pids.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    total += cpu_seconds(pid)
            cpu[name] = total
        user, system = user_system(self.sim_pid)
        cpu["simulator_user"], cpu["simulator_system"] = user, system
        return cpu

    def run(self) -> None:
        last: tuple[float, int] | None = None
        while not self.stop.is_set():
            now = time.time()
            self.samples.append((now, self.read()))
            last = self.watch_storm(now, last)
            self.stop.wait(SAMPLE_S)

    def at(self, wall: float) -> dict[str, float]:
        """The CPU clocks at `wall`, interpolated between the two samples around it."""
        times = [t for t, _ in self.samples]
        i = bisect.bisect_left(times, wall)
        if i <= 0 or i >= len(times):
            raise SystemExit(f"no CPU samples around {wall:.2f} (run too short?)")
        (t0, a), (t1, b) = self.samples[i - 1], self.samples[i]
        share = (wall - t0) / (t1 - t0)
        return {name: a[name] + (b[name] - a[name]) * share for name in a}


def user_system(pid: int) -> tuple[float, float]:
    """A process's own user and system CPU seconds (its children's left out)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def storm_figures(timeline: CpuTimeline, storm_at: float, window: float, devices: int) -> Any:
    steady_start, steady_end = storm_at - STEADY_FROM_S, storm_at - STEADY_TO_S
    before, after = timeline.at(steady_start), timeline.at(steady_end)
    start, end = timeline.at(storm_at - STORM_LEAD_S), timeline.at(storm_at + window)
    span = window + STORM_LEAD_S
    figures: dict[str, Any] = {}
    for name in before:
        steady_rate = (after[name] - before[name]) / (steady_end - steady_start)
        storm_cpu = end[name] - start[name]
        above = storm_cpu - steady_rate * span
        figures[name] = {
            "steady_cores": round(steady_rate, 3),
            "storm_window_cpu_s": round(storm_cpu, 2),
            "storm_above_steady_cpu_s": round(above, 2),
            "us_per_reconnect": round(above / devices * 1e6, 1),
        }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=15000)
    parser.add_argument("--duration", type=float, default=80.0)
    parser.add_argument("--storm-at", type=float, default=40.0)
    parser.add_argument("--window", type=float, default=15.0, help="seconds after the storm")
    parser.add_argument("--sim", default="", help="extra `aquafleet sim` options")
    parser.add_argument("--tcp-port", type=int, help="the node's device port (default: a free one)")
    parser.add_argument("--http-port", type=int, help="the node's HTTP port (default: a free one)")
    parser.add_argument("--py-spy", metavar="FILE", help="py-spy the simulator in the window")
    parser.add_argument(
        "--perf", metavar="FILE", help="perf record (cpu-clock, on-CPU only) the simulator"
    )
    parser.add_argument(
        "--profile", choices=("simulator", "gateway"), default="simulator",
        help="the process --py-spy / --perf record",
    )  # fmt: skip
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    args.tcp_port = args.tcp_port or free_port()
    args.http_port = args.http_port or free_port()

    workdir = Path(tempfile.mkdtemp(prefix="aquafleet-simstorm-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({"AQUAFLEET_LOG_LEVEL": "warning", "AQUAFLEET_MAX_CONNECTIONS": "100000"})
    cli = [sys.executable, "-m", "aquafleet.cli"]

    def run(*command: str) -> None:
        subprocess.run(
            [*cli, *command], cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL
        )

    run("migrate")  # makes the platform's data dir; other commands refuse one missing
    run("vendors", "add", "BNCH", "--name", "Benchmark")
    run("devices", "register", "--vendor", "BNCH", "--count", str(args.devices),
        "--out", "devices.csv")  # fmt: skip
    serve = subprocess.Popen(
        [*cli, "serve", "--tcp-port", str(args.tcp_port), "--http-port", str(args.http_port),
         "--workers", "1"],
        cwd=workdir, env=env, stdout=(workdir / "serve.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    spy: subprocess.Popen[bytes] | None = None
    try:
        wait_healthy(args.http_port)
        report_path = workdir / "sim.json"
        load_before = os.getloadavg()
        sim = subprocess.Popen(
            [*cli, "sim", "--devices", str(args.devices), "--from", "devices.csv",
             "--tcp-port", str(args.tcp_port), "--report-json", str(report_path), "--quiet",
             "--interval", "60", "--duration", str(args.duration),
             "--storm-at", str(args.storm_at), "--workers", "1", "--seed", "1",
             "--check-timeout", "180", *shlex.split(args.sim)],
            cwd=workdir, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        processes = tree(serve.pid)  # serve (the one gateway worker) and the embedded Redis
        redis = [
            p for p in processes if Path(f"/proc/{p}/comm").read_text().strip() == "redis-server"
        ]
        gateway = [p for p in processes if p not in redis]
        timeline = CpuTimeline(
            {"simulator": [sim.pid], "gateway": gateway, "redis": redis},
            sim.pid,
            watch_from=time.time() + args.storm_at - 3.0,  # the fleet starts a second or two later
        )
        timeline.start()
        profiled = sim.pid if args.profile == "simulator" else serve.pid
        if args.py_spy or args.perf:
            while timeline.storm_after is None and sim.poll() is None:
                time.sleep(0.05)
        if args.py_spy:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(profiled),
                 "-r", "200", "-d", str(int(args.window)), "--native", "-f", "raw",
                 "-o", args.py_spy],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        elif args.perf:
            spy = subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", "500", "-g", "-p", str(profiled),
                 "-o", args.perf, "--", "sleep", str(args.window)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        out, _ = sim.communicate()
        timeline.stop.set()
        timeline.join(5)
        load_after = os.getloadavg()
        report = json.loads(report_path.read_text())
        storm = report["storm"]
        storm_at = timeline.storm_after
        if storm_at is None:
            raise SystemExit("the storm was not seen (the descriptors never fell by half)")
        recovery = storm["storm_recovery_s"]
        check = (report.get("check") or {}).get("passed")
        result = {
            "devices": args.devices,
            "dropped": storm["devices_dropped"],
            "storm_recovery_s": recovery,
            "window_s": args.window,
            "window_covers_recovery": recovery is not None and recovery < args.window,
            "exactly_once": check,
            "login_failure_codes": report["login"]["failure_codes"],
            "connects": report["connect"]["attempts"],
            "load_average_before_after": [
                [round(v, 2) for v in load_before],
                [round(v, 2) for v in load_after],
            ],
            "cpu": storm_figures(timeline, storm_at, args.window, storm["devices_dropped"]),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        if sim.returncode != 0:
            print(out, file=sys.stderr)
        return 0 if sim.returncode == 0 and check else 1
    finally:
        if spy is not None:
            spy.wait(60)
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
        subprocess.run(["rm", "-rf", str(workdir)])


if __name__ == "__main__":
    sys.exit(main())
