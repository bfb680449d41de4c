"""End-to-end load benchmark: a real gateway, Redis and simulator on this machine.

Starts `aquafleet serve` (and, with --ledger-process, `aquafleet ledger`) in a scratch directory
against a Redis (the embedded one by default, or --redis-url with a fresh key prefix), registers
devices, runs `aquafleet sim` with the given options, and reports the simulator's figures plus
what the processes cost: CPU per process over the run, CPU per durable record, and the gateway's
RSS per connected device. Every figure in docs/benchmarks.md comes from this script.

With `--reference mosquitto` each round of aquafleet is followed by a round of Mosquitto relaying
QoS 1 messages (benchmarks/mqtt_reference.py: as many connections, the same window and duration)
and the report gives the ratios: aquafleet's server CPU per durable record (gateway + Redis +
ledger) over the broker's CPU per relayed message, and the two rates. The machine is shared, so
absolute rates drift; the ratio of two interleaved runs is the figure that carries over.

Each ratio comes twice. The **whole run** counts the CPU from before the simulator starts to its
end, the devices' logins included (a login is key derivation, MACs and Redis lookups: seconds of
CPU for 2,000 devices that are not per-record work). The **steady state** counts the CPU and the
records (`records_stored_total + records_duplicate_total` from /metrics) from the moment every
device is logged in (the node's `devices_online + mqtt_devices` gauges reach --devices; /metrics
is polled until then and not after) to the end; the reference's from the moment all of its
publishers are connected (they start together then) to the end. The steady state is the figure
for CPU per record; the whole run is kept for continuity with earlier reports. With a gateway of
several workers a scrape sees the other workers' counters up to 1 s old (gateway/metrics.py).

Examples:
  python benchmarks/load.py --devices 2000 --sim "--window 16 --max-rate --duration 30"
  python benchmarks/load.py --devices 2000 --ledger-process --reference mosquitto --rounds 2 \
      --sim "--window 1 --max-rate --duration 20 --seed 1 --workers 2"
  python benchmarks/load.py --devices 15000 --sim "--interval 60 --duration 40 --storm-at 20"
  python benchmarks/load.py --devices 45000 --workers 3 --sim "--interval 60 --duration 150 \
      --storm-at 45 --workers 3 --connect-rate 2000 --connect-timeout 60 --check-timeout 300"

With `--workers N` the gateway's RSS is summed over serve and its workers (an embedded Redis
left out), and the report lists the most open files each of them held: a process may hold at
most `ulimit -n` (20,000 here), so 45,000 devices need 3 workers and 3 simulator processes.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def kernel_seconds(pid: int) -> float:
    """The system (kernel) part of `cpu_seconds`: stime + cstime."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[12]) + int(fields[14])) / CLK_TCK


def tree_kernel(pid: int) -> float:
    total = 0.0
    for member in tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += kernel_seconds(member)
    return total


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def children(pid: int) -> list[int]:
    """The process's children, from /proc (no pgrep: a pgrep a second cost the run ~10% of a
    core, and its CPU landed in the simulator's reaped-children figure)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for thread in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found += map(int, Path(f"/proc/{pid}/task/{thread}/children").read_text().split())
    return found


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
    """The node's unlabelled samples (`records_stored_total`, ...), as integers."""
    return {name: int(value) for name, value in metric_values(port).items()}


def metering_rounds(port: int) -> dict[str, float] | None:
    """The gateway's metering rounds over the run: how many, records a round, and the mean wall
    time of a round (the script call) and of a record's wait from its round's first arrival to
    its ACK. A round that waits for the CPU holds its records in the gateway (docs/benchmarks.md:
    past ~40 ms, Linux sends a pure TCP ACK for each)."""
    values = metric_values(port)
    rounds = values.get("meter_rounds_total") or values.get("meter_round_seconds_count")
    if not rounds:
        return None
    return {
        "rounds": int(rounds),
        "records_per_round": round(values.get("records_received_total", 0) / rounds, 1),
        "round_ms_mean": round(values["meter_round_seconds_sum"] / rounds * 1000, 2),
        "ack_wait_ms_mean": round(values["ack_latency_seconds_sum"] / rounds * 1000, 2),
    }


def metric_values(port: int) -> dict[str, float]:
    """A process' unlabelled samples as they are (a histogram's `_sum` is seconds)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        sample.name.removeprefix("aquafleet_"): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def ledger_shape(port: int) -> dict[str, float | None]:
    """What the ledger process' transactions held over the run (`aquafleet ledger
    --metrics-port`): records and stream entries a transaction, and how long one held the
    database. A window-1 record costs the ledger an index page per device in its transaction,
    so records a transaction is what its CPU a record follows (docs/benchmarks.md)."""
    sample = metric_values(port)
    transactions = sample.get("ledger_transaction_seconds_count", 0)
    if not transactions:
        return {"transactions": 0, "records_per_transaction": None}
    return {
        "transactions": int(transactions),
        "records_per_transaction": round(
            sample.get("ledger_records_written_total", 0) / transactions
        ),
        "entries_per_transaction": round(
            sample.get("ledger_entries_written_total", 0) / transactions, 1
        ),
        "transaction_ms_mean": round(
            sample["ledger_transaction_seconds_sum"] / transactions * 1000, 1
        ),
    }


def logged_in(sample: dict[str, int]) -> int:
    """Devices with a session on the node (TCP and MQTT) in one /metrics scrape."""
    return sample.get("devices_online", 0) + sample.get("mqtt_devices", 0)


def records_counted(sample: dict[str, int]) -> int:
    """Records the node metered (made durable, or acked again as resends) in one scrape."""
    return sample.get("records_stored_total", 0) + sample.get("records_duplicate_total", 0)


@dataclass(frozen=True, slots=True)
class Mark:
    """One moment of a run: monotonic time, CPU seconds so far per process, records so far."""

    at: float
    cpu: dict[str, float]
    records: int


def window_figures(start: Mark, end: Mark) -> dict[str, Any]:
    """CPU per process and per record between two marks (the records counted over the same
    window as the CPU)."""
    records = end.records - start.records
    cpu = {name: round(end.cpu[name] - start.cpu[name], 2) for name in start.cpu}
    return {
        "window_s": round(end.at - start.at, 2),
        "records": records,
        "cpu_s": cpu,
        "cpu_us_per_record": {
            name: round((end.cpu[name] - start.cpu[name]) / records * 1e6, 2)
            if records > 0
            else None
            for name in start.cpu
        },
    }


def median(values: list[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return round((ordered[middle - 1] + ordered[middle]) / 2, 2)


class SteadyWatch(threading.Thread):
    """Polls the node's /metrics while the simulator runs until every device is logged in, then
    takes the steady state's start mark (CPU read right after the scrape that showed it) and
    stops polling, so the scrapes cost the node nothing inside the window."""

    POLL_S = 0.2

    def __init__(
        self,
        http_port: int,
        devices: int,
        read_cpu: Callable[[], dict[str, float]],
        read_rss: Callable[[], int],
        on_mark: Callable[[], None] | None = None,
    ):
        super().__init__(daemon=True)
        self.http_port = http_port
        self.devices = devices
        self.read_cpu = read_cpu
        self.read_rss = read_rss
        self.on_mark = on_mark
        self.mark: Mark | None = None
        self.rss_logged_in: int | None = None  # the gateway's RSS once every device is in
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                sample = metrics(self.http_port)
            except OSError:
                sample = {}
            if logged_in(sample) >= self.devices:
                cpu = self.read_cpu()
                self.mark = Mark(time.monotonic(), cpu, records_counted(sample))
                self.rss_logged_in = self.read_rss()
                if self.on_mark is not None:
                    self.on_mark()
                return
            self.stop.wait(self.POLL_S)


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
    """CPU seconds so far: the serve process tree (minus an embedded Redis in it), Redis, ledger;
    and of each, the kernel's part (`<name>_kernel`: system calls, the network stack, the
    writes of the ledger's files), which the broker's relay is almost all of."""
    redis = sum(cpu_seconds(pid) for pid in redis_pids)
    redis_kernel = sum(kernel_seconds(pid) for pid in redis_pids)
    embedded = any(pid in tree(gateway_pid) for pid in redis_pids)
    return {
        "gateway": tree_cpu(gateway_pid) - (redis if embedded else 0.0),
        "redis": redis,
        "ledger": cpu_seconds(ledger.pid) if ledger else 0.0,
        "gateway_kernel": tree_kernel(gateway_pid) - (redis_kernel if embedded else 0.0),
        "redis_kernel": redis_kernel,
        "ledger_kernel": kernel_seconds(ledger.pid) if ledger else 0.0,
    }


def wait_settled(pid: int, timeout: float = 60) -> None:
    """Return once the process has spent under 20 ms of CPU in half a second (it is up)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now
    raise SystemExit(f"process {pid} kept busy for {timeout} s after its start")


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, PermissionError):
        return 0


def gateway_pids(serve_pid: int, redis_pids: list[int]) -> list[int]:
    """The serve process and its workers (with --workers N), an embedded Redis left out."""
    return [pid for pid in tree(serve_pid) if pid not in redis_pids]


def gateway_rss(serve_pid: int, redis_pids: list[int]) -> int:
    total = 0
    for pid in gateway_pids(serve_pid, redis_pids):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += rss_bytes(pid)
    return total


class Sampler(threading.Thread):
    """Peak RSS of the gateway (summed over its processes) while the simulator runs, and the
    most open files each of its processes held (a worker near the per-process limit, 20,000
    here, could not accept more)."""

    def __init__(self, serve_pid: int, redis_pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.serve_pid = serve_pid
        self.redis_pids = redis_pids
        self.peak_rss = 0
        self.peak_files: dict[int, int] = {}
        self.stop = threading.Event()

    RSS_EVERY_S = 0.5
    FILES_EVERY = 4  # RSS samples: listing 15,000 descriptors costs ~10 ms a process

    def run(self) -> None:
        ticks = 0
        while not self.stop.wait(self.RSS_EVERY_S):
            pids = gateway_pids(self.serve_pid, self.redis_pids)
            if not pids:
                return
            rss = 0
            for pid in pids:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    rss += rss_bytes(pid)
            self.peak_rss = max(self.peak_rss, rss)
            if ticks % self.FILES_EVERY == 0:
                for pid in pids:
                    self.peak_files[pid] = max(self.peak_files.get(pid, 0), open_files(pid))
            ticks += 1


SEGMENT_FIELDS = ("segs_out", "data_segs_out", "data_segs_in")


def server_segments(port: int) -> tuple[int, dict[str, int]]:
    """The established TCP sockets whose local port is `port` (the server's side of every
    device or client connection) and their segment counters summed (`ss -ti`, the kernel's
    tcp_info): segments sent, those that carried data, data segments received."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    totals = dict.fromkeys(SEGMENT_FIELDS, 0)
    sockets = 0
    for token in out.split():
        name, _, value = token.partition(":")
        if name in totals and value.isdigit():
            totals[name] += int(value)
            sockets += name == "segs_out"
    return sockets, totals


class SegmentWatch(threading.Thread):
    """The server's TCP segments per record received, over the steady state: how many segments
    without data (pure ACKs) the server's side sends per data segment it receives.

    Linux acknowledges a received segment on its own (a pure ACK) unless the application's
    answer leaves within the delayed-ACK timeout, at least 40 ms after the segment arrived
    (TCP_DELACK_MIN), or the socket is in its "ping-pong" (interactive) mode, which it leaves
    after any answer slower than that. An answer in time carries the ACK; one later costs a
    packet more each way, and both kernels' work for it (docs/benchmarks.md, session 16).
    Sampled with `ss` every second from the steady mark (`mark_start`) while `expected`
    sockets are established; the figure is between the first and the last such sample."""

    EVERY_S = 1.0

    def __init__(self, port: int, expected: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.expected = expected
        self.first: dict[str, int] | None = None
        self.last: dict[str, int] | None = None
        self.marked = threading.Event()
        self.stop = threading.Event()

    def mark_start(self) -> None:
        self.marked.set()

    def run(self) -> None:
        self.marked.wait()
        while not self.stop.is_set():
            sockets, totals = server_segments(self.port)
            if sockets >= self.expected:
                if self.first is None:
                    self.first = totals
                self.last = totals
            elif self.first is not None:
                return  # the clients are closing: the last full sample stands
            self.stop.wait(self.EVERY_S)

    def figures(self) -> dict[str, Any] | None:
        if self.first is None or self.last is None or self.last is self.first:
            return None
        delta = {name: self.last[name] - self.first[name] for name in SEGMENT_FIELDS}
        received = delta["data_segs_in"]
        pure = delta["segs_out"] - delta["data_segs_out"]
        return {
            "data_segments_received": received,
            "segments_sent": delta["segs_out"],
            "pure_acks_sent": pure,
            "pure_acks_per_data_segment_received": round(pure / received, 3) if received else None,
        }


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
    parser.add_argument(
        "--redis-nice", type=int, default=0,
        help="nice value given to the Redis server(s) once started (negative: run them before "
        "the other processes; as root): whether a metering round waiting for the CPU is what "
        "holds a record in the gateway past the 40 ms delayed-ACK timeout",
    )  # fmt: skip
    parser.add_argument(
        "--sim-nice", type=int, default=0,
        help="nice value of the load generator (the simulator, and the reference's clients): "
        "on a shared box the clients then yield the CPU to the server under test",
    )  # fmt: skip
    parser.add_argument(
        "--backlog", type=int,
        help="tcp_backlog of every worker's device socket; as root, also raise net.core.somaxconn"
        " and net.ipv4.tcp_max_syn_backlog to it for the run (restored after): the sysctls an "
        "operator sets for storms (docs/deploy.md)",
    )  # fmt: skip
    # Free ports by default: with fixed ones a node left over from another run (or another
    # person's) answered the health check, and the run measured the wrong process.
    parser.add_argument("--tcp-port", type=int, help="the node's device port (default: a free one)")
    parser.add_argument("--http-port", type=int, help="the node's HTTP port (default: a free one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", help="write the combined report here")
    parser.add_argument(
        "--reference", choices=["mosquitto"],
        help="also run the reference (benchmarks/mqtt_reference.py against a private Mosquitto:"
        " QoS 1, as many connections, the same window and duration) and print the ratios",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=None,
        help="aquafleet runs (each followed by a reference run with --reference); default 1, "
        "2 with --reference",
    )  # fmt: skip
    args = parser.parse_args()
    args.tcp_port = args.tcp_port or free_port()
    args.http_port = args.http_port or free_port()
    rounds = args.rounds or (2 if args.reference else 1)
    if sched_autogroup():
        print(
            "note: kernel.sched_autogroup_enabled=1: other sessions' work competes with this "
            "run even at nice 19 (see sched_autogroup() in this file)",
            file=sys.stderr,
        )
    results: list[dict[str, Any]] = []
    code = 0
    for number in range(1, rounds + 1):
        print(f"--- round {number}/{rounds}: aquafleet", file=sys.stderr, flush=True)
        combined, round_code = run_aquafleet(args)
        code = code or round_code
        entry: dict[str, Any] = {"aquafleet": combined}
        if args.reference:
            print(f"--- round {number}/{rounds}: mosquitto", file=sys.stderr, flush=True)
            entry["mosquitto"] = run_mosquitto(args)
        results.append(entry)
    if args.reference:
        report = reference_report(results)
        print(json.dumps(report, indent=2))
        print(ratio_summary(report))
        if args.json:
            Path(args.json).write_text(json.dumps({**report, "runs": results}, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(results[-1]["aquafleet"], indent=2))
    return code


def sim_options(sim: str) -> argparse.Namespace:
    """The simulator options the reference run copies: window, duration, workers."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--workers", type=int)
    known, _ = parser.parse_known_args(shlex.split(sim))
    return known


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def niced(value: int) -> list[str]:
    """A command prefix that runs it at nice `value` (none for 0)."""
    return ["nice", "-n", str(value)] if value else []


def run_mosquitto(args: argparse.Namespace) -> dict[str, Any]:
    """One reference run: a private Mosquitto (no persistence, no queue limits: nothing is
    dropped, so every message published is relayed) and the benchmark's own QoS 1 client with as
    many publishers as devices, the simulator's window, duration and worker processes."""
    import mqtt_reference  # benchmarks/mqtt_reference.py, beside this file

    sim = sim_options(args.sim)
    workers = sim.workers or -(-args.devices // 8000)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="aquafleet-ref-"))
    config = workdir / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\nlog_type none\n"
        f"max_connections -1\n"
    )
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port)
        before = cpu_seconds(broker.pid)
        started: list[tuple[float, float]] = []  # its CPU, kernel's part, when all are connected

        segments = SegmentWatch(port, args.devices + 1)  # the publishers and the subscriber
        segments.start()

        def on_start() -> None:
            started.append((cpu_seconds(broker.pid), kernel_seconds(broker.pid)))
            segments.mark_start()

        result = mqtt_reference.run(
            port, args.devices, sim.window, sim.duration, workers, on_start=on_start,
            nice=args.sim_nice,
        )  # fmt: skip
        segments.marked.set()
        segments.stop.set()
        segments.join(10)
        end, end_kernel = cpu_seconds(broker.pid), kernel_seconds(broker.pid)
        broker_cpu = end - before
        steady_cpu = end - started[0][0]
        steady_kernel = end_kernel - started[0][1]
    finally:
        broker.terminate()
        broker.wait(10)
        subprocess.run(["rm", "-rf", str(workdir)])
    relayed = result["received"]
    return {
        **result,
        "window": sim.window,
        "tcp_segments": segments.figures(),
        "broker_cpu_s": round(broker_cpu, 2),
        "broker_cpu_us_per_message": round(broker_cpu / relayed * 1e6, 2) if relayed else None,
        # From the moment every publisher is connected (none published before it) to the end.
        "steady_state": {
            "broker_cpu_s": round(steady_cpu, 2),
            "relayed": relayed,
            "broker_cpu_us_per_message": round(steady_cpu / relayed * 1e6, 2) if relayed else None,
            "broker_kernel_us_per_message": round(steady_kernel / relayed * 1e6, 2)
            if relayed
            else None,
        },
    }


def wait_listening(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


SERVER = ("gateway", "redis", "ledger")


def reference_report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round: aquafleet's server CPU per durable record (gateway + Redis + ledger) against
    Mosquitto's CPU per relayed message, over the whole run and over the steady state, and the
    two rates (the simulator's durable rate is its steady state's already)."""
    rows = []
    for number, entry in enumerate(results, 1):
        ours, ref = entry["aquafleet"], entry["mosquitto"]
        per_record = ours["cpu_us_per_record"]
        server = sum(per_record[name] or 0.0 for name in SERVER)
        durable = ours["sim_report"].get("records", {}).get("durable_per_s") or 0.0
        broker = ref["broker_cpu_us_per_message"] or float("nan")
        steady = ours.get("steady_state", {})
        steady_server = (
            round(sum(steady["cpu_us_per_record"][name] or 0.0 for name in SERVER), 2)
            if steady.get("cpu_us_per_record")
            else None
        )
        steady_broker = ref.get("steady_state", {}).get("broker_cpu_us_per_message")
        rows.append({
            "round": number,
            "aquafleet_durable_per_s": durable,
            "mosquitto_relayed_per_s": ref["relayed_per_s"],
            "rate_ratio": round(durable / (ref["relayed_per_s"] or float("nan")), 3),
            "aquafleet_server_cpu_us_per_record": round(server, 2),
            "aquafleet_cpu_us_per_record": per_record,
            "mosquitto_cpu_us_per_message": ref["broker_cpu_us_per_message"],
            "cpu_ratio": round(server / broker, 2),
            "aquafleet_logged_in_after_s": steady.get("logged_in_after_s"),
            "aquafleet_steady_window_s": steady.get("window_s"),
            "aquafleet_steady_records": steady.get("records"),
            "aquafleet_steady_server_cpu_us_per_record": steady_server,
            "aquafleet_steady_cpu_us_per_record": steady.get("cpu_us_per_record"),
            "mosquitto_steady_cpu_us_per_message": steady_broker,
            "mosquitto_steady_kernel_us_per_message": ref.get("steady_state", {}).get(
                "broker_kernel_us_per_message"
            ),
            "cpu_ratio_steady": round(steady_server / steady_broker, 2)
            if steady_server and steady_broker
            else None,
            "exactly_once": ours["sim_report"].get("check", {}).get("passed"),
            "ledger_transactions": ours.get("ledger"),
            "aquafleet_pure_acks_per_record": pure_acks(ours),
            "aquafleet_metering_rounds": ours.get("metering_rounds"),
            "mosquitto_pure_acks_per_message": pure_acks(ref),
            "mosquitto_published_relayed": [ref["published"], ref["received"]],
        })  # fmt: skip
    steady_ratios = [row["cpu_ratio_steady"] for row in rows if row["cpu_ratio_steady"]]
    return {
        "reference": "mosquitto QoS 1, same connections, window and duration, interleaved",
        "ratios": {
            "cpu_ratio": "whole run: CPU from before the simulator starts, logins included",
            "cpu_ratio_steady": "steady state: CPU and records from every device logged in "
            "(every publisher connected) to the end: the CPU per record",
        },
        "rounds": rows,
        "cpu_ratio_median": median([row["cpu_ratio"] for row in rows]),
        "cpu_ratio_steady_median": median(steady_ratios)
        if len(steady_ratios) == len(rows)
        else None,
    }


def ratio_summary(report: dict[str, Any]) -> str:
    """The printed verdict: both ratios per round, each saying which it is."""

    def listed(key: str) -> str:
        return ", ".join("n/a" if r[key] is None else f"{r[key]:.2f}x" for r in report["rounds"])

    def med(key: str) -> str:
        value = report[key]
        return "n/a" if value is None else f"{value:.2f}x"

    return (
        "server CPU per record / Mosquitto's CPU per message, by round:\n"
        f"  steady state (every device logged in to the end): {listed('cpu_ratio_steady')}"
        f" (median {med('cpu_ratio_steady_median')})\n"
        f"  whole run (logins included):                      {listed('cpu_ratio')}"
        f" (median {med('cpu_ratio_median')})"
        + "".join(kernel_line(row) + acks_line(row) for row in report["rounds"])
    )


def pure_acks(run: dict[str, Any]) -> float | None:
    """Pure ACKs the server's sockets sent per data segment they received (SegmentWatch)."""
    return (run.get("tcp_segments") or {}).get("pure_acks_per_data_segment_received")


def acks_line(row: dict[str, Any]) -> str:
    """A round's pure ACKs per record received, the server's side of each connection."""
    ours = row.get("aquafleet_pure_acks_per_record")
    ref = row.get("mosquitto_pure_acks_per_message")
    if ours is None or ref is None:
        return ""
    rounds = row.get("aquafleet_metering_rounds")
    metered = (
        f"\n  round {row['round']}, metering rounds: {rounds['rounds']} of "
        f"{rounds['records_per_round']:.0f} records, {rounds['round_ms_mean']:.1f} ms a round "
        f"(wall), {rounds['ack_wait_ms_mean']:.1f} ms from a round's first record to its ACKs"
        if rounds
        else ""
    )
    return (
        f"\n  round {row['round']}, pure ACKs sent per data segment received: aquafleet's "
        f"device sockets {ours:.2f}, Mosquitto's {ref:.2f}" + metered
    )


def kernel_line(row: dict[str, Any]) -> str:
    """A round's steady-state CPU per record split into the kernel's part and the rest."""
    ours = row.get("aquafleet_steady_cpu_us_per_record") or {}
    broker, broker_kernel = (
        row.get("mosquitto_steady_cpu_us_per_message"),
        row.get("mosquitto_steady_kernel_us_per_message"),
    )
    if broker is None or broker_kernel is None or ours.get("gateway_kernel") is None:
        return ""
    parts = ", ".join(
        f"{name} {ours[f'{name}_kernel']:.1f} of {ours[name]:.1f}"
        for name in SERVER
        if ours.get(name) is not None and ours.get(f"{name}_kernel") is not None
    )
    return (
        f"\n  round {row['round']}, kernel's part (µs): {parts}; "
        f"Mosquitto {broker_kernel:.1f} of {broker:.1f}"
    )


LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies", "TCPReqQFullDrop")


def listen_counters() -> dict[str, int]:
    """The kernel's counters of connections a full listen queue dropped (whole machine)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return {name: table.get(name, 0) for name in LISTEN_COUNTERS}
    return {}


BACKLOG_SYSCTLS = ("net/core/somaxconn", "net/ipv4/tcp_max_syn_backlog")
AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def sched_autogroup() -> int | None:
    """kernel.sched_autogroup_enabled (None where absent). With it on, the scheduler shares the
    CPU between sessions before it looks at nice: work started in another terminal or by
    another agent's shell takes its session's share even at nice 19, and a benchmark run
    beside it is slowed as if it were not niced at all. Off (`echo 0 > /proc/sys/kernel/
    sched_autogroup_enabled`, root), nice 19 work yields to the benchmark as intended."""
    try:
        return int(AUTOGROUP.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def kernel_backlog(backlog: int | None) -> Iterator[dict[str, int]]:
    """Raise the kernel's backlog limits to `backlog` for the run and restore them after. Only
    the benchmark does this, and only as root (the product never touches sysctls)."""
    paths = [Path("/proc/sys") / name for name in BACKLOG_SYSCTLS]
    before = {str(path): int(path.read_text()) for path in paths}
    if backlog is None:
        yield before
        return
    if os.geteuid() != 0:
        raise SystemExit(
            "--backlog raises net.core.somaxconn and net.ipv4.tcp_max_syn_backlog: run as root, "
            "or set them yourself and pass --set tcp_backlog=N"
        )
    try:
        for path in paths:
            path.write_text(str(max(backlog, before[str(path)])))
        yield {str(path): int(path.read_text()) for path in paths}
    finally:
        for path in paths:
            path.write_text(str(before[str(path)]))


def run_aquafleet(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """One full run (scratch directory, node, devices, simulator): its report and exit code."""
    workdir = Path(tempfile.mkdtemp(prefix="aquafleet-load-"))
    with contextlib.ExitStack() as stack:
        args.kernel = stack.enter_context(kernel_backlog(args.backlog))
        if args.redis_cluster:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.redis_cluster import redis_cluster

            cluster = stack.enter_context(redis_cluster(workdir / "redis-cluster"))
            args.redis_url = cluster.url
        return run_load(args, workdir)


def run_load(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({"AQUAFLEET_LOG_LEVEL": "warning", "AQUAFLEET_MAX_CONNECTIONS": "100000"})
    if args.redis_url:
        env["AQUAFLEET_REDIS_URL"] = args.redis_url
        env["AQUAFLEET_REDIS_PREFIX"] = f"bench{uuid.uuid4().hex[:8]}"
    if args.database_url:
        env["AQUAFLEET_DATABASE_URL"] = args.database_url
    if args.ledger_process:
        env["AQUAFLEET_LEDGER_WRITER"] = "false"
    if args.backlog is not None:
        env["AQUAFLEET_TCP_BACKLOG"] = str(args.backlog)
    for item in args.set:
        name, _, value = item.partition("=")
        env[f"AQUAFLEET_{name.upper()}"] = value
    cli = [sys.executable, "-m", "aquafleet.cli"]

    def run(*command: str) -> None:
        subprocess.run(
            [*cli, *command], cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL
        )

    run("migrate")  # makes the platform's data dir; other commands refuse one missing
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
        ledger_port = free_port()
        if args.ledger_process:
            ledger = subprocess.Popen(
                ["nice", "-n", str(args.ledger_nice), *cli, "ledger", "--metrics-port",
                 str(ledger_port)], cwd=workdir, env=env,
                stdout=(workdir / "ledger.log").open("w"), stderr=subprocess.STDOUT,
            )  # fmt: skip
        redis_pid = redis_server_pids(workdir, args.redis_url)
        for pid in redis_pid if args.redis_nice else ():
            os.setpriority(os.PRIO_PROCESS, pid, args.redis_nice)
        if ledger is not None:
            # Its start (imports, database schema) is not per-record work: measure from idle.
            wait_settled(ledger.pid)
        gateway_pid = serve.pid
        rss_idle = gateway_rss(gateway_pid, redis_pid)
        before = process_cpu(gateway_pid, redis_pid, ledger)
        load_before = os.getloadavg()
        listen_before = listen_counters()
        sampler = Sampler(gateway_pid, redis_pid)
        sampler.start()
        report_path = workdir / "sim.json"
        sim_command = [
            *niced(args.sim_nice), *cli, "sim", "--devices", str(args.devices),
            "--from", "devices.csv",
            "--tcp-port", str(args.tcp_port), "--report-json", str(report_path), "--quiet",
            *shlex.split(args.sim),
        ]  # fmt: skip
        started = time.monotonic()
        reaped_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        segments = SegmentWatch(args.tcp_port, args.devices)
        segments.start()
        watch = SteadyWatch(
            args.http_port,
            args.devices,
            lambda: process_cpu(gateway_pid, redis_pid, ledger),
            lambda: gateway_rss(gateway_pid, redis_pid),
            on_mark=segments.mark_start,
        )
        sim = subprocess.Popen(sim_command, cwd=workdir, env=env, stdout=subprocess.PIPE, text=True)
        watch.start()
        sim_out, _ = sim.communicate()
        watch.stop.set()
        watch.join(10)
        segments.marked.set()  # never marked: let it end
        segments.stop.set()
        segments.join(10)
        # The simulator (and its workers, which it reaps) is the only child reaped meanwhile.
        reaped_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        elapsed = time.monotonic() - started
        listen_after = listen_counters()
        sampler.stop.set()
        after = process_cpu(gateway_pid, redis_pid, ledger)
        ended = time.monotonic()
        gateway_metrics = metrics(args.http_port)
        rounds_metered = metering_rounds(args.http_port)
        ledger_metrics = ledger_shape(ledger_port) if ledger is not None else None
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        cpu = {name: round(after[name] - before[name], 2) for name in before}
        cpu["simulator"] = round(
            reaped_after.ru_utime
            + reaped_after.ru_stime
            - reaped_before.ru_utime
            - reaped_before.ru_stime,
            2,
        )
        records = records_counted(gateway_metrics)
        steady: dict[str, Any] = {"from": "every device logged in", "to": "the simulator's end"}
        if watch.mark is None:
            steady["not_reached"] = "not every device was logged in at once while it ran"
        else:
            steady["logged_in_after_s"] = round(watch.mark.at - started, 2)
            steady.update(window_figures(watch.mark, Mark(ended, after, records)))
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
            "steady_state": steady,
            "tcp_segments": segments.figures(),
            "sim_nice": args.sim_nice,
            "redis_nice": args.redis_nice,
            "workers": args.workers,
            "kernel_backlog_limits": getattr(args, "kernel", {}),
            "kernel_sched_autogroup": sched_autogroup(),
            "tcp_backlog": env.get("AQUAFLEET_TCP_BACKLOG", "default"),
            "kernel_listen_drops": {
                name: listen_after[name] - listen_before.get(name, 0) for name in listen_after
            },
            "load_average_before_after": [
                [round(v, 2) for v in load_before],
                [round(v, 2) for v in os.getloadavg()],
            ],
            "gateway_open_files_peak": sorted(sampler.peak_files.values(), reverse=True),
            "gateway_rss_idle_mb": round(rss_idle / 2**20, 1),
            "gateway_rss_peak_mb": round(sampler.peak_rss / 2**20, 1),
            "gateway_rss_per_device_kb": round(
                (sampler.peak_rss - rss_idle) / args.devices / 1024, 2
            ),
            # Every device logged in, before any storm: what a connected device holds (the peak
            # above falls in a storm, when old and new connections are alive at once).
            "gateway_rss_logged_in_mb": (
                round(watch.rss_logged_in / 2**20, 1) if watch.rss_logged_in else None
            ),
            "gateway_rss_per_logged_in_device_kb": (
                round((watch.rss_logged_in - rss_idle) / args.devices / 1024, 2)
                if watch.rss_logged_in
                else None
            ),
            "ledger": ledger_metrics,
            "metering_rounds": rounds_metered,
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
        return combined, 0 if sim.returncode == 0 else 1
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
