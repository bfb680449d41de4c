"""Exactly once, end to end: devices pour, a gateway process is killed mid-flow, the devices
move to another process and resend; the database ends up with every millilitre once."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aquafleet.models.db import database
from aquafleet.models.usage import UsageRecord, metered_ml_by_device
from aquafleet.protocol.message_types import Ack, Telemetry
from tests.conftest import MASTER_SECRET, REDIS_URL, TEST_SHARDS
from tests.devices import LoginRefused, TestDevice
from tests.processes import serve_processes, start_serve

WINDOW = 8


async def run_cli(env: dict[str, str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aquafleet.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out.decode()
    return out.decode()


@dataclass
class PouringDevice:
    """Pours water and keeps every record until the gateway acks it (flash, on a real one)."""

    did: str
    key: bytes
    boot: int = field(default_factory=lambda: int(time.time()))
    rec: int = 0
    total_ml: int = 0
    unacked: dict[int, Telemetry] = field(default_factory=dict)
    in_flight: dict[int, int] = field(default_factory=dict)  # seq -> rec, this connection
    duplicates_acked: int = 0
    reconnects: int = 0
    stop_pouring_at: float | None = None  # set: overrides the deadline given (set later on)

    def pour(self) -> Telemetry:
        self.rec += 1
        self.total_ml += 37 + (self.rec * 11) % 200
        record = Telemetry(
            rec=self.rec, boot=self.boot, ts=int(time.time()), flow_total_ml=self.total_ml,
            cnt_epoch=self.boot, tds_in_ppm=300, tds_out_ppm=12,
        )  # fmt: skip
        self.unacked[self.rec] = record
        return record

    async def session(self, port: int, pour_until: float, made: list[TestDevice]) -> None:
        """One connection: resend what is unacked, pour until the deadline, drain acks."""
        device = TestDevice(self.did, self.key, port)
        made.append(device)
        await device.login()
        self.in_flight = {}
        for rec in sorted(self.unacked):
            seq = await device.send(self.unacked[rec], dup=True)
            self.in_flight[seq] = rec

        def until() -> float:
            return pour_until if self.stop_pouring_at is None else self.stop_pouring_at

        while time.monotonic() < until() or self.unacked:
            while time.monotonic() < until() and len(self.in_flight) < WINDOW:
                record = self.pour()
                self.in_flight[await device.send(record)] = record.rec
            ack = await device.wait_for(Ack, timeout=3)
            rec = self.in_flight.pop(ack.seq)
            assert ack.rc in (0, 1), ack
            self.duplicates_acked += ack.rc == 1
            self.unacked.pop(rec, None)
        await device.close()

    async def run(self, ports: dict[str, int], pour_until: float, made: list[TestDevice]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                await self.session(ports["current"], pour_until, made)
                return
            except (TimeoutError, ConnectionError, OSError, LoginRefused):
                self.reconnects += 1
                await asyncio.sleep(0.2)
        raise AssertionError(f"{self.did} never finished: {len(self.unacked)} unacked")


@pytest.mark.slow
async def test_gateway_killed_mid_flow_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, redis_prefix: str, redis_client, migrated_sqlite
):
    db_url = migrated_sqlite(tmp_path / "aquafleet.sqlite3")
    settings = {
        "redis_url": REDIS_URL,
        "redis_prefix": redis_prefix,
        "redis_shards": TEST_SHARDS,
        "master_secret": MASTER_SECRET,
        "database_url": db_url,
        "data_dir": tmp_path / "data",
        "ledger_claim_idle_s": 5,
        "log_level": "info",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({f"AQUAFLEET_{k.upper()}": str(v) for k, v in settings.items()})
    await run_cli(env, "vendors", "add", "KILL", "--name", "Crash test")
    await run_cli(
        env, "devices", "register", "--vendor", "KILL", "--count", "6",
        "--out", str(tmp_path / "devices.csv"),
    )  # fmt: skip
    with (tmp_path / "devices.csv").open() as handle:
        devices = [PouringDevice(r["did"], bytes.fromhex(r["key"])) for r in csv.DictReader(handle)]

    made: list[TestDevice] = []
    async with serve_processes() as nodes:
        first = await start_serve(tmp_path, settings, name="crash-a")
        nodes.append(first)
        ports = {"current": first.tcp_port}
        pour_until = time.monotonic() + 6
        runs = [asyncio.create_task(d.run(ports, pour_until, made)) for d in devices]
        await asyncio.sleep(2)
        first.kill()  # no flush, no goodbye: records in flight are lost on the wire
        await first.wait()
        second = await start_serve(tmp_path, settings, name="crash-b")
        nodes.append(second)
        ports["current"] = second.tcp_port
        await asyncio.wait_for(asyncio.gather(*runs), 90)
        for device in made:
            await device.close()

        # The second node claims what the killed node's ledger writer left pending.
        dids = [d.did for d in devices]
        expected = {d.did: d.total_ml for d in devices}
        async with database(db_url, run_migrations=False):
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                metered = await metered_ml_by_device(dids)
                if metered == expected:
                    break
                await asyncio.sleep(0.5)
            assert metered == expected
            for d in devices:
                assert await UsageRecord.filter(did=d.did).count() == d.rec
    assert all(d.reconnects >= 1 for d in devices)
    assert sum(d.rec for d in devices) > 6 * 20


async def test_a_newer_login_on_another_process_closes_the_older_connection(
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
    await run_cli(env, "vendors", "add", "TWOP", "--name", "Two processes")
    await run_cli(
        env, "devices", "register", "--vendor", "TWOP", "--count", "1",
        "--out", str(tmp_path / "devices.csv"),
    )  # fmt: skip
    with (tmp_path / "devices.csv").open() as handle:
        row = next(csv.DictReader(handle))
    from aquafleet.protocol import ErrorCode
    from aquafleet.protocol.message_types import Error

    async with serve_processes() as nodes:
        a = await start_serve(tmp_path, settings, name="proc-a")
        nodes.append(a)
        b = await start_serve(tmp_path, settings, name="proc-b")
        nodes.append(b)
        older = TestDevice(row["did"], bytes.fromhex(row["key"]), a.tcp_port)
        await older.login()
        newer = TestDevice(row["did"], bytes.fromhex(row["key"]), b.tcp_port)
        await newer.login()
        errors = await older.closed_by_server(timeout=10)
        assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.REPLACED]
        presence = await redis_client.hgetall(
            f"{redis_prefix}:{{{_shard(row['did'])}}}:p:{row['did']}"
        )
        assert presence[b"node"] == b"proc-b"
        assert (await a.metrics())["sessions_replaced"] == 1
        await newer.close()


def _shard(did: str) -> str:
    from aquafleet.gateway.keys import Keyspace

    return f"{Keyspace('x', TEST_SHARDS).shard_of(did):02d}"


async def test_records_whose_acks_were_lost_are_acked_as_duplicates(
    node_factory, device_factory, database_url
):
    """On SQLite and PostgreSQL."""
    from tests.devices import register_devices, telemetry

    node = await node_factory(database_url=database_url)
    (dev,) = await register_devices(node, 1)
    boot = int(time.time())
    records = [telemetry(rec, boot, rec * 250) for rec in range(1, 6)]
    first = device_factory(dev.did, dev.key, node.tcp_port)
    await first.login()
    for record in records:
        await first.send(record)
    first.abort()  # gone before any ack could arrive
    for _ in range(100):
        if node.metrics.records_stored == 5:
            break
        await asyncio.sleep(0.05)
    assert node.metrics.records_stored == 5
    again = device_factory(dev.did, dev.key, node.tcp_port)
    logged_in = await again.login()
    assert logged_in.last_acked == (boot, 5)  # the device may drop all five already
    for record in records:
        await again.send(record, dup=True)
    assert set(await again.settled()) == {(boot, rec) for rec in range(1, 6)}
    assert [a.rc for a in again.ack_frames] == [1] * 5  # duplicates are acked one by one
    assert node.metrics.records_duplicate == 5
    for _ in range(100):
        if await metered_ml_by_device([dev.did]) == {dev.did: 1250}:
            break
        await asyncio.sleep(0.1)
    assert await metered_ml_by_device([dev.did]) == {dev.did: 1250}
    assert await UsageRecord.filter(did=dev.did).count() == 5
