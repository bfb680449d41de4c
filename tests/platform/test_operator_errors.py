"""What an operator sees when the environment is wrong (real subprocesses): a database that
cannot be reached, a data dir that cannot be made, a bad master key, a stop while starting.
Each is one line naming the setting, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import MASTER_SECRET, POSTGRES_URL
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
