"""What the payment channels' clients share over aiohttp: one request with its answer read to a
bound and the transport's failures turned into the channel's "unavailable" error, and the
bounded retry of a call keyed by our own number (which the channel answers the same way when
repeated)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDictProxy

T = TypeVar("T")

RETRIES = 2
RETRY_BACKOFF_S = 0.2


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    max_bytes: int,
    unreachable: Callable[[str], Exception],
    **request: Any,
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    """The answer's status, body (at most `max_bytes` + 1 bytes: more is too large) and
    headers; `unreachable(name of the failure)` raised when there is no answer (connection,
    timeout)."""
    try:
        async with session.request(method, url, **request) as response:
            body = await response.content.read(max_bytes + 1)
            return response.status, body, response.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise unreachable(type(exc).__name__) from None


async def with_retries(
    once: Callable[[], Awaitable[T]],
    unavailable: type[Exception],
    *,
    attempts: int = 1 + RETRIES,
    on_retry: Callable[[int, Exception], None] | None = None,
) -> T:
    """`once()`, tried again (after a short, growing pause) while it raises `unavailable`,
    `attempts` times at most; `on_retry(attempt, error)` before each retry."""
    for attempt in range(1, attempts + 1):
        try:
            return await once()
        except unavailable as exc:
            if attempt >= attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            await asyncio.sleep(RETRY_BACKOFF_S * attempt)
    raise AssertionError("unreachable")
