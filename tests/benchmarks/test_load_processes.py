"""benchmarks/load.py reads the processes it measures from /proc, without spawning anything
(a pgrep per process twice a second took a fifth of a core from a storm and its CPU was
counted as the simulator's)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

from benchmarks.load import children, tree, tree_cpu


def test_the_tree_of_a_process_is_read_from_proc_and_starts_nothing():
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"]
    )  # fmt: skip
    try:
        for _ in range(200):  # bounded: the grandchild starts within a few seconds
            if children(sleeper.pid):
                break
            time.sleep(0.02)
        (grandchild,) = children(sleeper.pid)
        assert sleeper.pid in children(os.getpid())
        assert tree(sleeper.pid) == [sleeper.pid, grandchild]
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(50):
            tree(sleeper.pid)
            tree_cpu(sleeper.pid)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # nothing was started and reaped meanwhile: no CPU lands in the reaped children's figure
        assert (after.ru_utime, after.ru_stime) == (reaped.ru_utime, reaped.ru_stime)
    finally:
        for pid in tree(sleeper.pid)[::-1]:
            os.kill(pid, 9)
        sleeper.wait()


def test_a_process_that_is_gone_has_no_children():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert children(gone.pid) == []


def test_the_schedulers_autogroup_setting_is_read_for_the_report(tmp_path, monkeypatch):
    import benchmarks.load as load

    setting = tmp_path / "sched_autogroup_enabled"
    monkeypatch.setattr(load, "AUTOGROUP", setting)
    assert load.sched_autogroup() is None  # absent (a kernel without autogroup)
    setting.write_text("1\n")
    assert load.sched_autogroup() == 1
    setting.write_text("0\n")
    assert load.sched_autogroup() == 0
