"""Redis at the boundary: the client, the Lua scripts, and redis errors turned into ours."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.errors import RedisUnavailable, ScriptFailed

SCRIPT_NAMES = ("meter", "claim", "release", "touch", "ledger_ack")


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


class Scripts:
    """Our Lua scripts by name: EVALSHA in pipelines, reloaded after a Redis restart."""

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

    def queue(self, pipe: Any, name: str, keys: Sequence[Any], args: Sequence[Any]) -> None:
        pipe.evalsha(self.sha[name], len(keys), *keys, *args)

    async def run_pipeline(self, client: aioredis.Redis, build: Any, what: str) -> list[Any]:
        """Run `build(pipe)` in one round trip; reload the scripts once if Redis lost them."""
        for attempt in (1, 2):
            with redis_errors(what):
                pipe = client.pipeline(transaction=False)
                build(pipe)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            missing = any(isinstance(r, NoScriptError) for r in results)
            if missing and attempt == 1:
                await self.load(client)
                continue
            for result in results:
                if isinstance(result, ResponseError):
                    raise ScriptFailed(f"{what}: {result}")
                if isinstance(result, Exception):
                    raise RedisUnavailable(f"{what}: {type(result).__name__}: {result}")
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(
        self, client: aioredis.Redis, name: str, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        for attempt in (1, 2):
            try:
                with redis_errors(f"script {name}"):
                    return await client.evalsha(self.sha[name], len(keys), *keys, *args)
            except RedisUnavailable as exc:
                if attempt == 1 and isinstance(exc.__cause__, NoScriptError):
                    await self.load(client)
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover


@contextlib.asynccontextmanager
async def redis_client(url: str, *, max_connections: int = 64) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(url, max_connections=max_connections)
    try:
        yield client
    finally:
        await client.aclose()
