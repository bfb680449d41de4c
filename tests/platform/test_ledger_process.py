"""`aquafleet ledger` in its own process, next to a `serve` that runs no writer: it drains the
records the node metered into the database, and with `--metrics-port` shows its work at
/metrics (a standalone writer served nothing, so an operator running one could not see its
transactions, its records or its database errors)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.devices import telemetry
from tests.gateway.test_commands_cluster import Cluster
from tests.processes import free_port, metric_values, serve_processes, start_serve

DEVICES = 3


async def scrape(port: int) -> dict[str, float] | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics", timeout=2) as response,
        ):
            assert response.status == 200
            return metric_values(await response.text())
    except (aiohttp.ClientError, TimeoutError):
        return None  # not listening yet


@pytest.mark.slow
async def test_a_standalone_ledger_writer_drains_the_node_and_serves_its_metrics(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: Any
) -> None:
    cluster = Cluster(
        tmp_path, redis_prefix, migrated_sqlite(tmp_path / "aquafleet.sqlite3"),
        ledger_writer="false",
    )  # fmt: skip
    await cluster.prepare(DEVICES)
    metrics_port = free_port()
    async with serve_processes() as nodes:
        node = await start_serve(tmp_path, cluster.settings, name="apart")
        nodes.append(node)
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aquafleet.cli", "ledger", "--metrics-port", str(metrics_port),
            env=cluster.env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        devices = [cluster.device(i, node.tcp_port) for i in range(DEVICES)]
        try:
            for device in devices:
                await device.login()
            for rec, device in enumerate(devices, start=1):
                await device.send(telemetry(rec, boot=3, total=10 * rec))
            for device in devices:
                await device.settled()

            deadline = time.monotonic() + 20  # the writer starts, reads, lingers, commits
            values = await scrape(metrics_port)
            while values is None or values.get("ledger_records_written_total") != DEVICES:
                assert writer.returncode is None, "the ledger process exited"
                assert time.monotonic() < deadline, values
                await asyncio.sleep(0.2)
                values = await scrape(metrics_port)
            assert values["ledger_transaction_seconds_count"] >= 1
            assert values["ledger_db_errors_total"] == 0
            # The node's own writer is off: its counters stay at 0, the work is the process's.
            assert (await node.metrics())["ledger_records_written_total"] == 0
            with contextlib.closing(sqlite3.connect(tmp_path / "aquafleet.sqlite3")) as db:
                stored = db.execute("SELECT did, rec FROM usage_record ORDER BY rec").fetchall()
            assert stored == [(d.did, rec) for rec, d in enumerate(devices, start=1)]
        finally:
            for device in devices:
                await device.close()
            with contextlib.suppress(ProcessLookupError):
                writer.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(writer.wait(), 30) == 0
    assert "Traceback" not in (await writer.stderr.read()).decode()  # type: ignore[union-attr]


async def test_the_metrics_port_is_checked_before_anything_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aquafleet.cli", "ledger", "--metrics-port", "70000",
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "70000 is not in 1..65535" in err.decode()
