"""A private `redis-server` on a unix socket in a temporary directory, for benchmarks that
measure Redis' own CPU (nothing else talks to it): started, waited for until it answers PING,
stopped and removed.

A server that never comes up (a bad option, a socket it cannot bind, a crash) is a
`PrivateRedisError` naming its exit code and the end of its log, raised within the start
deadline: handing back the path of a socket nobody serves made the benchmark fail later with a
connection error that said nothing of why, or wait on it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

START_TIMEOUT_S = 15.0  # a start takes ~10 ms; an AOF being created, well under a second
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL
LOG_LINES = 15  # lines of the server's log an error quotes


class PrivateRedisError(RuntimeError):
    """The private redis-server did not answer PING on its socket."""

    def __init__(self, message: str, returncode: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.returncode = returncode  # None: it was still running (and silent) at the deadline
        self.log_tail = log_tail


def _log_tail(path: Path, lines: int = LOG_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _answers(sock: str) -> bool:
    if not Path(sock).exists():
        return False
    client = redis.Redis(unix_socket_path=sock, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:  # not accepting yet, or loading its data (BusyLoadingError)
        return False
    finally:
        client.close()


def _wait_until_answering(
    server: subprocess.Popen[bytes], sock: str, log: Path, start_timeout_s: float
) -> None:
    deadline = time.monotonic() + start_timeout_s
    while not _answers(sock):
        returncode = server.poll()
        if returncode is not None:
            tail = _log_tail(log)
            raise PrivateRedisError(
                f"redis-server exited ({returncode}) before answering PING on {sock}; "
                f"the end of its log:\n{tail}",
                returncode,
                tail,
            )
        if time.monotonic() > deadline:
            tail = _log_tail(log)
            raise PrivateRedisError(
                f"redis-server (pid {server.pid}) did not answer PING on {sock} within "
                f"{start_timeout_s:g} s; the end of its log:\n{tail}",
                None,
                tail,
            )
        time.sleep(0.02)


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def private_redis(
    prefix: str, *options: str, start_timeout_s: float = START_TIMEOUT_S
) -> Iterator[tuple[str, int]]:
    """Yields (socket path, pid) of a server that answers PING; `options` are more
    redis-server options (persistence). Raises PrivateRedisError when it does not come up."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    sock = str(workdir / "redis.sock")
    log = workdir / "redis.log"
    try:
        with log.open("wb") as out:  # stdout and stderr: config errors go to stderr
            server = subprocess.Popen(
                ["redis-server", "--dir", str(workdir), "--port", "0", "--unixsocket", sock,
                 "--loglevel", "warning", *options],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _wait_until_answering(server, sock, log, start_timeout_s)
            yield sock, server.pid
        finally:
            _stop(server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
