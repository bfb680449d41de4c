"""Stopping our background tasks when a library swallowed the first cancel.

On Python 3.11, asyncio.wait_for returns the inner result when a cancel lands just as that
result arrives; redis-py sends every command through wait_for (its socket_timeout). A
follower loop that lost its cancel that way ran on, and the node's shutdown hung (a CI run
lost a test worker to exactly this: the API's token-revocation follower, cancelled once).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import pytest

from aquafleet.api.tokens import TokenService
from aquafleet.gateway.tasks import TaskGroup, cancel_and_wait


async def _forever_through_wait_for(waits: list[asyncio.Future[None]]) -> None:
    """A follower's shape: wait for the next message through wait_for, forever."""
    loop = asyncio.get_running_loop()
    while True:
        inner: asyncio.Future[None] = loop.create_future()
        waits.append(inner)
        await asyncio.wait_for(inner, 30)


async def _swallow_one_cancel(task: asyncio.Task[None], waits: list[asyncio.Future[None]]) -> None:
    """Land a cancel on `task` just as its awaited result arrives, then prove it ran on."""
    for _ in range(100):  # bounded: the task waits at its first turn
        if waits:
            break
        await asyncio.sleep(0)
    waits[-1].set_result(None)
    task.cancel()
    await asyncio.sleep(0.1)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancel from 3.12")
async def test_one_cancel_is_lost_by_wait_for_on_python_3_11():
    """The hazard itself, so the test below is known to exercise it."""
    waits: list[asyncio.Future[None]] = []
    task = asyncio.create_task(_forever_through_wait_for(waits))
    await _swallow_one_cancel(task, waits)
    try:
        assert not task.done() and task.cancelling() == 1  # cancelled, still running
    finally:
        assert not await cancel_and_wait([task], timeout_s=2)


async def test_a_task_that_swallowed_its_cancel_is_still_stopped():
    waits: list[asyncio.Future[None]] = []
    task = asyncio.create_task(_forever_through_wait_for(waits))
    await _swallow_one_cancel(task, waits)
    started = time.monotonic()
    assert not await cancel_and_wait([task], timeout_s=5)
    assert task.cancelled() and time.monotonic() - started < 1.0


async def test_the_node_task_group_stops_a_service_that_swallowed_its_cancel():
    waits: list[asyncio.Future[None]] = []
    group = TaskGroup()
    group.start("follower", lambda: _forever_through_wait_for(waits))
    await _swallow_one_cancel(group.tasks["follower"], waits)
    task = group.tasks["follower"]
    await asyncio.wait_for(group.stop_all(), 5)
    assert task.cancelled() and not group.tasks


async def test_a_task_that_never_stops_is_reported_not_awaited_forever():
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # lets no cancel end it until released

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await cancel_and_wait([task], timeout_s=0.3) == {task}
    assert time.monotonic() - started < 2.0
    released.set()
    assert not await cancel_and_wait([task], timeout_s=2)


async def _lose_the_first_cancel() -> None:
    """What wait_for does on 3.11 when the result lands with the cancel (shown above)."""
    lost = 0
    while True:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            lost += 1
            if lost > 1:
                raise


async def test_the_api_stops_while_its_token_follower_swallows_a_cancel(
    node_factory: Any, monkeypatch: pytest.MonkeyPatch
):
    """The CI hang: the API's cleanup cancelled the revocation follower once and awaited it."""
    followers: list[asyncio.Task[Any]] = []

    async def follow(self: TokenService) -> None:
        current = asyncio.current_task()
        assert current is not None
        followers.append(current)
        await _lose_the_first_cancel()

    monkeypatch.setattr(TokenService, "follow_revocations", follow)
    node = await node_factory()
    assert followers
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(15):  # before the fix: hung here until this gave up
            await node.stop()
    assert time.monotonic() - started < 10, "the node's shutdown waited on the follower"
    assert followers[0].done()
