"""Redis CPU per record of metering rounds, apart from the gateway: meter.lua and the ledger's
read and acknowledgement, on a private `redis-server` configured as the embedded one (AOF,
fsync every second), its CPU read from /proc.

Each round meters `--per-round` telemetry records of as many devices (window 1: every record
is another device's, so each loads and stores a device state), as `MeterScript` sends them,
then reads the round's ledger entries as the ledger writer does (XREADGROUP) and acknowledges
them (one `ledger_ack.lua` call). Run it from two trees to compare their scripts:

    python benchmarks/meter_redis_cpu.py --per-round 100 --rounds 400
    /path/to/other/tree/.venv/bin/python /path/to/other/tree/benchmarks/meter_redis_cpu.py ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from private_redis import private_redis  # benchmarks/private_redis.py, beside this file

from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.ledger import GROUP, LedgerWriter
from aquafleet.gateway.meter import MeterScript
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.redis_io import Scripts, open_redis
from aquafleet.protocol import Encoding, FrameType
from aquafleet.protocol.frames import Frame
from aquafleet.protocol.message_types import FilterReading, Record, Telemetry
from aquafleet.protocol.messages import encode_payload, message_map, parse_record


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def telemetry(rec: int) -> Record:
    """A telemetry record as the gateway's hot path makes it (a full report, two filters)."""
    message = Telemetry(
        rec=rec, boot=1, ts=1_790_000_000 + rec, flow_total_ml=10 * rec, cnt_epoch=0,
        tds_in_ppm=180, tds_out_ppm=12, temperature_dc=253, fault_bits=0, signal=23,
        state_bits=3, filters=(FilterReading(1, 1200, 3000, 2), FilterReading(2, 800, 3000, 0)),
    )  # fmt: skip
    payload = encode_payload(message_map(message), Encoding.MSGPACK)
    return parse_record(Frame(FrameType.TELEMETRY, Encoding.MSGPACK << 4, 0, payload))


async def measure(sock: str, pid: int, per_round: int, rounds: int, devices: int) -> float:
    client = open_redis(f"unix://{sock}?db=0")
    keyspace = Keyspace("aq", 16)
    scripts = Scripts()
    await scripts.load(client)
    script = MeterScript(scripts, keyspace)
    writer = LedgerWriter(
        client=client, scripts=scripts, keyspace=keyspace, metrics=Metrics(), consumer="w",
        batch_entries=1000, claim_idle_ms=60_000,
    )  # fmt: skip
    await writer.ensure_groups()
    streams = {keyspace.ledger_stream(s): ">" for s in keyspace.all_shards()}
    dids = [f"BNCH{n:012d}" for n in range(devices)]
    recs = dict.fromkeys(dids, 0)

    async def one_round(start: int) -> None:
        rows: dict[int, list[tuple[str, Record]]] = {}
        for k in range(per_round):
            did = dids[(start + k) % devices]
            recs[did] += 1
            rows.setdefault(keyspace.shard_of(did), []).append((did, telemetry(recs[did])))
        await script.run(client, rows, int(time.time() * 1000))
        reply: Any = await client.xreadgroup(GROUP, "w", streams, count=1000)  # type: ignore[arg-type]
        await writer._acknowledge(
            [
                (stream.decode(), [(entry_id, int(f[b"n"])) for entry_id, f in entries])
                for stream, entries in reply or []
            ]
        )

    for n in range(3):  # every device has a state before the measured rounds
        await one_round(n * per_round)
    before = cpu_seconds(pid)
    for n in range(rounds):
        await one_round((n + 3) * per_round)
    spent = cpu_seconds(pid) - before
    await client.aclose()
    return spent / (rounds * per_round) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-round", type=int, default=100, help="records per metering round")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--devices", type=int, default=2000)
    args = parser.parse_args()
    persistence = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")
    with private_redis("meter-redis-", *persistence) as (sock, pid):
        us = asyncio.run(measure(sock, pid, args.per_round, args.rounds, args.devices))
        print(f"{args.per_round} records per round: Redis {us:.2f} us of CPU per record")


if __name__ == "__main__":
    main()
