"""Command round-trip latency: REST call to device result, same node and across nodes.

Two `aquafleet serve` processes (A and B) share one Redis and one database; `aquafleet sim`
runs half the devices against each, reporting in the background. The benchmark logs in to A's
REST API as a platform admin and sends `dispense` commands with `wait_ms` (the answer comes when
the device's RESULT is in): to devices on A (same node) and on B (cross node: A routes through
Redis to B, B brings the result back). It prints p50/p90/p99/p999/max per path.

    .venv/bin/python benchmarks/command_latency.py --devices 10000 --commands 3000 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import hashlib
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import uvloop

PASSWORD = "bench-password-1"
FLOOR = "http_floor"  # GET /healthz at the same rhythm: what any request costs here
AUTH_FLOOR = "auth_me"  # GET /api/v1/auth/me: token check and one database lookup, no device
COMMAND_PATHS = 2  # same_node, cross_node
REDIS_FLOOR = "redis_ping"  # the load client's own PING to the same Redis: the machine's delay
STAGE_MARKS = ("created_at", "sent_at", "delivered_at", "done_at")
STAGE_NAMES = (
    "request_to_logged",  # HTTP, auth, device lookup, the create step
    "logged_to_sent",  # the route through Redis to the device's node, written to the socket
    "sent_to_delivered",  # the device's ACK recorded
    "delivered_to_result",  # the device's RESULT recorded
    "result_to_answer",  # "res" to the issuing node, the waiter wakes, reads, answers
)


def _ms(stamp: str) -> float:
    moment = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return moment.timestamp() * 1000


def wait_healthy(port: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return json.loads(resp.read())["data"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


LAG = "aquafleet_event_loop_lag_seconds"


def loop_lag_buckets(http_port: int) -> dict[float, float]:
    """A node's event_loop_lag_seconds histogram: cumulative count per bucket bound."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == LAG
        for sample in family.samples
        if sample.name == f"{LAG}_bucket"
    }


def loop_lag_over(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """The loop's lag while the commands ran: the 0.1 s ticks, the bucket bound under which
    99% of them ran, and how many ran more than 10 ms late."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    ticks = delta.get(float("inf"), 0.0)
    p99 = next((le for le, n in delta.items() if ticks and n >= 0.99 * ticks), None)
    return {
        "ticks": int(ticks),
        "p99_at_most_ms": None if p99 is None else round(p99 * 1000, 1),
        "late_over_10ms": int(ticks - delta.get(0.01, 0.0)),
    }


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {}
    return {
        "count": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 50), 2),
        "p90_ms": round(percentile(latencies_ms, 90), 2),
        "p99_ms": round(percentile(latencies_ms, 99), 2),
        "p999_ms": round(percentile(latencies_ms, 99.9), 2),
        "max_ms": round(max(latencies_ms), 2),
        "mean_ms": round(statistics.fmean(latencies_ms), 2),
    }


async def run_commands(
    http_port: int, token: str, targets: dict[str, list[str]], count: int, concurrency: int,
    seed: int, rate: float, redis_url: str,
) -> dict[str, Any]:  # fmt: skip
    """`count` commands per path, paths interleaved. With `rate` > 0, commands start at that
    many per second (Poisson arrivals, open loop: latency counts from the planned start, so a
    stalled server is not hidden by fewer requests); with 0, `concurrency` run back to back."""
    rng = random.Random(seed)
    targets = {**targets, FLOOR: [""], AUTH_FLOOR: [""], REDIS_FLOOR: [""]}
    plan = [(path, rng.choice(dids)) for path, dids in targets.items() for _ in range(count)]
    rng.shuffle(plan)
    latencies: dict[str, list[float]] = {path: [] for path in targets}
    # Where the time goes, from the command's own timestamps (ms resolution, same clock).
    stages: dict[str, dict[str, list[float]]] = {path: {} for path in targets}
    failures: dict[str, dict[str, int]] = {path: {} for path in targets}
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{http_port}/api/v1/devices"
    body = {"op": "dispense", "ml": 10, "wait_ms": 5000, "timeout_s": 30}

    async def one(session: aiohttp.ClientSession, path: str, did: str, planned: float) -> None:
        wall_started = time.time() - (time.perf_counter() - planned)
        if path == FLOOR:  # the harness and HTTP alone: a trivial endpoint, same rhythm
            async with session.get(f"http://127.0.0.1:{http_port}/healthz") as resp:
                await resp.read()
            latencies[path].append((time.perf_counter() - planned) * 1000)
            return
        if path == AUTH_FLOOR:  # what any authenticated request costs: token, one lookup
            async with session.get(
                f"http://127.0.0.1:{http_port}/api/v1/auth/me", headers=headers
            ) as resp:
                await resp.read()
                ok = resp.status == 200
            if ok:
                latencies[path].append((time.perf_counter() - planned) * 1000)
            else:
                failures[path][f"http_{resp.status}"] = failures[path].get(
                    f"http_{resp.status}", 0) + 1  # fmt: skip
            return
        if path == REDIS_FLOOR:  # no aquafleet code at all: one Redis round trip from here
            await redis_client.ping()
            latencies[path].append((time.perf_counter() - planned) * 1000)
            return
        async with session.post(f"{base}/{did}/commands", json=body, headers=headers) as resp:
            answer = await resp.json()
        elapsed_ms = (time.perf_counter() - planned) * 1000
        wall_done = time.time()
        data = answer.get("data") or {}
        state = data.get("state") if answer.get("status") else None
        if state == "succeeded":
            latencies[path].append(elapsed_ms)
            marks = [wall_started * 1000, *(_ms(data[k]) for k in STAGE_MARKS), wall_done * 1000]
            for name, (begin, end) in zip(STAGE_NAMES, itertools.pairwise(marks), strict=True):
                stages[path].setdefault(name, []).append(end - begin)
        else:
            key = state or answer.get("code", f"http_{resp.status}")
            failures[path][key] = failures[path].get(key, 0) + 1

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            path, did = queue.get_nowait()
            await one(session, path, did, time.perf_counter())

    async def open_loop(session: aiohttp.ClientSession) -> None:
        running: set[asyncio.Task[None]] = set()
        planned = time.perf_counter()
        # `rate` counts commands (both command paths); each reference path runs at the same
        # rhythm as one command path.
        arrivals = rate * len(targets) / COMMAND_PATHS
        for path, did in plan:
            planned += rng.expovariate(arrivals)
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(session, path, did, planned))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)

    connector = aiohttp.TCPConnector(limit=0 if rate > 0 else concurrency)
    redis_client = aioredis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession(connector=connector) as session, redis_client:
        await redis_client.ping()  # connected before the clock runs
        started = time.perf_counter()
        if rate > 0:
            await open_loop(session)
        else:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "elapsed_s": round(elapsed, 2),
        "commands_per_s": round(len(plan) / elapsed, 1),
        "paths": {path: summary(values) for path, values in latencies.items()},
        "stages_ms": {
            path: {
                name: {"p50": round(percentile(v, 50), 1), "p99": round(percentile(v, 99), 1)}
                for name, v in by_stage.items()
            }
            for path, by_stage in stages.items()
        },
        "failures": failures,
    }


async def login(http_port: int) -> str:
    pwd = hashlib.md5(PASSWORD.encode()).hexdigest()
    url = f"http://127.0.0.1:{http_port}/api/v1/auth/login"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"user": "bench", "pwd": pwd}) as resp,
    ):
        answer = await resp.json()
    assert answer["status"], answer
    return str(answer["data"]["access_token"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000, help="split over the two nodes")
    parser.add_argument("--commands", type=int, default=3000, help="per path (same, cross)")
    parser.add_argument(
        "--rate", type=float, default=50.0,
        help="commands started per second (same and cross node together), open loop; each "
        "reference path at the rhythm of one command path (0: back to back, see --concurrency)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, default=8, help="with --rate 0: commands in flight"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="background report period")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", help="default: SQLite in the scratch directory")
    parser.add_argument(
        "--ledger-inline", action="store_true",
        help="write the ledger inside each gateway process (default: one `aquafleet ledger`)",
    )  # fmt: skip
    parser.add_argument(
        "--port-base", type=int, default=7960,
        help="node A listens on TCP BASE and HTTP BASE+300, node B on BASE+1 and BASE+301",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="aquafleet-cmd-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({
        "AQUAFLEET_LOG_LEVEL": "warning", "AQUAFLEET_MAX_CONNECTIONS": "100000",
        "AQUAFLEET_REDIS_URL": args.redis_url,
        "AQUAFLEET_REDIS_PREFIX": f"bench{uuid.uuid4().hex[:8]}",
    })  # fmt: skip
    if args.database_url:
        env["AQUAFLEET_DATABASE_URL"] = args.database_url
    if not args.ledger_inline:
        env["AQUAFLEET_LEDGER_WRITER"] = "false"
    cli = [sys.executable, "-m", "aquafleet.cli"]

    def run(*command: str, stdin: str | None = None) -> None:
        subprocess.run([*cli, *command], cwd=workdir, env=env, check=True, input=stdin,
                       text=True, stdout=subprocess.DEVNULL)  # fmt: skip

    run("migrate")  # makes the platform's data dir; other commands refuse one missing
    run("vendors", "add", "BNCH", "--name", "Benchmark")
    run("devices", "register", "--vendor", "BNCH", "--count", str(args.devices),
        "--out", "devices.csv")  # fmt: skip
    (workdir / "password.txt").write_text(PASSWORD + "\n")
    run("admin", "create-platform-admin", "--user", "bench", "--password-file", "password.txt")
    with (workdir / "devices.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    half = len(rows) // 2
    groups = {"a": rows[:half], "b": rows[half:]}
    for name, group in groups.items():
        with (workdir / f"devices-{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(group)

    base = args.port_base
    ports = {"a": (base, base + 300), "b": (base + 1, base + 301)}
    processes: list[subprocess.Popen[Any]] = []
    try:
        for name, (tcp, http) in ports.items():
            processes.append(subprocess.Popen(
                [*cli, "serve", "--tcp-port", str(tcp), "--http-port", str(http)],
                cwd=workdir, env={**env, "AQUAFLEET_NODE_ID": f"bench-{name}"},
                stdout=(workdir / f"serve-{name}.log").open("w"), stderr=subprocess.STDOUT,
                start_new_session=True,
            ))  # fmt: skip
        for _, http in ports.values():
            wait_healthy(http)
        if not args.ledger_inline:
            processes.append(subprocess.Popen(
                [*cli, "ledger"], cwd=workdir, env=env,
                stdout=(workdir / "ledger.log").open("w"), stderr=subprocess.STDOUT,
                start_new_session=True,
            ))  # fmt: skip
        duration = 3600  # stopped when the commands are done
        for name, (tcp, _) in ports.items():
            processes.append(subprocess.Popen(
                [*cli, "sim", "--devices", str(len(groups[name])), "--from",
                 f"devices-{name}.csv", "--tcp-port", str(tcp), "--duration", str(duration),
                 "--interval", str(args.interval), "--check", "none", "--quiet",
                 "--seed", str(args.seed)],
                cwd=workdir, env=env, stdout=(workdir / f"sim-{name}.log").open("w"),
                stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip
        deadline = time.monotonic() + 180
        while True:
            online = {name: wait_healthy(http)["online"] for name, (_, http) in ports.items()}
            if all(online[name] == len(groups[name]) for name in groups):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"devices online: {online}")
            time.sleep(1)
        time.sleep(args.interval)  # let the background reporting settle into its rhythm
        token = uvloop.run(login(ports["a"][1]))
        load_before = os.getloadavg()
        lag_before = {name: loop_lag_buckets(ports[name][1]) for name in ("a", "b")}
        targets = {
            "same_node": [r["did"] for r in groups["a"]],
            "cross_node": [r["did"] for r in groups["b"]],
        }
        result = uvloop.run(
            run_commands(
                ports["a"][1],
                token,
                targets,
                args.commands,
                args.concurrency,
                args.seed,
                args.rate,
                args.redis_url,
            )
        )
        lag = {
            f"node_{name}": loop_lag_over(lag_before[name], loop_lag_buckets(ports[name][1]))
            for name in ("a", "b")
        }
        report = {
            "load_average": [os.getloadavg(), load_before],
            "event_loop_lag": lag,
            "devices": args.devices,
            "commands_per_path": args.commands,
            "rate_per_s": args.rate,
            "concurrency": None if args.rate > 0 else args.concurrency,
            "ledger": "inline" if args.ledger_inline else "process",
            "background_records_per_s": round(args.devices / args.interval, 1),
            **result,
        }
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        failed = sum(sum(f.values()) for f in result["failures"].values())
        return 0 if failed == 0 else 1
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
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
