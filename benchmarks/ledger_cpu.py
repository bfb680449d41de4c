"""The ledger writer's CPU per record at window 1, without the rest of the system: its own
`decode_entries` and `store_ledger_batch` on batches shaped like the window-1 load's (24 stream
entries of 75 telemetry records over 2,000 devices, ~1,200 snapshots a batch; measured with
load.py, docs/benchmarks.md "The ledger writer per record").

  python benchmarks/ledger_cpu.py                                  # SQLite, a fresh file
  python benchmarks/ledger_cpu.py postgres://postgres@127.0.0.1:5432/scratch
  python benchmarks/ledger_cpu.py --prefill 500                     # a ledger of ~1M rows first

Each device's records count up from where it left off, as a device's do (every batch adds to
the end of each device's run in the dedupe index). CPU is the process's, the database's thread
included (SQLite runs in it; PostgreSQL's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).parent))

from test_hot_paths import sample  # benchmarks/test_hot_paths.py, beside this file

from aquafleet.gateway.ledger import Entry, decode_entries, snapshot_rows
from aquafleet.models.db import database
from aquafleet.models.usage import store_ledger_batch
from aquafleet.process_gc import LEDGER_GEN0_THRESHOLD, freeze_startup_heap
from aquafleet.protocol.messages import encode_payload, message_map

WARMUP, BATCHES = 5, 40
PAYLOADS = [encode_payload(message_map(sample(rec)), 0) for rec in range(1, 50)]
REC_BASE = int(time.time()) % 100_000 * 1_000_000  # a rerun on the same database adds rows


def batch(
    number: int, recs: dict[int, int], devices: int = 2000, entries: int = 24, records: int = 75
) -> list[Entry]:
    rnd = random.Random(number)
    out: list[Entry] = []
    for e in range(entries):
        items = []
        for k in range(records):
            device = rnd.randrange(devices)
            recs[device] = rec = recs.get(device, REC_BASE) + 1
            items.append(
                [f"BNCH{device:08d}AAAA".encode(), 0x20, 7, rec, 1_790_000_000, 10, 12_346, 3,
                 0, 0, PAYLOADS[k % len(PAYLOADS)]]
            )  # fmt: skip
        fields = {
            b"at": str(1_790_000_000_000 + number * 300).encode(),
            b"n": str(records).encode(),
            b"records": msgpack.packb(items),
        }
        out.append((f"{number}-{e}".encode(), fields))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", help="database (default: SQLite in a temp directory)")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=24, help="stream entries a batch")
    parser.add_argument("--records", type=int, default=75, help="records an entry")
    parser.add_argument("--batches", type=int, default=BATCHES, help="batches measured")
    parser.add_argument("--prefill", type=int, default=0, help="batches written before")
    parser.add_argument(
        "--default-gc", action="store_true",
        help="leave the collector as Python sets it (the writer's process freezes its start-up "
        "heap and collects young objects every LEDGER_GEN0_THRESHOLD allocations: "
        "aquafleet/process_gc.py)",
    )  # fmt: skip
    parser.add_argument(
        "--gen0",
        type=int,
        default=None,
        help="young-collection threshold after the freeze (default: the ledger process' own, "
        "LEDGER_GEN0_THRESHOLD; 10000: a node's)",
    )
    parser.add_argument("--no-snapshots", action="store_true")
    args = parser.parse_args()
    url = args.url or f"sqlite://{tempfile.mkdtemp()}/ledger.sqlite3"
    recs: dict[int, int] = {}

    def make(n: int) -> list[Entry]:
        return batch(n, recs, args.devices, args.entries, args.records)

    async with database(url):
        for n in range(args.prefill):  # not measured: a ledger that already holds rows
            decoded = decode_entries(make(-1 - n))
            await store_ledger_batch(decoded.usage, snapshot_rows(decoded.reports.values())[0], [])
        batches = [make(n) for n in range(WARMUP + args.batches)]
        if not args.default_gc:  # as `aquafleet ledger` sets its collector (process_gc.py)
            freeze_startup_heap(args.gen0 or LEDGER_GEN0_THRESHOLD)
        records = 0
        decode_s = 0.0
        for n, entries in enumerate(batches):
            if n == WARMUP:
                records, decode_s, started = 0, 0.0, time.process_time()
            t0 = time.process_time()
            decoded = decode_entries(entries)
            decode_s += time.process_time() - t0
            await store_ledger_batch(
                decoded.usage,
                [] if args.no_snapshots else snapshot_rows(decoded.reports.values())[0],
                [],
                decoded.service_events,
            )
            records += len(decoded.usage)
        cpu_s = time.process_time() - started
    print(
        f"records={records} cpu_us_per_record={cpu_s / records * 1e6:.2f} "
        f"decode_us_per_record={decode_s / records * 1e6:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
