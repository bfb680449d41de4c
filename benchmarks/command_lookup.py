"""The database work of one command, before and after, side by side in one process.

A command first finds its device (visible to the caller, usable) and, for a dispense, the
device's service mode. Before: two ORM lookups at once (`find_visible` building a full Device
and `DeviceService.get_or_none` building a full row); built: one query built by the ORM that
builds no model (`command_target` until its statements were written out); after:
`command_target`, one statement per caller's scope, written once (no query built). This runs
the three against the same database, alternating in blocks, and prints
per variant the median wall time and the median CPU time of this process per lookup (the
Python side: query building and row decoding, which the gateway's event loop pays).

    .venv/bin/python benchmarks/command_lookup.py --database-url postgres://postgres@127.0.0.1:5432/DB
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from tortoise import Tortoise

from aquafleet.models.command_target import _built_target, command_target
from aquafleet.models.db import tortoise_config
from aquafleet.models.devices import Device, DeviceState, check_usable, find_visible
from aquafleet.models.ids import device_id
from aquafleet.models.service import DeviceService, ServiceMode
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.vendors import Vendor

DEVICES = 200


async def before(principal: Principal, did: str) -> Any:
    device, svc = await asyncio.gather(
        find_visible(principal, did), DeviceService.get_or_none(did=did)
    )
    assert device is not None
    check_usable(device)
    return svc.mode if svc is not None else None


async def built(principal: Principal, did: str) -> Any:
    target = await _built_target(principal, did, with_mode=True)
    assert target is not None
    return target.mode


async def after(principal: Principal, did: str) -> Any:
    target = await command_target(principal, did, with_mode=True)
    assert target is not None
    return target.mode


async def measure(
    variant: Callable[[Principal, str], Awaitable[Any]], principal: Principal, n: int
) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for index in range(n):
        did = device_id("BNCH", 1 + index % DEVICES)
        wall, cpu = time.perf_counter(), time.process_time()
        await variant(principal, did)
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return walls, cpus


async def main(url: str, blocks: int, per_block: int) -> dict[str, Any]:
    await Tortoise.init(config=tortoise_config(url))
    await Tortoise.generate_schemas(safe=True)
    await Vendor.get_or_create(code="BNCH", defaults={"name": "Benchmark"})
    for n in range(DEVICES):
        did = device_id("BNCH", 1 + n)
        await Device.get_or_create(
            did=did, defaults={"vendor_id": "BNCH", "state": DeviceState.ACTIVE}
        )
        if n % 2:
            await DeviceService.get_or_create(did=did, defaults={"mode": ServiceMode.VENDING})
    principal = Principal(Role.VENDOR, "1", vendor_code="BNCH")
    for n in range(DEVICES):  # the two agree on every device
        did = device_id("BNCH", 1 + n)
        assert await before(principal, did) == await built(principal, did)
        assert await before(principal, did) == await after(principal, did)
    results: dict[str, tuple[list[float], list[float]]] = {
        "before": ([], []), "built": ([], []), "after": ([], [])
    }  # fmt: skip
    for _ in range(blocks):  # alternating blocks: the machine's noise falls on both alike
        for name, variant in (("before", before), ("built", built), ("after", after)):
            walls, cpus = await measure(variant, principal, per_block)
            results[name][0].extend(walls)
            results[name][1].extend(cpus)
    await Tortoise.close_connections()
    return {
        name: {
            "lookups": len(walls),
            "wall_median_us": round(statistics.median(walls) * 1e6),
            "cpu_mean_us": round(statistics.fmean(cpus) * 1e6),
        }
        for name, (walls, cpus) in results.items()
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(main(args.database_url, args.blocks, args.per_block)), indent=2))
