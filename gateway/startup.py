"""What `serve` holds before anything starts: the data dir's lock and the listening sockets.

Both are taken first, in the process that forks the workers, so a second `serve` fails at
once with a one-line reason instead of half starting: on another data dir's ports it gets
"port 8080 is in use (http_port)", on the same data dir "data dir ... is in use by pid N". The
sockets are bound without SO_REUSEPORT and handed down to the node's own workers, which all
accept on them; nobody else can join the port (a stranger with SO_REUSEPORT would have split
the devices between two independent platforms).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from aquafleet.gateway.errors import GatewayError

TCP_BACKLOG = 4096  # a reconnect storm of thousands of devices waits in the kernel, not refused
HTTP_BACKLOG = 128  # aiohttp's default
LOCK_NAME = "serve.lock"


class PortInUse(GatewayError):
    """Another process listens on a port this node is configured for."""


class DataDirInUse(GatewayError):
    """Another `serve` runs on this data dir (its embedded Redis, SQLite file and keys)."""


@dataclass(frozen=True, slots=True)
class Listeners:
    """The node's bound, listening sockets, shared by its workers."""

    tcp: socket.socket
    http: socket.socket

    def close(self) -> None:
        self.tcp.close()
        self.http.close()


def listen(host: str, port: int, setting: str, *, backlog: int) -> socket.socket:
    """A listening socket on host:port (SO_REUSEADDR only, so a restart need not wait for
    TIME_WAIT; Linux still refuses a port another socket listens on)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise GatewayError(f"cannot listen on {host}:{port} ({setting}): {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is in use ({setting})") from None
        raise GatewayError(f"cannot listen on {host}:{port} ({setting}): {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def bind_listeners(tcp_host: str, tcp_port: int, http_host: str, http_port: int) -> Listeners:
    """Both listeners, or PortInUse naming the first port taken (nothing is left bound)."""
    tcp = listen(tcp_host, tcp_port, "tcp_port", backlog=TCP_BACKLOG)
    try:
        http = listen(http_host, http_port, "http_port", backlog=HTTP_BACKLOG)
    except BaseException:
        tcp.close()
        raise
    return Listeners(tcp=tcp, http=http)


class LockHeld(Exception):
    """The lock file is held by another process (`pid`, when it wrote one)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"held by pid {pid}")
        self.pid = pid


class PidLock:
    """An exclusive flock on a file, held for the life of its holder; the file names the
    holder's pid for whoever finds it taken. The kernel drops the lock when the process dies,
    however it dies, so a killed holder never leaves a stale lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise LockHeld at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise LockHeld(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


class DataDirLock(PidLock):
    """data_dir/serve.lock: one `serve` per data dir."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir / LOCK_NAME)

    def acquire(self) -> None:
        try:
            super().acquire()
        except LockHeld as held:
            who = f"pid {held.pid}" if held.pid else "another process"
            raise DataDirInUse(
                f"data dir {self.path.parent} is in use by {who} (another aquafleet serve); "
                "stop it, or give this one another --data-dir"
            ) from None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


def ready_line(
    listeners: Listeners, *, mqtt_url: str | None, workers: int, api_prefix: str = "/api/v1"
) -> str:
    """The one line a person reads when the node is ready: where devices connect, the API, its
    docs page, the operator console (the ports are the sockets' own, so port 0 shows the one
    the kernel chose)."""
    tcp_host, tcp_port = listeners.tcp.getsockname()[:2]
    http_host, http_port = listeners.http.getsockname()[:2]
    devices = f"TCP {_shown(tcp_host, tcp_port)}"
    if mqtt_url:
        devices += f" and MQTT via {_without_password(mqtt_url)}"
    site = f"http://{_browsable(http_host)}:{http_port}"
    api = f"{site}{api_prefix}"
    processes = f"{workers} workers" if workers > 1 else "1 process"
    return (
        f"aquafleet ready (pid {os.getpid()}, {processes}): devices connect to {devices}; "
        f"REST API {api}; docs {api}/docs; console {site}/console/"
    )


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _browsable(host: str) -> str:
    """A wildcard address is every interface: a browser on this machine uses localhost."""
    if host in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
