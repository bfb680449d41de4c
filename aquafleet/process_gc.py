"""Python's cyclic garbage collector in processes that hold tens of thousands of connections.

A gateway worker or a simulator process with 15,000 devices keeps ~300,000 objects that live as
long as the process (imported modules, settings, the simulator's devices) or as long as a
connection. CPython's default thresholds (700, 10, 10) run a full collection, which visits every
one of them (0.1-0.2 s each with 15,000 devices), whenever the objects that survived since the
last one exceed a quarter of the old ones: a reconnect storm, which replaces every connection's
objects within seconds, sets off one every few thousand logins. Measured (CPU time in
`gc.callbacks`, 45,000 devices on 3 gateway workers and 3 simulator processes, docs/benchmarks.md,
branch `storm5`): 13-16% of the gateway workers' CPU and 20-29% of the simulator's before,
5-6% and 8-11% after.

What is done about it:
- `freeze_startup_heap()` once the process is set up moves everything alive into the
  collector's permanent generation: it is never visited again. Nothing is lost: those objects
  are the process' own for its whole life (anything among them that became garbage would only
  be a cycle, and reference counting still frees everything else).
- `GEN0_THRESHOLD` allocations (not 700) between young collections: the young collections
  and, through them, the full ones run 14 times less often. Cyclic garbage waits a little
  longer to be freed (at most that many allocations); objects freed by reference counting,
  nearly all of a connection's, are freed at once as before.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000
GEN1_THRESHOLD = 10
GEN2_THRESHOLD = 10
# The ledger writer's process (`aquafleet ledger`): a transaction's rows (3-4 objects a record,
# up to ledger_batch = 50,000 records) live until its commit and are all freed by reference
# counting right after it; the writer makes no cyclic garbage (0 unreachable in every
# collection, DEBUG_STATS). At 10,000 every 8,000-record transaction set off two young
# collections of ~22,000 just-made rows each, 6-18 ms apiece: ~3 us a record, a quarter of the
# writer's CPU at window 1 (benchmarks/ledger_cpu.py, session 15). Above the largest
# transaction's objects, no collection runs in its steady state at all.
LEDGER_GEN0_THRESHOLD = 500_000


def tune_collector(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Collect young objects every `gen0_threshold` allocations instead of every 700."""
    gc.set_threshold(gen0_threshold, GEN1_THRESHOLD, GEN2_THRESHOLD)


def freeze_startup_heap(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Once set up: collect what start-up left behind, then keep every object alive now out
    of all later collections (gc.freeze), and use the thresholds above (a process whose
    running makes no cyclic garbage may pass a larger young threshold: simulators/fleet.py)."""
    gc.collect()
    gc.freeze()
    tune_collector(gen0_threshold)
