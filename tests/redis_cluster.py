"""A real Redis Cluster on loopback for tests and benchmarks: 3 masters, 3 replicas, each a
`redis-server --cluster-enabled yes` in a directory of its own, made one cluster by
`redis-cli --cluster create ... --cluster-replicas 1`.

Start-up under `pytest -n 2` on a busy machine: each node's port (and its cluster bus port, +10000)
comes from below the kernel's ephemeral range, where no outgoing connection of the suite can hold
it, from a slice of its own per xdist worker; a node counts as up only once the process we
started answers (its INFO `process_id`), so a port taken by someone else between the probe and
the node's bind means a new port for that node, never someone else's server in our cluster. One
deadline covers the whole start, and its error names the step and the nodes still waited for.
Nodes die with the process that started them (a worker killed by pytest-timeout included)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

# One bound on the whole start (spawn, create, every node ok and every replica synced). A start
# takes 2-3 s; three at once beside two busy loops, 2-12 s (load 5-13, 2026-12-07). The old
# bound (30 s from the spawn, `--cluster create` included, so the readiness wait got what create
# left) was the tightest step. A start that hangs fails with this module's error naming the step
# and the nodes, not with the worker killed.
START_TIMEOUT_S = 90.0
# The session cluster's start (and stop) is one-time setup with a timeout of its own
# (tests/setup_deadline.py), not a share of the first test's 120 s: past START_TIMEOUT_S by a
# poll round (a node that accepts and never answers costs CALL_TIMEOUT_S per command).
SESSION_BOUND_S = 180.0
NODES = 6  # 3 masters + 3 replicas
MASTERS = 3
CLUSTER_NODE_TIMEOUT_MS = 2000  # how long a master may be silent before its replica takes over
BUS_OFFSET = 10000  # Redis' cluster bus listens on port + 10000
SPAWN_ATTEMPTS = 5  # ports tried per node when the one probed was taken before the node bound it
CALL_TIMEOUT_S = 5.0  # one command to one node (a poll that gets no answer polls again)

# Ports handed to a cluster of this process and not yet released (a second cluster of the same
# worker, such as the failover test's own, must not probe a port the first has not bound yet).
_taken: set[int] = set()


def redis_server_missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (a Redis Cluster needs redis-server 7 and redis-cli)"
    return None


def _ephemeral_low() -> int:
    """The first port of the kernel's range for bind(0) and outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _port_slice() -> range:
    """This process' node ports: below the ephemeral range with their bus ports (the bus ports
    above the node ports, so one cluster's node never lands on another's bus), split between
    the xdist workers of the run. The ephemeral range is where bind(0) probes (ours before,
    `tests.processes.free_port` for the `aquafleet serve` processes the other worker starts
    seconds after its probe) and the suite's client sockets take their ports: a node port from
    there could be held by one of them when the node binds it (EADDRINUSE)."""
    top = _ephemeral_low() - BUS_OFFSET  # node ports below it have bus ports below the range
    low = max(1024, top - BUS_OFFSET)
    if top - low < 100 * NODES:  # a kernel whose ephemeral range starts low: probe the lot
        low, top = 1024, 65535 - BUS_OFFSET
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) % workers if worker.isdigit() else 0
    width = (top - low) // workers
    return range(low + index * width, low + (index + 1) * width)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A port of this worker's slice free for a node and for its bus port, taken until
    `_release`. Starts at a random place: concurrent runs on one machine rarely collide."""
    ports = _port_slice()
    start = random.randrange(len(ports))
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        if port not in _taken and _bindable(port) and _bindable(port + BUS_OFFSET):
            _taken.add(port)
            return port
    raise RuntimeError(f"no free ports for a Redis Cluster node in {ports}")


def _release(ports: list[int]) -> None:
    _taken.difference_update(ports)


def _call(port: int, *args: str) -> str:
    """One command to the node on `port`, its reply as text; "" when it does not answer (not
    listening yet, busy, an error reply): the callers poll until a deadline. A connection of
    redis-py, not a `redis-cli` process: polls fork nothing on a machine short of CPU."""
    conn = redis.Connection(
        host="127.0.0.1", port=port,
        socket_timeout=CALL_TIMEOUT_S, socket_connect_timeout=CALL_TIMEOUT_S,
    )  # fmt: skip
    try:
        conn.send_command(*args)
        reply = conn.read_response()
    except redis.RedisError:
        return ""
    finally:
        conn.disconnect()
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Kill a node with the process that started it: a worker ended by pytest-timeout (os._exit) or
# a signal leaves no redis-server behind. setpriv (util-linux) sets the parent-death signal and
# execs redis-server, so the pid stays the node's.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


@dataclass
class RedisClusterProcess:
    directory: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def _log(self, port: int) -> Path:
        return self.directory / str(port) / "redis.log"

    def _spawn(self, port: int) -> None:
        """Start (or restart) the node on `port`; the parent-death signal is bound to the
        calling thread: call it from the thread that owns the cluster."""
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        with self._log(port).open("ab") as log:
            self.processes[port] = subprocess.Popen(
                [
                    *_DIE_WITH_PARENT,
                    "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                    "--appendonly", "no", "--save", "", "--dir", str(node_dir),
                    # A replica's first full sync otherwise waits 5 s for more replicas.
                    "--repl-diskless-sync-delay", "0",
                    "--protected-mode", "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def _answering(self, port: int) -> bool:
        """The node we started on `port` answers (not another server that holds the port)."""
        info = _call(port, "INFO", "server")
        return f"process_id:{self.processes[port].pid}\r\n" in info

    def _spawn_all(self, deadline: float) -> None:
        """Every node up and answering; a node whose port was taken between the probe and its
        bind (it exits: "Address already in use") gets another port."""
        for port in self.ports:
            self._spawn(port)
        attempts = dict.fromkeys(self.ports, 1)
        waiting = list(self.ports)
        while waiting:
            for port in list(waiting):
                if self._answering(port):
                    waiting.remove(port)
                    continue
                proc = self.processes[port]
                if proc.poll() is None:
                    continue
                in_use = "Address already in use" in self._log(port).read_text(errors="replace")
                if not in_use or attempts[port] >= SPAWN_ATTEMPTS:
                    raise RuntimeError(
                        f"redis-server on 127.0.0.1:{port} exited ({proc.returncode}) before "
                        f"answering; its log ({self._log(port)}):\n{_log_tail(self._log(port))}"
                    )
                new = _free_port()
                index = self.ports.index(port)
                self.ports[index] = new
                del self.processes[port]
                _release([port])
                attempts[new] = attempts.pop(port) + 1
                waiting[waiting.index(port)] = new
                self._spawn(new)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not answer within {START_TIMEOUT_S:.0f} s on "
                    f"{', '.join(f'127.0.0.1:{p}' for p in waiting)} (logs in {self.directory})"
                )
            if waiting:
                time.sleep(0.05)

    def start(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        self._spawn_all(deadline)
        self._create(deadline)
        self._wait(deadline, self.ports, f"the cluster's start ({START_TIMEOUT_S:.0f} s)")

    def _create(self, deadline: float) -> None:
        """`redis-cli --cluster create`: slots, config epochs, MEET, waiting until every node
        agrees, then each replica's CLUSTER REPLICATE (it retries the ones sent before the
        replica knew its master)."""
        command = [
            "redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas", "1", "--cluster-yes",
        ]  # fmt: skip
        remaining = max(1.0, deadline - time.monotonic())
        try:
            created = subprocess.run(
                command, capture_output=True, text=True, timeout=remaining, check=False
            )
        except subprocess.TimeoutExpired as exc:
            out = (
                exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
            )
            raise RuntimeError(
                f"redis-cli --cluster create did not finish within {START_TIMEOUT_S:.0f} s of the "
                f"start (ports {self.ports}, logs in {self.directory}); its output:\n{out}"
            ) from None
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({created.returncode}, ports {self.ports}):\n"
                f"{created.stdout}{created.stderr}"
            )

    def _not_ready(self, port: int, nodes: int) -> str | None:
        """Why the node on `port` is not ready yet (its view of a cluster of `nodes` nodes),
        or None."""
        if self.processes[port].poll() is not None:
            return f"exited ({self.processes[port].returncode}); log:\n{_log_tail(self._log(port))}"
        info = _call(port, "CLUSTER", "INFO")
        if "cluster_state:ok" not in info:
            return "cluster_state is not ok" if info else "no answer"
        if f"cluster_known_nodes:{nodes}\r\n" not in info:
            return f"does not know all {nodes} nodes yet"
        masters = len(self._serving_masters(port))
        if masters != MASTERS:
            return f"sees {masters} masters serving slots, not {MASTERS}"
        replication = _call(port, "INFO", "replication")
        if "role:master" not in replication and "master_link_status:up" not in replication:
            return "a replica whose first sync with its master is not done"
        return None

    def _wait(self, deadline: float, ports: list[int], what: str) -> None:
        """Until every node of `ports` is ready (see `_not_ready`); else an error per node."""
        while True:
            pending = {p: why for p in ports if (why := self._not_ready(p, NODES)) is not None}
            if not pending:
                return
            if any("exited" in why for why in pending.values()) or time.monotonic() > deadline:
                waited = "; ".join(f"127.0.0.1:{p}: {why}" for p, why in pending.items())
                raise RuntimeError(
                    f"the Redis Cluster was not ready at the end of {what}: {waited} "
                    f"(logs in {self.directory})"
                )
            time.sleep(0.1)

    def wait_ok(self, deadline: float) -> None:
        """Until every live node says cluster_state:ok and knows all 3 masters with slots, and
        every live replica has finished its sync with its master.

        A replica that has never synced refuses to take over ("Disconnected from master for
        longer than allowed": its data age counts from the epoch), so a master killed before
        its replica's first sync stays failed for good; a test must not kill one that early."""
        alive = [p for p, proc in self.processes.items() if proc.poll() is None]
        self._wait(deadline, alive, "the wait for cluster_state:ok")

    def _serving_masters(self, port: int) -> list[int]:
        """Ports of the masters serving slots, as the node on `port` sees them."""
        ports = []
        for line in _call(port, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2] and len(parts) > 8:
                ports.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
        return ports

    def _alive(self) -> int:
        return next(p for p, proc in self.processes.items() if proc.poll() is None)

    def masters(self) -> list[int]:
        """Ports of the masters now serving slots."""
        return self._serving_masters(self._alive())

    def master_of(self, key: str) -> int:
        """Port of the master serving `key`'s slot."""
        alive = self._alive()
        slot = int(_call(alive, "CLUSTER", "KEYSLOT", key))
        for line in _call(alive, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for span in parts[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"no master serves slot {slot}")

    def wait_failover(self, dead: int, deadline: float) -> None:
        """Until a replica has taken over from the master on `dead` and the cluster is ok."""
        while dead in self.masters() or len(self.masters()) != MASTERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {dead}")
            time.sleep(0.1)
        self.wait_ok(deadline)

    def restart(self, port: int) -> None:
        """Start a killed node again, as a supervisor would: it rejoins (its nodes.conf
        kept) and, its slots taken over, becomes the new master's replica."""
        self._spawn(port)

    def replicas_of(self, master: int) -> int:
        """Replicas attached to the master on `master` (online, per its INFO)."""
        info = _call(master, "INFO", "replication")
        return sum(1 for line in info.splitlines() if line.startswith("slave") and "online" in line)

    def kill(self, port: int) -> None:
        """kill -9 the node on `port` (no goodbye, no last write to disk)."""
        proc = self.processes[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        _release(self.ports)


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisClusterProcess]:
    """A started cluster, stopped (every node) when the block ends."""
    cluster = RedisClusterProcess(directory, [_free_port() for _ in range(NODES)])
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
