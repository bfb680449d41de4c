"""One-time session setup (the Redis Cluster's start, the migrated database templates) under a
timeout of its own, not the timeout of the test that happens to need it first.

pytest-timeout (with `timeout_func_only` off, the suite's setting) times a test from the start of
its setup to the end of its teardown, so a session fixture's setup counted against the 120 s of
the first test using it, and its teardown against the last one's: on a busy machine that test
timed out with nothing wrong. `timeout_func_only = true` would free the session setup, but it
also frees every function fixture (a node's start and stop, a database's copy and drop), and a
hang there would hang CI. Instead, `one_time_setup(what, bound_s)` stops the running test's
timer for the block, runs the block under a timer of `bound_s` (pytest-timeout's own, same
method: a hang past it ends the worker with every thread's stack, as a test's timeout does), and
then starts the test's timer afresh: every test keeps its whole timeout, and nothing runs
unbounded. The block should have a tighter deadline of its own that raises an error naming the
step (the bound is the last resort for a hang).

A pytest plugin: tests/conftest.py registers it (when pytest-timeout is loaded); a pytest run of
its own takes it with `-p tests.setup_deadline`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_timeout import Settings, get_env_settings, timeout_timer

_items: list[pytest.Item] = []  # the test whose protocol is running (setup, call, teardown)
_armed: dict[str, Settings] = {}  # node id -> the settings of its running timer
_setups: list[str] = []  # the one-time setup running now (nested blocks run in the outer's)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _items.append(item)
    try:
        yield
    finally:
        _items.remove(item)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Settings) -> bool | None:
    """Notes the timer; a one-time setup's timer (thread method) names the setup that ran out."""
    _armed[item.nodeid] = settings
    if not _setups or settings.method != "thread":
        return None  # pytest-timeout's own timer
    what = _setups[-1]

    def expire() -> None:
        item.config.get_terminal_writer().line(
            f"\n{what}: not done within its own timeout ({settings.timeout:g} s, "
            f"tests/setup_deadline.py), running for {item.nodeid}",
            red=True,
        )
        timeout_timer(item, settings)  # pytest-timeout's: every stack, then the process ends

    timer = threading.Timer(settings.timeout, expire)
    timer.name = f"{__name__} {item.nodeid}"

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's cancel hook
    timer.start()
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    _armed.pop(item.nodeid, None)


def running_setup() -> str | None:
    """What the one-time setup running now is, or None (for the hang watchdog's log)."""
    return _setups[-1] if _setups else None


@contextlib.contextmanager
def one_time_setup(what: str, bound_s: float) -> Iterator[None]:
    """Run the block under a timeout of `bound_s` instead of the running test's; the test's
    timer (if it was running) starts again, whole, when the block ends."""
    item = _items[-1] if _items else None
    if item is None or _setups:  # not inside a test (a script), or inside an outer block
        yield
        return
    hook: Any = item.config.hook
    test_timer = _armed.get(item.nodeid)  # None in the setup of a func_only test
    base = test_timer or get_env_settings(item.config)
    if not base.timeout:  # timeouts are off (--timeout=0, a debugging session)
        yield
        return
    if test_timer is not None:
        hook.pytest_timeout_cancel_timer(item=item)
    _setups.append(what)
    try:
        hook.pytest_timeout_set_timer(item=item, settings=base._replace(timeout=bound_s))
        try:
            yield
        finally:
            hook.pytest_timeout_cancel_timer(item=item)
    finally:
        _setups.pop()
        if test_timer is not None:
            hook.pytest_timeout_set_timer(item=item, settings=test_timer)
