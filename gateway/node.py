"""The gateway's long-lived resources, each one aiohttp cleanup context, torn down in reverse
order (the composition root, aquafleet/node.py, lists them). The TCP gateway comes last, so
SIGTERM first stops accepting devices, lets what was read become durable and acked, then closes
them; Redis and the database close after.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from aquafleet.gateway.appkeys import (
    COMMAND_SENDER,
    COMMANDS,
    DEVICE_GATEWAY,
    FLEET_SAMPLER,
    HUB,
    KEYSPACE,
    LISTENERS,
    METRICS,
    MQTT_BRIDGE,
    ORDER_TIMERS,
    REDIS,
    RENTAL_SCHEDULER,
    SCRIPTS,
    SERVICE_STORE,
    SETTINGS,
    TASKS,
    TCP_SERVER,
)
from aquafleet.gateway.command_sender import CommandIds, CommandSender
from aquafleet.gateway.commands import CommandEvents, CommandService
from aquafleet.gateway.config import Settings
from aquafleet.gateway.embedded_redis import embedded_redis
from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.facade import DeviceGateway
from aquafleet.gateway.hub import FailedLoginLimiter, Hub
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.ledger import LedgerWriter
from aquafleet.gateway.login import LoginBatcher
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.meter import MeterBatcher
from aquafleet.gateway.mqtt import MQTT_NODE, MqttBridge
from aquafleet.gateway.node_bus import (
    CommandSettled,
    DesiredStateChanged,
    Kick,
    NodeBus,
    RoutedCommand,
)
from aquafleet.gateway.presence import Presence, presence_ttl_ms
from aquafleet.gateway.redis_io import Replication, Scripts, open_redis
from aquafleet.gateway.registry_cache import RegistrySync
from aquafleet.gateway.rental import RentalScheduler
from aquafleet.gateway.service_state import ServiceStore
from aquafleet.gateway.startup import listen
from aquafleet.gateway.tasks import TaskGroup
from aquafleet.gateway.tcp import start_tcp_server
from aquafleet.models.db import close_database, init_database
from aquafleet.models.faults import FaultWatch
from aquafleet.models.filters import MaintenanceWatch
from aquafleet.models.service_pending import ChangeRecovery
from aquafleet.models.usage import LedgerPruner
from aquafleet.protocol import ErrorCode, speedups

log = get_logger("aquafleet.node")

CLOSE_GRACE_S = 2.0
DESIRED_TICK_S = 1.0


# ----------------------------------------------------------------------------- contexts


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        url = settings.redis_url
        if url is None:
            server = await stack.enter_async_context(
                embedded_redis(settings.data_dir, port=settings.embedded_redis_port)
            )
            url = server.url
        client = open_redis(url)
        stack.push_async_callback(client.aclose)
        scripts = Scripts()
        await scripts.load(client)
        app[REDIS] = client
        app[SCRIPTS] = scripts
        app[KEYSPACE] = Keyspace.for_url(
            settings.redis_prefix, settings.redis_shards, settings.redis_url
        )
        yield


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    await init_database(settings.resolved_database_url, run_migrations=settings.migrate_on_start)
    try:
        yield
    finally:
        await close_database()


async def tasks_ctx(app: web.Application) -> AsyncIterator[None]:
    group = TaskGroup()
    app[TASKS] = group
    try:
        yield
    finally:
        await group.stop_all()


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """The event loop's lag is watched (event_loop_lag_seconds); a worker of `serve --workers
    N` keeps its share of the node's merged metrics fresh (gateway/metrics.py); a lone process
    is read directly when scraped."""
    metrics = app[METRICS]
    app[TASKS].start("loop-lag", metrics.watch_loop_lag)
    if metrics.multiprocess_dir is None:
        yield
        await app[TASKS].stop("loop-lag")
        return
    app[TASKS].start("metrics-publish", metrics.publish_every)
    yield
    await app[TASKS].stop("loop-lag", "metrics-publish")
    metrics.publish()  # what this worker counted, to the last record


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    sync = RegistrySync(app[REDIS], app[KEYSPACE])
    await sync.ensure_copy()
    if not app[SETTINGS].registry_sync:  # another worker of this serve keeps the copy
        yield
        return
    app[TASKS].start("registry-sync", sync.run)
    yield
    await app[TASKS].stop("registry-sync")


async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.ledger_writer:
        yield
        return
    writer = LedgerWriter(
        client=app[REDIS],
        scripts=app[SCRIPTS],
        keyspace=app[KEYSPACE],
        metrics=app[METRICS],
        consumer=settings.resolved_node_id,
        batch_entries=max(1, settings.ledger_batch // 100),
        claim_idle_ms=settings.ledger_claim_idle_s * 1000,
        maintenance=MaintenanceWatch(settings.filter_threshold_pct),
        faults=FaultWatch(),
        replication=replication_of(settings),
        linger_s=settings.ledger_linger_ms / 1000,
        linger_records=settings.ledger_batch,
        snapshot_interval_s=settings.ledger_snapshot_interval_ms / 1000,
    )
    await writer.ensure_groups()
    app[TASKS].start("ledger-writer", writer.run)
    yield
    # The gateway context (torn down before this one) has made everything durable in Redis.
    # Let the writer finish its batch (cancelling it mid-transaction would only leave work
    # pending), then write what is left before the database closes.
    writer.request_stop()
    running = app[TASKS].tasks.get("ledger-writer")
    if (
        running is not None
        and not writer.waiting
        and not await _within(settings.shutdown_grace_s, asyncio.shield(running))
    ):
        log.warning("ledger_writer_stop_slow")
    await app[TASKS].stop("ledger-writer")
    try:
        async with asyncio.timeout(settings.shutdown_grace_s):
            written = await writer.flush()
        log.info("ledger_flushed", records=written)
    except TimeoutError:
        log.warning("ledger_flush_unfinished")
    except GatewayError as exc:  # Redis or the database went first: the stream keeps it
        log.warning("ledger_flush_failed", error=str(exc))


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    client, scripts, keyspace, tasks = app[REDIS], app[SCRIPTS], app[KEYSPACE], app[TASKS]
    ttl_ms = presence_ttl_ms(settings.heartbeat_s)
    hub = Hub(
        node_id=settings.resolved_node_id,
        metrics=metrics,
        heartbeat_s=settings.heartbeat_s,
        login_timeout_s=settings.login_timeout_s,
        max_connections=settings.max_connections,
        limiter=FailedLoginLimiter(settings.failed_logins_per_ip, settings.failed_login_window_s),
    )
    meter = hub.meter = MeterBatcher(
        hub=hub,
        client=client,
        scripts=scripts,
        keyspace=keyspace,
        metrics=metrics,
        batch_max=settings.meter_batch_max,
        pause_pending=settings.pending_pause_records,
        pause_backlog=settings.backlog_pause_records,
        coalesce_acks=settings.coalesce_acks,
        replication=replication_of(settings),
        linger_s=settings.meter_linger_ms / 1000,
    )
    logins = hub.logins = LoginBatcher(
        hub=hub,
        client=client,
        scripts=scripts,
        keyspace=keyspace,
        metrics=metrics,
        master_secret=settings.master_secret_bytes(),
        presence_ttl_ms=ttl_ms,
        history_size=settings.presence_history_size,
    )
    presence = hub.presence = Presence(
        hub=hub,
        client=client,
        scripts=scripts,
        keyspace=keyspace,
        ttl_ms=ttl_ms,
        flush_interval_s=settings.presence_flush_s,
    )
    command_ids = CommandIds(client, keyspace)
    await command_ids.reserve()
    command_events = CommandEvents(client, scripts, keyspace)
    sender = hub.sender = CommandSender(
        hub=hub, ids=command_ids, metrics=metrics, events=command_events
    )
    commands = CommandService(
        client=client, scripts=scripts, keyspace=keyspace, ids=command_ids,
        node_id=hub.node_id, metrics=metrics,
    )  # fmt: skip
    bus = node_bus(app, keyspace.node_channels(hub.node_id), hub, sender, commands)
    app[COMMANDS] = commands
    app[COMMAND_SENDER] = sender
    app[HUB] = hub
    app[DEVICE_GATEWAY] = DeviceGateway(
        hub=hub, commands=commands, service_store=app[SERVICE_STORE], client=client,
        keyspace=keyspace,
    )  # fmt: skip
    names = (
        "meter", "backlog-watch", "logins", "releases", "touch", "node-bus", "sweeper",
        "command-sender", "command-events",
    )  # fmt: skip
    runners: tuple[Callable[[], Awaitable[None]], ...] = (
        meter.run,
        meter.watch_backlog,
        logins.run,
        presence.run_releases,
        presence.run_touch,
        bus.run,
        hub.run_sweeper,
        lambda: run_command_sender(sender, command_ids),
        command_events.run,
    )
    for name, runner in zip(names, runners, strict=True):
        tasks.start(name, runner)
    listeners = app.get(LISTENERS)
    if listeners is not None:
        tcp = listeners.tcp
    else:
        tcp = listen(settings.tcp_host, settings.tcp_port, "tcp_port", backlog=settings.tcp_backlog)
    server = await start_tcp_server(hub, tcp, backlog=settings.tcp_backlog)
    app[TCP_SERVER] = server
    log.info(
        "gateway_listening",
        node=hub.node_id,
        tcp=[s.getsockname() for s in server.sockets],
        frame_codec=speedups.implementation(),  # "python": the extension was not built
    )
    yield
    await shutdown_gateway(app)
    await tasks.stop(*names)
    try:  # what the devices said about commands before they went
        if not await _within(CLOSE_GRACE_S, command_events.flush()):
            log.warning("command_events_unwritten", count=command_events.pending)
    except GatewayError as exc:
        log.warning("command_events_unwritten", count=command_events.pending, error=str(exc))


def node_bus(
    app: web.Application,
    channels: list[str],
    hub: Hub,
    sender: CommandSender,
    commands: CommandService,
) -> NodeBus:
    """A bus on `channels` whose messages reach the parts of this node that act on them."""
    sharded = app[KEYSPACE].sharded_pubsub
    bus = NodeBus(app[REDIS], channels, app[METRICS], sharded=sharded)
    bus.subscribe(Kick, lambda m: kick_here(hub, m))
    bus.subscribe(DesiredStateChanged, lambda message: sender.push(message.did, message.desired))
    bus.subscribe(RoutedCommand, lambda message: sender.routed(message.did, message.command))
    bus.subscribe(
        CommandSettled,
        lambda message: commands.on_outcome(message.did, message.cid, message.record),
    )
    return bus


def kick_here(hub: Hub, message: Kick) -> None:
    """The node channel asks to close a device's connection here."""
    if hub.kick(message.did, message.conn_id, message.code, message.reason):
        log.info("device_kicked", did=message.did, verb=message.verb)


async def run_command_sender(sender: CommandSender, ids: CommandIds) -> None:
    """Keep command ids in reserve (at once when they run low) and, every DESIRED_TICK_S,
    resend unanswered commands."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time() + DESIRED_TICK_S
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(next_tick):
                await ids.low.wait()
        try:
            await ids.reserve()
        except GatewayError as exc:
            log.warning("command_ids_unavailable", error=str(exc))
            await asyncio.sleep(min(1.0, max(0.0, next_tick - loop.time())))
        if loop.time() >= next_tick:
            sender.resend_due(time.time())
            next_tick = loop.time() + DESIRED_TICK_S


async def rental_ctx(app: web.Application) -> AsyncIterator[None]:
    """Service-state changes (ServiceStore) and, where enabled, the time-rental scheduler
    (which also fails vending sessions past their deadline)."""
    from aquafleet.models.rental_expiry import (
        open_dismantle_after_grace,
        record_rental_expired,
        record_rental_reminder,
    )

    settings = app[SETTINGS]
    store = ServiceStore(app[REDIS], app[SCRIPTS], app[KEYSPACE])
    app[SERVICE_STORE] = store
    if not settings.rental_scheduler:
        yield
        return
    pruner = LedgerPruner(settings.ledger_retention_days)
    recovery = ChangeRecovery(store)
    scheduler = RentalScheduler(
        client=app[REDIS],
        scripts=app[SCRIPTS],
        keyspace=app[KEYSPACE],
        store=store,
        metrics=app[METRICS],
        node_id=settings.resolved_node_id,
        remind_s=settings.rental_reminder_days * 86_400,
        grace_s=settings.rental_grace_days * 86_400,
        on_reminder=record_rental_reminder,
        on_grace=open_dismantle_after_grace,
        on_expired=record_rental_expired,
        sweep=lambda: sweep_deadlines(app, pruner, recovery),
    )
    app[RENTAL_SCHEDULER] = scheduler
    app[TASKS].start("rental-scheduler", scheduler.run)
    yield
    await app[TASKS].stop("rental-scheduler")
    await scheduler.lease.hand_over()


async def order_timers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Where enabled, the order timers (gateway/order_timers.py) under their own lease."""
    from aquafleet.gateway.order_timers import OrderTimerLoop
    from aquafleet.models.order_timers import TimerSettings

    settings = app[SETTINGS]
    if not settings.order_timers:
        yield
        return
    timers = OrderTimerLoop(
        client=app[REDIS], scripts=app[SCRIPTS], keyspace=app[KEYSPACE],
        node_id=settings.resolved_node_id, interval_s=settings.order_timer_interval_s,
        timers=TimerSettings(
            unpaid_close_after=dt.timedelta(hours=settings.order_unpaid_close_h),
            auto_receive_after=dt.timedelta(days=settings.order_auto_receive_days),
        ),
    )  # fmt: skip
    app[ORDER_TIMERS] = timers
    app[TASKS].start("order-timers", timers.run)
    yield
    await stop_order_timers(app)


async def stop_order_timers(app: web.Application) -> None:
    """Cancel the order timers' task and hand their lease over (the node's shutdown)."""
    await app[TASKS].stop("order-timers")
    await app[ORDER_TIMERS].lease.hand_over()


async def fleet_sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Where enabled, the fleet's online history sampler (gateway/fleet_history.py) under its
    own lease."""
    from aquafleet.gateway.fleet_history import FleetSampler

    settings = app[SETTINGS]
    if not settings.fleet_sampler:
        yield
        return
    sampler = FleetSampler(
        client=app[REDIS], scripts=app[SCRIPTS], keyspace=app[KEYSPACE],
        node_id=settings.resolved_node_id, interval_s=settings.fleet_sample_interval_s,
    )  # fmt: skip
    app[FLEET_SAMPLER] = sampler
    app[TASKS].start("fleet-sampler", sampler.run)
    yield
    await app[TASKS].stop("fleet-sampler")
    await sampler.lease.hand_over()


async def sweep_deadlines(
    app: web.Application,
    pruner: LedgerPruner | None = None,
    recovery: ChangeRecovery | None = None,
) -> int:
    """Each second on the scheduler's owner: vending sessions and commands past their deadline
    (hourly, raw ledger rows past their retention; each minute, service changes a process left
    pending: models/service_pending.py)."""
    from aquafleet.models.vending import expire_dispenses

    if pruner is not None and (pruned := await pruner.maybe_prune(dt.datetime.now(dt.UTC))):
        log.info("ledger_pruned", records=pruned.rows, partitions=list(pruned.partitions))
    if recovery is not None and (found := await recovery.maybe_recover(dt.datetime.now(dt.UTC))):
        log.info(
            "service_changes_recovered", completed=found.completed, dropped=found.dropped,
            settled=found.settled, recorded=found.recorded,
        )  # fmt: skip
    swept = await expire_dispenses()
    commands = app.get(COMMANDS)
    if commands is not None:
        swept += await commands.expire_due()
    return swept


async def mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
    """The MQTT bridge (when `mqtt_url` is set): torn down before the TCP gateway, so what it
    took from the broker is metered and acked before the meter stops."""
    settings = app[SETTINGS]
    if settings.mqtt_url is None:
        yield
        return
    bridge = MqttBridge(
        hub=app[HUB],
        settings=settings,
        client=app[REDIS],
        scripts=app[SCRIPTS],
        keyspace=app[KEYSPACE],
        metrics=app[METRICS],
        master_secret=settings.master_secret_bytes(),
        presence_ttl_ms=presence_ttl_ms(settings.heartbeat_s),
    )
    app[MQTT_BRIDGE] = bridge
    runners = bridge.tasks()
    # The bridges' devices share one presence name: each bridge follows its channel too.
    shared = node_bus(
        app, app[KEYSPACE].node_channels(MQTT_NODE), app[HUB], app[COMMAND_SENDER], app[COMMANDS]
    )
    runners["mqtt-node-bus"] = shared.run
    for name, runner in runners.items():
        app[TASKS].start(name, runner)
    yield
    await bridge.drain(settings.shutdown_grace_s)
    bridge.stop()
    running = app[TASKS].tasks.get("mqtt-bridge")
    if running is not None and not await _within(CLOSE_GRACE_S, asyncio.shield(running)):
        log.warning("mqtt_disconnect_slow")
    await app[TASKS].stop(*runners)


async def shutdown_gateway(app: web.Application) -> None:
    """Stop accepting, make what was read durable and acked, then close every device."""
    settings, hub, server = app[SETTINGS], app[HUB], app[TCP_SERVER]
    hub.accepting = False
    server.close()
    hub.pause_reading("shutdown")
    drained = await _within(settings.shutdown_grace_s, hub.meter.drained())
    log.info(
        "gateway_stopping",
        connections=len(hub.connections),
        drained=drained,
        pending=len(hub.meter.pending),
    )
    hub.close_all(ErrorCode.SHUTDOWN, "gateway stopping, reconnect later")
    if not await _within(CLOSE_GRACE_S, hub.all_closed()):
        hub.abort_all()
    if not await _within(CLOSE_GRACE_S, hub.presence.flushed()):
        log.warning("presence_release_unfinished")
    await _within(CLOSE_GRACE_S, server.wait_closed())


def replication_of(settings: Settings) -> Replication:
    """What a metering round and a ledger read wait for (docs/deploy.md: what an ack promises)."""
    return Replication(settings.redis_ack_replicas, settings.redis_ack_timeout_ms)


async def _within(seconds: float, awaitable: Awaitable[object]) -> bool:
    """Await with a bound; False when the time ran out."""
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        return False
    return True
