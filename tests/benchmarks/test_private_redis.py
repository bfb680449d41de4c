"""benchmarks/private_redis.py hands back a socket only once its redis-server answers PING on it;
a server that exits or stays silent is an error naming its exit code and log, and nothing of it
(process, temporary directory) is left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import redis

from benchmarks.private_redis import PrivateRedisError, private_redis

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory private_redis makes its own in (so a test sees what it leaves)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (ours are reaped by Popen.wait)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_started_server_answers_ping_on_the_socket_it_hands_back(temp_root: Path) -> None:
    with private_redis("bench-ok-", "--save", "", "--appendonly", "no") as (sock, pid):
        client = redis.Redis(unix_socket_path=sock, socket_timeout=5)
        try:
            assert client.ping() is True  # at once: no retry needed by the benchmark
            assert int(client.info("server")["process_id"]) == pid
        finally:
            client.close()
    assert not _running(pid)
    assert list(temp_root.iterdir()) == []


def test_a_bad_option_is_an_error_with_the_exit_code_and_the_log_at_once(
    temp_root: Path,
) -> None:
    started = time.monotonic()
    with (
        pytest.raises(PrivateRedisError) as raised,
        private_redis("bench-bad-", "--no-such-option", "1"),
    ):
        pytest.fail("a server that never started was handed back")
    assert time.monotonic() - started < 5  # not the start deadline (15 s), nor a hang
    error = raised.value
    assert error.returncode not in (None, 0)
    assert "no-such-option" in error.log_tail  # redis-server's own complaint
    assert f"exited ({error.returncode})" in str(error) and error.log_tail in str(error)
    assert list(temp_root.iterdir()) == []


def test_a_server_that_never_answers_on_the_socket_is_stopped_at_the_deadline(
    temp_root: Path,
) -> None:
    """It runs, but serves another socket (a later option wins): silence until the deadline,
    then an error, and the process is gone."""
    elsewhere = temp_root.parent / "elsewhere.sock"
    before = set(_children())
    with (
        pytest.raises(PrivateRedisError) as raised,
        private_redis("bench-silent-", "--unixsocket", str(elsewhere), start_timeout_s=1.0),
    ):
        pytest.fail("a socket nobody serves was handed back")
    assert raised.value.returncode is None
    assert "did not answer PING" in str(raised.value) and "within 1 s" in str(raised.value)
    assert not [pid for pid in _children() if pid not in before and _running(pid)]
    assert list(temp_root.iterdir()) == []


def _children() -> list[int]:
    """Pids of this process' children (from /proc: nothing is spawned to find them)."""
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.append(int(stat.parent.name))
    return found
