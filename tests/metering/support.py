"""Helpers of the ticket, filter and billing tests: a vendor with devices, stored snapshots,
and the same call run by several OS processes at one instant (a real race on one database)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from aquafleet.models.registry import create_vendor, register_devices
from aquafleet.models.usage import SnapshotRow, UsageRow, store_ledger_batch

ROOT = Path(__file__).resolve().parents[2]

# The seed's AC-02 example (`specification.filters`).
SEED_FILTERS: list[dict[str, Any]] = [
    {"order": 1, "name": "PPC复合滤芯", "timer_mode": 0, "lifetime": 4320, "worklife": 540},
    {"order": 2, "name": "CPP复合滤芯", "timer_mode": 0, "lifetime": 4320, "worklife": 540},
    {"order": 3, "name": "RO反渗透滤芯", "timer_mode": 0, "lifetime": 17280, "worklife": 2160},
]


async def vendor_with_devices(code: str, count: int, *, model: str = "") -> list[str]:
    await create_vendor(code, f"{code} water")
    issued = await register_devices(code, count, lambda did, version: bytes(32), model=model)
    return [d.did for d in issued]


def snapshot(
    did: str, boot: int, rec: int, filters: list[list[int]] | None, *, at: dt.datetime | None = None
) -> SnapshotRow:
    received_at = at or dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    return SnapshotRow(did, boot, rec, 1_790_000_000 + rec, received_at, None, None, None, None,
                       filters, None, None, None)  # fmt: skip


async def store_snapshots(*rows: SnapshotRow) -> list[SnapshotRow]:
    """Commit these as a ledger batch would (only a device's newest one becomes its snapshot)."""
    await store_ledger_batch([], list(rows), [])
    return list(rows)


def usage_row(did: str, rec: int, delta_ml: int, received_at: dt.datetime) -> UsageRow:
    return UsageRow(did, 1, rec, 0x20, 0, 1_790_000_000 + rec, received_at, delta_ml, None, None)


async def race_in_processes(
    database_url: str, call: str, args: list[Any], processes: int = 2
) -> list[Any]:
    """Run `tests.metering.support.child` `call` in `processes` processes started together."""
    start_at = time.time() + 2.0  # every child is connected and waiting by then
    spec = json.dumps({"url": database_url, "call": call, "args": args, "start_at": start_at})
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from tests.metering.support import child; child(sys.argv[1])",
            spec,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    results = []
    for process in children:
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def child(spec_text: str) -> None:
    """A racing process: connect, wait for the common start instant, call, print JSON."""
    spec = json.loads(spec_text)

    async def main() -> Any:
        from aquafleet.models.db import database

        async with database(spec["url"], run_migrations=False):
            await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
            return await CALLS[spec["call"]](*spec["args"])

    print(json.dumps(asyncio.run(main())))


async def _open_ticket(key: str, vendor: str, did: str) -> list[Any]:
    from aquafleet.models.tickets import AutomaticTicket, TicketType, open_automatic_ticket

    ticket, created = await open_automatic_ticket(
        AutomaticTicket(dedup_key=key, type=TicketType.MAINTENANCE, vendor_code=vendor, did=did)
    )
    return [ticket.ticket_id, created]


async def _close_period(start: str, end: str, now: str) -> dict[str, Any]:
    from aquafleet.models.billing import close_billing_period

    summary = await close_billing_period(
        dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end),
        dt.datetime.fromisoformat(now),
    )  # fmt: skip
    return summary.as_json()


CALLS = {"open_ticket": _open_ticket, "close_period": _close_period}
