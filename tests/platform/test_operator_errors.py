"""What an operator sees when the environment is wrong (real subprocesses): a database that
cannot be reached, a data dir that cannot be made, a bad master key, a stop while starting.
Each is one line naming the setting, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from pathlib import Path

import pytest

from aquafleet.cli import build_parser
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

    code, out = await aquafleet(env, "status", cwd=tmp_path)  # its SQLite file lives there
    assert code == 1 and "Traceback" not in out, out
    assert f"database sqlite://{blocker / 'data'}" in out, out

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
