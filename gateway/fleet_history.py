"""The fleet's online history (models/fleet_history.py): every `fleet_sample_interval_s` the one
node holding the sampler's lease counts the online devices per (vendor, agent node) from
presence in Redis and writes the bucket's sample to the database.

The lease is gateway/lease.py's (on a key of its own), renewed every
second; a node that stops hands it over at once, one that dies loses it within LEASE_MS. A
bucket is written once: the table's key (bucket, vendor, node) refuses a second writer's rows,
so a handover mid-sample never counts a device twice. A bucket missed while no node held the
lease stays missing (the chart shows a gap, not a guess).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import redis.asyncio as aioredis
from tortoise.exceptions import BaseORMException

from aquafleet.gateway.errors import GatewayError, RedisUnavailable
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.lease import NodeLease
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import Command, Scripts, round_trip
from aquafleet.models.fleet_history import (
    GROUP_SCAN_CHUNK,
    GroupCount,
    bucket_start,
    count_groups,
    prune_samples,
    sampled_devices,
    store_sample,
)

log = get_logger("aquafleet.fleet_history")

LEASE_MS = 10_000
RENEW_S = 1.0
ERROR_PAUSE_S = 1.0


async def online_among(client: aioredis.Redis, keyspace: Keyspace, dids: list[str]) -> set[str]:
    """The devices of `dids` a connection holds now (their presence exists), one round trip."""
    if not dids:
        return set()
    commands: list[Command] = [(b"EXISTS", keyspace.presence(did)) for did in dids]
    replies = await round_trip(client, commands, "reading presence for the fleet sample")
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        raise RedisUnavailable(f"reading presence for the fleet sample: {failed}")
    return {did for did, exists in zip(dids, replies, strict=True) if exists}


class FleetSampler:
    """Samples the fleet's online count per (vendor, node) while holding the lease."""

    def __init__(
        self,
        *,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        node_id: str,
        interval_s: int,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.node_id = node_id
        self.interval_s = interval_s
        self.lease = NodeLease(
            client=client, scripts=scripts, key=keyspace.fleet_sampler_owner, node_id=node_id,
            lease_ms=LEASE_MS, job="fleet_sampler",
        )  # fmt: skip
        self.last_bucket = -1  # the last bucket this node sampled
        self.samples = 0  # buckets this node wrote

    async def run(self) -> None:
        while True:
            try:
                held = await self.lease.acquire()
                bucket = bucket_start(int(time.time()), self.interval_s)
                if held and bucket > self.last_bucket:
                    await self.sample(bucket)
                    self.last_bucket = bucket
            except (GatewayError, BaseORMException) as exc:
                log.warning("fleet_sample_error", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(ERROR_PAUSE_S)
            await asyncio.sleep(RENEW_S)

    async def sample(self, bucket_s: int) -> int:
        """Count and write the bucket's sample, then drop samples past retention; the rows."""
        counts: dict[tuple[str, int], GroupCount] = {}
        after = ""
        while True:  # bounded: each pass moves `after` forward over a finite table
            devices = await sampled_devices(after, GROUP_SCAN_CHUNK)
            if not devices:
                break
            online = await online_among(self.client, self.keyspace, [d for d, _, _ in devices])
            for group, found in count_groups(devices, online).items():
                had = counts.get(group, GroupCount(0, 0))
                counts[group] = GroupCount(had.online + found.online, had.devices + found.devices)
            after = devices[-1][0]
            if len(devices) < GROUP_SCAN_CHUNK:
                break
        at = dt.datetime.fromtimestamp(bucket_s, dt.UTC)
        written = await store_sample(at, counts)
        await prune_samples(dt.datetime.now(dt.UTC))
        self.samples += 1
        return written

    @property
    def owner(self) -> bool:
        return self.lease.held
