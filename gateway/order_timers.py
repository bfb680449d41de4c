"""The order timers inside the node (models/order_timers.py): unpaid orders close, delivered
orders are received, the return window ends in done.

One node of a cluster sweeps at a time: the holder of its own Redis lease (gateway/lease.py, on
a key of its own), renewed every second; when that node stops
it hands the lease over at once, when it dies another takes over within the lease time. The
timers are the orders' own timestamps and states, so a restart or a handover loses nothing, and
a sweep that runs twice (a handover mid-sweep) moves each order once: the state machine refuses
the second move and each event is recorded once per order. `aquafleet orders run-timers` runs
the same sweep from cron for a deployment that switches this loop off (`order_timers`).
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from tortoise.exceptions import BaseORMException

from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.lease import NodeLease
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import Scripts
from aquafleet.models.errors import DomainError
from aquafleet.models.order_timers import SWEEP_BATCH, SweepResult, TimerSettings, sweep

log = get_logger("aquafleet.order_timers")

LEASE_MS = 10_000
RENEW_S = 1.0  # the lease is renewed this often, whatever the sweep interval
ERROR_PAUSE_S = 1.0


class OrderTimerLoop:
    def __init__(
        self,
        *,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        node_id: str,
        interval_s: float,
        timers: TimerSettings,
        batch: int = SWEEP_BATCH,
    ) -> None:
        self.node_id = node_id
        self.interval_s = interval_s
        self.timers = timers
        self.batch = batch
        self.lease = NodeLease(
            client=client, scripts=scripts, key=keyspace.order_timers_owner, node_id=node_id,
            lease_ms=LEASE_MS, job="order_timers",
        )  # fmt: skip
        self.passes = 0  # sweeps this node ran
        self.moved = 0  # orders its sweeps moved

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while True:
            try:
                was_owner = self.owner
                if await self.lease.acquire() and not was_owner:
                    next_sweep = 0.0  # a new owner sweeps at once
                if self.owner and loop.time() >= next_sweep:
                    result = await self.sweep_once()
                    more = max(result.closed, result.received, result.done) >= self.batch
                    next_sweep = loop.time() + (0.0 if more else self.interval_s)
            except (GatewayError, BaseORMException, DomainError) as exc:
                log.warning("order_timers_error", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(ERROR_PAUSE_S)
            await asyncio.sleep(min(RENEW_S, self.interval_s))

    async def sweep_once(self) -> SweepResult:
        result = await sweep(settings=self.timers, limit=self.batch)
        self.passes += 1
        moved = result.closed + result.received + result.done
        self.moved += moved
        if moved:
            log.info("order_timers_swept", closed=result.closed, received=result.received,
                     done=result.done)  # fmt: skip
        return result

    @property
    def owner(self) -> bool:
        return self.lease.held
