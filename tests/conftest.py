"""Shared fixtures: the real Redis (a key prefix per test), SQLite and PostgreSQL databases,
and a gateway node running in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import hypothesis
import pytest
import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from aquafleet.gateway.config import Settings
from aquafleet.gateway.config_sources import load_settings
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.metrics import Metrics
from tests.setup_deadline import one_time_setup

REDIS_URL = os.environ.get("AQUAFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "AQUAFLEET_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"
)
TEST_SHARDS = 4
MASTER_SECRET = "11" * 32


# ----------------------------------------------------------------------------- dying workers

# pytest-xdist gives its workers /dev/null for output, so a worker that died (pytest-timeout's
# thread method ends a hung test with os._exit; a segfault) left only "worker 'gw1' crashed".
# Each worker now keeps a log of its own: the test it starts, faulthandler's traceback on a fatal
# signal, and every thread's stack a few seconds before pytest-timeout's deadline. The
# controller prints what a worker left there at the end of its report (a CI log's tail). A run
# has a directory of its own (several runs may share the machine), kept only when it holds a dump.
WORKER_LOGS_ENV = "AQUAFLEET_TEST_WORKER_LOGS"  # set by the controller for its workers
_LAST_WORDS = ("Timeout (", "Fatal Python error")  # ours, faulthandler's
_STARTED = "test started: "
_worker_log: list[Any] = []  # the open log of this worker (kept open for faulthandler)


# Property tests are bounded by their example counts and by the suite's per-test timeout, not by
# the wall-clock time of one example or of drawing inputs: on a loaded machine (CI shares its two
# cores) Hypothesis's 200 ms deadline and its too_slow health check failed tests whose every
# assertion held (tests/protocol/test_speedups.py, a draw stalled 1.06 s under load). A test's
# own @settings still sets what it names.
hypothesis.settings.register_profile(
    "aquafleet", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile("aquafleet")


@pytest.hookimpl(trylast=True)  # after the faulthandler plugin's, whose file ours replaces
def pytest_configure(config: pytest.Config) -> None:
    import faulthandler

    # Test runs must not pick up an operator's settings.
    for key in list(os.environ):
        if key.startswith("AQUAFLEET_") and not key.startswith("AQUAFLEET_TEST_"):
            del os.environ[key]
    if config.pluginmanager.hasplugin("timeout"):  # its hooks are what these follow
        from tests import setup_deadline

        config.pluginmanager.register(setup_deadline, "aquafleet-setup-deadline")
        config.pluginmanager.register(_HangWatchdog(), "aquafleet-hang-watchdog")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        if getattr(config.option, "numprocesses", None):  # workers start after this hook
            import tempfile

            os.environ[WORKER_LOGS_ENV] = tempfile.mkdtemp(prefix="aquafleet-pytest-workers-")
        return
    directory = Path(os.environ.get(WORKER_LOGS_ENV) or "/tmp/aquafleet-pytest-workers")
    directory.mkdir(parents=True, exist_ok=True)
    log = open(directory / f"{worker}.log", "a", buffering=1)  # noqa: SIM115 (lives on)
    _worker_log.append(log)
    faulthandler.enable(file=log, all_threads=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _worker_log:
        import faulthandler

        faulthandler.disable()
        _worker_log.pop().close()
    elif os.environ.get(WORKER_LOGS_ENV) and not os.environ.get("PYTEST_XDIST_WORKER"):
        directory = Path(os.environ.pop(WORKER_LOGS_ENV))
        if directory.is_dir() and not worker_last_words(directory):
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    if _worker_log:
        _worker_log[0].write(f"{_STARTED}{item.nodeid}\n")
    yield


class _HangWatchdog:
    """Dumps every stack a few seconds before a pytest-timeout timer fires (in xdist workers):
    it follows the timer's hooks, so a test's timer started again after a one-time setup
    (tests/setup_deadline.py) moves its dump along, and the setup's own timer has one."""

    def __init__(self) -> None:
        self.timers: dict[str, Any] = {}

    @pytest.hookimpl(wrapper=True)  # around whichever plugin sets the timer
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> Iterator[Any]:
        if _worker_log and settings.timeout and settings.timeout > 0:
            self._start(item, float(settings.timeout))
        return (yield)

    def _start(self, item: pytest.Item, timeout: float) -> None:
        import threading

        from tests.setup_deadline import running_setup

        setup = running_setup()
        what = f"the one-time setup {setup!r} of {item.nodeid}" if setup else item.nodeid
        watchdog = threading.Timer(
            max(1.0, timeout - 3), _dump_hung_test, args=(_worker_log[0], timeout, what)
        )
        watchdog.daemon = True
        self.timers[item.nodeid] = watchdog
        watchdog.start()

    @pytest.hookimpl(wrapper=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> Iterator[Any]:
        watchdog = self.timers.pop(item.nodeid, None)
        if watchdog is not None:
            watchdog.cancel()
        return (yield)


_test_loops: list[asyncio.AbstractEventLoop] = []  # the event loops tests ran on, newest last


def _dump_hung_test(log: Any, timeout: float, what: str) -> None:
    """Every thread's stack, and every task of the test's event loop with where it waits (a
    hung async test sits in epoll: only its tasks say what it waits for)."""
    import faulthandler

    log.write(f"Timeout ({timeout:.0f} s) coming in {what}: the test loop's tasks, every thread\n")
    for loop in _test_loops[-1:]:
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the set changed while we read it from this thread
            tasks = []
        for task in tasks:
            log.write(f"\n{task!r}\n")
            with contextlib.suppress(Exception):
                task.print_stack(limit=12, file=log)
    log.write("\n")
    faulthandler.dump_traceback(file=log, all_threads=True)
    log.flush()


def worker_last_words(directory: Path, lines: int = 200) -> list[tuple[str, str]]:
    """(worker, the test it was running and what it left) for workers that left a dump."""
    found = []
    for path in sorted(directory.glob("*.log")):
        text = path.read_text(errors="replace")
        starts = [text.find(marker) for marker in _LAST_WORDS if marker in text]
        if starts:
            first = min(starts)
            test = text.rfind(_STARTED, 0, first)
            found.append((path.stem, "\n".join(text[max(test, 0) :].splitlines()[:lines])))
    return found


def pytest_terminal_summary(terminalreporter: Any) -> None:
    directory = os.environ.get(WORKER_LOGS_ENV)
    if os.environ.get("PYTEST_XDIST_WORKER") or not directory or not Path(directory).is_dir():
        return
    for worker, words in worker_last_words(Path(directory)):
        terminalreporter.write_sep("=", f"worker {worker} left a dump ({directory})")
        terminalreporter.write_line(words)


# ----------------------------------------------------------------------------- passwords


@pytest.fixture(autouse=True)
def cheap_password_hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at the lowest cost in tests (microseconds against ~20-60 ms per hash: every
    account made and every login hashes); the hashes still verify as Argon2id. A test marked
    `production_hashing` keeps production's parameters (and pins them)."""
    if request.node.get_closest_marker("production_hashing"):
        return
    from argon2 import PasswordHasher

    import aquafleet.models.accounts as accounts

    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(accounts, "_HASHER", cheap)
    monkeypatch.setattr(accounts, "_DUMMY_HASH", _cheap_dummy_hash(cheap))


_CHEAP_DUMMY: list[str] = []


def _cheap_dummy_hash(cheap: Any) -> str:
    if not _CHEAP_DUMMY:
        _CHEAP_DUMMY.append(cheap.hash("0" * 32))
    return _CHEAP_DUMMY[0]


# ----------------------------------------------------------------------------- Redis


@pytest.fixture
def redis_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def keyspace(redis_prefix: str) -> Keyspace:
    return Keyspace(redis_prefix, TEST_SHARDS)


@pytest.fixture
async def redis_client(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the real Redis; every key under this test's prefix is deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # the suite needs the real Redis: say so plainly
        pytest.fail(f"Redis at {REDIS_URL} is not answering: {exc}")
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}:*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])
    await client.aclose()


# ----------------------------------------------------------------------------- databases


# Migrating a database takes over a second, and most tests want one: the migrations run once per
# test session into a template (a SQLite file, a PostgreSQL template database), and every test gets
# a copy. The templates are built in a child process, so Tortoise's global state in this one stays
# untouched; building them also checks every migration from scratch on both backends each run.
# A build is one-time setup with a deadline of its own (tests/setup_deadline.py): it is not
# charged to the test that needs the template first.

MIGRATE_TIMEOUT_S = 120.0  # one backend's migrations in the child (they take a few seconds)
TEMPLATE_BOUND_S = MIGRATE_TIMEOUT_S + 60  # the setup's timeout, past the child's own deadline

_MIGRATE_SCRIPT = """
import asyncio, sys
import asyncpg
from aquafleet.models.db import migrate

async def main(url, admin_url, name):
    if admin_url:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    await migrate(url)

asyncio.run(main(*sys.argv[1:]))
"""


def _admin_dsn() -> str:
    return POSTGRES_URL.replace("postgres://", "postgresql://")


class MigratedTemplates:
    """Built on first use, per backend; the PostgreSQL template is dropped when the session ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sqlite_file: Path | None = None
        self.postgres_name: str | None = None

    def _migrate(self, url: str, admin_url: str = "", name: str = "") -> None:
        import subprocess
        import sys

        root = Path(__file__).resolve().parent.parent
        subprocess.run(
            [sys.executable, "-c", _MIGRATE_SCRIPT, url, admin_url, name],
            cwd=root,
            check=True,
            timeout=MIGRATE_TIMEOUT_S,
        )

    def sqlite(self) -> Path:
        if self.sqlite_file is None:
            path = self.directory / "template.sqlite3"
            with one_time_setup("the migrated SQLite template", TEMPLATE_BOUND_S):
                self._migrate(f"sqlite://{path}")
            self.sqlite_file = path
        return self.sqlite_file

    def postgres(self) -> str:
        if self.postgres_name is None:
            name = f"aquafleet_template_{uuid.uuid4().hex[:12]}"
            with one_time_setup("the migrated PostgreSQL template", TEMPLATE_BOUND_S):
                self._migrate(f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}", _admin_dsn(), name)
            self.postgres_name = name
        return self.postgres_name

    def drop(self) -> None:
        if self.postgres_name is None:
            return
        with one_time_setup("dropping the PostgreSQL template", TEMPLATE_BOUND_S):
            self._drop()

    def _drop(self) -> None:
        import asyncio

        async def drop() -> None:
            admin = await asyncpg.connect(_admin_dsn())
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.postgres_name}" WITH (FORCE)')
            finally:
                await admin.close()

        import threading

        # A thread of its own: no event loop of the test session may be running in it.
        worker = threading.Thread(target=lambda: asyncio.run(drop()))
        worker.start()
        worker.join(60)


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedTemplates]:
    templates = MigratedTemplates(tmp_path_factory.mktemp("templates"))
    yield templates
    templates.drop()


async def _postgres_database(template: str) -> str:
    """A fresh PostgreSQL database copied from the migrated template; returns its URL."""
    admin = await asyncpg.connect(_admin_dsn())
    name = f"aquafleet_test_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"


async def _drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(_admin_dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_templates: MigratedTemplates
) -> AsyncIterator[str]:
    """A fresh database with every migration applied: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        import shutil

        path = tmp_path / "aquafleet.sqlite3"
        shutil.copyfile(migrated_templates.sqlite(), path)
        yield f"sqlite://{path}"
        return
    url = await _postgres_database(migrated_templates.postgres())
    try:
        yield url
    finally:
        from tortoise import Tortoise

        with contextlib.suppress(Exception):
            await Tortoise.close_connections()
        await _drop_postgres_database(url)


def copy_migrated_sqlite(templates: MigratedTemplates, path: Path) -> str:
    """Put a copy of the migrated SQLite template at path (unless a database is there already:
    nodes sharing a data dir share its database); returns its URL."""
    import shutil

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(templates.sqlite(), path)
    return f"sqlite://{path}"


@pytest.fixture
def migrated_sqlite(migrated_templates: MigratedTemplates) -> Any:
    """migrated_sqlite(path) -> URL of a migrated SQLite database at path, for tests that pick
    the file themselves (subprocesses, restarts); only the tests of migration itself and of
    the true first start begin on an empty file."""

    def copy(path: Path) -> str:
        return copy_migrated_sqlite(migrated_templates, path)

    return copy


@pytest.fixture
async def sqlite_url(tmp_path: Path, migrated_sqlite: Any) -> str:
    """A migrated SQLite database of this test's own."""
    return str(migrated_sqlite(tmp_path / "aquafleet.sqlite3"))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[str]:
    """Tortoise initialised on a migrated database (both backends)."""
    from aquafleet.models.db import database

    async with database(database_url):
        yield database_url


# ----------------------------------------------------------------------------- settings


@pytest.fixture
def make_settings(
    tmp_path: Path, redis_prefix: str, migrated_templates: MigratedTemplates
) -> Iterator[Any]:
    """Settings of a test node. Its default database (a SQLite file in data_dir) starts as a
    copy of the migrated template: migrating a fresh file at every node start took 2.6-3.1 s
    per test; the node still runs its (then empty) migration pass on start."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "redis_url": REDIS_URL,
            "redis_prefix": redis_prefix,
            "redis_shards": TEST_SHARDS,
            "master_secret": MASTER_SECRET,
            "tcp_host": "127.0.0.1",
            "tcp_port": 0,
            "http_host": "127.0.0.1",
            "http_port": 0,
            "log_level": "warning",
            "node_id": f"node-{secrets.token_hex(3)}",
            # No test reaches a real WeChat or SMS provider: a test that delivers the outbox
            # turns the sender on with its fakes' URLs (or runs a NotificationSender itself).
            "notify_sender": False,
        }
        values.update(overrides)
        if values.get("database_url") is None:
            copy_migrated_sqlite(migrated_templates, Path(values["data_dir"]) / "aquafleet.sqlite3")
        return load_settings(None, **values)

    yield make


# ----------------------------------------------------------------------------- a node


@dataclass
class RunningNode:
    app: web.Application
    runner: web.AppRunner
    settings: Settings
    tcp_port: int
    http_port: int

    @property
    def metrics(self) -> Metrics:
        from aquafleet.gateway.appkeys import METRICS

        return self.app[METRICS]

    @property
    def hub(self) -> Any:
        from aquafleet.gateway.appkeys import HUB

        return self.app[HUB]

    async def stop(self) -> None:
        await self.runner.cleanup()


@contextlib.asynccontextmanager
async def run_node(settings: Settings) -> AsyncIterator[RunningNode]:
    """Start a whole node (Redis, DB, ledger writer, TCP, HTTP) in this event loop."""
    from aquafleet.gateway.appkeys import TCP_SERVER
    from aquafleet.node import build_app

    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stopped = False
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        tcp_port = app[TCP_SERVER].sockets[0].getsockname()[1]
        node = RunningNode(app, runner, settings, tcp_port, http_port)
        original_stop = node.stop

        async def stop_once() -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                await original_stop()

        node.stop = stop_once  # type: ignore[method-assign]
        yield node
    finally:
        if not stopped:
            await runner.cleanup()


@pytest.fixture
def test_database(request: pytest.FixtureRequest) -> str | None:
    """The test's database_url, set up here when the test uses it (None when it does not).

    Fixtures that run something on the test's database depend on this one, so pytest sets the
    database up before them and tears it down after them, whatever order a test lists its
    fixtures in: a node listed before database_url was stopped after the database was dropped,
    and its last ledger flush failed. A static dependency on database_url would instead run
    every test of such a fixture on both backends."""
    if "database_url" not in request.fixturenames:
        return None
    return str(request.getfixturevalue("database_url"))


@pytest.fixture
async def node_factory(
    make_settings: Any, redis_client: aioredis.Redis, test_database: str | None
) -> AsyncIterator[Any]:
    """Start nodes on demand; all are stopped at the end of the test, before its database
    goes (see test_database)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> RunningNode:
            return await stack.enter_async_context(run_node(make_settings(**overrides)))

        yield start


@pytest.fixture
async def device_factory() -> AsyncIterator[Any]:
    """TestDevice instances that are all closed when the test ends."""
    from tests.devices import TestDevice

    made: list[TestDevice] = []

    def make(did: str, key: bytes, port: int, **options: Any) -> TestDevice:
        device = TestDevice(did, key, port, **options)
        made.append(device)
        return device

    yield make
    for device in made:
        await device.close()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Tests run on uvloop, like the gateway."""
    return {"uvloop": _new_test_loop}


def _new_test_loop() -> asyncio.AbstractEventLoop:
    loop = uvloop.new_event_loop()
    del _test_loops[:]  # the watchdog of a hung test dumps this loop's tasks
    _test_loops.append(loop)
    return loop
