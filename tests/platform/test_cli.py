"""The `aquafleet` command as an operator uses it (real subprocesses)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from aquafleet.cli import build_parser
from aquafleet.commands.devices import render_device
from aquafleet.models.ids import is_valid_device_id
from aquafleet.protocol import ErrorCode
from aquafleet.protocol.crypto import derive_device_key
from aquafleet.protocol.message_types import Error, FilterReading
from tests.conftest import MASTER_SECRET
from tests.devices import TestDevice, register_devices, telemetry
from tests.gateway.test_device_status import offline, status_of, status_when
from tests.processes import serve_processes, start_serve


async def aquafleet(env: dict[str, str], *args: str, cwd: Path | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aquafleet.cli", *args,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode()


def clean_env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({f"AQUAFLEET_{k.upper()}": str(v) for k, v in settings.items()})
    return env


async def test_register_writes_the_factory_file_once(tmp_path: Path, migrated_sqlite):
    migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET)
    code, out = await aquafleet(env, "vendors", "add", "ACME", "--name", "Acme Water")
    assert code == 0, out
    out_file = tmp_path / "devices.csv"
    code, out = await aquafleet(
        env, "devices", "register", "--vendor", "ACME", "--count", "25", "--out", str(out_file)
    )
    assert code == 0, out
    with out_file.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 25
    assert all(is_valid_device_id(r["did"]) and r["did"].startswith("ACME") for r in rows)
    assert len({r["did"] for r in rows}) == 25
    master = bytes.fromhex(MASTER_SECRET)
    assert all(bytes.fromhex(r["key"]) == derive_device_key(master, r["did"], 1) for r in rows)
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert rows[0]["key"] not in out  # keys go to the file only

    code, out = await aquafleet(
        env, "devices", "register", "--vendor", "ACME", "--count", "5", "--out", str(out_file)
    )
    assert code == 1 and "exists" in out  # never overwrite keys shown once
    code, out = await aquafleet(
        env, "devices", "register", "--vendor", "ACME", "--count", "5",
        "--out", str(out_file), "--force",
    )  # fmt: skip
    assert code == 0, out
    with out_file.open() as handle:
        more = [r["did"] for r in csv.DictReader(handle)]
    assert not set(more) & {r["did"] for r in rows}  # serials are never reused


async def test_mistakes_get_clear_messages(tmp_path: Path, migrated_sqlite):
    migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")
    env = clean_env(data_dir=tmp_path / "data")
    code, out = await aquafleet(
        env, "devices", "register", "--vendor", "NONE", "--count", "1",
        "--out", str(tmp_path / "x.csv"),
    )  # fmt: skip
    assert code == 1 and "vendor NONE does not exist" in out
    code, out = await aquafleet(env, "vendors", "add", "bad!", "--name", "x")
    assert code == 1 and "4 characters" in out
    await aquafleet(env, "vendors", "add", "DUPE", "--name", "x")
    code, out = await aquafleet(env, "vendors", "add", "DUPE", "--name", "x")
    assert code == 1 and "already exists" in out
    code, out = await aquafleet(clean_env(tcp_port="seven"), "config")
    assert code == 2 and "AQUAFLEET_TCP_PORT" in out
    assert "Traceback" not in out


async def test_disable_refuses_logins_and_disconnects_the_device(
    node_factory, device_factory, tmp_path: Path
):
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    env = clean_env(
        data_dir=node.settings.data_dir,
        redis_url=node.settings.redis_url,
        redis_prefix=node.settings.redis_prefix,
        redis_shards=node.settings.redis_shards,
        master_secret=MASTER_SECRET,
    )
    code, out = await aquafleet(env, "devices", "disable", dev.did)
    assert code == 0, out
    errors = await device.closed_by_server(timeout=10)
    assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.AUTH_DISABLED]
    code, out = await aquafleet(env, "devices", "enable", dev.did)
    assert code == 0, out
    again = device_factory(dev.did, dev.key, node.tcp_port)
    await again.login()


async def test_devices_show_lists_the_latest_sessions(
    node_factory, device_factory, redis_client, keyspace, tmp_path: Path
):
    """The presence history GET /api/v1/devices/{did}/sessions answers, newest first."""
    node = await node_factory(node_id="node-a")
    dev, quiet = await register_devices(node, 2)
    first = device_factory(dev.did, dev.key, node.tcp_port)
    await first.login()
    first_since = (await status_of(redis_client, keyspace, dev.did)).since_ms
    await first.close()
    await status_when(redis_client, keyspace, dev.did, offline)
    await device_factory(dev.did, dev.key, node.tcp_port).login()
    current_since = (await status_of(redis_client, keyspace, dev.did)).since_ms
    assert first_since is not None and current_since is not None
    env = clean_env(
        data_dir=node.settings.data_dir,
        redis_url=node.settings.redis_url,
        redis_prefix=node.settings.redis_prefix,
        redis_shards=node.settings.redis_shards,
        master_secret=MASTER_SECRET,
    )

    def iso_ms(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))

    code, out = await aquafleet(env, "devices", "show", dev.did, "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["sessions_total"] == 2
    current, closed = shown["sessions"]
    assert current["online"] and current["node"] == "node-a"
    assert current["since"] == iso_ms(current_since)
    assert current["ended_at"] is None and current["reason"] is None
    assert current["last_seen"].endswith("Z") and current["duration_s"] >= 0
    assert not closed["online"] and closed["reason"] == "closed_by_device"
    assert closed["since"] == iso_ms(first_since) and closed["ended_at"].endswith("Z")
    assert closed["since"] <= closed["ended_at"] <= current["since"]

    code, out = await aquafleet(env, "devices", "show", dev.did, "--json", "--sessions", "1")
    shown = json.loads(out)
    (again,) = shown["sessions"]
    assert (code, shown["sessions_total"]) == (0, 2), out
    assert {**again, "duration_s": 0} == {**current, "duration_s": 0}  # it runs on
    code, out = await aquafleet(env, "devices", "show", dev.did, "--json", "--sessions", "0")
    assert code == 0 and "sessions" not in json.loads(out), out

    code, out = await aquafleet(env, "devices", "show", dev.did)
    assert code == 0, out
    lines = [line.split() for line in out.splitlines()]
    assert "sessions (latest 2 of 2 kept, newest first):" in out
    assert ["since", "ended", "duration_s", "reason", "node", "last", "seen"] in lines
    assert [iso_ms(current_since), "online", "now"] in [line[:3] for line in lines]
    assert any(line[:1] == [iso_ms(first_since)] and "closed_by_device" in line for line in lines)

    code, out = await aquafleet(env, "devices", "show", quiet.did)
    assert code == 0 and "sessions: none kept" in out, out
    code, out = await aquafleet(env, "devices", "show", dev.did, "--sessions", "-1")
    assert code == 2 and "-1 is not in 0..1000" in out, out


@pytest.mark.slow
async def test_quick_start_on_embedded_defaults(tmp_path: Path):
    """README's first command: serve with an embedded Redis and SQLite, nothing else; then,
    as README's next steps, in the same directory, vendors add and devices register (before
    serve, vendors add finds no platform data: only serve and migrate make them)."""
    env = clean_env()
    code, out = await aquafleet(env, "vendors", "add", "DEMO", "--name", "Demo", cwd=tmp_path)
    assert code == 2 and "no platform data in data_dir" in out, out
    async with serve_processes() as nodes:
        node = await start_serve(tmp_path, {}, name="quick", timeout=90)  # a true first start
        nodes.append(node)
        assert (tmp_path / "aquafleet-data" / "redis" / "url").exists()
        code, out = await aquafleet(env, "vendors", "add", "DEMO", "--name", "Demo", cwd=tmp_path)
        assert code == 0, out
        # Registering while serving reaches the embedded Redis at once.
        code, out = await aquafleet(
            env, "devices", "register", "--vendor", "DEMO", "--count", "3",
            "--out", "devices.csv", cwd=tmp_path,
        )  # fmt: skip
        assert code == 0 and "not reachable" not in out, out
        with (tmp_path / "devices.csv").open() as handle:
            row = next(csv.DictReader(handle))
        device = TestDevice(row["did"], bytes.fromhex(row["key"]), node.tcp_port)
        await device.login()
        boot = int(time.time())
        for rec in range(1, 6):
            stages = [FilterReading(1, 1866, 4052, 0)]
            await device.send(telemetry(rec, boot, rec * 120, tds_in_ppm=310, filters=stages))
        assert set((await device.settled()).values()) == {0}
        await device.close()
        await asyncio.sleep(1.5)
        code, out = await aquafleet(env, "devices", "show", row["did"], "--json", cwd=tmp_path)
        shown = json.loads(out)
        assert shown["meter"]["metered_ml"] == 600
        assert shown["ledger_metered_ml"] == 600
        assert shown["latest_report"]["tds_in_ppm"] == 310
        labelled = {"stage": 1, "work_h": 1866, "power_on_h": 4052, "reset_count": 0}
        assert shown["latest_report"]["filters"] == [labelled]
        assert shown["live_report"]["filters"] == [labelled]
        assert shown["latest_report"]["received_at"].endswith("Z")
        node.terminate()
        assert await node.wait(30) == 0
        assert not (tmp_path / "aquafleet-data" / "redis" / "url").exists()

        # Restarted, the embedded Redis still knows what was metered (append-only file).
        node = await start_serve(tmp_path, {}, name="quick-again")
        nodes.append(node)
        again = TestDevice(row["did"], bytes.fromhex(row["key"]), node.tcp_port)
        logged_in = await again.login()
        assert logged_in.last_acked == (boot, 5)
        await again.close()
        node.terminate()
        assert await node.wait(30) == 0


@pytest.mark.slow
async def test_embedded_redis_is_restarted_when_it_dies(tmp_path: Path, migrated_sqlite):
    migrated_sqlite(tmp_path / "aquafleet-data" / "aquafleet.sqlite3")  # not a first start
    env = clean_env()
    assert (await aquafleet(env, "vendors", "add", "REDI", "--name", "R", cwd=tmp_path))[0] == 0
    code, out = await aquafleet(
        env, "devices", "register", "--vendor", "REDI", "--count", "1", "--out", "devices.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, out
    with (tmp_path / "devices.csv").open() as handle:
        row = next(csv.DictReader(handle))
    async with serve_processes() as nodes:
        node = await start_serve(tmp_path, {}, name="redis-dies")
        nodes.append(node)
        started = [
            json.loads(line) for line in node.log().splitlines() if "embedded_redis_started" in line
        ]
        # The newest one: a loaded machine may already have seen a restart.
        os.kill(started[-1]["pid"], 9)
        deadline = time.monotonic() + 20
        while node.log().count("embedded_redis_started") < len(started) + 1:
            assert time.monotonic() < deadline, node.log()[-2000:]
            await asyncio.sleep(0.2)
        device = TestDevice(row["did"], bytes.fromhex(row["key"]), node.tcp_port)
        await device.login()
        await device.send(telemetry(1, boot := int(time.time()), 10))
        assert await device.settled(timeout=15) == {(boot, 1): 0}
        assert "embedded_redis_died" in node.log()
        await device.close()
        node.terminate()
        assert await node.wait(30) == 0


@pytest.mark.slow
async def test_a_killed_serve_leaves_no_redis_behind(tmp_path: Path, migrated_sqlite):
    migrated_sqlite(tmp_path / "aquafleet-data" / "aquafleet.sqlite3")  # not a first start
    async with serve_processes() as nodes:
        node = await start_serve(tmp_path, {}, name="killed")
        nodes.append(node)
        started = [
            json.loads(line) for line in node.log().splitlines() if "embedded_redis_started" in line
        ]
        redis_pid = started[0]["pid"]
        node.kill()
        await node.wait()
        deadline = time.monotonic() + 10
        while _alive(redis_pid):
            assert time.monotonic() < deadline, "the embedded redis-server outlived serve"
            await asyncio.sleep(0.1)
        # And a new serve in the same place starts cleanly on the same files.
        again = await start_serve(tmp_path, {}, name="after-kill")
        nodes.append(again)
        again.terminate()
        assert await again.wait(30) == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().partition(") ")[2]
    except OSError:
        return False
    return not state.startswith("Z")


@pytest.mark.slow
async def test_workers_share_the_ports_and_stop_together(tmp_path: Path, migrated_sqlite):
    migrated_sqlite(tmp_path / "aquafleet-data" / "aquafleet.sqlite3")  # not a first start
    import aiohttp

    async with serve_processes() as nodes:
        node = await start_serve(tmp_path, {"workers": 2}, name="pool")
        nodes.append(node)
        seen = set()
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # both workers listen within a few seconds of each other
                async with session.get(
                    f"http://127.0.0.1:{node.http_port}/healthz",
                    headers={"Connection": "close"},
                ) as resp:
                    seen.add((await resp.json())["data"]["node"])
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.05)
        assert seen == {"pool-w0", "pool-w1"}
        node.terminate()
        assert await node.wait(40) == 0
        assert "exit_codes=[0, 0]" in node.log() or '"exit_codes": [0, 0]' in node.log()


def test_an_unknown_flag_is_named_by_its_command_with_the_flags_it_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["serve", "--port", "7701"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "usage: aquafleet serve" in err
    assert "unrecognized arguments: --port 7701; did you mean --tcp-port" in err
    assert "aquafleet serve takes: --help, --http-port, --tcp-port, --workers" in err


def test_service_mode_values_are_explained_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["service", "configure", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for meaning in ("1 sale", "2 time rental", "3 volume rental", "4 vending", "8 test"):
        assert meaning in text


def test_devices_show_reads_as_labelled_lines() -> None:
    labelled = [{"stage": 1, "work_h": 1866, "power_on_h": 4052, "reset_count": 0}]
    report = {
        "boot": 7, "rec": 5, "received_at": "2026-12-06T02:00:00Z", "flow_total_ml": 600,
        "tds_in_ppm": 310, "tds_out_ppm": 12, "temperature_dc": 215, "filters": labelled,
        "fault_bits": 0, "signal": 20, "state_bits": 1,
    }  # fmt: skip
    text = render_device({
        "did": "DEMO00000001DA9F", "registered": True, "vendor": "DEMO", "type": 0, "model": "",
        "state": "active", "key_version": 1, "activated_at": "2026-12-06T01:00:00Z",
        "ledger_metered_ml": 600, "ledger_records": 5, "login_allowed": True, "online": False,
        "latest_report": report,
    })  # fmt: skip
    assert "[1, 1866" not in text and "{" not in text
    lines = [line.split() for line in text.splitlines()]
    assert ["stage", "work_h", "power_on_h", "reset_count"] in lines
    assert ["1", "1866", "4052", "0"] in lines
    assert ["TDS", "in/out:", "310", "/", "12", "ppm"] in lines
    assert ["ledger:", "600", "ml", "in", "5", "records"] in lines
