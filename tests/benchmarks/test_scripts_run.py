"""The benchmark scripts the docs give run end to end, at a tiny scale, against the real CLI.

They drive `aquafleet` as an operator does (migrate, vendors, devices, serve, sim) and a change
to the CLI can break them without any other test noticing: session 13's rule that commands
other than serve and migrate refuse a missing data dir made `load.py`, `command_latency.py`
and `sim_storm_cpu.py` stop at their first `vendors add`. Figures are not checked here (these
are not benchmarks): only that each script finishes, says the run was exactly once where it
checks that, and reports what it measured.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_base(offsets: tuple[int, ...]) -> int:
    """A port BASE such that BASE + each offset is free now (bounded tries)."""
    for _ in range(50):
        (base,) = free_ports(1)
        if base + max(offsets) >= 65536:
            continue
        probes = [socket.socket() for _ in offsets]
        try:
            for probe, offset in zip(probes, offsets, strict=True):
                probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return base
    raise AssertionError("no free port base found in 50 tries")


def run_script(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def test_load_py_runs_a_small_fleet_exactly_once_with_the_ledger_apart(tmp_path: Path) -> None:
    report = tmp_path / "load.json"
    run_script(  # no ports given: load.py takes free ones (fixed defaults met stale nodes)
        "benchmarks/load.py", "--devices", "30", "--ledger-process", "--rounds", "1",
        "--json", str(report),
        "--sim", "--window 1 --max-rate --duration 2 --seed 1 --workers 1",
        timeout=120,
    )  # fmt: skip
    figures = json.loads(report.read_text())
    assert figures["sim_exit"] == 0
    assert figures["sim_report"]["check"]["passed"] is True
    assert figures["sim_report"]["records"]["durable_per_s"] > 0
    assert figures["cpu_us_per_record"]["ledger"] > 0  # the ledger process was measured
    # ...and its transactions read off its own metrics (`aquafleet ledger --metrics-port`)
    shape = figures["ledger"]
    assert shape["transactions"] >= 1
    assert shape["records_per_transaction"] >= 1
    assert shape["transaction_ms_mean"] > 0


def test_command_latency_py_sends_commands_on_both_paths(tmp_path: Path) -> None:
    port_base = free_port_base((0, 1, 300, 301))  # node A: TCP BASE, HTTP BASE+300; B: +1
    report = tmp_path / "commands.json"
    run_script(
        "benchmarks/command_latency.py", "--devices", "20", "--commands", "10", "--rate", "20",
        "--interval", "1", "--port-base", str(port_base), "--json", str(report),
        timeout=120,
    )  # fmt: skip
    figures = json.loads(report.read_text())
    assert not any(sum(f.values()) for f in figures["failures"].values()), figures["failures"]
    for path in ("same_node", "cross_node"):
        assert figures["paths"][path]["count"] == 10, figures["paths"]
