"""What every one-off command shares: its settings, a database, a Redis client, the loop."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from aquafleet.gateway.config import Settings
from aquafleet.gateway.config_sources import load_settings
from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.logs import configure_logging


def command_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings of a one-off command; its log lines are readable, not JSON. Every such
    command works on the platform's data: on the embedded default it must find them in
    data_dir, never make an empty database (or a master key) there (Settings.require_platform_data:
    only `serve` and `migrate` create them)."""
    settings = load_settings(getattr(args, "config", None), data_dir=args.data_dir, **overrides)
    configure_logging(settings.log_level, "console")
    settings.require_platform_data()
    return settings


def named_dids(args: argparse.Namespace) -> list[str]:
    """The devices a command names: its DID arguments, then the `did` column of --from."""
    dids = list(args.did)
    if args.from_csv:
        try:
            with open(args.from_csv, newline="") as handle:
                reader = csv.DictReader(handle)
                if "did" not in (reader.fieldnames or []):
                    raise GatewayError(f"--from {args.from_csv}: no did column (did,key)")
                dids += [row["did"] for row in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise GatewayError(f"--from {args.from_csv}: cannot read it: {_reason(exc)}") from None
    if not dids:
        raise SystemExit("aquafleet: name devices (DID ... or --from devices.csv)")
    return dids


def _reason(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def run(coro_factory: Callable[[], Awaitable[int]]) -> int:
    async def main() -> int:
        return await coro_factory()

    return uvloop.run(main())


async def with_database(settings: Settings, action: Callable[[], Awaitable[int]]) -> int:
    from aquafleet.models.db import database

    async with database(settings.resolved_database_url, run_migrations=settings.migrate_on_start):
        return await action()


def run_with_database(settings: Settings, action: Callable[[], Awaitable[int]]) -> int:
    return run(lambda: with_database(settings, action))


async def redis_for_commands(settings: Settings) -> Any:
    """A Redis client for one-off commands: the configured one, or a running embedded one."""
    client, _ = await reach_redis(settings)
    return client


async def reach_redis(settings: Settings) -> tuple[Any, str | None]:
    """(a pinged Redis client, None), or (None, why there is none) for the operator: the
    configured redis_url's refusal, or no embedded Redis running for data_dir."""
    from aquafleet.gateway.config_sources import hide_password
    from aquafleet.gateway.embedded_redis import running_url
    from aquafleet.gateway.redis_io import open_redis

    url = settings.redis_url or running_url(settings.data_dir)
    if url is None:
        return None, (
            f"no embedded Redis runs for data_dir {settings.data_dir.resolve()} "
            "(is `aquafleet serve` running? or set redis_url)"
        )
    client = open_redis(url, max_connections=4)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        where = "redis_url" if settings.redis_url else "the embedded Redis of data_dir"
        return None, (
            f"redis {hide_password(url)} ({where}) is not reachable: "
            f"{_reason(exc) or type(exc).__name__} (is `aquafleet serve` running?)"
        )
    return client, None
