"""Redis time of one login's claim.lua, against a reference script, on a private redis-server.

Every device has an ended previous session (a reconnect: the case where claim.lua closes it and
pushes it onto the presence history). Redis' own per-call time (INFO commandstats,
cmdstat_evalsha) is read, so the client's speed and the machine's other load weigh little.

    flock /tmp/bench.lock .venv/bin/python benchmarks/claim_script.py \
        --reference /tmp/claim-before.lua --devices 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import redis
from private_redis import private_redis  # benchmarks/private_redis.py, beside this file

CLAIM = Path(__file__).resolve().parents[1] / "gateway" / "lua" / "claim.lua"
PIPELINE = 500


def usec_per_call(client: redis.Redis) -> float:
    stats = client.info("commandstats")
    return float(stats["cmdstat_evalsha"]["usec_per_call"])


def run(client: redis.Redis, sha: str, devices: int, round_no: int) -> float:
    """Claims of `devices` devices that each ended a session before; Redis us per claim."""
    client.flushall()
    prefix = "aq:{00}:"
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i in range(devices):
        did = f"BNCH{i:08d}0000"
        pipe.hset(
            f"{prefix}l:{did}",
            mapping={"node": "node-a", "conn": f"node-a/{i}", "since": now - 60_000,
                     "seen": now - 5_000, "ttl": 150_000, "off": now - 4_000,
                     "why": "closed_by_device"},
        )  # fmt: skip
    pipe.execute()
    client.config_resetstat()
    for start in range(0, devices, PIPELINE):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + PIPELINE, devices)):
            did = f"BNCH{i:08d}0000"
            args = ["node-b", f"node-b/{round_no}-{i}", now, 150_000, "aq:node:", did, 50]
            pipe.evalsha(sha, 2, f"{prefix}p:{did}", f"{prefix}m:{did}", *args)
        pipe.execute()
    return usec_per_call(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="claim.lua to compare")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    with private_redis("claim-script-", "--save", "", "--appendonly", "no") as (sock, _pid):
        client = redis.Redis(unix_socket_path=sock)
        scripts = {
            "reference": client.script_load(options.reference.read_text()),
            "claim.lua": client.script_load(CLAIM.read_text()),
        }
        results: dict[str, list[float]] = {name: [] for name in scripts}
        for round_no in range(options.rounds):
            for name, sha in scripts.items():  # alternated, round by round
                results[name].append(run(client, sha, options.devices, round_no))
        for name, values in results.items():
            shown = ", ".join(f"{v:.2f}" for v in values)
            print(f"{name:10s} us per claim: median {statistics.median(values):.2f} ({shown})")
        client.close()


if __name__ == "__main__":
    main()
