"""The composition root: one place that builds a node from the gateway's resources
(gateway/node.py) and the REST API (api/app.py). Neither of those imports this module, nor
each other's internals: the API reaches the device side through `appkeys.DEVICE_GATEWAY`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from aquafleet.api.app import setup_api
from aquafleet.gateway.appkeys import METRICS, SETTINGS
from aquafleet.gateway.config import Settings
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.node import (
    database_ctx,
    gateway_ctx,
    ledger_ctx,
    mqtt_ctx,
    redis_ctx,
    registry_ctx,
    rental_ctx,
    tasks_ctx,
)

log = get_logger("aquafleet.node")

MAX_REQUEST_BYTES = 1024 * 1024


def build_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    """A whole node: Redis, database, tasks, registry sync, ledger writer, rental scheduler,
    TCP gateway, MQTT bridge, then the REST API (torn down in reverse)."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    app.cleanup_ctx.extend(
        (
            redis_ctx, database_ctx, tasks_ctx, registry_ctx, ledger_ctx, rental_ctx,
            gateway_ctx, mqtt_ctx,
        )
    )  # fmt: skip
    setup_api(app)
    return app


def build_ledger_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    """A ledger writer alone (no device listener), e.g. in its own process next to `serve`."""
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    app.cleanup_ctx.extend((redis_ctx, database_ctx, tasks_ctx, ledger_ctx))
    return app


async def run_ledger(settings: Settings, *, stop: asyncio.Event) -> None:
    """Run a standalone ledger writer until `stop` is set."""
    runner = web.AppRunner(build_ledger_app(settings), handle_signals=False)
    await runner.setup()
    try:
        log.info("ledger_writer_started", consumer=settings.resolved_node_id)
        await stop.wait()
    finally:
        await runner.cleanup()


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event,
    ready: Callable[[web.Application], Any] | None = None,
) -> None:
    """Run one node until `stop` is set."""
    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, settings.http_host, settings.http_port, reuse_port=settings.workers > 1
        )
        await site.start()
        log.info("api_listening", http=f"{settings.http_host}:{settings.http_port}")
        if ready is not None:
            ready(app)
        await stop.wait()
        log.info("node_stopping")
    finally:
        await runner.cleanup()
        log.info("node_stopped")
