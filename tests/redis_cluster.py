"""A real Redis Cluster on loopback for tests and benchmarks: 3 masters, 3 replicas, each a
`redis-server --cluster-enabled yes` in a directory of its own, made one cluster by
`redis-cli --cluster create ... --cluster-replicas 1`."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 30.0
NODES = 6  # 3 masters + 3 replicas
CLUSTER_NODE_TIMEOUT_MS = 2000  # how long a master may be silent before its replica takes over


def redis_server_missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (a Redis Cluster needs redis-server 7 and redis-cli)"
    return None


def _free_ports(count: int) -> list[int]:
    """Ports free for a node and for its cluster bus (port + 10000)."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports for a Redis Cluster")


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout


@dataclass
class RedisClusterProcess:
    directory: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def _spawn(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        with (node_dir / "redis.log").open("ab") as log:
            self.processes[port] = subprocess.Popen(
                [
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

    def start(self) -> None:
        for port in self.ports:
            self._spawn(port)
        deadline = time.monotonic() + START_TIMEOUT_S
        for port in self.ports:
            while _cli(port, "ping").strip() != "PONG":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {port} did not start")
                time.sleep(0.05)
        created = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}")
        self.wait_ok(deadline)

    def wait_ok(self, deadline: float) -> None:
        """Until every live node says cluster_state:ok and knows all 3 masters with slots, and
        every live replica has finished its sync with its master.

        A replica that has never synced refuses to take over ("Disconnected from master for
        longer than allowed": its data age counts from the epoch), so a master killed before
        its replica's first sync stays failed for good; a test must not kill one that early."""
        while True:
            alive = [p for p, proc in self.processes.items() if proc.poll() is None]
            if all(self._ok(port) and self._synced(port) for port in alive):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _ok(self, port: int) -> bool:
        if "cluster_state:ok" not in _cli(port, "cluster", "info"):
            return False
        masters = [
            line
            for line in _cli(port, "cluster", "nodes").splitlines()
            if "master" in line and "fail" not in line.split()[2] and len(line.split()) > 8
        ]
        return len(masters) == 3

    def _synced(self, port: int) -> bool:
        """A master, or a replica whose link to its master is up (its first sync done)."""
        info = _cli(port, "info", "replication")
        return "role:master" in info or "master_link_status:up" in info

    def masters(self) -> list[int]:
        """Ports of the masters now serving slots."""
        alive = next(p for p, proc in self.processes.items() if proc.poll() is None)
        ports = []
        for line in _cli(alive, "cluster", "nodes").splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2] and len(parts) > 8:
                ports.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
        return ports

    def master_of(self, key: str) -> int:
        """Port of the master serving `key`'s slot."""
        alive = next(p for p, proc in self.processes.items() if proc.poll() is None)
        slot = int(_cli(alive, "cluster", "keyslot", key).strip())
        for line in _cli(alive, "cluster", "nodes").splitlines():
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
        while dead in self.masters() or len(self.masters()) != 3:
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
        info = _cli(master, "info", "replication")
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


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisClusterProcess]:
    """A started cluster, stopped (every node) when the block ends."""
    cluster = RedisClusterProcess(directory, _free_ports(NODES))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
