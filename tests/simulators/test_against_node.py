"""The simulator against a real gateway node (real Redis, SQLite ledger) in this event loop."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aquafleet.models.vendors import Vendor
from aquafleet.simulators.report import EXIT_INTERRUPTED, EXIT_OK, Report
from aquafleet.simulators.runner import run_simulation
from tests.simulators.conftest import RegisterFleet, sim_options
from tests.simulators.test_report import TOP_LEVEL_KEYS


def _assert_exactly_once(report: Report, devices: int) -> None:
    data = report.data
    check = data["check"]
    assert check["passed"], report.render_text()
    text = report.render_text()
    assert check["devices_checked"] == check["devices_matching"] == devices, text
    assert check["complete_devices"] == devices, text
    assert check["poured_ml"] == check["acked_ml"] == check["metered_ml"] > 0, text
    assert data["drain"]["complete"] and data["records"]["in_flight_at_end"] == 0, text
    assert data["errors"]["unexpected"] == 0, text
    assert report.exit_code == EXIT_OK


async def test_drops_and_reboots_meter_every_millilitre_once(
    node_factory: Any, register_fleet: RegisterFleet
) -> None:
    node = await node_factory()
    devices = await register_fleet(node, 120)
    options = sim_options(
        node, devices, max_rate=True, window=4, drop_rate=12.0, reboot_rate=3.0, duration_s=4.0
    )
    report = await run_simulation(options)
    data = json.loads(report.to_json())
    assert set(data) == TOP_LEVEL_KEYS
    assert data["login"]["all_logged_in"] and data["login"]["devices_logged_in"] == 120
    assert data["login"]["latency_ms"]["count"] >= 120
    assert data["records"]["acked"] > 1000 and data["records"]["durable_per_s"] > 0
    assert data["ack_latency_ms"]["p99"] is not None
    # Links dropped with records in flight: they were resent with DUP, and the gateway
    # answered "duplicate" for those it had stored already.
    assert data["disconnects"]["planned_drops"] > 0 and data["disconnects"]["reboots"] > 0
    assert data["records"]["resent"] > 0 and data["records"]["duplicate_acks"] > 0
    assert data["disconnects"]["server_closes"] == 0
    _assert_exactly_once(report, 120)
    assert node.metrics.records_duplicate >= data["records"]["duplicate_acks"]
    # The check read the ledger through its own Tortoise context: the node's is untouched.
    assert await Vendor.exists(code="SIMT")


async def test_interval_mode_pours_in_draws(
    node_factory: Any, register_fleet: RegisterFleet
) -> None:
    node = await node_factory()
    devices = await register_fleet(node, 60)
    options = sim_options(node, devices, interval_s=0.3, draw_gap_s=1.0, duration_s=4.0)
    report = await run_simulation(options)
    records = report.data["records"]
    # At most one record per device per interval (13 intervals in 4 s, ramp aside), and every
    # device reported in more than one. How close to one per interval a run gets depends on
    # the CPU it is given (a starved wheel skips rather than bursts): that figure is the load
    # benchmark's (benchmarks/load.py --sim "--interval ..." reports sent_per_s), not a test's.
    assert 60 * 2 < records["sent"] <= 60 * 14
    assert records["window_full_skips"] < records["sent"] // 10
    _assert_exactly_once(report, 60)
    # Draws pour ~30 ml/s: 60 purifiers cannot have poured more than 4 s of it each.
    assert report.data["check"]["poured_ml"] <= 60 * (4.5 * 30 + 500)


async def test_reconnect_storm_everyone_comes_back(
    node_factory: Any, register_fleet: RegisterFleet
) -> None:
    node = await node_factory()
    devices = await register_fleet(node, 150)
    options = sim_options(node, devices, max_rate=True, window=2, storm_at_s=1.5, duration_s=3.5)
    report = await run_simulation(options)
    storm = report.data["storm"]
    assert storm["happened"] and storm["devices_dropped"] == 150
    # Every device came back (the recovery time itself is the load benchmark's figure:
    # benchmarks/load.py --sim "... --storm-at N"; on shared cores it is not a test's bound).
    assert storm["failed_to_recover"] == 0
    assert storm["storm_recovery_s"] is not None and storm["storm_recovery_s"] > 0
    assert report.data["login"]["ok"] >= 300
    _assert_exactly_once(report, 150)
    assert "storm       at 1.5 s, 150 dropped: all back after" in report.render_text()
    # The recovery curve: every share reached, in order, none after the last device.
    shares = list(storm["back_after_s"].values())
    assert None not in shares and shares == sorted(shares)
    assert shares[-1] <= storm["storm_recovery_s"] + 0.1
    assert "storm back  50% by " in report.render_text()


async def test_two_worker_processes(node_factory: Any, register_fleet: RegisterFleet) -> None:
    node = await node_factory()
    devices = await register_fleet(node, 160)
    options = sim_options(
        node, devices, workers=2, max_rate=True, window=2, drop_rate=6.0, duration_s=3.0
    )
    report = await run_simulation(options)
    assert report.data["workers"] == 2
    assert report.data["login"]["devices_logged_in"] == 160
    assert report.data["ack_latency_ms"]["count"] == report.data["records"]["acked"]
    _assert_exactly_once(report, 160)


async def test_interrupt_stops_cleanly_with_a_partial_report(
    node_factory: Any, register_fleet: RegisterFleet
) -> None:
    node = await node_factory()
    devices = await register_fleet(node, 40)
    options = sim_options(node, devices, max_rate=True, window=2, duration_s=60.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, stop.set)
    started = loop.time()
    report = await run_simulation(options, stop=stop)
    assert loop.time() - started < 8.0
    assert report.data["interrupted"] and report.exit_code == EXIT_INTERRUPTED
    assert report.data["check"]["skipped"] == "interrupted"
    assert report.data["records"]["acked"] > 0
    assert "INTERRUPTED" in report.render_text()


async def test_a_graceful_node_restart_is_not_an_error(
    node_factory: Any, register_fleet: RegisterFleet
) -> None:
    """Issue 18: a node stopped gracefully (SIGTERM) while the sim ran ended it with
    'FAILED: 60 unexpected errors (server_closes 60)' though nothing was lost. The gateway's
    announced SHUTDOWN is expected: the devices come back and the run passes."""
    first = await node_factory()
    devices = await register_fleet(first, 60)
    options = sim_options(first, devices, max_rate=True, window=2, duration_s=7.0)
    run = asyncio.create_task(run_simulation(options))
    await asyncio.sleep(2.0)
    await first.stop()  # what SIGTERM does: drain, ack, say SHUTDOWN, close
    await node_factory(
        tcp_port=first.tcp_port, database_url=first.settings.resolved_database_url
    )  # the node is back on the same port
    report = await run
    disconnects = report.data["disconnects"]
    assert disconnects["announced_closes"] == 60, report.render_text()
    assert disconnects["server_closes"] == 0 and disconnects["server_close_codes"] == {
        "SHUTDOWN": 60
    }
    assert "announced by the server 60" in report.render_text()
    _assert_exactly_once(report, 60)
