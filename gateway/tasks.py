"""Background tasks owned by a node: started by name, supervised, cancelled and awaited on
shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aquafleet.gateway.logs import get_logger

log = get_logger("aquafleet.tasks")

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 10.0
RECANCEL_EVERY_S = 0.5
FIRST_RECANCEL_S = 0.02


@dataclass
class TaskGroup:
    """Background tasks owned by the node: started by name, cancelled and awaited on shutdown."""

    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        async def supervised() -> None:
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A bug, not an expected failure (those are handled inside): restart the
                    # service rather than run on without it.
                    log.exception("task_crashed", task=name, restart_in_s=RESTART_DELAY_S)
                    await asyncio.sleep(RESTART_DELAY_S)

        self.tasks[name] = asyncio.create_task(supervised(), name=name)

    async def stop(self, *names: str) -> None:
        """Cancel the named tasks and wait for them (see `cancel_and_wait`)."""
        chosen = {self.tasks.pop(n) for n in names if n in self.tasks}
        pending = await cancel_and_wait(chosen)
        for task in chosen - pending:
            if not task.cancelled() and task.exception() is not None:
                log.error("task_failed", task=task.get_name(), error=repr(task.exception()))

    async def stop_all(self) -> None:
        await self.stop(*reversed(list(self.tasks)))


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], timeout_s: float = STOP_TIMEOUT_S
) -> set[asyncio.Future[Any]]:
    """Cancel `tasks` and wait for them, cancelling again while they linger; return the
    ones still running after `timeout_s` (each logged).

    One cancel() is not enough on Python 3.11: asyncio.wait_for returns the inner result
    when a cancel lands just as that result arrives, and redis-py wraps every command's
    send in wait_for (its socket_timeout). A loop that swallowed its cancel that way runs
    on forever, and whoever awaited it hangs. Every task we own is stopped through here.
    """
    chosen = set(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in chosen if not t.done()}
    wait_s = FIRST_RECANCEL_S  # most stop at the first cancel: check again soon
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(wait_s, deadline - loop.time()))
        wait_s = min(wait_s * 2, RECANCEL_EVERY_S)
    for task in pending:
        name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
        log.error("task_did_not_stop", task=name, waited_s=timeout_s)
    return pending
