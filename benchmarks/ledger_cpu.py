"""The ledger writer's CPU per record at window 1, without the rest of the system: its own
`decode_entries` and `store_ledger_batch` on batches shaped like the window-1 load's (24 stream
entries of 75 telemetry records over 2,000 devices, ~1,200 snapshots a batch; measured with
load.py, docs/benchmarks.md "The ledger writer per record").

  python benchmarks/ledger_cpu.py                                  # SQLite, a fresh file
  python benchmarks/ledger_cpu.py postgres://postgres@127.0.0.1:5432/scratch
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).parent))

from test_hot_paths import sample  # benchmarks/test_hot_paths.py, beside this file

from aquafleet.gateway.ledger import Entry, decode_entries
from aquafleet.models.db import database
from aquafleet.models.usage import store_ledger_batch
from aquafleet.protocol.messages import encode_payload, message_map

WARMUP, BATCHES = 5, 40
PAYLOADS = [encode_payload(message_map(sample(rec)), 0) for rec in range(1, 50)]
REC_BASE = int(time.time()) % 100_000 * 1_000_000  # a rerun on the same database adds rows


def batch(number: int, devices: int = 2000, entries: int = 24, records: int = 75) -> list[Entry]:
    rnd = random.Random(number)
    out: list[Entry] = []
    for e in range(entries):
        items = [
            [f"BNCH{rnd.randrange(devices):08d}AAAA".encode(), 0x20, 7,
             REC_BASE + number * 10_000 + e * 100 + k + 1, 1_790_000_000, 10, 12_346, 3, 0, 0,
             PAYLOADS[k % len(PAYLOADS)]]
            for k in range(records)
        ]  # fmt: skip
        fields = {
            b"at": str(1_790_000_000_000 + number * 300).encode(),
            b"n": str(records).encode(),
            b"records": msgpack.packb(items),
        }
        out.append((f"{number}-{e}".encode(), fields))
    return out


async def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite://{tempfile.mkdtemp()}/ledger.sqlite3"
    batches = [batch(n) for n in range(WARMUP + BATCHES)]
    async with database(url):
        records = 0
        decode_s = 0.0
        for n, entries in enumerate(batches):
            if n == WARMUP:
                records, decode_s, started = 0, 0.0, time.process_time()
            t0 = time.process_time()
            decoded = decode_entries(entries)
            decode_s += time.process_time() - t0
            await store_ledger_batch(
                decoded.usage, list(decoded.snapshots.values()), [], decoded.service_events
            )
            records += len(decoded.usage)
        cpu_s = time.process_time() - started
    print(
        f"records={records} cpu_us_per_record={cpu_s / records * 1e6:.2f} "
        f"decode_us_per_record={decode_s / records * 1e6:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
