"""What a ledger row costs SQLite by the shape of the transaction it is written in, apart from
the writer: `usage_record`'s table and dedupe index as migrations create them, 1,800 rows a
transaction (a window-1 batch), over 2,000 devices, each device's records counting up.

The variable is how many records of one device a transaction holds (`--per-device`): every
device in a transaction dirties the index leaf page that holds its run, whatever its record
count, and that page goes to the WAL at commit and to the database file at the checkpoint.

  python benchmarks/ledger_sqlite_shape.py --per-device 1           # window 1: a record a device
  python benchmarks/ledger_sqlite_shape.py --per-device 6           # window 16's shape
  python benchmarks/ledger_sqlite_shape.py --per-device 1 --no-autoincrement --page-size 1024
  python benchmarks/ledger_sqlite_shape.py --per-device 1 --staged 10   # a design not adopted

`--staged N` measures a design the ledger does not use (docs/benchmarks.md, session 13): rows go
to a small table with its own dedupe index (checked against the big table's: NOT EXISTS), and
every N transactions that table is copied into `usage_record` in key order and emptied, so a
device's index page is written once for ~N of its records. The checkpoint runs at 10,000 pages,
as models/db.py sets it, in both modes (`--checkpoint-pages`).

CPU is the process's (SQLite runs in it; the kernel's work for its writes is counted).
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import tempfile
import time

ROWS, DEVICES, PREFILL, MEASURED = 1800, 2000, 200, 100
COLUMNS = (
    "did, boot, rec, kind, event_kind, device_ts, received_at, delta_ml, flow_total_ml, cnt_epoch"
)
ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
CHUNK = 256  # rows a multi-row INSERT carries (10 values a row: far below SQLite's 32,766)


def schema(autoincrement: bool) -> str:
    return (
        "CREATE TABLE usage_record (id INTEGER PRIMARY KEY "
        f"{'AUTOINCREMENT ' if autoincrement else ''}NOT NULL, did VARCHAR(16) NOT NULL, "
        "boot BIGINT NOT NULL, rec BIGINT NOT NULL, kind SMALLINT NOT NULL, "
        "event_kind SMALLINT NOT NULL, device_ts BIGINT NOT NULL, received_at TIMESTAMP NOT NULL, "
        "delta_ml BIGINT NOT NULL, flow_total_ml BIGINT, cnt_epoch BIGINT, "
        "UNIQUE (did, boot, rec))"
    )


def batch(number: int, per_device: int, recs: dict[int, int], rows_n: int = ROWS) -> list[tuple]:
    at = f"2026-12-07 09:{number % 60:02d}:00.123456+00:00"
    rows = []
    for i in range(rows_n):
        device = (i // per_device * 7919 + number * 13) % DEVICES
        recs[device] = rec = recs.get(device, 1000) + 1
        rows.append((f"BNCH{device:08d}AAAA", 7, rec, 32, 0, 1_790_000_000, at, 10, 12_346, 3))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-device", type=int, default=1, help="records of a device a batch")
    parser.add_argument("--no-autoincrement", action="store_true")
    parser.add_argument("--multi-row", action="store_true", help=f"INSERTs of {CHUNK} rows")
    parser.add_argument("--sorted", action="store_true", help="rows in index order")
    parser.add_argument("--page-size", type=int, default=4096)
    parser.add_argument("--staged", type=int, default=0, metavar="N", help="see above")
    parser.add_argument("--checkpoint-pages", type=int, default=10_000)
    parser.add_argument(
        "--rows", type=int, default=ROWS,
        help=f"rows a transaction (default {ROWS}); above 2,000 a device has several",
    )  # fmt: skip
    args = parser.parse_args()
    db = sqlite3.connect(f"{tempfile.mkdtemp()}/ledger.sqlite3", isolation_level=None)
    db.execute(f"PRAGMA page_size={args.page_size}")
    for pragma in (
        "journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536",
        f"wal_autocheckpoint={args.checkpoint_pages}",
    ):  # fmt: skip
        db.execute(f"PRAGMA {pragma}")  # as models/db.py sets them
    db.execute(schema(not args.no_autoincrement))
    db.execute(schema(False).replace("usage_record", "usage_recent"))
    insert = (
        f"INSERT INTO usage_record ({COLUMNS}) VALUES {{}} ON CONFLICT (did, boot, rec) DO NOTHING"
    )
    staged_insert = (
        f"INSERT INTO usage_recent ({COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 "
        "WHERE NOT EXISTS (SELECT 1 FROM usage_record WHERE did = ?1 AND boot = ?2 AND rec = ?3) "
        "ON CONFLICT (did, boot, rec) DO NOTHING"
    )
    merge = (
        f"INSERT INTO usage_record ({COLUMNS}) SELECT {COLUMNS} FROM usage_recent "
        "ORDER BY did, boot, rec"
    )
    transactions = itertools.count(1)

    def write(rows: list[tuple]) -> None:
        if args.sorted:
            rows = sorted(rows)
        db.execute("BEGIN")
        if args.staged:
            db.executemany(staged_insert, rows)
            if next(transactions) % args.staged == 0:
                db.execute(merge)
                db.execute("DELETE FROM usage_recent")
        elif args.multi_row:
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start : start + CHUNK]
                sql = insert.format(", ".join([ROW] * len(chunk)))
                db.execute(sql, list(itertools.chain.from_iterable(chunk)))
        else:
            db.executemany(insert.format(ROW), rows)
        db.execute("COMMIT")

    recs: dict[int, int] = {}
    for n in range(PREFILL):  # a ledger that already holds rows: ~180 a device
        write(batch(-1 - n, args.per_device, recs, args.rows))
    batches = [batch(n, args.per_device, recs, args.rows) for n in range(MEASURED)]
    started = time.process_time()
    held_ms = []  # wall time of each transaction: how long it holds SQLite's write lock
    for rows in batches:
        began = time.perf_counter()
        write(rows)
        held_ms.append((time.perf_counter() - began) * 1000)
    cpu_us = (time.process_time() - started) / (MEASURED * args.rows) * 1e6
    held_ms.sort()
    print(
        f"per_device={args.per_device} autoincrement={not args.no_autoincrement} "
        f"multi_row={args.multi_row} sorted={args.sorted} page_size={args.page_size} "
        f"staged={args.staged} checkpoint_pages={args.checkpoint_pages} rows={args.rows} "
        f"cpu_us_per_row={cpu_us:.2f} transaction_ms_p50={held_ms[len(held_ms) // 2]:.1f} "
        f"transaction_ms_max={held_ms[-1]:.1f}"
    )


if __name__ == "__main__":
    main()
