"""Commands across real `aquafleet serve` processes (issue 5): a command issued over REST on one
node reaches a device on another, `--workers N` routes between its workers, and a node killed
mid-command leaves no command hanging and no device online on a dead node."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aquafleet.protocol import Command
from aquafleet.protocol.message_types import Result
from tests.conftest import MASTER_SECRET, REDIS_URL, TEST_SHARDS
from tests.devices import TestDevice
from tests.processes import free_port, serve_processes, start_serve

PASSWORD = "cluster-password-1"

pytestmark = pytest.mark.usefixtures("redis_client")


class Cluster:
    """Shared settings, the CLI, the devices registered and a platform admin's REST calls."""

    def __init__(self, tmp_path: Path, redis_prefix: str, database_url: str, **extra: Any) -> None:
        self.tmp_path = tmp_path
        self.settings: dict[str, Any] = {
            "redis_url": REDIS_URL, "redis_prefix": redis_prefix, "redis_shards": TEST_SHARDS,
            "master_secret": MASTER_SECRET, "data_dir": tmp_path / "data",
            "database_url": database_url, **extra,
        }  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
        self.env.update({f"AQUAFLEET_{k.upper()}": str(v) for k, v in self.settings.items()})
        self.devices: list[dict[str, str]] = []

    async def cli(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aquafleet.cli", *args, env=self.env, cwd=self.tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, out.decode()
        return out.decode()

    async def prepare(self, count: int) -> None:
        await self.cli("vendors", "add", "CLUS", "--name", "Cluster")
        await self.cli("devices", "register", "--vendor", "CLUS", "--count", str(count),
                       "--out", str(self.tmp_path / "devices.csv"))  # fmt: skip
        with (self.tmp_path / "devices.csv").open() as handle:
            self.devices = list(csv.DictReader(handle))
        (self.tmp_path / "pw.txt").write_text(PASSWORD + "\n")
        await self.cli("admin", "create-platform-admin", "--user", "ops",
                       "--password-file", str(self.tmp_path / "pw.txt"))  # fmt: skip

    def device(self, index: int, port: int) -> TestDevice:
        row = self.devices[index]
        return TestDevice(row["did"], bytes.fromhex(row["key"]), port)


async def rest(
    session: aiohttp.ClientSession, port: int, method: str, path: str, body: Any = None,
    token: str | None = None, params: Any = None,
) -> dict[str, Any]:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(
        method, f"http://127.0.0.1:{port}/api/v1{path}", json=body, headers=headers,
        params=params,
    ) as response:  # fmt: skip
        answer = dict(await response.json())
        answer["http"] = response.status
        return answer


async def login(session: aiohttp.ClientSession, port: int) -> str:
    pwd = hashlib.md5(PASSWORD.encode()).hexdigest()
    answer = await rest(session, port, "POST", "/auth/login", {"user": "ops", "pwd": pwd})
    assert answer["status"], answer
    return str(answer["data"]["access_token"])


async def answer_next(device: TestDevice, out: int, *, timeout: float = 10.0) -> Command:
    command = await device.wait_for(Command, timeout=timeout)
    device.session.send_result(Result(cid=command.cid, rc=0, out=out))
    await device.flush()
    return command


async def test_a_rest_command_on_one_process_reaches_a_device_on_another(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: Any
) -> None:
    cluster = Cluster(tmp_path, redis_prefix, migrated_sqlite(tmp_path / "aquafleet.sqlite3"))
    await cluster.prepare(2)
    async with serve_processes() as nodes, aiohttp.ClientSession() as session:
        a = await start_serve(tmp_path, cluster.settings, name="cmd-a")
        nodes.append(a)
        b = await start_serve(tmp_path, cluster.settings, name="cmd-b")
        nodes.append(b)
        device = cluster.device(0, b.tcp_port)
        try:
            await device.login()
            token = await login(session, a.http_port)
            did = device.did
            call = asyncio.create_task(rest(
                session, a.http_port, "POST", f"/devices/{did}/commands",
                {"op": "dispense", "ml": 120, "wait_ms": 8000}, token,
            ))  # fmt: skip
            command = await answer_next(device, 118)
            answer = await call
            assert answer["http"] == 202, answer
            data = answer["data"]
            assert (data["cid"], data["state"], data["poured_ml"]) == (
                command.cid,
                "succeeded",
                118,
            )
            # Node B answers the same command's state: the log is shared.
            read = await rest(session, b.http_port, "GET", f"/devices/{did}/commands/{command.cid}",
                              token=await login(session, b.http_port))  # fmt: skip
            assert read["data"]["state"] == "succeeded"
        finally:
            await device.close()


async def test_a_node_killed_mid_command_leaves_nothing_hanging(
    tmp_path: Path, redis_prefix: str, redis_client: Any, migrated_sqlite: Any
) -> None:
    """The device's node dies with a dispense in flight: the command times out by its deadline
    (on the surviving node), the device logs in there, and a device that does not come back
    is never shown online on the dead node once the idle timeout has passed."""
    cluster = Cluster(
        tmp_path, redis_prefix, migrated_sqlite(tmp_path / "aquafleet.sqlite3"), heartbeat_s=2
    )  # idle timeout 5 s
    await cluster.prepare(2)
    async with serve_processes() as nodes, aiohttp.ClientSession() as session:
        a = await start_serve(tmp_path, cluster.settings, name="kill-a")
        nodes.append(a)
        b = await start_serve(tmp_path, cluster.settings, name="kill-b")
        nodes.append(b)
        moving, staying_away = cluster.device(0, b.tcp_port), cluster.device(1, b.tcp_port)
        try:
            await moving.login()
            await staying_away.login()
            token = await login(session, a.http_port)
            sent = await rest(session, a.http_port, "POST", f"/devices/{moving.did}/commands",
                              {"op": "dispense", "ml": 300, "timeout_s": 5}, token)  # fmt: skip
            assert sent["http"] == 202, sent
            cid = sent["data"]["cid"]
            command = await moving.wait_for(Command)  # delivered, not yet poured
            assert command.cid == cid
            b.kill()
            await b.wait()
            killed_at = time.monotonic()

            # The device reconnects to the surviving node: online there at once.
            await moving.close()
            moving = cluster.device(0, a.tcp_port)
            await moving.login()
            presence = await redis_client.hget(_presence_key(redis_prefix, moving.did), "node")
            assert presence == b"kill-a"

            # The command issued before the crash times out (exp 5 s + 5 s grace + a sweep;
            # if B held the scheduler lease, A takes it over within its 5 s lease time).
            path = f"/devices/{moving.did}/commands/{cid}"
            polled = await rest(
                session, a.http_port, "GET", path, token=token, params={"wait_ms": 20000}
            )
            assert polled["data"]["state"] == "timed_out", polled
            # Commands to the other device fail at once: its presence names a dead node.
            path = f"/devices/{staying_away.did}/commands"
            answer = await rest(session, a.http_port, "POST", path, {"op": "reboot"}, token)
            assert (answer["http"], answer["code"]) == (409, "device_offline"), answer
            # ...and it stops being shown online within the idle timeout (5 s) of the crash.
            key = _presence_key(redis_prefix, staying_away.did)
            while await redis_client.exists(key):
                assert time.monotonic() - killed_at < 5.0 + 1.0, "presence outlived its node"
                await asyncio.sleep(0.1)
            listed = await rest(session, a.http_port, "GET", f"/devices/{staying_away.did}/stat",
                                token=token)  # fmt: skip
            assert listed["data"]["online"] is False, listed
        finally:
            await moving.close()
            await staying_away.close()


async def test_workers_route_commands_between_themselves(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: Any
) -> None:
    """`serve --workers 2`: devices land on either worker, REST calls too (SO_REUSEPORT);
    every command succeeds whichever worker took the call."""
    cluster = Cluster(tmp_path, redis_prefix, migrated_sqlite(tmp_path / "aquafleet.sqlite3"))
    await cluster.prepare(4)
    tcp_port, http_port = free_port(), free_port()
    settings = {**cluster.settings, "workers": 2, "tcp_port": tcp_port, "http_port": http_port}
    async with serve_processes() as nodes:
        node = await start_serve(tmp_path, settings, name="wk")
        nodes.append(node)
        devices = [cluster.device(i, tcp_port) for i in range(4)]
        try:
            for device in devices:
                await device.login()
            routes: set[tuple[str, str]] = set()
            for round_ in range(6):
                for device in devices:
                    # A new HTTP connection per call: the kernel spreads them over the workers.
                    async with aiohttp.ClientSession() as session:
                        token = await login(session, http_port)
                        call = asyncio.create_task(rest(
                            session, http_port, "POST", f"/devices/{device.did}/commands",
                            {"op": "dispense", "ml": 10 + round_, "wait_ms": 8000}, token,
                        ))  # fmt: skip
                        await answer_next(device, 10 + round_)
                        answer = await call
                    assert answer["data"]["state"] == "succeeded", answer
                    routes.add((answer["data"]["origin_node"], answer["data"]["device_node"]))
            # Each worker is a node ("wk-w0", "wk-w1"); some calls crossed between them.
            assert {origin for origin, _ in routes} <= {"wk-w0", "wk-w1"}
            assert any(origin != held for origin, held in routes), routes
        finally:
            for device in devices:
                await device.close()


def _presence_key(prefix: str, did: str) -> str:
    from aquafleet.gateway.keys import Keyspace

    return Keyspace(prefix, TEST_SHARDS).presence(did)
