"""The time-rental scheduler: lock at expiry, remind before it, open a dismantle ticket after.

Expiries live in three Redis sorted sets (did -> rental_expires_at, kept by ServiceStore): one
each for the lock, the reminder and the grace period. Their offsets are settings applied when
the scheduler looks (a reminder is due at expires_at - remind_s, a dismantle ticket at
expires_at + grace_s), so changing a setting needs no rescheduling.

One node of a cluster runs it at a time: the holder of a Redis lease (gateway/lease.py), renewed
every tick; when that node dies another takes over within the lease time. Every action is
idempotent (the lock is "lock if expires_at <= now and not yet locked", the ticket is unique per
expiry), so a handover that repeats a tick does no harm.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from tortoise.exceptions import BaseORMException

from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.lease import NodeLease
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.redis_io import Scripts, redis_errors
from aquafleet.gateway.service_state import (
    EXPIRED_LOCK,
    RENTAL_SCHEDULES,
    Applied,
    ServiceStore,
    parse_answer,
)
from aquafleet.models.errors import DomainError

log = get_logger("aquafleet.rental")

TICK_S = 0.25  # locks land within a second of the expiry
LEASE_MS = 5_000
BATCH = 500  # most devices taken from one schedule per tick

RentalCallback = Callable[[str, int], Awaitable[None]]  # (did, rental_expires_at)


class RentalScheduler:
    def __init__(
        self,
        *,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        store: ServiceStore,
        metrics: Metrics,
        node_id: str,
        remind_s: int,
        grace_s: int,
        on_reminder: RentalCallback,
        on_grace: RentalCallback,
        on_expired: RentalCallback | None = None,
        sweep: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.keyspace = keyspace
        self.store = store
        self.metrics = metrics
        self.node_id = node_id
        self.remind_s = remind_s
        self.grace_s = grace_s
        self.on_reminder = on_reminder
        self.on_grace = on_grace
        self.on_expired = on_expired  # the owner is told (消息推送)
        self.sweep = sweep  # e.g. failing vending sessions past their deadline, once a second
        self._next_sweep = 0.0
        self.lease = NodeLease(
            client=client, scripts=scripts, key=keyspace.rental_owner, node_id=node_id,
            lease_ms=LEASE_MS, job="rental_scheduler",
        )  # fmt: skip

    async def run(self) -> None:
        while True:
            try:
                if await self.lease.acquire():
                    await self.tick(time.time())
            except (GatewayError, BaseORMException, DomainError) as exc:
                log.warning("rental_scheduler_error", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
            await asyncio.sleep(TICK_S)

    @property
    def owner(self) -> bool:
        return self.lease.held

    async def tick(self, now: float) -> None:
        """One pass over the three schedules."""
        await self._lock_expired(now)
        await self._remind(now)
        await self._grace(now)
        if self.sweep is not None and now >= self._next_sweep:
            self._next_sweep = now + 1.0
            await self.sweep()
        self.metrics.rental_passes += 1

    async def _pop(self, kind: str, upto: float) -> list[tuple[str, int]]:
        """Take what is due from every shard's schedule, in one round trip."""
        keyspace = self.keyspace
        calls = [
            ("pop_due", [keyspace.rental_schedule(kind, shard)], [int(upto), BATCH])
            for shard in keyspace.all_shards()
        ]
        replies = await self.scripts.run(self.client, calls, f"taking due rental {kind}")
        return [
            (reply[i].decode(), int(float(reply[i + 1])))
            for reply in replies
            for i in range(0, len(reply), 2)
        ]

    async def _put_back(self, kind: str, items: list[tuple[str, int]]) -> None:
        """Processing failed: the entries go back (unless rescheduled meanwhile)."""
        if not items:
            return
        keyspace = self.keyspace
        with redis_errors("rescheduling rental entries"):
            pipe = self.client.pipeline(transaction=False)
            for did, expires_at in items:
                key = keyspace.rental_schedule(kind, keyspace.shard_of(did))
                pipe.zadd(key, {did: expires_at}, nx=True)
            await pipe.execute()

    async def _lock_expired(self, now: float) -> None:
        due = await self._pop("expiry", now)
        if not due:
            return
        now_ms = int(now * 1000)
        keyspace = self.keyspace
        channel = keyspace.script_channels
        calls = [
            (
                "service",
                [
                    keyspace.meter(did),
                    keyspace.presence(did),
                    *(
                        keyspace.rental_schedule(kind, keyspace.shard_of(did))
                        for kind in RENTAL_SCHEDULES
                    ),
                ],
                ["expire", now_ms, channel, did],
            )
            for did, _ in due
        ]
        try:
            replies = await self.scripts.run(self.client, calls, "locking expired rentals")
        except GatewayError:
            await self._put_back("expiry", due)
            raise
        for (did, expires_at), reply in zip(due, replies, strict=True):
            applied, state = parse_answer(reply)
            if applied is Applied.CHANGED:
                self.metrics.rental_locks += 1
                log.info("rental_expired_locked", did=did, expires_at=expires_at,
                         version=state.version)  # fmt: skip
                if self.on_expired is not None:
                    try:
                        await self.on_expired(did, expires_at)
                    except Exception:  # the lock stands; only the owner's message is lost
                        log.exception("rental_expired_notice_failed", did=did)

    async def _remind(self, now: float) -> None:
        due = await self._pop("remind", now + self.remind_s)
        for index, (did, expires_at) in enumerate(due):
            if expires_at <= now:
                continue  # set already past: the lock says it all
            try:
                await self.on_reminder(did, expires_at)
            except Exception:
                await self._put_back("remind", due[index:])
                raise
            self.metrics.rental_reminders += 1

    async def _grace(self, now: float) -> None:
        due = await self._pop("grace", now - self.grace_s)
        for index, (did, expires_at) in enumerate(due):
            try:
                state = await self.store.read(did)
                still_lapsed = (
                    state.rental_expires_at == expires_at and state.lock_bits & EXPIRED_LOCK
                )
                if still_lapsed:
                    await self.on_grace(did, expires_at)
                    self.metrics.rental_dismantle_tickets += 1
            except Exception:
                await self._put_back("grace", due[index:])
                raise
