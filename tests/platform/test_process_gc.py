"""The collector settings of long-running processes (aquafleet/process_gc.py)."""

from __future__ import annotations

import subprocess
import sys

from aquafleet.process_gc import GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD

PROBE = """
import gc
from aquafleet.process_gc import freeze_startup_heap

kept = [[i] for i in range(1000)]  # alive at set-up: frozen
freeze_startup_heap()
print(gc.get_threshold(), gc.get_freeze_count() >= 1000)
cycle = []
cycle.append(cycle)
del cycle  # garbage made after set-up is still collected
print(gc.collect() >= 1)
"""


def test_set_up_heap_is_frozen_and_later_cycles_still_collected() -> None:
    # In a process of its own: freezing the test process' heap would keep its garbage.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == f"{(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)} True"
    assert out[1] == "True"


LOAD_GENERATOR_PROBE = """
import gc
from aquafleet.process_gc import freeze_startup_heap
from aquafleet.simulators.fleet import SIM_GEN0_THRESHOLD

freeze_startup_heap(SIM_GEN0_THRESHOLD)
print(gc.get_threshold()[0] == SIM_GEN0_THRESHOLD, gc.isenabled())
cycle = []
cycle.append(cycle)
del cycle  # a cycle (none is made while a simulator runs) is still collected, later
print(gc.collect() >= 1)
"""


def test_a_simulator_process_collects_young_objects_after_a_million() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOAD_GENERATOR_PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    assert out[0] == "True True"
    assert out[1] == "True"


LEDGER_PROBE = """
import asyncio, gc, sys, tempfile
import msgpack
from aquafleet.gateway.ledger import decode_entries
from aquafleet.models.db import database
from aquafleet.models.usage import store_ledger_batch
from aquafleet.process_gc import LEDGER_GEN0_THRESHOLD, freeze_startup_heap

threshold = LEDGER_GEN0_THRESHOLD if sys.argv[1] == "ledger" else int(sys.argv[1])
RECORDS = 50_000  # ledger_batch's largest setting: the largest transaction the writer makes
collections = []
gc.callbacks.append(lambda phase, info: phase == "stop" and collections.append(info))


def entries(number):
    out = []
    for e in range(RECORDS // 100):  # a window-1 round: every record another device's
        items = [[f"BNCH{(e * 100 + k) % 2000:08d}AAAA".encode(), 0x20, 7, number * 100 + e,
                  1_790_000_000, 10, 12_346, 3, 0, 0, b"payload"] for k in range(100)]
        out.append((f"{number}-{e}".encode(), {b"at": b"1790000000000", b"n": b"100",
                                             b"records": msgpack.packb(items)}))
    return out


async def main():
    async with database(f"sqlite://{tempfile.mkdtemp()}/ledger.sqlite3"):
        batches = [entries(n) for n in range(2)]
        freeze_startup_heap(threshold)  # as `aquafleet ledger` does once it runs
        collections.clear()  # start-up's, and the freeze's own
        for batch in batches:
            decoded = decode_entries(batch)
            await store_ledger_batch(decoded.usage, [], [])
        print(len(collections), sum(info["collected"] for info in collections))


asyncio.run(main())
"""


def _ledger_collections(threshold: str) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", LEDGER_PROBE, threshold],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [int(word) for word in done.stdout.splitlines()[-1].split()]  # after the logs


def test_the_ledger_writer_s_largest_transaction_sets_off_no_collection() -> None:
    """A ledger transaction's rows are freed by reference counting after its commit; a young
    collection meanwhile only visits them (~3 us a record at a node's 10,000, measured), so
    the writer's process collects after more allocations than its largest batch makes."""
    assert _ledger_collections("ledger") == [0, 0]
    # the probe sees collections where they happen: a node's threshold makes several, and
    # none of them finds garbage (nothing the writer makes is cyclic)
    count, collected = _ledger_collections(str(GEN0_THRESHOLD))
    assert count > 10
    assert collected == 0
