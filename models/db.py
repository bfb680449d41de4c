"""Database set-up: the Tortoise configuration, connections and migrations."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from tortoise import Tortoise, connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.exceptions import DBConnectionError
from tortoise.migrations.api import migrate as tortoise_migrate

from aquafleet.models.errors import DatabaseUnavailable

MODEL_MODULES = [
    "aquafleet.models.vendors",
    "aquafleet.models.devices",
    "aquafleet.models.usage",
    "aquafleet.models.agents",
    "aquafleet.models.accounts",
    "aquafleet.models.members",
    "aquafleet.models.service",
    "aquafleet.models.vending",
    "aquafleet.models.tickets",
    "aquafleet.models.filters",
    "aquafleet.models.billing",
    "aquafleet.models.products",
    "aquafleet.models.orders",
    "aquafleet.models.account_locks",
    "aquafleet.models.money",
    "aquafleet.models.merchants",
    "aquafleet.models.payments",
    "aquafleet.models.bill_numbers",
    "aquafleet.models.commissions",
    "aquafleet.models.technicians",
    "aquafleet.models.ticket_flow",
    "aquafleet.models.fleet_history",
    "aquafleet.models.outbox",
]
APP = "models"

log = structlog.stdlib.get_logger("aquafleet.db")


async def _keep_session(connection: Any) -> None:
    """asyncpg's pool reset, minus the round trip: on release asyncpg still rolls back an
    open transaction; we keep no other session state (no SET, LISTEN, advisory locks or
    cursors), so its default reset query (RESET ALL; CLOSE ALL; UNLISTEN *; ...) would only
    cost a round trip and server work on every query outside a transaction."""


def connection_config(database_url: str) -> str | dict[str, Any]:
    """Tortoise's connection entry: the URL, or for PostgreSQL its expansion with our pool
    reset (measured: a third of a lookup's time went to the default reset)."""
    if not database_url.startswith(("postgres://", "postgresql://", "asyncpg://")):
        return database_url
    config = expand_db_url(database_url)
    config["credentials"]["reset"] = _keep_session
    return config


# What "the database could not be reached or opened" looks like, as opposed to a statement's
# failure: Tortoise's own wrapper, the socket's errors (refused, unknown host, a SQLite file's
# directory that cannot be made) and PostgreSQL's refusals of the connection itself.
_CONNECT_ERRORS = (
    DBConnectionError,
    OSError,
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, wrong password, pg_hba
    asyncpg.CannotConnectNowError,  # starting up, shutting down, in recovery
    asyncpg.TooManyConnectionsError,
)


def database_place(database_url: str) -> str:
    """The URL without its credentials: what a message may show of it."""
    scheme, _, rest = database_url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


@contextlib.contextmanager
def connect_errors(database_url: str) -> Iterator[None]:
    """A database that cannot be reached becomes DatabaseUnavailable, saying which and why (an
    operator's typo in database_url was a page of asyncpg's traceback)."""
    try:
        yield
    except _CONNECT_ERRORS as exc:
        reason = exc.__cause__ if isinstance(exc, DBConnectionError) and exc.__cause__ else exc
        raise DatabaseUnavailable(
            f"database {database_place(database_url)} (database_url): cannot connect: "
            f"{reason or type(reason).__name__}"
        ) from exc


def tortoise_config(database_url: str) -> dict[str, Any]:
    if database_url.startswith("sqlite://"):
        path = database_url.removeprefix("sqlite://")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    return {
        "connections": {"default": connection_config(database_url)},
        "apps": {
            APP: {
                "models": MODEL_MODULES,
                "default_connection": "default",
                "migrations": "aquafleet.models.migrations",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


async def migrate(database_url: str) -> None:
    """Apply every pending migration (idempotent), saying how many and how long they take: a
    first start creates the whole schema (measured: ~3.6 s on SQLite, most of it the migration
    engine rebuilding its model state per operation, not SQL), later starts find none."""
    started = time.monotonic()
    pending = 0
    announced = False

    def plan(_connection: str, steps: list[Any], _fake: bool, _dry_run: bool) -> None:
        nonlocal pending
        pending = len(steps)  # counted before connecting: a database not reached counts as empty

    def progress(event: str, _app: str, name: str) -> None:
        nonlocal announced
        # The first migration starts once the engine has connected and read what is applied:
        # announced then, never for a database that cannot be reached (that said "migrating
        # 24" on a line before the refusal).
        if event == "apply_start" and not announced:
            announced = True
            log.info("database_migrating", migrations=pending)
        elif event == "apply_done":
            log.info("database_migration_applied", migration=name)

    try:
        async with _one_migration_at_a_time(database_url):
            with connect_errors(database_url):
                await tortoise_migrate(
                    config=tortoise_config(database_url), reporter=plan, progress=progress
                )
        if announced:
            log.info(
                "database_migrated",
                migrations=pending,
                seconds=round(time.monotonic() - started, 1),
            )
    finally:
        # The migration API leaves its connections open (for SQLite a non-daemon thread that
        # would keep the process from exiting).
        await close_database()


@contextlib.asynccontextmanager
async def _one_migration_at_a_time(database_url: str) -> AsyncIterator[None]:
    """On SQLite, one process migrates a database file at a time; the next waits, then finds
    nothing pending. A command run while `aquafleet serve` made a new platform's schema (README:
    serve, then vendors add in a second terminal) migrated it too, and one of them stopped
    with a traceback ('table "order_device" already exists'). PostgreSQL is migrated once,
    before the nodes start (docs/deploy.md)."""
    path = database_url.removeprefix("sqlite://") if database_url.startswith("sqlite://") else ""
    if not path or path == ":memory:":
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.migrating", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)  # the event loop runs on
        yield
    finally:
        os.close(fd)  # releases the lock


# A checkpoint copies every page the WAL holds into the database file, once however many
# transactions wrote it since the last one. The ledger writer's transactions each touch one
# index page per device (a device's records sit side by side in the dedupe index), so with
# SQLite's default (a checkpoint at 1,000 pages, 4 MB) a batch of records from 2,000 devices
# checkpointed every page it wrote, every commit; at 10,000 pages (40 MB of WAL) the pages the
# next batches write again are copied once (measured with sqlite3, one record per device per
# transaction: 26-31 -> 18-19 us of CPU a record). The WAL file is cut back to 64 MB after a
# checkpoint if a long reader let it grow beyond.
SQLITE_CHECKPOINT_PAGES = 10_000
SQLITE_WAL_KEEP_BYTES = 64 * 1024 * 1024
# SQLite's page cache per connection, KiB (its default is 2 MB). The ledger writer's
# transactions touch an index page per device; with 2,000 devices those pages did not stay in
# 2 MB, and every transaction read them again from the file (a pread, a 4 KB copy each: 12%
# of the writer's CPU in `benchmarks/ledger_cpu.py --prefill 200`, 2.6% with 64 MB; 15.2-16.2
# instead of 16.7-17.2 us a record, same run). Pages are allocated as they are used, up to it.
SQLITE_CACHE_KIB = 64 * 1024


async def init_database(database_url: str, *, run_migrations: bool = True) -> None:
    if run_migrations:
        await migrate(database_url)
    try:
        with connect_errors(database_url):
            await Tortoise.init(config=tortoise_config(database_url), _enable_global_fallback=True)
            await _open(database_url)
    except BaseException:
        await close_database()  # a half-made pool (SQLite: a non-daemon thread) must not linger
        raise


async def _open(database_url: str) -> None:
    conn = connection()
    if not database_url.startswith("sqlite://"):
        await conn.execute_query("SELECT 1")  # Tortoise connects lazily: fail here, not later
        return
    # WAL lets the API read while the ledger writer writes; NORMAL sync is durable in WAL.
    await conn.execute_script(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
        f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}; "
        f"PRAGMA journal_size_limit={SQLITE_WAL_KEEP_BYTES}; "
        f"PRAGMA cache_size=-{SQLITE_CACHE_KIB};"
    )


async def close_database() -> None:
    await Tortoise.close_connections()
    # Tortoise caches each model's SQL per connection *name* for the life of the process; a
    # process that opens another backend under the same name next (tests, tools) must not
    # reuse the old dialect's placeholders.
    EXECUTOR_CACHE.clear()


@contextlib.asynccontextmanager
async def database(database_url: str, *, run_migrations: bool = True) -> AsyncIterator[None]:
    await init_database(database_url, run_migrations=run_migrations)
    try:
        yield
    finally:
        await close_database()


def connection() -> BaseDBAsyncClient:
    client: BaseDBAsyncClient = connections.get("default")
    return client


def dialect() -> str:
    """'sqlite' or 'postgres': the few raw SQL statements differ only in placeholders."""
    name = connection().capabilities.dialect
    return "postgres" if name.startswith("postgres") else name


# The database's clock as an aware UTC time. PostgreSQL: `clock_timestamp()`, the moment of the
# statement (`now()` is the transaction's start: a time read after a lock was waited for would
# be older than the wait). SQLite: 'now' (milliseconds), the clock of the one machine whose
# processes share the file.
_PG_NOW = "SELECT clock_timestamp() AS now"
_SQLITE_NOW = "SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now') AS now"


async def database_now() -> dt.datetime:
    """The database's clock: one clock for every node and CLI that shares the database, where
    each process's own may be minutes off another's. Inside a transaction, read on its
    connection."""
    postgres = dialect() == "postgres"
    (row,) = await connection().execute_query_dict(_PG_NOW if postgres else _SQLITE_NOW)
    value = row["now"]
    if isinstance(value, str):  # SQLite: UTC, without its zone
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    now: dt.datetime = value.astimezone(dt.UTC)  # asyncpg: an aware timestamptz
    return now
