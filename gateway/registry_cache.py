"""The device registry's copy in Redis: did -> (state, key version), for logins without the DB.

The database is the source of truth. `sync_all` copies it when Redis has no copy yet (a fresh
or flushed Redis); `RegistrySync` then applies changes every few seconds (devices updated since
the last pass) and disconnects devices that may no longer log in. Commands that change devices
(`aquafleet devices register/disable`) also write the copy at once when Redis is reachable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import redis_errors
from aquafleet.models.devices import LOGIN_ALLOWED, Device, DeviceState

log = get_logger("aquafleet.registry")

SYNC_INTERVAL_S = 5.0
SYNC_OVERLAP_S = 2.0  # re-read a little of the previous window: clocks and commits overlap
CHUNK = 2000


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    state: int
    key_version: int

    @property
    def login_allowed(self) -> bool:
        return self.state in LOGIN_ALLOWED


def format_registry_entry(state: int, key_version: int) -> str:
    return f"{state},{key_version}"


def parse_registry_entry(raw: bytes | str | None) -> RegistryEntry | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    state, _, version = text.partition(",")
    return RegistryEntry(int(state), int(version))


async def write_entries(
    client: aioredis.Redis, keyspace: Keyspace, devices: Iterable[tuple[str, int, int]]
) -> int:
    """Write (did, state, key_version) entries; returns how many."""
    count = 0
    with redis_errors("writing the registry copy"):
        pipe = client.pipeline(transaction=False)
        for did, state, key_version in devices:
            pipe.hset(
                keyspace.registry(keyspace.shard_of(did)),
                did,
                format_registry_entry(state, key_version),
            )
            count += 1
            if count % CHUNK == 0:
                await pipe.execute()
        await pipe.execute()
    return count


async def kick_everywhere(
    client: aioredis.Redis, keyspace: Keyspace, dids: Iterable[str], *, verb: str = "disable"
) -> int:
    """Ask whichever node holds each device to close it: `disable` (disabled or deregistered)
    or `revoke` (its key was re-issued); the verb decides the offline reason shown."""
    dids = list(dids)
    if not dids:
        return 0
    kicked = 0
    with redis_errors("kicking devices"):
        pipe = client.pipeline(transaction=False)
        for did in dids:
            pipe.hget(keyspace.presence(did), "node")
        nodes = await pipe.execute()
        pipe = client.pipeline(transaction=False)
        for did, node in zip(dids, nodes, strict=True):
            if node is not None:
                command, channel = keyspace.device_node_channel(did, node.decode())
                pipe.execute_command(command, channel, f"{verb} {did} *")
                kicked += 1
        await pipe.execute()
    return kicked


async def sync_all(client: aioredis.Redis, keyspace: Keyspace) -> int:
    """Copy every device's login entry from the database into Redis."""
    count = 0
    last_did = ""
    while True:
        rows = (
            await Device.filter(did__gt=last_did)
            .order_by("did")
            .limit(CHUNK)
            .values_list("did", "state", "key_version")
        )
        if not rows:
            break
        count += await write_entries(client, keyspace, ((d, int(s), int(k)) for d, s, k in rows))
        last_did = rows[-1][0]
    with redis_errors("marking the registry copy"):
        await client.set(keyspace.registry_synced, dt.datetime.now(dt.UTC).isoformat())
    return count


class RegistrySync:
    """Keeps the Redis copy in step with the database."""

    def __init__(self, client: aioredis.Redis, keyspace: Keyspace) -> None:
        self.client = client
        self.keyspace = keyspace
        self.since = dt.datetime.now(dt.UTC)

    async def ensure_copy(self) -> None:
        with redis_errors("checking the registry copy"):
            present = await self.client.exists(self.keyspace.registry_synced)
        if not present:
            started = dt.datetime.now(dt.UTC)
            count = await sync_all(self.client, self.keyspace)
            self.since = started
            log.info("registry_copied", devices=count)

    async def apply_changes(self) -> int:
        started = dt.datetime.now(dt.UTC)
        window_start = self.since - dt.timedelta(seconds=SYNC_OVERLAP_S)
        rows = await Device.filter(updated_at__gte=window_start).values_list(
            "did", "state", "key_version"
        )
        if rows:
            await write_entries(
                self.client, self.keyspace, ((d, int(s), int(k)) for d, s, k in rows)
            )
            banned = [d for d, s, _ in rows if DeviceState(s) not in LOGIN_ALLOWED]
            await kick_everywhere(self.client, self.keyspace, banned)
        self.since = started
        return len(rows)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                await self.ensure_copy()
                await self.apply_changes()
            except RedisUnavailable as exc:
                log.warning("registry_sync_failed", error=str(exc))
