"""A private `redis-server` on a unix socket in a temporary directory, for benchmarks that
measure Redis' own CPU (nothing else talks to it): started, waited for, stopped and removed."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def private_redis(prefix: str, *options: str) -> Iterator[tuple[str, int]]:
    """Yields (socket path, pid); `options` are more redis-server options (persistence)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    sock = str(workdir / "redis.sock")
    redis = subprocess.Popen(
        ["redis-server", "--dir", str(workdir), "--port", "0", "--unixsocket", sock,
         "--loglevel", "warning", *options],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            if Path(sock).exists():
                break
            time.sleep(0.05)
        yield sock, redis.pid
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
