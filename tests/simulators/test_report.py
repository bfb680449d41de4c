"""The report: its JSON shape, its verdict and exit code, the exactly-once check's verdict."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aquafleet.simulators.check import DeviceOutcome, check_exactly_once
from aquafleet.simulators.options import DeviceCredentials, SimOptions
from aquafleet.simulators.report import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    build_report,
    storm_back_shares,
    value_at,
)
from aquafleet.simulators.stats import WorkerStats

T0 = 1_800_000_000.0
TOP_LEVEL_KEYS = {
    "version",
    "interrupted",
    "duration_s",
    "elapsed_s",
    "devices",
    "workers",
    "boot",
    "options",
    "connect",
    "login",
    "records",
    "ack_latency_ms",
    "disconnects",
    "commands",
    "storm",
    "drain",
    "check",
    "errors",
    "exit_code",
}
PERCENTILE_KEYS = {"count", "p50", "p99", "p999", "mean", "max"}


def _options(**overrides: Any) -> SimOptions:
    devices = [DeviceCredentials(f"SIMT{i:08d}", bytes(32)) for i in range(2)]
    return SimOptions(devices=devices, duration_s=10.0, check="none", **overrides)


def _final(stats: WorkerStats, results: list[tuple[Any, ...]], **times: Any) -> dict[str, Any]:
    base = {
        "started_at": T0,
        "all_logged_in_at": T0 + 0.5,
        "storm_at": None,
        "storm_recovered_at": None,
        "storm_failed": None,
        "run_ended_at": T0 + 10,
        "drain_ended_at": T0 + 10.2,
        "ended_at": T0 + 10.3,
        "interrupted_at": None,
    }
    base.update(times)
    return {
        "worker": 0,
        "devices": len(results),
        "stats": stats.to_dict(),
        "times": base,
        "results": results,
    }


def _healthy_stats() -> WorkerStats:
    stats = WorkerStats(
        records_sent=1000,
        acked_stored=990,
        acked_duplicate=10,
        acks=1000,
        logins_ok=2,
        first_logins=2,
        connects_ok=2,
    )
    for value in (800, 1200, 5000):
        stats.ack_latency.record(value)
    stats.login_latency.record(3000)
    return stats


def _history() -> list[tuple[float, dict[str, int]]]:
    return [
        (T0 + s, {"acked_stored": 100 * s, "records_sent": 100 * s, "logins_ok": 2})
        for s in range(1, 11)
    ]


def test_json_shape_and_a_passing_verdict() -> None:
    results = [("SIMT00000000", 500, 500, True, 0, True), ("SIMT00000001", 0, 0, True, 0, True)]
    report = build_report(
        _options(),
        boot=int(T0),
        started_at=T0,
        finals=[_final(_healthy_stats(), results)],
        histories=[_history()],
        check=None,
        interrupted=False,
    )
    data = json.loads(report.to_json())
    assert set(data) == TOP_LEVEL_KEYS
    assert set(data["ack_latency_ms"]) == PERCENTILE_KEYS
    assert set(data["login"]["latency_ms"]) == PERCENTILE_KEYS
    assert data["login"]["all_logged_in"] and data["login"]["time_to_all_logged_in_s"] == 0.5
    assert data["login"]["logins_per_s"] == 4.0
    assert data["records"]["acked"] == 1000 and data["records"]["duplicate_acks"] == 10
    # 100 acks a second, measured from when everybody was logged in to the end of the run.
    assert data["records"]["durable_per_s"] == pytest.approx(100, rel=0.01)
    assert data["records"]["measure_window_s"] == 9.5
    assert data["check"] == {"mode": "none", "passed": None}
    assert data["errors"]["unexpected"] == 0 and report.exit_code == EXIT_OK
    assert "result      OK" in report.render_text()


def test_errors_fail_the_run_and_are_named() -> None:
    stats = _healthy_stats()
    stats.server_closes = 2
    stats.close_codes.update({"reset": 2})
    stats.announced_closes = 5  # SHUTDOWN: expected, not among the errors
    stats.close_codes.update({"SHUTDOWN": 5})
    results = [("SIMT00000000", 500, 400, False, 3, True), ("SIMT00000001", 0, 0, True, 0, False)]
    report = build_report(
        _options(),
        boot=int(T0),
        started_at=T0,
        finals=[_final(stats, results)],
        histories=[_history()],
        check={
            "mode": "db",
            "passed": True,
            "devices_checked": 2,
            "devices_matching": 2,
            "poured_ml": 0,
            "acked_ml": 0,
            "metered_ml": 0,
            "mismatches": [],
            "complete_devices_metered_eq_poured": True,
            "waited_s": 0.1,
        },
        interrupted=False,
    )
    errors = report.data["errors"]
    assert errors["server_closes"] == 2
    assert errors["records_unacked_at_end"] == 3 and errors["never_logged_in"] == 1
    assert errors["unexpected"] == 6 and report.exit_code == EXIT_FAILED
    assert report.data["drain"]["complete"] is False
    assert "server_closes 2" in report.render_text()


def test_a_failed_check_fails_the_run_and_interrupt_wins() -> None:
    results = [("SIMT00000000", 500, 500, True, 0, True)]
    failed = {
        "mode": "db",
        "passed": False,
        "devices_checked": 1,
        "devices_matching": 0,
        "poured_ml": 500,
        "acked_ml": 500,
        "metered_ml": 0,
        "waited_s": 1.0,
        "mismatches": [{"did": "SIMT00000000", "acked_ml": 500, "metered_ml": 0, "poured_ml": 500}],
        "complete_devices_metered_eq_poured": False,
    }
    args: dict[str, Any] = dict(boot=int(T0), started_at=T0, histories=[_history()])
    final = _final(_healthy_stats(), results)
    report = build_report(_options(), finals=[final], check=failed, interrupted=False, **args)
    assert report.exit_code == EXIT_FAILED
    assert "SIMT00000000: acked 500 ml, metered 0 ml" in report.render_text()
    report = build_report(_options(), finals=[final], check=None, interrupted=True, **args)
    assert report.exit_code == EXIT_INTERRUPTED and report.data["interrupted"]


def test_storm_section() -> None:
    results = [("SIMT00000000", 0, 0, True, 0, True), ("SIMT00000001", 0, 0, True, 0, True)]
    final = _final(
        _healthy_stats(), results, storm_at=T0 + 2, storm_recovered_at=T0 + 2.75, storm_failed=0
    )
    report = build_report(
        _options(storm_at_s=2.0),
        boot=int(T0),
        started_at=T0,
        finals=[final],
        histories=[_history()],
        check=None,
        interrupted=False,
    )
    storm = report.data["storm"]
    assert storm["storm_recovery_s"] == 0.75 and storm["failed_to_recover"] == 0
    assert report.exit_code == EXIT_OK


def test_the_storms_recovery_curve_merges_workers_at_their_own_storm() -> None:
    # Worker 0's storm came first; worker 1's 0.3 s later, so its curve is shifted by 0.3 s.
    # 1,000 devices: 500 back in 0.1 s, 400 by 1 s, 90 by 2 s, 9 by 3 s, the last at 5.4 s.
    first = {"times": {"storm_at": T0, "storm_back_buckets": {"0": 500, "9": 300}}}
    late = {"6": 100, "16": 90, "26": 9, "50": 1}
    second = {"times": {"storm_at": T0 + 0.3, "storm_back_buckets": late}}
    shares = storm_back_shares([first, second], T0, 1000, 0.1)
    assert shares == {"50%": 0.1, "90%": 1.0, "99%": 2.0, "99.9%": 3.0}
    # The last device is what "all back" reports; a share never reached is None.
    assert storm_back_shares([first], T0, 1000, 0.1) == {
        "50%": 0.1, "90%": None, "99%": None, "99.9%": None,
    }  # fmt: skip


def test_workers_merge_and_a_lost_worker_counts() -> None:
    one, two = _healthy_stats(), _healthy_stats()
    results = [("SIMT00000000", 5, 5, True, 0, True)]
    report = build_report(
        _options(workers=2),
        boot=int(T0),
        started_at=T0,
        finals=[
            _final(one, results),
            {"worker": 1, "devices": 0, "stats": {}, "times": {}, "results": []},
        ],
        histories=[_history(), []],
        check=None,
        interrupted=False,
        workers_lost=1,
    )
    assert report.data["records"]["sent"] == 1000
    assert report.data["errors"]["workers_lost"] == 1
    assert report.data["errors"]["never_logged_in"] == 1
    assert report.exit_code == EXIT_FAILED
    merged = WorkerStats.merged([one, two])
    assert merged.records_sent == 2000 and merged.ack_latency.count == 6


def test_value_at_interpolates_between_snapshots() -> None:
    history = [(T0 + 1, {"n": 10}), (T0 + 2, {"n": 30})]
    assert value_at(history, T0 + 0.5, "n", T0) == 5
    assert value_at(history, T0 + 1.5, "n", T0) == 20
    assert value_at(history, T0 + 9, "n", T0) == 30


# ----------------------------------------------------------------------------- the check


async def test_check_polls_until_the_ledger_catches_up() -> None:
    outcomes = [
        DeviceOutcome("SIMT00000000", 700, 700, True, 0, True),
        DeviceOutcome("SIMT00000001", 300, 300, True, 0, True),
    ]
    calls = []

    async def reader(dids: list[str], min_boot: int) -> dict[str, int]:
        calls.append((tuple(dids), min_boot))
        # The ledger writer is behind on the first look.
        return {"SIMT00000000": 700, "SIMT00000001": 0 if len(calls) == 1 else 300}

    result = await check_exactly_once(
        outcomes, database_url="unused", min_boot=42, timeout_s=5, reader=reader
    )
    assert len(calls) == 2 and calls[0][1] == 42
    assert result["passed"] and result["devices_matching"] == 2
    assert (result["poured_ml"], result["acked_ml"], result["metered_ml"]) == (1000, 1000, 1000)


async def test_check_lists_at_most_ten_mismatches_and_flags_complete_devices() -> None:
    outcomes = [DeviceOutcome(f"SIMT{i:08d}", 100, 100, True, 0, True) for i in range(12)]

    async def reader(dids: list[str], min_boot: int) -> dict[str, int]:
        return dict.fromkeys(dids, 200)  # metered twice: exactly-once broken

    result = await check_exactly_once(
        outcomes, database_url="unused", min_boot=1, timeout_s=0.6, reader=reader
    )
    assert not result["passed"]
    assert result["devices_mismatching"] == 12 and len(result["mismatches"]) == 10
    assert result["mismatches"][0] == {
        "did": "SIMT00000000",
        "acked_ml": 100,
        "metered_ml": 200,
        "poured_ml": 100,
    }
    assert result["complete_devices_metered_eq_poured"] is False


async def test_check_reports_an_unreachable_database() -> None:
    outcomes = [DeviceOutcome("SIMT00000000", 1, 1, True, 0, True)]

    async def reader(dids: list[str], min_boot: int) -> dict[str, int]:
        raise OSError("database is down")

    result = await check_exactly_once(
        outcomes, database_url="unused", min_boot=1, timeout_s=1, reader=reader
    )
    assert result["passed"] is False and "database is down" in result["error"]
