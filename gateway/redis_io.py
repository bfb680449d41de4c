"""Redis at the boundary: the client, the Lua scripts, and redis errors turned into ours."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from aquafleet.gateway.errors import RedisUnavailable, ScriptFailed

SCRIPT_NAMES = (
    "meter", "claim", "release", "touch", "ledger_ack", "service", "lease", "pop_due", "command",
)  # fmt: skip


def open_redis(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A client with a bounded pool; replies stay bytes (payloads are binary)."""
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


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py's errors into RedisUnavailable, naming what we were doing."""
    try:
        yield
    except NoScriptError as exc:
        raise RedisUnavailable(f"{what}: {exc}") from exc
    except ResponseError as exc:
        raise ScriptFailed(f"{what}: {exc}") from exc
    except RedisError as exc:
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
        self, client: aioredis.Redis, calls: Sequence[ScriptCall], what: str
    ) -> list[Any]:
        """EVALSHA every call in one write and read the replies in order.

        A script error raises ScriptFailed; a lost connection or timeout, RedisUnavailable.
        A connection interrupted half way (even by cancellation) is dropped, never pooled.
        """
        packed = [
            pack_command(b"EVALSHA", self.sha[name], len(keys), *keys, *args)
            for name, keys, args in calls
        ]
        for attempt in (1, 2):
            replies = await round_trip(client, packed, what)
            errors = [r for r in replies if isinstance(r, ResponseError)]
            if errors and attempt == 1 and all(isinstance(e, NoScriptError) for e in errors):
                await self.load(client)
                continue
            if errors:
                raise ScriptFailed(f"{what}: {errors[0]}")
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(
        self, client: aioredis.Redis, name: str, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        return (await self.run(client, [(name, keys, args)], f"script {name}"))[0]


async def round_trip(client: aioredis.Redis, packed: list[bytes], what: str) -> list[Any]:
    """Send commands packed by pack_command in one write and read their replies in order
    (an error reply is returned, not raised). A connection interrupted half way, cancellation
    included, is dropped, never returned to the pool."""
    pool = client.connection_pool
    with redis_errors(what):
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        with redis_errors(what):
            await connection.send_packed_command(b"".join(packed), check_health=False)
            replies: list[Any] = []
            for _ in packed:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # one reply, read whole: still in sync
                    replies.append(exc)
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    return replies
