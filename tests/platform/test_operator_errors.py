"""What an operator sees when the environment is wrong (real subprocesses): a database that
cannot be reached, a data dir that cannot be made, a bad master key, a stop while starting.
Each is one line naming the setting, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from aquafleet.cli import build_parser
from aquafleet.models.ids import device_id
from tests.conftest import MASTER_SECRET, POSTGRES_URL, REDIS_URL
from tests.platform.test_cli import aquafleet, clean_env
from tests.processes import free_port

REFUSED_URL = f"postgres://aquafleet:hunter2@127.0.0.1:{free_port()}/aquafleet"  # nobody listens
MISSING_DB_URL = f"{POSTGRES_URL.rsplit('/', 1)[0]}/aquafleet_no_such_database"


@pytest.mark.parametrize(
    ("url", "reason"),
    [(REFUSED_URL, "Connect"), (MISSING_DB_URL, "does not exist")],
    ids=["refused", "no-such-database"],
)
@pytest.mark.parametrize(
    "command", [["migrate"], ["status"], ["money", "check"]], ids=lambda c: c[0]
)
async def test_a_database_that_cannot_be_reached_is_one_line(
    tmp_path: Path, url: str, reason: str, command: list[str]
):
    env = clean_env(data_dir=tmp_path / "data", database_url=url)
    code, out = await aquafleet(env, *command)
    assert code == 1, out
    assert "Traceback" not in out, out
    line = out.strip().splitlines()[-1]
    assert line.startswith("aquafleet: database postgres://"), out
    assert "(database_url): cannot connect:" in line and reason in line, line
    assert "hunter2" not in out  # the URL's password is never shown
    # Nothing is announced as migrating before the database answered (it said migrations=24).
    assert "database_migrating" not in out, out


async def test_serve_workers_that_cannot_reach_the_database_say_so_in_one_line(tmp_path: Path):
    env = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=REFUSED_URL,
        migrate_on_start="false", tcp_port=free_port(), http_port=free_port(), workers=2,
    )  # fmt: skip
    code, out = await aquafleet(env, "serve", cwd=tmp_path)
    assert code == 1, out
    assert "Traceback" not in out, out
    # The first worker to fail says why; serve then stops the other (it may not get as far).
    assert re.search(
        r"^aquafleet: worker [01]: database postgres://\S+ \(database_url\)", out, re.M
    )


async def test_a_cluster_url_naming_a_plain_redis_is_one_line(tmp_path: Path, migrated_sqlite):
    migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")
    plain = REDIS_URL.partition("://")[2].partition("/")[0]  # HOST:PORT of a Redis, no cluster
    env = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET, redis_prefix="aq-ops13-cluster",
        redis_url=f"redis+cluster://{plain}", tcp_port=free_port(), http_port=free_port(),
    )  # fmt: skip
    code, out = await aquafleet(env, "serve", cwd=tmp_path)
    assert code == 1, out
    assert "Traceback" not in out, out
    assert "aquafleet: loading Lua scripts: RedisClusterException:" in out, out
    assert "Cluster mode is not enabled" in out, out


async def test_a_data_dir_that_cannot_be_made_is_named(tmp_path: Path, migrated_sqlite):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    env = clean_env(data_dir=blocker / "data", tcp_port=free_port(), http_port=free_port())
    code, out = await aquafleet(env, "serve", cwd=tmp_path)
    assert code == 2, out
    assert "Traceback" not in out, out
    assert f"aquafleet: data_dir {blocker / 'data'} (--data-dir, AQUAFLEET_DATA_DIR)" in out

    code, out = await aquafleet(env, "status", cwd=tmp_path)  # its SQLite file would be there
    assert code == 2 and "Traceback" not in out, out
    assert f"aquafleet: no platform data in data_dir {blocker / 'data'} " in out, out

    database = tmp_path / "db" / "aquafleet.sqlite3"
    migrated_sqlite(database)
    env["AQUAFLEET_DATABASE_URL"] = f"sqlite://{database}"
    await aquafleet(env, "vendors", "add", "ACME", "--name", "Acme Water")
    register = ["devices", "register", "--vendor", "ACME", "--count", "1", "--out", "d.csv"]
    code, out = await aquafleet(env, *register, cwd=tmp_path)  # no master key can be made
    assert code == 2 and "Traceback" not in out, out
    assert f"master key {blocker / 'data' / 'master.key'}" in out, out

    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    (key_dir / "master.key").write_text("not hex at all\n")
    env["AQUAFLEET_DATA_DIR"] = str(key_dir)
    code, out = await aquafleet(env, *register, cwd=tmp_path)
    assert code == 2 and "Traceback" not in out, out
    assert "not a hex master key" in out and "not hex at all" not in out, out


WRONG_DIRECTORY_COMMANDS = [
    ["status"],
    ["devices", "register", "--vendor", "DEMO", "--count", "1", "--out", "keys.csv"],
    ["vendors", "add", "DEMO", "--name", "Demo Water"],
    ["sim", "--devices", "1", "--from", "devices.csv", "--duration", "1"],
]


async def test_a_command_run_in_the_wrong_directory_creates_no_empty_platform(
    tmp_path: Path, migrated_sqlite
):
    """`aquafleet status` outside serve's directory made and migrated ./aquafleet-data and said
    "devices: 0": the fleet looked gone. On the embedded default a command that reads or
    changes the platform's data now names the data dir it looked in and how to name the right
    one, and creates nothing (no database, no master key)."""
    (tmp_path / "devices.csv").write_text("did,key\nDEMO00000001DA9F," + "ab" * 32 + "\n")
    env = clean_env()  # the embedded default: ./aquafleet-data
    for command in WRONG_DIRECTORY_COMMANDS:
        code, out = await aquafleet(env, *command, cwd=tmp_path)
        assert code == 2, (command, out)
        assert "Traceback" not in out, out
        line = out.strip().splitlines()[-1]
        assert line.startswith(
            f"aquafleet: no platform data in data_dir {tmp_path / 'aquafleet-data'} "
        ), (command, out)
        assert "--data-dir DIR, AQUAFLEET_DATA_DIR or --config FILE" in line, line
        assert not (tmp_path / "aquafleet-data").exists(), command
        assert not (tmp_path / "keys.csv").exists(), command

    # Named with --data-dir or AQUAFLEET_DATA_DIR, the platform's data are found (what
    # `aquafleet serve` or `aquafleet migrate` made: a migrated database).
    migrated_sqlite(tmp_path / "aquafleet-data" / "aquafleet.sqlite3")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data_dir = str(tmp_path / "aquafleet-data")
    code, out = await aquafleet(env, "--data-dir", data_dir, "money", "check", cwd=elsewhere)
    assert code == 0, out
    code, out = await aquafleet(
        {**env, "AQUAFLEET_DATA_DIR": data_dir}, "vendors", "add", "DEMO", "--name", "Demo",
        cwd=elsewhere,
    )  # fmt: skip
    assert code == 0, out
    assert not (elsewhere / "aquafleet-data").exists()


async def test_status_exits_non_zero_when_redis_cannot_be_reached(tmp_path: Path, migrated_sqlite):
    """A monitoring script runs `aquafleet status`: a Redis it cannot reach (online devices and
    the ledger backlog unknown) exited 0. It still prints what the database says."""
    migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")
    port = free_port()
    refused = clean_env(data_dir=tmp_path / "data", redis_url=f"redis://:s3cret@127.0.0.1:{port}/0")
    code, out = await aquafleet(refused, "status")
    assert code == 1, out
    assert "Traceback" not in out and "s3cret" not in out, out
    assert re.search(r"^devices:\s+0$", out, re.M) and "ledger records:" in out, out
    assert (
        f"aquafleet: status incomplete: redis redis://:***@127.0.0.1:{port}/0 (redis_url) is not "
        "reachable: " in out
    ), out

    embedded = clean_env(data_dir=tmp_path / "data")  # no serve runs its embedded Redis
    code, out = await aquafleet(embedded, "status")
    assert code == 1, out
    assert re.search(r"^devices:\s+0$", out, re.M), out
    assert f"no embedded Redis runs for data_dir {tmp_path / 'data'}" in out, out

    reachable = clean_env(
        data_dir=tmp_path / "data", redis_url=REDIS_URL, redis_prefix="aq-ops13-status"
    )
    code, out = await aquafleet(reachable, "status")
    assert code == 0, out
    assert re.search(r"^online:\s+0$", out, re.M), out


async def test_devices_show_exits_non_zero_when_redis_cannot_be_reached(
    tmp_path: Path, migrated_sqlite
):
    """`aquafleet devices show DID` with a Redis it cannot reach (presence, sessions and the
    meter unknown) exited 0, as status did: a script read the device as fine. It still prints
    what the database says, names the Redis and why on its last line, and exits 1."""
    migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")
    port = free_port()
    refused = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET,
        redis_url=f"redis://:s3cret@127.0.0.1:{port}/0",
    )  # fmt: skip
    assert (await aquafleet(refused, "vendors", "add", "SHOW", "--name", "Show"))[0] == 0
    code, out = await aquafleet(
        refused, "devices", "register", "--vendor", "SHOW", "--count", "1",
        "--out", str(tmp_path / "devices.csv"),
    )  # fmt: skip
    assert code == 0, out
    did = (tmp_path / "devices.csv").read_text().splitlines()[1].split(",")[0]

    code, out = await aquafleet(refused, "devices", "show", did)
    assert code == 1, out
    assert "Traceback" not in out and "s3cret" not in out, out
    assert out.startswith(did + "\n") and re.search(r"^  vendor:\s+SHOW$", out, re.M), out
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith(
            f"aquafleet: device status incomplete: redis redis://:***@127.0.0.1:{port}/0 "
            "(redis_url) is not reachable: "
        )
    ), out

    embedded = clean_env(data_dir=tmp_path / "data")  # no serve runs its embedded Redis
    code, out = await aquafleet(embedded, "devices", "show", did, "--json")
    assert code == 1, out
    document, last = out.rsplit("\n}\n", 1)
    assert json.loads(document + "\n}")["vendor"] == "SHOW", out
    assert last.strip().startswith(
        "aquafleet: device status incomplete: no embedded Redis runs "
        f"for data_dir {tmp_path / 'data'}"
    ), out

    reachable = clean_env(
        data_dir=tmp_path / "data", redis_url=REDIS_URL, redis_prefix="aq-docs14-show"
    )
    code, out = await aquafleet(reachable, "devices", "show", did)
    assert code == 0, out
    assert re.search(r"^  online: no$", out, re.M) and "incomplete" not in out, out


async def test_two_processes_making_a_new_platform_at_once_both_succeed(tmp_path: Path):
    """README: `aquafleet serve` in one terminal, `aquafleet vendors add` in a second. Run while
    serve was still creating a new platform's schema, the command migrated the same SQLite file
    too, and one of them stopped with a traceback ('table "order_device" already exists'). Two
    processes that migrate one new database at once (here two `migrate`s, the same race) now
    take turns: both succeed, the second finding nothing pending."""
    env = clean_env(data_dir=tmp_path / "data")
    results = await asyncio.gather(
        aquafleet(env, "migrate", cwd=tmp_path), aquafleet(env, "migrate", cwd=tmp_path)
    )
    for code, out in results:
        assert code == 0, out
        assert "Traceback" not in out and "already exists" not in out, out
    code, out = await aquafleet(env, "vendors", "add", "TURN", "--name", "Turns", cwd=tmp_path)
    assert code == 0, out
    code, out = await aquafleet(env, "money", "check", cwd=tmp_path)
    assert code == 0, out


async def test_a_sim_with_no_gateway_ends_soon_after_its_duration(tmp_path: Path):
    """With nothing listening, a 2 s run took 32 s: its drain waited --drain-timeout (30 s)
    for devices that could never connect to report their water."""
    from aquafleet.simulators.fleet import DRAIN_UNREACHABLE_S

    (tmp_path / "devices.csv").write_text(
        "did,key\n" + "".join(f"{device_id('DEMO', i)},{'ab' * 32}\n" for i in range(1, 4))
    )
    port = free_port()  # nobody listens
    started = time.monotonic()
    code, out = await aquafleet(
        clean_env(), "sim", "--devices", "3", "--from", "devices.csv", "--tcp-port", str(port),
        "--duration", "2", "--draw-gap", "0.2", "--seed", "7", "--check", "none", "--quiet",
        "--report-json", "report.json", cwd=tmp_path,
    )  # fmt: skip
    took = time.monotonic() - started
    assert code == 1, out
    assert "Traceback" not in out, out
    report = json.loads((tmp_path / "report.json").read_text())
    # The devices poured water they could not report: without the bound the drain waited 30 s.
    assert report["drain"]["devices_incomplete"] == 3, report["drain"]
    assert report["drain"]["ended_unreachable"] is True, report["drain"]
    assert report["elapsed_s"] <= 2 + DRAIN_UNREACHABLE_S + 1, report["elapsed_s"]
    assert took < 2 + DRAIN_UNREACHABLE_S + 15, took  # start-up and the report on a busy box
    target = f"the gateway at 127.0.0.1:{port} (--host, --tcp-port)"
    assert report["connect"]["unreachable"] == target
    assert f"NOT CONNECTED: no device could connect to {target}: ECONNREFUSED" in out, out
    assert f"result      FAILED (exit 1): could not connect to {target};" in out, out


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_before_the_loop_handles_it_still_stops_cleanly(tmp_path: Path, workers: int):
    env = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET, tcp_port=free_port(),
        http_port=free_port(), workers=workers, log_format="json",
    )  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aquafleet.cli", "serve", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    seen = b""
    try:
        # serve_starting is logged before the ports are bound and the node's modules imported
        # (a second or more): a SIGTERM now lands before the event loop has a handler for it.
        while b"serve_starting" not in seen:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, seen.decode()
            seen += line
        process.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = (seen + out).decode()
    assert process.returncode == 0, text  # not 143, the default action's death
    assert "Traceback" not in text, text


def every_option(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += every_option(sub, f"{path} {name}")
        elif action.dest != "help":
            found.append((path, action))
    return found


def test_every_argument_of_every_command_is_explained_in_help() -> None:
    missing = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in every_option(build_parser(), "aquafleet")
        if not action.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["orders", "list", "--limit", "-1"], "argument --limit: -1 is not in 1..100000"),
        (["tickets", "list", "--limit", "0"], "argument --limit: 0 is not in 1..100000"),
        (["tickets", "stuck-exchanges", "--limit", "-5"], "argument --limit: -5 is not in"),
        (["tickets", "stuck-exchanges", "--hours", "-5"], "argument --hours: -5 is not in"),
        (["service", "show", "X", "--history", "-1"], "argument --history: -1 is not in"),
        (["payments", "reconcile", "--date", "yesterday"], "'yesterday' is not a date"),
    ],
)
def test_numbers_and_dates_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(args)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


async def test_a_keys_file_that_cannot_be_written_registers_nothing(
    tmp_path: Path, migrated_sqlite
):
    migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET)
    await aquafleet(env, "vendors", "add", "ACME", "--name", "Acme Water")
    register = ["devices", "register", "--vendor", "ACME", "--count", "2"]
    missing_dir = tmp_path / "no-such-dir" / "devices.csv"
    code, out = await aquafleet(env, *register, "--out", str(missing_dir))
    assert code == 1 and "Traceback" not in out, out
    assert f"--out {missing_dir}: cannot write it" in out and "no device was registered" in out

    code, out = await aquafleet(
        env, *register, "--vendor", "NONE", "--out", "keys.csv", cwd=tmp_path
    )
    assert code == 1 and "vendor NONE does not exist" in out, out
    assert not (tmp_path / "keys.csv").exists()  # a retry is not told the file exists

    code, out = await aquafleet(env, *register, "--out", "keys.csv", cwd=tmp_path)
    assert code == 0, out
    assert "ACME00000001" in out  # the failed runs took no serials: they made no device


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read it: No such file or directory"), ("a,b\n1,2\n", "no did column")],
)
async def test_a_from_csv_that_cannot_be_read_is_one_line(
    tmp_path: Path, migrated_sqlite, content: str | None, message: str
):
    migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET)
    source = tmp_path / "devices.csv"
    if content is not None:
        source.write_text(content)
    for args in (
        ["service", "configure", "--from", str(source), "--mode", "3", "--remaining-ml", "5"],
        ["billing", "assign", "1", "--from", str(source), "--since", "2026-11-01T00:00:00Z"],
    ):
        code, out = await aquafleet(env, *args)
        assert code == 1 and "Traceback" not in out, out
        assert f"aquafleet: --from {source}: {message}" in out, out
