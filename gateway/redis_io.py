"""Redis at the boundary: the client, the Lua scripts, and redis errors turned into ours."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from aquafleet.gateway.errors import RedisUnavailable, ScriptFailed
from aquafleet.gateway.keys import CLUSTER_SCHEME

SCRIPT_NAMES = (
    "meter", "claim", "release", "touch", "ledger_ack", "service", "lease", "lease_renew",
    "lease_release", "pop_due", "command",
)  # fmt: skip


def open_redis(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A client with a bounded pool; replies stay bytes (payloads are binary).

    `redis+cluster://HOST:PORT` (any node of a Redis Cluster) gives redis-py's cluster client:
    it answers every command we send as the single-node client does (each of our commands and
    scripts touches one slot; what spans shards goes through `is_cluster` branches), so the
    gateway holds it under the same type.
    """
    if url.startswith(CLUSTER_SCHEME):
        cluster = RedisCluster.from_url(
            "redis://" + url.removeprefix(CLUSTER_SCHEME),
            max_connections=max_connections,
            decode_responses=False,
            socket_keepalive=True,
        )
        return cast(aioredis.Redis, cluster)
    options: dict[str, Any] = {}
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True
    return aioredis.Redis.from_url(
        url,
        max_connections=max_connections,
        decode_responses=False,
        health_check_interval=30,
        **options,
    )


def is_cluster(client: aioredis.Redis) -> bool:
    return isinstance(client, RedisCluster)


async def mget_any(client: aioredis.Redis, keys: Sequence[str]) -> list[Any]:
    """GET of keys of any slots (on a cluster, one MGET per slot, in parallel)."""
    if isinstance(client, RedisCluster):
        return cast(list[Any], await client.mget_nonatomic(list(keys)))
    return cast(list[Any], await client.mget(list(keys)))


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py's errors into RedisUnavailable, naming what we were doing."""
    try:
        yield
    except NoScriptError as exc:
        raise RedisUnavailable(f"{what}: {exc}") from exc
    except ResponseError as exc:
        raise ScriptFailed(f"{what}: {exc}") from exc
    except (RedisError, RedisClusterException) as exc:  # the latter is no RedisError
        raise RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise RedisUnavailable(f"{what}: {exc}") from exc


ScriptCall = tuple[str, Sequence[Any], Sequence[Any]]  # script name, keys, args


def pack_command(*parts: bytes | str | int) -> bytes:
    """One command in RESP. redis-py's general packer costs 25-50 us per command (measured),
    more than the Lua it calls; ours only takes the bytes, text and integers we send."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif isinstance(part, int):
            part = b"%d" % part
        out.append(b"$%d\r\n" % len(part))
        out.append(part)
        out.append(b"\r\n")
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Replication:
    """What a round trip waits for before it returns: WAIT `replicas` `timeout_ms` on each
    connection it wrote on, after its commands (0 replicas: nothing, Redis' asynchronous
    replication). Fewer replicas than asked raise RedisUnavailable: the caller must not tell
    anyone the writes are safe (docs/deploy.md, "What an ack promises")."""

    replicas: int = 0
    timeout_ms: int = 1000


NO_WAIT = Replication()


class Scripts:
    """Our Lua scripts by name, called many at a time in one round trip; reloaded when Redis
    has lost them (a restart)."""

    def __init__(self) -> None:
        self.source: dict[str, bytes] = {}
        self.sha: dict[str, str] = {}
        lua = Path(__file__).parent / "lua"
        for name in SCRIPT_NAMES:
            text = (lua / f"{name}.lua").read_bytes()
            self.source[name] = text
            self.sha[name] = hashlib.sha1(text).hexdigest()

    async def load(self, client: aioredis.Redis) -> None:
        with redis_errors("loading Lua scripts"):
            for text in self.source.values():
                await client.script_load(text)

    async def run(
        self,
        client: aioredis.Redis,
        calls: Sequence[ScriptCall],
        what: str,
        replication: Replication = NO_WAIT,
    ) -> list[Any]:
        """EVALSHA every call in one write and read the replies in order.

        A script error raises ScriptFailed; a lost connection or timeout, RedisUnavailable.
        A connection interrupted half way (even by cancellation) is dropped, never pooled.
        """
        commands = [
            (b"EVALSHA", self.sha[name], len(keys), *keys, *args) for name, keys, args in calls
        ]
        replies = await round_trip(client, commands, what, replication)
        lost = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if lost:  # a restarted or newly promoted master: load, then run only those again
            await self.load(client)
            again = await round_trip(client, [commands[i] for i in lost], what, replication)
            for index, reply in zip(lost, again, strict=True):
                replies[index] = reply
        errors = [r for r in replies if isinstance(r, ResponseError)]
        if errors:
            raise ScriptFailed(f"{what}: {errors[0]}")
        return replies

    async def call(
        self, client: aioredis.Redis, name: str, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        return (await self.run(client, [(name, keys, args)], f"script {name}"))[0]


Command = tuple[bytes | str | int, ...]  # a tuple: packed bytes would pass as a Sequence
CLUSTER_ATTEMPTS = 3  # sends of commands a cluster redirected (MOVED, TRYAGAIN, CLUSTERDOWN)
CLUSTER_RETRY_S = 0.2
_REDIRECTED = (AskError, TryAgainError, ClusterDownError)


async def round_trip(
    client: aioredis.Redis,
    commands: Sequence[Command],
    what: str,
    replication: Replication = NO_WAIT,
) -> list[Any]:
    """Send commands in one write and read their replies in order (an error reply is
    returned, not raised). A connection interrupted half way, cancellation included, is
    dropped, never returned to the pool. On a cluster: one write per master holding the
    commands' slots, in parallel."""
    if isinstance(client, RedisCluster):
        return await _cluster_round_trip(client, commands, what, replication)
    pool = client.connection_pool
    with redis_errors(what):
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        return await _send(connection, commands, what, replication)
    finally:
        await pool.release(connection)


async def _send(
    connection: Any, commands: Sequence[Command], what: str, replication: Replication
) -> list[Any]:
    """Commands (and the WAIT asked for) on one connection, in one write."""
    packed = [pack_command(*command) for command in commands]
    if replication.replicas:
        packed.append(pack_command(b"WAIT", replication.replicas, replication.timeout_ms))
    try:
        with redis_errors(what):
            await connection.send_packed_command(b"".join(packed), check_health=False)
            replies: list[Any] = []
            # One deadline for every reply of the round trip (the connection's socket_timeout)
            # instead of redis-py's timer per reply: a login round of 2,000 claims armed and
            # cancelled 2,000 of them. The replies come back together, as one Redis call each.
            async with asyncio.timeout(connection.socket_timeout):
                for _ in packed:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as exc:  # one reply, read whole: still in sync
                        replies.append(exc)
    except BaseException:
        await connection.disconnect()
        raise
    if replication.replicas:
        acked = replies.pop()
        if not isinstance(acked, int) or acked < replication.replicas:
            raise RedisUnavailable(
                f"{what}: {acked} of {replication.replicas} replicas acknowledged in "
                f"{replication.timeout_ms} ms"
            )
    return replies


def _first_key(command: Command) -> bytes | str | int:
    """The key a command is routed by: a script's first key, else its first argument."""
    name = command[0]
    text = (name.decode() if isinstance(name, bytes) else str(name)).upper()
    if text in ("EVALSHA", "EVAL"):
        return command[3]
    if text == "XREADGROUP":
        return command[list(command).index("STREAMS") + 1]
    return command[1]


async def _cluster_round_trip(
    client: RedisCluster, commands: Sequence[Command], what: str, replication: Replication
) -> list[Any]:
    """The commands grouped by the master of their slot, each group in one write on one of
    that master's connections (its WAIT there too). Commands a changing cluster redirected
    were not run: they are sent again once the topology is read anew; a connection lost half
    way raises RedisUnavailable (whether its commands ran is unknown: callers retry what is
    idempotent, as after any outage)."""
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    nodes = client.nodes_manager
    for attempt in range(1, CLUSTER_ATTEMPTS + 1):
        groups: dict[str, tuple[Any, list[int]]] = {}
        with redis_errors(what):
            await client.initialize()
            for index in todo:
                key = _first_key(commands[index])
                node = nodes.get_node_from_slot(client.keyslot(key))
                groups.setdefault(node.name, (node, []))[1].append(index)
        results = await asyncio.gather(
            *(
                _node_round_trip(node, [commands[i] for i in indexes], what, replication)
                for node, indexes in groups.values()
            ),
            return_exceptions=True,
        )
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            with contextlib.suppress(RedisError, OSError):
                await nodes.initialize()
            if isinstance(failed, RedisUnavailable | ScriptFailed):
                raise failed
            raise RedisUnavailable(f"{what}: {type(failed).__name__}: {failed}") from failed
        redirected = []
        for (_node, indexes), group_replies in zip(groups.values(), results, strict=True):
            assert isinstance(group_replies, list)
            for index, reply in zip(indexes, group_replies, strict=True):
                replies[index] = reply
                if isinstance(reply, _REDIRECTED):
                    redirected.append(index)
        if not redirected:
            return replies
        todo = redirected
        with contextlib.suppress(RedisError, OSError):
            await nodes.initialize()
        if attempt < CLUSTER_ATTEMPTS:
            await asyncio.sleep(CLUSTER_RETRY_S * attempt)
    raise RedisUnavailable(f"{what}: {replies[todo[0]]}")


async def _node_round_trip(
    node: Any, commands: list[Command], what: str, replication: Replication
) -> list[Any]:
    with redis_errors(what):
        connection = node.acquire_connection()
    try:
        return await _send(connection, commands, what, replication)
    finally:
        node.release(connection)
