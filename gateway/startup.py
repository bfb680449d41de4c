"""What `serve` holds before anything starts: the data dir's lock and the listening sockets.

Both are taken first, in the process that forks the workers, so a second `serve` fails at
once with a one-line reason instead of half starting: on another data dir's ports it gets
"port 8080 is in use (http_port)", on the same data dir "data dir ... is in use by pid N".

The device port has one listening socket per worker (SO_REUSEPORT), all bound here: the kernel
spreads new connections evenly over the workers, and each worker's accept queue holds a full
backlog. One socket shared by every worker (the earlier design) held a single queue of at most
`somaxconn` (4,096) connections for the whole node, so a reconnect storm of 45,000 devices had
most of its SYNs dropped and retried 1, 3, 7, 15 and 31 s later, and whichever worker woke first
took the most devices (docs/benchmarks.md). What the shared socket protected, and how it stays:
- Nobody else joins the port: before binding the group, a plain socket (no SO_REUSEPORT) is
  bound to the port and closed, which fails if anything at all listens there; a later `serve`
  (or anything that binds without SO_REUSEPORT) is refused by our group. Linux lets only sockets
  of the same user with SO_REUSEPORT join a group; `group_is_ours` then checks that the port's
  listeners are exactly ours, so two serves starting in the same instant both fail.
- A worker that stops closes its socket: connections the kernel queued for it and nobody
  accepted yet are reset (the devices reconnect, now to a sibling), unless the operator enables
  `net.ipv4.tcp_migrate_req` (Linux 5.14+), which hands them to a sibling's queue (docs/deploy.md).
  With one shared socket they stayed queued for the siblings. Since `serve` stops all its workers
  when one dies (cli.py), that difference is the connections a dying worker had queued.
The REST API keeps one socket shared by the workers: its load is small and even.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aquafleet.gateway.errors import ConfigError, GatewayError

TCP_BACKLOG = 4096  # per worker socket (tcp_backlog): a reconnect storm waits in the kernel
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")  # the kernel's cap on any listen backlog
HTTP_BACKLOG = 128  # aiohttp's default
LOCK_NAME = "serve.lock"


class PortInUse(GatewayError):
    """Another process listens on a port this node is configured for."""


class DataDirInUse(GatewayError):
    """Another `serve` runs on this data dir (its embedded Redis, SQLite file and keys)."""


@dataclass(frozen=True, slots=True)
class Listeners:
    """The node's bound, listening sockets: a device socket per worker, one HTTP socket."""

    tcp_sockets: tuple[socket.socket, ...]
    http: socket.socket

    @property
    def tcp(self) -> socket.socket:
        """The device socket of this process (the first of the group in `serve`'s parent)."""
        return self.tcp_sockets[0]

    def for_worker(self, index: int) -> Listeners:
        """What worker `index` serves: its own device socket and the shared HTTP socket."""
        return Listeners(tcp_sockets=(self.tcp_sockets[index],), http=self.http)

    def close(self) -> None:
        for sock in self.tcp_sockets:
            sock.close()
        self.http.close()


def _address(host: str, port: int, setting: str) -> tuple[int, int, int, Any]:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise GatewayError(f"cannot listen on {host}:{port} ({setting}): {exc}") from None
    return family, kind, proto, address


def listen(
    host: str, port: int, setting: str, *, backlog: int, reuse_port: bool = False
) -> socket.socket:
    """A listening socket on host:port (SO_REUSEADDR, so a restart need not wait for TIME_WAIT;
    Linux still refuses a port another socket listens on, unless both ask for SO_REUSEPORT)."""
    family, kind, proto, address = _address(host, port, setting)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is in use ({setting})") from None
        raise GatewayError(f"cannot listen on {host}:{port} ({setting}): {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def listen_group(
    host: str, port: int, setting: str, *, backlog: int, count: int
) -> tuple[socket.socket, ...]:
    """`count` listening sockets sharing host:port (SO_REUSEPORT), or PortInUse when anything
    else listens there (see the module's docstring). One socket needs no group."""
    if count == 1:
        return (listen(host, port, setting, backlog=backlog),)
    family, kind, proto, address = _address(host, port, setting)
    probe = socket.socket(family, kind, proto)  # plain: fails if anyone listens on the port
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        port = probe.getsockname()[1]  # port 0: the one the kernel chose
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is in use ({setting})") from None
        raise GatewayError(f"cannot listen on {host}:{port} ({setting}): {exc.strerror}") from None
    finally:
        probe.close()
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            group.append(listen(host, port, setting, backlog=backlog, reuse_port=True))
        if not group_is_ours(group, port):
            raise PortInUse(f"port {port} is in use ({setting})")
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return tuple(group)


def group_is_ours(group: list[socket.socket], port: int) -> bool:
    """Whether every socket listening on `port` (this network namespace) is one of `group`:
    another process with SO_REUSEPORT that bound in the same instant would share the devices."""
    ours = {os.fstat(sock.fileno()).st_ino for sock in group}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for inode in _listening_inodes(Path(table), port):
                if inode not in ours:
                    return False
    return True


def _listening_inodes(table: Path, port: int) -> list[int]:
    """Inodes of the sockets in LISTEN state on `port` in a /proc/net/tcp{,6} table."""
    inodes = []
    with table.open() as rows:
        next(rows, None)  # the header
        for row in rows:
            fields = row.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                inodes.append(int(fields[9]))
    return inodes


def effective_backlog(requested: int) -> tuple[int, int | None]:
    """The backlog the kernel will give a listener asked for `requested`, and somaxconn (None
    where it cannot be read): Linux silently caps every backlog at net.core.somaxconn."""
    try:
        somaxconn = int(SOMAXCONN.read_text())
    except (OSError, ValueError):
        return requested, None
    return min(requested, somaxconn), somaxconn


def bind_listeners(
    tcp_host: str,
    tcp_port: int,
    http_host: str,
    http_port: int,
    *,
    tcp_sockets: int = 1,
    tcp_backlog: int = TCP_BACKLOG,
) -> Listeners:
    """Both listeners (`tcp_sockets` device sockets, one per worker), or PortInUse naming the
    first port taken (nothing is left bound)."""
    group = listen_group(tcp_host, tcp_port, "tcp_port", backlog=tcp_backlog, count=tcp_sockets)
    try:
        http = listen(http_host, http_port, "http_port", backlog=HTTP_BACKLOG)
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return Listeners(tcp_sockets=group, http=http)


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
        except OSError as exc:  # a path that cannot be made or written: the operator's to fix
            raise ConfigError(
                f"data_dir {self.path.parent} (--data-dir, AQUAFLEET_DATA_DIR): cannot use it: "
                f"{exc.strerror or exc}"
            ) from None
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
