"""One-time session setup (the Redis Cluster's start, the migrated templates) is not charged to
the timeout of the test that needs it first (tests/setup_deadline.py), and every test, and the
setup itself, stays bounded: pytest runs of their own on tiny test files, with a 4-s timeout
and the suite's thread method (which ends the run at the first timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.redis_cluster import redis_server_missing

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 4  # the small runs' per-test timeout; each slow setup takes longer
SLOW_S = 5

_BARE = """
import time
import pytest

@pytest.fixture(scope="session")
def slow_resource():
    time.sleep({slow})  # a session fixture with no deadline of its own
    return "ready"

def test_first_user(slow_resource):
    assert slow_resource == "ready"
"""

# The suite's own session resources, their expensive step made slow (and nothing started).
_SUITE = """
import time
import pytest
from tests.conftest import MigratedTemplates
from tests.cluster.conftest import redis_cluster_proc
from tests.redis_cluster import RedisClusterProcess

RedisClusterProcess.start = lambda self: time.sleep({slow})
RedisClusterProcess.stop = lambda self: None
MigratedTemplates._migrate = lambda self, *args: time.sleep({slow})

@pytest.fixture(scope="session")
def templates(tmp_path_factory):
    return MigratedTemplates(tmp_path_factory.mktemp("templates"))

def test_first_user_of_the_cluster(redis_cluster_proc):
    time.sleep(1)  # the test's own work: well inside its timeout

def test_first_user_of_a_template_then_hangs(templates):
    templates.sqlite()  # one-time setup in the test's body (as make_settings builds it)
    time.sleep(60)  # a hang: the test's timeout must still end it
"""

_STUCK = """
import time
import pytest
from tests.setup_deadline import one_time_setup

@pytest.fixture(scope="session")
def stuck_resource():
    with one_time_setup("the stuck resource", 2):
        time.sleep(60)  # a setup that hangs (no deadline of its own)

def test_never_runs(stuck_resource):
    pass
"""


def _start(directory: Path, source: str) -> subprocess.Popen[str]:
    """A pytest run of `source` in a directory of its own (its own ini: not this suite's)."""
    directory.mkdir()
    (directory / "pytest.ini").write_text(
        f"[pytest]\ntimeout = {TIMEOUT_S}\ntimeout_method = thread\n"
    )
    (directory / "test_small.py").write_text(textwrap.dedent(source.format(slow=SLOW_S)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-p", "tests.setup_deadline", "test_small.py"],
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(run: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = run.communicate(timeout=90)  # bounded: a run that hangs fails this test
    except subprocess.TimeoutExpired:
        run.kill()
        out, _ = run.communicate()
        pytest.fail(f"the small pytest run did not end: a hang went unbounded\n{out}")
    return run.returncode, out


def test_slow_session_setup_is_not_charged_to_the_first_test_and_hangs_still_time_out(
    tmp_path: Path,
) -> None:
    if (missing := redis_server_missing()) is not None:
        pytest.skip(f"tests/cluster/conftest.py skips without it: {missing}")
    runs = {  # at once: each waits on sleeps and timers
        name: _start(tmp_path / name, source)
        for name, source in (("bare", _BARE), ("suite", _SUITE), ("stuck", _STUCK))
    }
    bare, suite, stuck = (_finish(runs[name]) for name in ("bare", "suite", "stuck"))

    # pytest-timeout times setup, call and teardown: a bare slow session fixture's setup is
    # charged to the first test, which dies of the timeout though nothing is wrong.
    code, out = bare
    assert code != 0 and "+ Timeout +" in out and "1 passed" not in out, out

    # The suite's cluster start and template build run under their own deadline: the first
    # users pass, and a test hanging after its one-time setup still ends at its own timeout.
    code, out = suite
    assert "test_first_user_of_the_cluster PASSED" in out, out
    assert code != 0 and "+ Timeout +" in out, out
    after_timeout = out.split("+ Timeout +", 1)[1]
    assert "test_first_user_of_a_template_then_hangs" in after_timeout, out  # its stack
    assert "time.sleep(60)" in after_timeout, out

    # A one-time setup that hangs ends at its own bound, its stack in the report.
    code, out = stuck
    assert code != 0 and "+ Timeout +" in out and "stuck_resource" in out, out
    assert (
        "the stuck resource: not done within its own timeout (2 s, tests/setup_deadline.py), "
        "running for test_small.py::test_never_runs"
    ) in out, out
    assert "PASSED" not in out, out
