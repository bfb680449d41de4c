"""The exactly-once check: does the platform's ledger hold, per device, the water it acked?

The ledger writer drains Redis into the database asynchronously, so the check polls (every
0.5 s, bounded by --check-timeout) until every device's metered total equals the highest counter
the gateway acked, or time runs out. It reads through its own Tortoise context, so a gateway
node running in the same process (tests) keeps its global database state untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

POLL_S = 0.5
MAX_MISMATCHES_SHOWN = 10


@dataclass(frozen=True, slots=True)
class DeviceOutcome:
    """What one virtual purifier knows at the end of the run."""

    did: str
    poured_ml: int  # its counter at the end (this run's water)
    acked_ml: int  # the highest counter among its acked records
    complete: bool  # every record acked and the final one made
    unacked: int
    logged_in: bool


MeterReader = Callable[[list[str], int], Awaitable[dict[str, int]]]


async def _read_metered(dids: list[str], min_boot: int) -> dict[str, int]:
    from aquafleet.models.usage import metered_ml_by_device

    return await metered_ml_by_device(dids, min_boot)


async def check_exactly_once(
    outcomes: Sequence[DeviceOutcome],
    *,
    database_url: str,
    min_boot: int,
    timeout_s: float,
    reader: MeterReader | None = None,
) -> dict[str, Any]:
    """Poll the ledger until metered == acked for every device (or the timeout); the verdict.

    `reader` replaces the database (tests of the verdict); by default the database at
    `database_url` is opened in an isolated TortoiseContext, never through Tortoise.init.
    """
    started = time.monotonic()
    try:
        if reader is not None:
            return await _poll(outcomes, reader, min_boot, timeout_s, started)
        from tortoise.context import TortoiseContext

        from aquafleet.models.db import tortoise_config

        async with TortoiseContext() as context:
            await context.init(config=tortoise_config(database_url))
            return await _poll(outcomes, _read_metered, min_boot, timeout_s, started)
    except Exception as exc:  # database unreachable, missing tables...: the check failed
        result = _verdict(outcomes, {}, time.monotonic() - started)
        result["passed"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result


async def _poll(
    outcomes: Sequence[DeviceOutcome],
    read: MeterReader,
    min_boot: int,
    timeout_s: float,
    started: float,
) -> dict[str, Any]:
    dids = [o.did for o in outcomes]
    deadline = started + timeout_s
    while True:
        metered = await read(dids, min_boot)
        if all(metered.get(o.did, 0) == o.acked_ml for o in outcomes):
            break
        now = time.monotonic()
        if now >= deadline:
            break
        await asyncio.sleep(min(POLL_S, deadline - now))
    return _verdict(outcomes, metered, time.monotonic() - started)


def _verdict(
    outcomes: Sequence[DeviceOutcome], metered: dict[str, int], waited_s: float
) -> dict[str, Any]:
    matching = 0
    mismatches: list[dict[str, Any]] = []
    mismatch_count = 0
    complete = complete_equal = 0
    for o in outcomes:
        value = metered.get(o.did, 0)
        if value == o.acked_ml:
            matching += 1
        else:
            mismatch_count += 1
            if len(mismatches) < MAX_MISMATCHES_SHOWN:
                mismatches.append(
                    {
                        "did": o.did,
                        "acked_ml": o.acked_ml,
                        "metered_ml": value,
                        "poured_ml": o.poured_ml,
                    }
                )
        if o.complete:
            complete += 1
            if value == o.poured_ml:
                complete_equal += 1
    checked = len(outcomes)
    return {
        "mode": "db",
        "passed": checked > 0 and matching == checked and complete_equal == complete,
        "devices_checked": checked,
        "devices_matching": matching,
        "devices_mismatching": mismatch_count,
        "poured_ml": sum(o.poured_ml for o in outcomes),
        "acked_ml": sum(o.acked_ml for o in outcomes),
        "metered_ml": sum(metered.get(o.did, 0) for o in outcomes),
        "mismatches": mismatches,
        "complete_devices": complete,
        "complete_devices_metered_eq_poured": complete_equal == complete,
        "waited_s": round(waited_s, 3),
        "error": None,
    }
