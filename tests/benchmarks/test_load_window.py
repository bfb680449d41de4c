"""benchmarks/load.py's steady-state window: the CPU and the records between the moment every
device is logged in and the end, so the logins' CPU is not charged to the records."""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.load import (
    Mark,
    cpu_seconds,
    kernel_seconds,
    logged_in,
    median,
    ratio_summary,
    records_counted,
    reference_report,
    window_figures,
)


def test_the_steady_window_leaves_out_the_cpu_and_records_before_it():
    start = Mark(at=0.0, cpu={"gateway": 0.0, "redis": 0.0}, records=0)
    all_logged_in = Mark(at=6.0, cpu={"gateway": 5.0, "redis": 1.0}, records=1_000)
    end = Mark(at=26.0, cpu={"gateway": 15.0, "redis": 3.0}, records=101_000)

    whole = window_figures(start, end)
    steady = window_figures(all_logged_in, end)

    assert whole["cpu_us_per_record"] == {"gateway": 148.51, "redis": 29.7}
    assert steady == {
        "window_s": 20.0,
        "records": 100_000,
        "cpu_s": {"gateway": 10.0, "redis": 2.0},
        "cpu_us_per_record": {"gateway": 100.0, "redis": 20.0},
    }


def test_a_window_without_records_has_no_cost_per_record():
    mark = Mark(at=1.0, cpu={"gateway": 1.0}, records=5)
    assert window_figures(mark, Mark(at=2.0, cpu={"gateway": 2.0}, records=5))[
        "cpu_us_per_record"
    ] == {"gateway": None}


def test_logged_in_devices_and_records_are_read_from_the_node_metrics():
    sample = {
        "devices_online": 1_500,
        "mqtt_devices": 500,
        "connections": 2_100,
        "records_stored_total": 90,
        "records_duplicate_total": 10,
        "records_received_total": 120,
    }
    assert logged_in(sample) == 2_000
    assert records_counted(sample) == 100
    assert logged_in({}) == 0 and records_counted({}) == 0


def test_median_of_even_and_odd_counts():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert median([]) is None


def _spend(seconds: float, work: Any) -> tuple[float, float]:
    """This process's CPU and the kernel's part of it while `work` runs for `seconds`."""
    pid = os.getpid()
    cpu, kernel = cpu_seconds(pid), kernel_seconds(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        work()
    return cpu_seconds(pid) - cpu, kernel_seconds(pid) - kernel


def test_the_kernel_part_is_the_system_time_not_the_user_time():
    # Python alone is user time; reading /dev/zero is the kernel filling the buffer.
    python_cpu, python_kernel = _spend(0.5, lambda: sum(range(2_000)))
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        read_cpu, read_kernel = _spend(0.5, lambda: os.read(fd, 256 * 1024))
    finally:
        os.close(fd)
    assert python_cpu > 0.2 and python_kernel < 0.25 * python_cpu, (python_cpu, python_kernel)
    assert read_cpu > 0.2 and read_kernel > 0.6 * read_cpu, (read_cpu, read_kernel)


def _round(whole_us: float, steady: dict[str, Any], broker_whole: float, broker_steady: float):
    per_record = {"gateway": whole_us / 2, "redis": whole_us / 4, "ledger": whole_us / 4}
    return {
        "aquafleet": {
            "cpu_us_per_record": {**per_record, "simulator": 500.0},
            "steady_state": steady,
            "sim_report": {"records": {"durable_per_s": 5_000.0}, "check": {"passed": True}},
        },
        "mosquitto": {
            "relayed_per_s": 20_000.0,
            "broker_cpu_us_per_message": broker_whole,
            "steady_state": {
                "broker_cpu_us_per_message": broker_steady,
                "broker_kernel_us_per_message": broker_steady * 0.9,
            },
            "published": 400_000,
            "received": 400_000,
        },
    }


def test_the_report_gives_both_ratios_and_says_which_is_which():
    steady = {
        "logged_in_after_s": 4.0,
        "window_s": 20.0,
        "records": 100_000,
        "cpu_us_per_record": {"gateway": 40.0, "redis": 10.0, "ledger": 10.0},
    }
    report = reference_report([_round(120.0, steady, 24.0, 20.0)] * 2)

    (row, _) = report["rounds"]
    assert row["cpu_ratio"] == 5.0  # whole run: 120 / 24
    assert row["cpu_ratio_steady"] == 3.0  # steady state: 60 / 20
    assert row["aquafleet_steady_server_cpu_us_per_record"] == 60.0  # no simulator in it
    assert report["cpu_ratio_median"] == 5.0
    assert report["cpu_ratio_steady_median"] == 3.0
    summary = ratio_summary(report)
    assert "steady state (every device logged in to the end): 3.00x, 3.00x (median 3.00x)" in (
        summary
    )
    assert "whole run (logins included):" in summary and "5.00x, 5.00x (median 5.00x)" in summary


def test_a_round_whose_devices_never_all_logged_in_has_no_steady_ratio():
    missing = {"not_reached": "not every device was logged in at once while it ran"}
    steady = {"cpu_us_per_record": {"gateway": 40.0, "redis": 10.0, "ledger": 10.0}}
    report = reference_report([_round(120.0, missing, 24.0, 20.0), _round(120.0, steady, 24, 20)])

    assert [row["cpu_ratio_steady"] for row in report["rounds"]] == [None, 3.0]
    assert report["cpu_ratio_steady_median"] is None  # not a median of half the rounds
    assert "n/a, 3.00x (median n/a)" in ratio_summary(report)


def test_the_summary_splits_each_rounds_cpu_into_the_kernels_part_and_the_rest():
    steady = {
        "cpu_us_per_record": {
            "gateway": 40.0, "redis": 10.0, "ledger": 10.0,
            "gateway_kernel": 22.0, "redis_kernel": 1.0, "ledger_kernel": 4.5,
        }
    }  # fmt: skip
    report = reference_report([_round(120.0, steady, 24.0, 20.0)])

    (row,) = report["rounds"]
    assert row["aquafleet_steady_server_cpu_us_per_record"] == 60.0  # the kernel's part in it once
    assert row["mosquitto_steady_kernel_us_per_message"] == 18.0
    assert (
        "round 1, kernel's part (µs): gateway 22.0 of 40.0, redis 1.0 of 10.0, "
        "ledger 4.5 of 10.0; Mosquitto 18.0 of 20.0"
    ) in ratio_summary(report)


def test_the_segment_counters_are_the_server_sides_of_its_connections():
    """`ss` is read for the sockets whose local port is the server's: three clients sending
    five segments each are 15 data segments in, and the clients' own sockets are not counted."""
    import socket

    from benchmarks.load import server_segments

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [listener.accept()[0] for _ in clients]
        try:
            for client in clients:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for n in range(5):
                for client in clients:
                    client.sendall(b"record %d" % n)
                for peer in accepted:  # read each before the next is sent: one segment each
                    assert peer.recv(64) == b"record %d" % n
            sockets, totals = server_segments(port)
        finally:
            for sock in clients + accepted:
                sock.close()
    assert sockets == 3
    assert totals["data_segs_in"] == 15
    assert totals["data_segs_out"] == 0
    assert totals["segs_out"] >= 3  # at least the handshake's SYN-ACK of each


def test_pure_acks_are_counted_per_data_segment_received_over_the_watched_span():
    from benchmarks.load import SegmentWatch

    watch = SegmentWatch(port=1, expected=2)
    assert watch.figures() is None  # never sampled
    watch.first = {"segs_out": 100, "data_segs_out": 60, "data_segs_in": 70}
    watch.last = {"segs_out": 3100, "data_segs_out": 2060, "data_segs_in": 2070}
    assert watch.figures() == {
        "data_segments_received": 2000,
        "segments_sent": 3000,
        "pure_acks_sent": 1000,
        "pure_acks_per_data_segment_received": 0.5,
    }


def test_the_metering_rounds_are_read_from_the_gateways_metrics_and_printed():
    """The rounds' figures come from the node's /metrics as Prometheus gives them (a
    histogram's `_sum` in seconds, not cut to whole seconds: a 7 ms round must not read 0)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from benchmarks.load import metering_rounds

    text = (
        b"# TYPE aquafleet_meter_rounds_total counter\naquafleet_meter_rounds_total 400.0\n"
        b"# TYPE aquafleet_records_received_total counter\n"
        b"aquafleet_records_received_total 200000.0\n"
        b"# TYPE aquafleet_meter_round_seconds histogram\n"
        b'aquafleet_meter_round_seconds_bucket{le="+Inf"} 400.0\n'
        b"aquafleet_meter_round_seconds_count 400.0\naquafleet_meter_round_seconds_sum 3.1\n"
        b"# TYPE aquafleet_ack_latency_seconds histogram\n"
        b'aquafleet_ack_latency_seconds_bucket{le="+Inf"} 400.0\n'
        b"aquafleet_ack_latency_seconds_count 400.0\naquafleet_ack_latency_seconds_sum 6.0\n"
    )

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rounds = metering_rounds(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert rounds == {
        "rounds": 400,
        "records_per_round": 500.0,
        "round_ms_mean": 7.75,
        "ack_wait_ms_mean": 15.0,
    }
    steady = {"cpu_us_per_record": {"gateway": 40.0, "redis": 10.0, "ledger": 10.0}}
    run = _round(120.0, steady, 24.0, 20.0)
    run["aquafleet"]["metering_rounds"] = rounds
    run["aquafleet"]["tcp_segments"] = {"pure_acks_per_data_segment_received": 0.9}
    run["mosquitto"]["tcp_segments"] = {"pure_acks_per_data_segment_received": 0.4}
    summary = ratio_summary(reference_report([run]))
    assert "device sockets 0.90, Mosquitto's 0.40" in summary
    assert (
        "round 1, metering rounds: 400 of 500 records, 7.8 ms a round (wall), "
        "15.0 ms from a round's first record to its ACKs"
    ) in summary
