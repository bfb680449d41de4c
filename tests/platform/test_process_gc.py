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
