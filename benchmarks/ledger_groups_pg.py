"""The ledger writer's rate on PostgreSQL for a registered fleet: what the per-group day
rollups (fleet_daily, every batch adding to the same few rows of today) cost the writer, with
one writer and with several writing at once (their batches then update the same group rows).

In a scratch database (created, migrated, dropped): one vendor with an agent and --dealers
dealers under it, --devices devices spread over them. Each round every device reports one
record at the round's receive time (as one metering round does); --writers tasks each write
their share of the devices, --batch rows a transaction, through `store_ledger_batch` (the
writer's own path), for --rounds rounds: rows/s over the whole run, per writer count. Runs
unchanged on a version without the group rollups (the reference).

  python -m benchmarks.ledger_groups_pg --postgres postgres://postgres@127.0.0.1:5432/test
  python -m benchmarks.ledger_groups_pg --sqlite /tmp/bench.sqlite3 --writers 1
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
import uuid

import asyncpg

VENDOR = "BNCG"


async def build(devices: int, dealers: int) -> list[str]:
    from aquafleet.models.agents import create_agent
    from aquafleet.models.registry import create_vendor, register_devices

    vendor = await create_vendor(VENDOR, "Bench")
    agent = await create_agent(vendor, None, {"name": "agent"}, "bench-agent", "0" * 32)
    nodes = [
        await create_agent(vendor, agent, {"name": f"d{n}"}, f"bench-dealer-{n}", "0" * 32)
        for n in range(dealers)
    ]
    dids: list[str] = []
    for start in range(0, devices, 1000):
        issued = await register_devices(VENDOR, min(1000, devices - start), lambda d, v: b"k" * 32)
        dids.extend(d.did for d in issued)
    from aquafleet.models.devices import Device

    for n, node in enumerate(nodes):
        for start in range(0, len(dids[n::dealers]), 500):
            chunk = dids[n::dealers][start : start + 500]
            await Device.filter(did__in=chunk).update(agent_id=node.id)
    return dids


async def write(dids: list[str], writers: int, rounds: int, batch: int, first: int) -> dict:
    """Every device one record a round; `writers` tasks at once, each its share of devices."""
    from aquafleet.models.usage import UsageRow, store_ledger_batch

    start = dt.datetime.now(dt.UTC).replace(microsecond=0)

    async def writer(mine: list[str]) -> None:
        for n in range(rounds):
            at = start + dt.timedelta(seconds=n)
            rows = [
                UsageRow(did, 1, first + n, 0x20, 0, int(at.timestamp()), at, 3, None, None)
                for did in mine
            ]
            for offset in range(0, len(rows), batch):
                await store_ledger_batch(rows[offset : offset + batch], [], [])

    started = time.perf_counter()
    await asyncio.gather(*(writer(dids[k::writers]) for k in range(writers)))
    elapsed = time.perf_counter() - started
    total = len(dids) * rounds
    return {"rows": total, "seconds": round(elapsed, 2), "rows_per_s": round(total / elapsed)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--dealers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2000, help="rows per transaction")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sqlite", help="a new SQLite file to use instead of PostgreSQL")
    args = parser.parse_args()

    from tortoise import Tortoise

    from aquafleet.models.db import database, migrate

    admin = None
    if args.sqlite:  # the embedded default, a new file (one writer at a time there)
        url = f"sqlite://{args.sqlite}"
    else:
        admin = await asyncpg.connect(args.postgres.replace("postgres://", "postgresql://"))
        name = f"aquafleet_bench_{uuid.uuid4().hex[:10]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"{args.postgres.rsplit('/', 1)[0]}/{name}"
    report: dict[str, object] = {"devices": args.devices, "batch_rows": args.batch}
    try:
        await migrate(url)
        async with database(url, run_migrations=False):
            dids = await build(args.devices, args.dealers)
            first = 1
            for writers in args.writers:
                report[f"writers_{writers}"] = await write(
                    dids, writers, args.rounds, args.batch, first
                )
                first += args.rounds
    finally:
        await Tortoise.close_connections()
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
