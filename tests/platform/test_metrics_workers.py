"""`serve --workers 2` (issue 18): every scrape of /metrics, whichever worker answers it, shows
the whole node: both workers' devices, logins and records (prometheus_client's multiprocess
mode under the data dir, cleaned at start and removed at exit)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.metrics import MULTIPROC_ENV, share_worker_metrics
from tests.conftest import TEST_SHARDS
from tests.devices import TestDevice, telemetry
from tests.gateway.test_commands_cluster import Cluster
from tests.processes import free_port, metric_values, serve_processes, start_serve

DEVICES = 12


async def scrape(port: int) -> dict[str, float]:
    """One scrape on a new connection: the kernel hands it to either worker."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Connection": "close"}, timeout=5
        ) as response,
    ):
        assert response.status == 200
        return metric_values(await response.text())


async def holders(redis: aioredis.Redis, prefix: str, devices: list[TestDevice]) -> list[str]:
    keyspace = Keyspace(prefix, TEST_SHARDS)
    nodes = [await redis.hget(keyspace.presence(d.did), "node") for d in devices]
    return [n.decode() if n else "" for n in nodes]


@pytest.mark.slow
async def test_each_scrape_of_a_two_worker_node_counts_both_workers(
    tmp_path: Path, redis_prefix: str, redis_client: aioredis.Redis, migrated_sqlite: Any
) -> None:
    cluster = Cluster(tmp_path, redis_prefix, migrated_sqlite(tmp_path / "aquafleet.sqlite3"))
    await cluster.prepare(DEVICES)
    tcp_port, http_port = free_port(), free_port()
    settings = {**cluster.settings, "workers": 2, "tcp_port": tcp_port, "http_port": http_port}
    shared = tmp_path / "data" / "metrics" / "mp"
    async with serve_processes() as nodes:
        node = await start_serve(tmp_path, settings, name="mp")
        nodes.append(node)
        devices = [cluster.device(i, tcp_port) for i in range(DEVICES)]
        try:
            for device in devices:
                await device.login()
            # Connections are the kernel's to spread, to whichever worker waits in accept: move
            # devices off the busier worker until each worker holds some (bounded in tries and
            # time; a pause lets a worker still busy starting reach its accept).
            spread_by = time.monotonic() + 30
            for _ in range(200):
                held = await holders(redis_client, redis_prefix, devices)
                if {"mp-w0", "mp-w1"} <= set(held) or time.monotonic() > spread_by:
                    break
                await asyncio.sleep(0.1)
                moving = devices[held.index(max(set(held), key=held.count))]
                await moving.close()
                devices[devices.index(moving)] = fresh = cluster.device(
                    devices.index(moving), tcp_port
                )
                await fresh.login()
            held = await holders(redis_client, redis_prefix, devices)
            assert {"mp-w0", "mp-w1"} <= set(held), held
            for rec, device in enumerate(devices, start=1):
                await device.send(telemetry(rec, boot=3, total=10 * rec))
            for device in devices:
                await device.settled()

            want = {"devices_online": DEVICES, "workers": 2, "records_stored_total": DEVICES}
            deadline = time.monotonic() + 15  # each worker publishes its share every second
            values = await scrape(http_port)
            while any(values.get(k) != v for k, v in want.items()):
                assert time.monotonic() < deadline, {k: values.get(k) for k in want}
                await asyncio.sleep(0.2)
                values = await scrape(http_port)
            logins = values["logins_ok_total"]
            assert logins >= DEVICES
            # Settled: every scrape, whichever worker answers, shows the same whole node.
            for _ in range(10):
                values = await scrape(http_port)
                assert {k: values.get(k) for k in want} == want
                assert values["logins_ok_total"] == logins
                # The histograms too: every worker's logins and rounds are in one histogram.
                assert values['login_seconds_count{result="ok"}'] == logins
                assert values["meter_round_seconds_count"] == values["meter_rounds_total"]
            # One set of files per worker process, in the directory under the data dir.
            pids = {path.stem.rsplit("_", 1)[1] for path in shared.glob("counter_*.db")}
            assert len(pids) == 2, pids
        finally:
            for device in devices:
                await device.close()
        node.terminate()
        assert await node.wait(40) == 0
    assert not shared.exists()  # a stopped node leaves no files to add to the next run


def test_the_shared_directory_starts_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(MULTIPROC_ENV, "restored-after-the-test")
    (tmp_path / "counter_4242.db").write_bytes(b"a previous run")
    (tmp_path / "notes.txt").write_text("not ours")
    assert share_worker_metrics(tmp_path) == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
