"""The cluster fixture's start (tests/redis_cluster.py) under two xdist workers on a busy machine:
ports no client socket and no other worker holds, a port taken before the node binds it, a
worker that dies with its nodes running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.processes import free_port
from tests.redis_cluster import (
    _DIE_WITH_PARENT,
    BUS_OFFSET,
    RedisClusterProcess,
    _call,
    _ephemeral_low,
    _free_port,
    _port_slice,
    _release,
    redis_server_missing,
)


@pytest.fixture(autouse=True)
def _needs_redis_server() -> None:
    missing = redis_server_missing()
    if missing is not None:
        pytest.skip(f"no Redis Cluster: {missing}")


def test_each_worker_has_ports_of_its_own_outside_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if _ephemeral_low() < 1024 + 2 * BUS_OFFSET:
        pytest.skip("the kernel's ephemeral range leaves no room below it: ports are probed there")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    slices = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(_port_slice())
    first, second = (set(s) | {p + BUS_OFFSET for p in s} for s in slices)
    assert not first & second  # no node or bus port of one worker is the other's
    assert all(len(s) >= 1000 for s in slices)
    assert max(first | second) < _ephemeral_low()  # no outgoing connection takes one


def test_a_port_taken_before_the_node_binds_it_gets_the_node_another_port(tmp_path: Path) -> None:
    """Another worker's server took the port between the probe and the bind: the node that
    failed to bind moves, and the other server is never made part of this cluster."""
    other_port = free_port()
    other = subprocess.Popen(
        ["redis-server", "--port", str(other_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    while _call(other_port, "PING") != "PONG":  # it holds the port before the cluster starts
        assert other.poll() is None, "the other redis-server did not start"
        time.sleep(0.05)
    cluster = RedisClusterProcess(
        tmp_path / "cluster", [other_port, *(_free_port() for _ in range(5))]
    )
    try:
        cluster.start()
        assert other_port not in cluster.ports and len(set(cluster.ports)) == 6
        for port in cluster.ports:
            known = {int(line.split()[1].split("@")[0].rsplit(":", 1)[1])
                     for line in _call(port, "CLUSTER", "NODES").splitlines()}  # fmt: skip
            assert known == set(cluster.ports), (port, known)
        assert len(cluster.masters()) == 3
        assert "cluster_enabled:0" in _call(other_port, "INFO", "cluster")  # left alone
    finally:
        cluster.stop()
        other.terminate()
        other.wait(10)
        _release([other_port])


_ORPHAN = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.redis_cluster import RedisClusterProcess, _call, _free_port
cluster = RedisClusterProcess(Path({directory!r}), [_free_port()])
cluster._spawn(cluster.ports[0])
while _call(cluster.ports[0], "PING") != "PONG":  # the node runs (its signal set, if any)
    time.sleep(0.05)
print(cluster.processes[cluster.ports[0]].pid, flush=True)
sys.stdin.readline()
os._exit(1)  # as pytest-timeout ends a worker: no finally, no fixture teardown
"""


@pytest.mark.skipif(
    not _DIE_WITH_PARENT, reason="no setpriv (util-linux): nodes outlive a killed worker"
)
def test_a_worker_that_dies_leaves_no_node_running(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    script = textwrap.dedent(_ORPHAN).format(root=root, directory=str(tmp_path))
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as worker:
        assert worker.stdout is not None and worker.stdin is not None
        node = int(worker.stdout.readline())
        worker.stdin.write("\n")
        worker.stdin.flush()
        worker.wait(30)
    try:
        deadline = time.monotonic() + 10
        while _state(node) != "Z":  # gone, or a zombie (dead) its new parent has not reaped
            assert time.monotonic() < deadline, f"redis-server {node} outlived its worker"
            time.sleep(0.05)
    finally:
        if _state(node) != "Z":
            os.kill(node, 9)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
