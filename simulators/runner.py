"""Run a simulation: one fleet in this process, or one per worker process ('spawn').

`run_simulation(options)` is the programmatic entry (tests call it); the CLI wraps it. Workers
send a counters snapshot once a second and their full result at the end through a pipe each;
the parent aggregates, draws the progress line, runs the exactly-once check and builds the
report. Every wait here has a bound; a worker that does not answer in time is terminated and
counted as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

from aquafleet.simulators.check import check_exactly_once
from aquafleet.simulators.fleet import Fleet, raise_open_files_limit
from aquafleet.simulators.options import SimError, SimOptions
from aquafleet.simulators.progress import Progress
from aquafleet.simulators.report import Report, build_report, outcomes_of
from aquafleet.simulators.stats import sum_counters

READY_TIMEOUT_S = 60.0  # a spawned worker imports and reports ready within this
START_DELAY_S = 0.2  # workers start together this long after the last one is ready
RESULT_GRACE_S = 30.0  # beyond duration + drain + close, how long finals may take
INTERRUPT_GRACE_S = 15.0
JOIN_TIMEOUT_S = 5.0
HISTORY_MAX = 100_000  # once-a-second snapshots kept per worker (a day and more)
PROGRESS_S = 1.0


class Collector:
    """Snapshots and finals of every worker, as they arrive."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.started_at = time.time()
        self.latest: dict[int, dict[str, Any]] = {}
        self.histories: dict[int, deque[tuple[float, Mapping[str, int]]]] = {
            i: deque(maxlen=HISTORY_MAX) for i in range(workers)
        }
        self.finals: dict[int, dict[str, Any]] = {}
        self.ready: set[int] = set()
        self.gone: set[int] = set()
        self.changed = asyncio.Event()

    def snapshot(self, worker: int, snap: dict[str, Any]) -> None:
        self.latest[worker] = snap
        self.histories[worker].append((snap["at"], snap["counters"]))

    def final(self, worker: int, result: dict[str, Any]) -> None:
        self.finals[worker] = result
        ended = result["times"].get("ended_at") or time.time()
        counters = {k: v for k, v in result["stats"].items() if isinstance(v, int)}
        self.histories[worker].append((ended, counters))
        self.latest[worker] = {"at": ended, "phase": "done", "counters": counters}
        self.changed.set()

    def message(self, message: tuple[Any, ...]) -> None:
        kind, worker = message[0], message[1]
        if kind == "snap":
            self.snapshot(worker, message[2])
        elif kind == "final":
            self.final(worker, message[2])
        elif kind == "ready":
            self.ready.add(worker)
            self.changed.set()

    @property
    def done(self) -> bool:
        return all(i in self.finals or i in self.gone for i in range(self.workers))

    def counters(self) -> dict[str, int]:
        return sum_counters(s["counters"] for s in self.latest.values())

    def phase(self) -> str:
        phases = {s.get("phase", "run") for s in self.latest.values()}
        for phase in ("run", "drain", "close", "done"):
            if phase in phases:
                return phase
        return "start"


# ----------------------------------------------------------------------------- entry


async def run_simulation(
    options: SimOptions,
    *,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    freeze_heap: bool = False,
) -> Report:
    """Run the simulation `options` describe and return its report (never raises on load).

    `freeze_heap`: this process runs nothing else (the CLI): a fleet run here keeps its
    devices out of the garbage collector's sight (Fleet); worker processes always do."""
    options.validate()
    if options.check == "db" and not options.database_url:
        raise SimError("--check db needs a database URL (--database-url or the configuration)")
    stop = stop or asyncio.Event()
    boot = int(time.time())
    workers = options.resolved_workers
    collector = Collector(workers)
    progress_task = asyncio.create_task(_show_progress(collector, progress), name="sim-progress")
    try:
        if workers == 1:
            await _run_in_process(options, boot, collector, stop, freeze_heap)
        else:
            await _run_processes(options, boot, collector, stop, workers)
    finally:
        progress_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress_task
        if progress is not None:
            if collector.latest:
                progress.finish(time.time() - collector.started_at, collector.counters())
            progress.close()
    interrupted = stop.is_set()
    finals = [collector.finals[i] for i in sorted(collector.finals)]
    lost = workers - len(finals)
    for worker in range(workers):
        if worker not in collector.finals:
            finals.append(_lost_worker_final(collector, worker))
    check: dict[str, Any] | None = None
    if options.check == "db":
        if interrupted:
            check = {"mode": "db", "passed": None, "skipped": "interrupted"}
        else:
            assert options.database_url is not None
            check = await check_exactly_once(
                outcomes_of(finals),
                database_url=options.database_url,
                min_boot=boot,
                timeout_s=options.check_timeout_s,
            )
    return build_report(
        options,
        boot=boot,
        started_at=collector.started_at,
        finals=finals,
        histories=[list(collector.histories[i]) for i in range(workers)],
        check=check,
        interrupted=interrupted,
        workers_lost=lost,
    )


def _lost_worker_final(collector: Collector, worker: int) -> dict[str, Any]:
    """What is known of a worker that died without its final result: its last counters."""
    counters = collector.latest.get(worker, {}).get("counters", {})
    return {"worker": worker, "devices": 0, "stats": dict(counters), "times": {}, "results": []}


async def _show_progress(collector: Collector, progress: Progress | None) -> None:
    if progress is None:
        return
    while True:
        await asyncio.sleep(PROGRESS_S)
        if collector.latest:
            progress.update(
                time.time() - collector.started_at, collector.phase(), collector.counters()
            )


# ----------------------------------------------------------------------------- in process


async def _run_in_process(
    options: SimOptions, boot: int, collector: Collector, stop: asyncio.Event, freeze_heap: bool
) -> None:
    raise_open_files_limit()
    collector.started_at = time.time()
    fleet = Fleet(
        options,
        boot=boot,
        start_wall=collector.started_at,
        emit=lambda snap: collector.snapshot(0, snap),
        freeze_heap=freeze_heap,
    )

    async def forward_stop() -> None:
        await stop.wait()
        fleet.interrupt()

    watcher = asyncio.create_task(forward_stop(), name="sim-stop-watch")
    try:
        collector.final(0, await fleet.run())
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


# ----------------------------------------------------------------------------- processes


async def _run_processes(
    options: SimOptions, boot: int, collector: Collector, stop: asyncio.Event, workers: int
) -> None:
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    devices = options.devices
    size = -(-len(devices) // workers)
    processes: list[Any] = []
    connections: list[Connection] = []
    try:
        for index in range(workers):
            chunk = devices[index * size : (index + 1) * size]
            parent_end, child_end = context.Pipe(duplex=True)
            process = context.Process(
                target=worker_main,
                args=(child_end, options.for_worker(chunk), boot, index * size, index, workers),
                name=f"aquafleet-sim-{index}",
                daemon=True,
            )
            process.start()
            child_end.close()
            processes.append(process)
            connections.append(parent_end)
            read_pipe(parent_end, loop, collector.message, _lost(index, collector))
        all_ready = lambda: len(collector.ready | collector.gone) >= workers  # noqa: E731
        await _wait(collector, processes, all_ready, READY_TIMEOUT_S, stop)
        collector.started_at = time.time() + START_DELAY_S
        for index, connection in enumerate(connections):
            if index not in collector.gone:
                with contextlib.suppress(OSError):
                    connection.send(("start", collector.started_at))
        budget = options.duration_s + options.drain_timeout_s + RESULT_GRACE_S + START_DELAY_S
        await _wait(collector, processes, lambda: collector.done, budget, stop, connections)
    finally:
        for index in range(len(connections)):
            if index not in collector.finals:
                collector.gone.add(index)
        await _reap(processes)
        for connection in connections:
            connection.close()


async def _wait(
    collector: Collector,
    processes: list[Any],
    condition: Any,
    timeout_s: float,
    stop: asyncio.Event,
    connections: list[Connection] | None = None,
) -> None:
    """Wait for `condition` (bounded); forward a stop request to the workers once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    stop_sent = False
    while not condition():
        for index, process in enumerate(processes):
            if not process.is_alive() and index not in collector.finals:
                collector.gone.add(index)
        if condition():
            return
        if stop.is_set():
            if connections is None:
                return
            if not stop_sent:
                stop_sent = True
                deadline = min(deadline, loop.time() + INTERRUPT_GRACE_S)
                for connection in connections:
                    with contextlib.suppress(OSError):
                        connection.send(("stop",))
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        collector.changed.clear()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(0.2, remaining)):
                await collector.changed.wait()


def read_pipe(
    connection: Connection,
    loop: asyncio.AbstractEventLoop,
    on_message: Callable[[Any], None],
    on_closed: Callable[[], None],
) -> None:
    """Deliver a pipe's messages to the loop from a daemon thread until the pipe closes.

    Not loop.add_reader: that makes the fd non-blocking, and multiprocessing then fails any
    message larger than the pipe's buffer (a worker's final report is ~230 KB for 7500
    devices). A daemon thread never holds up the process's exit.
    """

    def pump() -> None:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(on_closed)
                return
            try:
                loop.call_soon_threadsafe(on_message, message)
            except RuntimeError:
                return

    threading.Thread(target=pump, name="sim-pipe", daemon=True).start()


def _lost(index: int, collector: Collector) -> Callable[[], None]:
    def lost() -> None:
        if index not in collector.finals:
            collector.gone.add(index)
        collector.changed.set()

    return lost


async def _reap(processes: list[Any]) -> None:
    """Join every worker (bounded); terminate, then kill, the ones that do not exit."""
    for process in processes:
        await asyncio.to_thread(process.join, JOIN_TIMEOUT_S)
        if process.is_alive():
            process.terminate()
            await asyncio.to_thread(process.join, JOIN_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, JOIN_TIMEOUT_S)


# ----------------------------------------------------------------------------- worker side


def worker_main(
    connection: Connection,
    options: SimOptions,
    boot: int,
    first_index: int,
    index: int,
    workers: int,
) -> None:
    """Entry of a spawned worker process."""
    import uvloop

    raise_open_files_limit()
    try:
        uvloop.run(_worker(connection, options, boot, first_index, index, workers))
    except KeyboardInterrupt:
        pass
    finally:
        connection.close()


async def _worker(
    connection: Connection,
    options: SimOptions,
    boot: int,
    first_index: int,
    index: int,
    workers: int,
) -> None:
    loop = asyncio.get_running_loop()
    start: asyncio.Future[float] = loop.create_future()
    fleet: Fleet | None = None
    stopped = False

    def interrupt() -> None:
        nonlocal stopped
        stopped = True
        if fleet is not None:
            fleet.interrupt()
        elif not start.done():
            start.cancel()

    def on_message(message: tuple[Any, ...]) -> None:
        if message[0] == "start" and not start.done():
            start.set_result(float(message[1]))
        elif message[0] == "stop":
            interrupt()

    def send(message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):
            connection.send(message)

    read_pipe(connection, loop, on_message, interrupt)  # EOF: the parent is gone, stop
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    send(("ready", index))
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            start_wall = await start
    except (TimeoutError, asyncio.CancelledError):
        return
    fleet = Fleet(
        options,
        boot=boot,
        start_wall=start_wall,
        first_index=first_index,
        workers=workers,
        worker_index=index,
        emit=lambda snap: send(("snap", index, snap)),
        freeze_heap=True,  # a worker process runs this fleet and nothing else
    )
    if stopped:
        fleet.interrupt()
    result = await fleet.run()
    send(("final", index, result))
