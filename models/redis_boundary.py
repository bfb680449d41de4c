"""Redis at the domain's boundary: redis-py's errors become `models.errors.Unavailable`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisClusterException, RedisError

from aquafleet.models.errors import Unavailable


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py's errors (and socket errors) into Unavailable, naming what we did."""
    try:
        yield
    except (RedisError, RedisClusterException) as exc:  # the latter is no RedisError
        raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise Unavailable(f"{what}: {exc}") from exc
