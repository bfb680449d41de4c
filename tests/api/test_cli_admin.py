"""`aquafleet admin create-platform-admin` and `aquafleet vendors add --admin / add-admin`:
accounts made from the shell, password never on the command line, that log in at once
(SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.api.conftest import ApiClient, md5


async def aquafleet(
    database_url: str, tmp_path: Path, *args: str, stdin: bytes = b""
) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env["AQUAFLEET_DATA_DIR"] = str(tmp_path / "data")
    env["AQUAFLEET_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aquafleet.cli", *args,
        env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(stdin), 90)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def login_works(database_url: str, user: str, password: str) -> bool:
    from aquafleet.models.accounts import LoginRefused, login_admin
    from aquafleet.models.db import database

    async with database(database_url, run_migrations=False):
        try:
            _, principal = await login_admin(user, md5(password))
        except LoginRefused:
            return False
    return str(principal.role) == "platform"


async def test_create_platform_admin_from_stdin_and_from_a_file(database_url: str, tmp_path: Path):
    code, out = await aquafleet(
        database_url, tmp_path, "admin", "create-platform-admin", "--user", "root",
        stdin=b"correct horse battery\n",
    )  # fmt: skip
    assert code == 0, out
    assert "platform admin root created" in out and "correct horse" not in out
    assert await login_works(database_url, "root", "correct horse battery")
    assert not await login_works(database_url, "root", "correct horse")

    secret = tmp_path / "pw.txt"
    secret.write_text("from-a-file-123\nsecond line ignored\n")
    code, out = await aquafleet(
        database_url, tmp_path, "admin", "create-platform-admin", "--user", "ops",
        "--password-file", str(secret),
    )  # fmt: skip
    assert code == 0, out
    assert await login_works(database_url, "ops", "from-a-file-123")

    # The same name twice, a short password, a bad name, a missing file: refused, exit 1.
    for args, stdin in (
        (["--user", "ROOT"], b"another-long-one\n"),
        (["--user", "new-one"], b"short\n"),
        (["--user", "x"], b"long-enough-pass\n"),
        (["--user", "new-one", "--password-file", str(tmp_path / "missing")], b""),
    ):
        code, out = await aquafleet(
            database_url, tmp_path, "admin", "create-platform-admin", *args, stdin=stdin
        )
        assert code == 1, (args, out)
        assert "Traceback" not in out
    # There is no way to put the password on the command line.
    code, out = await aquafleet(
        database_url, tmp_path, "admin", "create-platform-admin", "--user", "x-y-z",
        "--password", "visible-in-ps",
    )  # fmt: skip
    assert code == 2 and "unrecognized arguments" in out


async def test_a_vendor_made_from_the_shell_has_an_admin_who_logs_in(
    api: ApiClient, database_url: str, tmp_path: Path
):
    code, out = await aquafleet(
        database_url, tmp_path, "vendors", "add", "DEMO", "--name", "Demo Water",
        "--admin", "demo-admin", stdin=b"demo-password-1\n",
    )  # fmt: skip
    assert code == 0, out
    assert "admin demo-admin" in out and "demo-password" not in out
    answer = await api.call(
        "POST", "/auth/login", {"user": "demo-admin", "pwd": md5("demo-password-1")}, token=None
    )
    assert (answer.data["role"], answer.data["vid"]) == ("vendor", "DEMO")

    # A vendor made without one gets its admin afterwards; the output says how.
    code, out = await aquafleet(database_url, tmp_path, "vendors", "add", "LATE", "--name", "L")
    assert code == 0 and "vendors add-admin LATE --user" in out, out
    code, out = await aquafleet(
        database_url, tmp_path, "vendors", "add-admin", "LATE", "--user", "late-admin", "--json",
        stdin=b"late-password-1\n",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["vendor"] == "LATE"
    answer = await api.call(
        "POST", "/auth/login", {"user": "late-admin", "pwd": md5("late-password-1")}, token=None
    )
    assert answer.data["vid"] == "LATE"
    code, out = await aquafleet(
        database_url, tmp_path, "vendors", "add-admin", "NONE", "--user", "x-admin",
        stdin=b"long-enough-pass\n",
    )  # fmt: skip
    assert code == 1 and "vendor NONE does not exist" in out
