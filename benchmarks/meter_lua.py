"""Redis CPU per record of meter.lua alone, at window 1 and at window 16.

Starts a private `redis-server` (a unix socket in a temp directory, no TCP, no persistence),
loads the project's Lua scripts as the gateway does and sends metering rounds exactly as the
gateway does (`MeterScript.run`: one EVALSHA per round, the records packed by the gateway's own
code). The records are the simulator's telemetry (`VirtualPurifier` at --max-rate: a pour of
0-300 ml per record, three filters), encoded and parsed as the gateway receives them.

Two shapes, each `--per-round` records per round (2,000 by default):
- window 1: every record is another device's (2,000 devices, one record each per round), so
  every record pays its device's read, unpack, pack and write;
- window 16: 16 consecutive records of each of 125 devices per round.
Every device has a meter state before the measured rounds (`--warmup` rounds first), and every
measured record must come back STORED. Redis' CPU is `used_cpu_sys + used_cpu_user` of INFO cpu,
read before and after each script call (the ledger stream is emptied between rounds, outside
the measured span, so it does not grow over the run).

    nice -n 19 .venv/bin/python benchmarks/meter_lua.py
    nice -n 19 .venv/bin/python benchmarks/meter_lua.py --script /tmp/variant.lua  # a scratch copy

With `--against OTHER.lua` both scripts meter the same rounds in the same Redis (each in its own
key prefix), taking turns round by round, and the median of the rounds' differences is printed:
on a shared machine, whose load moves a run's mean by 20-30%, that is the figure to compare by.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import time
from pathlib import Path

import redis.asyncio as aioredis
from private_redis import private_redis  # benchmarks/private_redis.py, beside this file

from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.meter import MeterScript
from aquafleet.gateway.redis_io import Scripts, open_redis
from aquafleet.protocol import AckCode, Encoding, FrameType
from aquafleet.protocol.frames import Frame
from aquafleet.protocol.message_types import Record
from aquafleet.protocol.messages import encode_payload, message_map, parse_record
from aquafleet.simulators.device import VirtualPurifier
from aquafleet.simulators.stats import WorkerStats

SHARDS = 16  # the gateway's default redis_shards
WALL = 1_790_000_000


class Fleet:
    """Virtual purifiers whose records are made by the simulator and parsed as the gateway
    parses them."""

    def __init__(self, devices: int, seed: int) -> None:
        rng = random.Random(seed)
        stats = WorkerStats()
        self.devices = [
            VirtualPurifier(
                f"BNCH{n:012X}", b"k" * 16, boot=1, now=0.0, stats=stats, rng=rng, max_rate=True
            )
            for n in range(devices)
        ]
        self.now = 0.0

    def record(self, device: VirtualPurifier) -> Record:
        self.now += 0.001
        # the simulator's own record builder (what send_record would frame)
        telemetry = device._new_record(self.now, WALL + int(self.now), final=False)
        payload = encode_payload(message_map(telemetry), Encoding.MSGPACK)
        return parse_record(Frame(FrameType.TELEMETRY, Encoding.MSGPACK << 4, 0, payload))

    def round(self, keyspace: Keyspace, per_device: int) -> dict[int, list[tuple[str, Record]]]:
        rows: dict[int, list[tuple[str, Record]]] = {}
        for device in self.devices:
            shard = rows.setdefault(keyspace.shard_of(device.did), [])
            shard += [(device.did, self.record(device)) for _ in range(per_device)]
        return rows


async def cpu_us(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return (float(info["used_cpu_sys"]) + float(info["used_cpu_user"])) * 1e6


class Variant:
    """One meter.lua under test, with its own keyspace (prefix) in the shared Redis."""

    def __init__(self, label: str, source: bytes | None, prefix: str) -> None:
        self.label = label
        self.keyspace = Keyspace(prefix, SHARDS)
        scripts = Scripts()
        if source is not None:
            scripts.source["meter"] = source
            scripts.sha["meter"] = hashlib.sha1(source).hexdigest()
        self.scripts = scripts
        self.meter = MeterScript(scripts, self.keyspace)
        self.streams = [self.keyspace.ledger_stream(s) for s in self.keyspace.all_shards()]
        self.per_round: list[float] = []  # Redis CPU us per record, each measured round


async def measure(
    client: aioredis.Redis, variants: list[Variant], per_device: int, args: argparse.Namespace
) -> float:
    """Every variant meters the same rounds, taking turns (which goes first alternates), so a
    busy machine slows them alike; returns the wall time."""
    for variant in variants:
        await variant.scripts.load(client)
        variant.per_round.clear()
    fleet = Fleet(args.per_round // per_device, args.seed)
    keyspace = variants[0].keyspace  # the shard of a did is the same in every keyspace
    started = time.monotonic()
    for n in range(args.warmup + args.rounds):
        rows = fleet.round(keyspace, per_device)
        now_ms = (WALL + n) * 1000
        for variant in variants if n % 2 == 0 else variants[::-1]:
            before = await cpu_us(client)
            outcome = await variant.meter.run(client, rows, now_ms)
            used = await cpu_us(client) - before
            await client.delete(*variant.streams)
            codes = [rc for shard in outcome.codes.values() for rc in shard[::3]]
            if len(codes) != args.per_round or any(rc != AckCode.STORED for rc in codes):
                raise SystemExit(f"{variant.label}, round {n}: not every record was stored")
            if n >= args.warmup:
                variant.per_round.append(used / args.per_round)
    return time.monotonic() - started


async def run(sock: str, variants: list[Variant], args: argparse.Namespace) -> None:
    client = open_redis(f"unix://{sock}?db=0")
    try:
        for label, per_device in (("window 1", 1), ("window 16", 16)):
            await client.flushall()
            wall = await measure(client, variants, per_device, args)
            print(
                f"{label}: {args.per_round // per_device} devices x {per_device} records a "
                f"round, {args.rounds} rounds of {args.per_round} (wall {wall:.1f} s)"
            )
            for variant in variants:
                rounds = variant.per_round
                print(
                    f"  {variant.label:>10}: Redis {statistics.fmean(rounds):.2f} us CPU per "
                    f"record (rounds: median {statistics.median(rounds):.2f}, "
                    f"min {min(rounds):.2f})"
                )
            if len(variants) == 2:
                diffs = [
                    b - a for a, b in zip(variants[0].per_round, variants[1].per_round, strict=True)
                ]
                print(
                    f"  {variants[1].label} - {variants[0].label}: median of the rounds' "
                    f"differences {statistics.median(diffs):+.2f} us per record"
                )
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-round", type=int, default=2000, help="records per round")
    parser.add_argument("--rounds", type=int, default=100, help="measured rounds per shape")
    parser.add_argument("--warmup", type=int, default=3, help="rounds before measuring")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--script", type=Path, help="a meter.lua to run instead of the tree's")
    parser.add_argument(
        "--against",
        type=Path,
        help="another meter.lua, run in turns with the first on the same rounds",
    )
    args = parser.parse_args()
    if args.per_round < 16 or args.per_round % 16:
        # window 16's rounds are 16 records of each device: another count left some out, and
        # the run then stopped on "not every record was stored", which sent people looking
        # for a metering bug
        parser.error(f"--per-round must be a positive multiple of 16 (got {args.per_round})")
    variants = [
        Variant(
            "tree" if args.script is None else args.script.name,
            args.script.read_bytes() if args.script else None,
            "aq",
        )
    ]
    if args.against is not None:
        variants.insert(0, Variant(args.against.name, args.against.read_bytes(), "ab"))
    with private_redis("meter-lua-", "--save", "", "--appendonly", "no") as (sock, _pid):
        asyncio.run(run(sock, variants, args))


if __name__ == "__main__":
    main()
