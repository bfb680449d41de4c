"""The composition root: one place that builds a node from the gateway's resources
(gateway/node.py) and the REST API (api/app.py). Neither of those imports this module, nor
each other's internals: the API reaches the device side through `appkeys.DEVICE_GATEWAY`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aquafleet.api.app import setup_api
from aquafleet.api.observability import metrics_page
from aquafleet.gateway.appkeys import LISTENERS, METRICS, SETTINGS
from aquafleet.gateway.config import Settings
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.node import (
    database_ctx,
    fleet_sampler_ctx,
    gateway_ctx,
    ledger_ctx,
    metrics_ctx,
    mqtt_ctx,
    order_timers_ctx,
    redis_ctx,
    registry_ctx,
    rental_ctx,
    tasks_ctx,
)
from aquafleet.gateway.notify import notify_ctx
from aquafleet.gateway.startup import Listeners
from aquafleet.gateway.tasks import cancel_and_wait

log = get_logger("aquafleet.node")

MAX_REQUEST_BYTES = 1024 * 1024


def build_app(
    settings: Settings, *, metrics: Metrics | None = None, listeners: Listeners | None = None
) -> web.Application:
    """A whole node: Redis, database, tasks, registry sync, ledger writer, rental scheduler,
    order timers, fleet sampler, TCP gateway, MQTT bridge, then the REST API (torn down in
    reverse). With `listeners`, it serves on those sockets (bound by `serve`'s parent)
    instead of binding its own."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[SETTINGS] = settings
    if listeners is not None:
        app[LISTENERS] = listeners
    app[METRICS] = metrics or Metrics.for_this_process()
    app.cleanup_ctx.extend(
        (
            redis_ctx, database_ctx, tasks_ctx, metrics_ctx, registry_ctx, ledger_ctx,
            rental_ctx, order_timers_ctx, fleet_sampler_ctx, gateway_ctx, mqtt_ctx, notify_ctx,
        )
    )  # fmt: skip
    setup_api(app)
    return app


def build_ledger_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    """A ledger writer alone (no device listener), e.g. in its own process next to `serve`;
    its only route is `/metrics` (served when `run_ledger` is given a port)."""
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    app.router.add_get("/metrics", metrics_page)
    app.cleanup_ctx.extend((redis_ctx, database_ctx, tasks_ctx, ledger_ctx))
    return app


async def run_ledger(
    settings: Settings,
    *,
    stop: asyncio.Event,
    ready: Callable[[], Any] | None = None,
    metrics_port: int | None = None,
) -> None:
    """Run a standalone ledger writer until `stop` is set; `ready` is called once it runs.
    With `metrics_port`, its metrics (`aquafleet_ledger_*`) are served on http_host at that
    port, under the node's rule: `metrics_token`, else loopback clients only."""
    runner = web.AppRunner(build_ledger_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        if metrics_port is not None:
            site = web.TCPSite(runner, settings.http_host, metrics_port)
            await site.start()
            log.info("ledger_metrics_listening", http=site.name)
        log.info("ledger_writer_started", consumer=settings.resolved_node_id)
        if ready is not None:
            ready()
        await stop.wait()
    finally:
        await runner.cleanup()


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event,
    ready: Callable[[web.Application], Any] | None = None,
    listeners: Listeners | None = None,
) -> None:
    """Run one node until `stop` is set, which also cuts its start-up short."""
    app = build_app(settings, listeners=listeners)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        if not await unless_stopped(runner.setup(), stop):
            log.info("node_stopped_while_starting")
            return
        if listeners is not None:
            site: web.BaseSite = web.SockSite(runner, listeners.http)
        else:
            site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        log.info("api_listening", http=site.name)
        if ready is not None:
            ready(app)
        await stop.wait()
        log.info("node_stopping")
    finally:
        await runner.cleanup()
        log.info("node_stopped")


async def unless_stopped(step: Awaitable[object], stop: asyncio.Event) -> bool:
    """Run a start-up step unless `stop` is set first: then it is cancelled (every resource it
    had entered is released by the caller's cleanup) and the answer is False."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        await cancel_and_wait([task])
    if task.cancelled():
        return False
    task.result()  # its error, if it failed
    return True
