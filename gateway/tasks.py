"""Background tasks owned by a node: started by name, supervised, cancelled and awaited on
shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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
        """Cancel the named tasks and wait for them, cancelling again while they linger.

        On Python 3.11 a cancel that lands while redis-py is inside asyncio.wait_for or
        asyncio.timeout can be swallowed (about 1 in 10 stops hung before this), so one
        cancel() is not enough; a task that outlives STOP_TIMEOUT_S is logged and left.
        """
        chosen = {self.tasks.pop(n) for n in names if n in self.tasks}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT_S
        pending = chosen
        wait_s = FIRST_RECANCEL_S  # most stop at the first cancel: check again soon
        while pending and loop.time() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=wait_s)
            wait_s = min(wait_s * 2, RECANCEL_EVERY_S)
        for task in pending:
            log.error("task_did_not_stop", task=task.get_name())
        for task in chosen - pending:
            if not task.cancelled() and task.exception() is not None:
                log.error("task_failed", task=task.get_name(), error=repr(task.exception()))

    async def stop_all(self) -> None:
        await self.stop(*reversed(list(self.tasks)))
