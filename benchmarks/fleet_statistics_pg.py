"""The console's fleet statistics on PostgreSQL: what GET /fleet/statistics costs for a vendor's
whole fleet and for one dealer, beside one device's statistics (AB-10) as the reference.

In a scratch database (created, migrated, dropped): one vendor with an agent and --dealers
dealers under it, --devices devices spread over the dealers, 30 days of per-day rollups
(usage_daily) per device (and the per-group day rollups filled from them, fleet_daily, as
migration 0018 does), and a full retention of online samples per (vendor, dealer) (every 5
minutes for 26 h, on the hour for 31 days). Then, --queries times each: water per day and the
online history (24 h and 30 days) for the vendor and for one dealer, and device_statistics of
one device: p50 / p99 / max.

  python -m benchmarks.fleet_statistics_pg --postgres postgres://postgres@127.0.0.1:5432/test

(as a module, from the tree's root: it imports benchmarks.ledger_pg; run as a file it stopped
with "No module named 'benchmarks'").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from benchmarks.ledger_pg import percentiles

VENDOR = "BNCH"


async def build(devices: int, dealers: int) -> tuple[str, list[str], tuple[int, float]]:
    """The fleet; the path of the first dealer, the device ids, and the group day rollups
    filled from the device rollups (rows, seconds)."""
    from aquafleet.models.agents import create_agent
    from aquafleet.models.db import connection
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
    conn = connection()
    for n, node in enumerate(nodes):
        await conn.execute_query(
            "UPDATE device SET agent_id = $1 WHERE did = ANY($2::varchar[])",
            [node.id, dids[n::dealers]],
        )
    today = dt.datetime.now(dt.UTC).date()
    await conn.execute_query(
        "INSERT INTO usage_daily (did, day, water_ml, dispenses, records, first_at, last_at) "
        "SELECT d.did, g.day::date, 1000 + (random() * 9000)::int, 3, 100, now(), now() "
        "FROM device d, generate_series($1::date, $2::date, '1 day') AS g(day)",
        [today - dt.timedelta(days=29), today],
    )
    # The group day rollups the chart reads, from those (as migration 0018 fills them).
    from tortoise.transactions import in_transaction

    from aquafleet.models.fleet_history import rebuild_fleet_daily

    started = time.perf_counter()
    async with in_transaction("default") as tx:
        groups = await rebuild_fleet_daily(tx)
    rebuilt = (groups, round(time.perf_counter() - started, 2))
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    fine = now - dt.timedelta(minutes=now.minute % 5)
    await conn.execute_query(
        "INSERT INTO fleet_online_sample (at, vendor_id, agent_id, online, devices, hourly) "
        "SELECT g.at, $1, a.id, 10, 20, extract(minute FROM g.at) = 0 "
        "FROM agent a, generate_series($2::timestamptz, $3::timestamptz, '5 minutes') AS g(at) "
        "WHERE a.id <> $4 UNION ALL "
        "SELECT g.at, $1, a.id, 10, 20, true FROM agent a, "
        "generate_series($5::timestamptz, $6::timestamptz, '1 hour') AS g(at) WHERE a.id <> $4",
        [
            VENDOR, fine - dt.timedelta(hours=26), fine, agent.id,
            fine.replace(minute=0) - dt.timedelta(days=31),
            fine.replace(minute=0) - dt.timedelta(hours=27),
        ],
    )  # fmt: skip
    await conn.execute_query("ANALYZE")
    return nodes[0].path, dids, rebuilt


async def timed(queries: int, run: Callable[[], Awaitable[object]]) -> dict[str, float]:
    samples = []
    for _ in range(queries):
        started = time.perf_counter()
        await run()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--dealers", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    from aquafleet.models.db import database, migrate
    from aquafleet.models.device_stats import device_statistics
    from aquafleet.models.fleet_history import online_history, water_per_day
    from aquafleet.models.tenancy import Principal, Role

    admin_dsn = args.postgres.replace("postgres://", "postgresql://")
    name = f"aquafleet_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.postgres.rsplit('/', 1)[0]}/{name}"
    report: dict[str, object] = {"devices": args.devices, "dealers": args.dealers}
    try:
        await migrate(url)
        async with database(url, run_migrations=False):
            started = time.perf_counter()
            dealer_path, dids, (groups, rebuild_s) = await build(args.devices, args.dealers)
            report["build_s"] = round(time.perf_counter() - started, 1)
            report["fleet_daily_rows"], report["fleet_daily_rebuild_s"] = groups, rebuild_s
            vendor = Principal(Role.VENDOR, "1", vendor_code=VENDOR)
            dealer = Principal(Role.DEALER, "2", vendor_code=VENDOR, agent_path=dealer_path)
            now = dt.datetime.now(dt.UTC)
            day, month = now - dt.timedelta(hours=24), now - dt.timedelta(days=30)
            q = args.queries
            for who, principal in (("vendor", vendor), ("dealer", dealer)):
                water = await water_per_day(principal, now.date())
                report[f"{who}_water_30d_ml"] = sum(ml for _, ml in water)
                report[f"{who}_water_per_day"] = await timed(
                    q, lambda p=principal: water_per_day(p, now.date())
                )
                report[f"{who}_online_24h"] = await timed(
                    q, lambda p=principal: online_history(p, day, hourly=False)
                )
                report[f"{who}_online_30d"] = await timed(
                    q, lambda p=principal: online_history(p, month, hourly=True)
                )
            report["one_device_statistics_reference"] = await timed(
                q, lambda: device_statistics(dids[0], now=now)
            )
    finally:
        from tortoise import Tortoise

        await Tortoise.close_connections()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
