"""SIGTERM: stop accepting, make what was read durable and acked, tell devices, close."""

from __future__ import annotations

import asyncio
import csv
import os
import time
from pathlib import Path

from aquafleet.models.db import database
from aquafleet.models.usage import metered_ml_by_device
from aquafleet.protocol import ErrorCode
from aquafleet.protocol.message_types import Error
from tests.conftest import MASTER_SECRET, REDIS_URL, TEST_SHARDS
from tests.devices import TestDevice, register_devices, telemetry
from tests.gateway.test_exactly_once import run_cli
from tests.processes import serve_processes, start_serve


async def test_stopping_acks_everything_read_then_says_goodbye(node_factory, device_factory):
    node = await node_factory()
    devices = await register_devices(node, 3)
    clients = [device_factory(d.did, d.key, node.tcp_port) for d in devices]
    for client in clients:
        await client.login()
    boot = int(time.time())
    for client in clients:
        for rec in range(1, 21):
            await client.send(telemetry(rec, boot, rec * 100))
    async with asyncio.timeout(10):  # the node has read them all
        while node.metrics.records_received < 60:  # noqa: ASYNC110  # a counter is polled
            await asyncio.sleep(0.02)
    database_url = node.settings.resolved_database_url
    await node.stop()
    for client in clients:
        errors = await client.closed_by_server(timeout=5)
        assert not client.sent  # every record was acked before the goodbye
        assert client.outcome == {(boot, rec): 0 for rec in range(1, 21)}
        assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.SHUTDOWN]
    async with database(database_url, run_migrations=False):
        metered = await metered_ml_by_device([d.did for d in devices])
    assert metered == {d.did: 2000 for d in devices}


async def test_sigterm_stops_the_process_cleanly(
    tmp_path: Path, redis_prefix: str, redis_client, migrated_sqlite
):
    settings = {
        "redis_url": REDIS_URL,
        "redis_prefix": redis_prefix,
        "redis_shards": TEST_SHARDS,
        "master_secret": MASTER_SECRET,
        "database_url": migrated_sqlite(tmp_path / "aquafleet.sqlite3"),
        "data_dir": tmp_path / "data",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({f"AQUAFLEET_{k.upper()}": str(v) for k, v in settings.items()})
    await run_cli(env, "vendors", "add", "TERM", "--name", "Term test")
    await run_cli(
        env, "devices", "register", "--vendor", "TERM", "--count", "1",
        "--out", str(tmp_path / "devices.csv"),
    )  # fmt: skip
    with (tmp_path / "devices.csv").open() as handle:
        row = next(csv.DictReader(handle))
    async with serve_processes() as nodes:
        node = await start_serve(tmp_path, settings, name="term")
        nodes.append(node)
        client = TestDevice(row["did"], bytes.fromhex(row["key"]), node.tcp_port)
        await client.login()
        boot = int(time.time())
        for rec in range(1, 11):
            await client.send(telemetry(rec, boot, rec * 5))
        await client.settled()
        node.terminate()
        errors = await client.closed_by_server(timeout=15)
        assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.SHUTDOWN]
        assert await node.wait(30) == 0
        log = node.log()
        assert "node_stopped" in log
        assert row["key"] not in log  # device keys never reach the logs
    async with database(settings["database_url"], run_migrations=False):
        assert await metered_ml_by_device([row["did"]]) == {row["did"]: 50}


async def test_a_node_listed_before_its_database_stops_before_the_database_goes(
    node_factory, device_factory, database_url
):
    """node_factory first, database_url after: pytest used to tear the database down first (on
    PostgreSQL, dropped), and the node's last ledger flush failed at teardown. The writer
    lingers past the test here, so the records are still to be written when the node stops."""
    node = await node_factory(database_url=database_url, ledger_linger_ms=5000, shutdown_grace_s=1)
    (dev,) = await register_devices(node, 1)
    client = device_factory(dev.did, dev.key, node.tcp_port)
    await client.login()
    boot = int(time.time())
    for rec in range(1, 4):
        await client.send(telemetry(rec, boot, rec * 100))
    await client.settled()
    assert node.metrics.ledger_records_written == 0  # left for the flush at teardown
