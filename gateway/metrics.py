"""A node's metrics, served as Prometheus text on /metrics (docs/operations.md lists them).

The hot path stays plain Python: per-frame counters are integers bumped inline (no lock: one
event loop), gauges are functions read when scraped, and a custom collector turns both into
Prometheus families at scrape time. Histograms (prometheus_client) are observed once per metering
round, login, command or HTTP request, never per frame.

With `serve --workers N` every worker is a process of its own: prometheus_client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set by `serve`'s parent before it starts the workers) keeps the
histograms in per-process files, each worker copies its counters and gauges into such files
every PUBLISH_EVERY_S (and before answering a scrape), and whichever worker answers a scrape
merges every worker's files: a scrape sees the whole node.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "aquafleet_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_EVERY_S = 1.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# How one gauge's values of several worker processes combine: a count each process has of its
# own is summed; a value every process reads from the shared Redis, or a maximum, is the largest.
Across = Literal["sum", "max"]
_LIVE_MODE: dict[Across, Literal["livesum", "livemax"]] = {"sum": "livesum", "max": "livemax"}

ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROUND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOGIN_BUCKETS = ACK_BUCKETS
COMMAND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# No `_created` series: the multiprocess view has none, and one view must read like the other.
disable_created_metrics()  # type: ignore[no-untyped-call]

LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOP_LAG_EVERY_S = 0.1
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _counter(help_text: str) -> int:
    """A counter: a plain int field, exported as `aquafleet_<name>_total`."""
    return field(default=0, metadata={"help": help_text})


def _maximum(help_text: str) -> int:
    """A maximum kept in a plain int field: exported as a gauge (largest over the workers)."""
    return field(default=0, metadata={"help": help_text, "across": "max"})


@dataclass(slots=True)
class GaugeSource:
    """A gauge read at scrape time; several sources of one name (e.g. the TCP and the MQTT
    login queues) are summed."""

    help: str
    across: Across
    reads: list[Callable[[], int]]

    def value(self) -> int:
        return sum(read() for read in self.reads)


class Histograms:
    """The node's latency histograms, in seconds; each observed per round, login, command,
    request or ledger transaction."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ack_latency = Histogram(
            f"{PREFIX}ack_latency_seconds",
            "From a record's frame arriving to its ACK being written to the device, per "
            "metering round: the round's oldest record (the longest wait in the round)",
            buckets=ACK_BUCKETS,
            registry=registry,
        )
        self.meter_round = Histogram(
            f"{PREFIX}meter_round_seconds",
            "One metering round: meter.lua on every shard in one round trip, then the acks",
            buckets=ROUND_BUCKETS,
            registry=registry,
        )
        self.login = Histogram(
            f"{PREFIX}login_seconds",
            "From a device's login proof (TCP AUTH, or its first MQTT message on this node) to "
            "the answer, by result (ok or failed)",
            ["result"],
            buckets=LOGIN_BUCKETS,
            registry=registry,
        )
        self.login_ok = self.login.labels("ok")
        self.login_failed = self.login.labels("failed")
        self.command_round_trip = Histogram(
            f"{PREFIX}command_round_trip_seconds",
            "From a command's REST call (its creation) to the device's answer settling it, on "
            "the node that took the call, by operation (timed-out commands are not observed)",
            ["op"],
            buckets=COMMAND_BUCKETS,
            registry=registry,
        )
        self.ledger_transaction = Histogram(
            f"{PREFIX}ledger_transaction_seconds",
            "One ledger transaction (a batch's usage rows, device snapshots and activations), "
            "from its start to its commit: on SQLite the API's writes wait behind it "
            "(ledger_batch sets its size under load)",
            buckets=ROUND_BUCKETS,
            registry=registry,
        )
        self.event_loop_lag = Histogram(
            f"{PREFIX}event_loop_lag_seconds",
            "How late the event loop ran a timer due every 0.1 s: whatever one callback does "
            "(a read's frames, a metering round's acks, a request's handler) delays everything "
            "queued behind it, so this tail is the floor under every latency the node gives",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.http_request = Histogram(
            f"{PREFIX}http_request_duration_seconds",
            "HTTP requests by method, route template (`other`: no route matched) and status "
            "class (2xx, 4xx, 5xx)",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )


@dataclass(slots=True)
class Metrics:
    """Plain integers bumped on the hot path; no locks (one event loop)."""

    connections_accepted: int = _counter("TCP connections accepted (and MQTT devices met)")
    connections_refused: int = _counter("Connections refused: node full or stopping")
    connections_closed: int = _counter("Device connections that ended")
    logins_ok: int = _counter("Device logins accepted")
    logins_failed: int = _counter("Device logins refused (unknown, disabled, bad proof, ...)")
    logins_rate_limited: int = _counter("Logins refused: too many failures from the address")
    logins_timed_out: int = _counter("Connections closed for not logging in in time")
    sessions_replaced: int = _counter("Sessions closed by a newer login of the same device")
    idle_timeouts: int = _counter("Connections closed for silence past the heartbeat")
    records_received: int = _counter("Records (telemetry, events) read from devices")
    records_stored: int = _counter("Records metered and made durable for the first time")
    records_duplicate: int = _counter("Records metered before (a resend), acked again")
    records_stale: int = _counter("Records too far behind the device's watermark, refused")
    records_rejected: int = _counter("Record frames the protocol refused (malformed)")
    metered_ml: int = _counter("Water metered by the ledger writer, ml")
    meter_rounds: int = _counter("Metering rounds (one Redis round trip each)")
    meter_round_records_max: int = _maximum("Largest metering round so far, records")
    redis_errors: int = _counter("Redis failures on the gateway's paths (meter, logins)")
    frames_bad_crc: int = _counter("Frames dropped for a bad CRC")
    garbage_bytes: int = _counter("Bytes skipped between frames (modem noise)")
    protocol_errors: int = _counter("Sessions closed for a protocol error")
    read_pauses: int = _counter("Times the node paused reading devices (backpressure)")
    ledger_entries_written: int = _counter("Ledger stream entries written to the database")
    ledger_records_written: int = _counter("Usage records written to the database")
    ledger_records_dead: int = _counter("Ledger records that could not be decoded (set aside)")
    ledger_claimed: int = _counter("Ledger entries claimed from a stalled writer")
    ledger_db_errors: int = _counter("Database failures of the ledger writer")
    desired_pushed: int = _counter("Desired-state pushes (SET_STATE) sent")
    desired_answered: int = _counter("Desired-state pushes the device answered")
    desired_resent: int = _counter("Desired-state pushes sent again (unanswered)")
    desired_unanswered: int = _counter("Desired-state pushes given up unanswered")
    desired_push_failed: int = _counter("Desired-state pushes that could not be sent")
    commands_issued: int = _counter("Commands recorded (REST, vending, service changes)")
    commands_reroute_attempts: int = _counter("Commands rerouted to the device's new node")
    commands_timed_out: int = _counter("Commands timed out without a result")
    node_messages_malformed: int = _counter("Node-channel messages logged and dropped")
    node_messages_unhandled: int = _counter("Node-channel messages of a kind nobody handles")
    rental_locks: int = _counter("Devices locked by the rental scheduler")
    rental_reminders: int = _counter("Rental expiry reminders recorded")
    rental_dismantle_tickets: int = _counter("Dismantle tickets opened after the grace")
    rental_passes: int = _counter("Full passes of the rental scheduler")
    mqtt_uplinks_received: int = _counter("MQTT messages taken from the broker")
    mqtt_uplinks_forged: int = _counter("MQTT uplinks whose tag failed (never metered)")
    mqtt_uplinks_replayed: int = _counter("MQTT uplinks seen before or far behind")
    mqtt_uplinks_stale: int = _counter("MQTT uplinks sent more than 10 min from our clock")
    mqtt_uplinks_malformed: int = _counter("MQTT uplinks that did not parse")
    mqtt_uplinks_refused: int = _counter("MQTT uplinks of unknown or disabled devices")
    mqtt_uplinks_dropped: int = _counter("MQTT uplinks dropped: a bounded queue was full")
    mqtt_downlinks_sent: int = _counter("MQTT messages published to devices")
    mqtt_downlinks_dropped: int = _counter("MQTT downlinks dropped (queue full, refused)")
    mqtt_offline_notices: int = _counter("MQTT last wills applied")
    mqtt_broker_connects: int = _counter("Connections made to the MQTT broker")
    mqtt_broker_disconnects: int = _counter("Connections to the MQTT broker lost")
    payments_paid: int = _counter("Bills a payment channel confirmed paid")
    payments_notices_refused: int = _counter(
        "Payment notifications refused: forged, stale, unreadable or of another merchant"
    )
    payments_amount_mismatch: int = _counter(
        "Payment notifications naming another amount than the bill's (alerted, never paid)"
    )
    payments_refunds_sent: int = _counter("Refunds sent to a payment channel")
    payments_renewals_refused: int = _counter(
        "Tries of the payments sweep to apply a paid renewal that were refused (a disabled "
        "device, say; the reason is logged): paid, not renewed"
    )
    wechatpay_answers_unverified: int = _counter(
        "WeChat Pay answers (errors included) whose signature was missing or did not verify: "
        "not taken, asked again"
    )
    gauges: dict[str, GaugeSource] = field(default_factory=dict)
    # Where the workers of `serve --workers N` share their metrics (None: one process).
    multiprocess_dir: str | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    histograms: Histograms = field(init=False)
    _published: dict[str, int] = field(default_factory=dict)
    _counters: dict[str, Counter] = field(default_factory=dict)  # their multiprocess copies
    _gauges: dict[str, Gauge] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.histograms = Histograms(self.registry)
        self.registry.register(_PlainCollector(self))
        self.gauge("workers", "Processes serving this node's ports (serve --workers)", lambda: 1)

    @classmethod
    def for_this_process(cls) -> Metrics:
        """A node's metrics; shared with its sibling workers when `serve` asked for that."""
        shared = os.environ.get(MULTIPROC_ENV) or None
        # prometheus_client chose its mode when first imported: files only if the variable was
        # set by then (as `serve` sets it before starting its workers).
        if shared is not None and not getattr(values.ValueClass, "_multiprocess", False):
            shared = None
        return cls(multiprocess_dir=shared)

    def gauge(
        self, name: str, help_text: str, read: Callable[[], int], across: Across = "sum"
    ) -> None:
        """Export `read()` as gauge `aquafleet_<name>`, read when scraped."""
        source = self.gauges.get(name)
        if source is None:
            self.gauges[name] = GaugeSource(help_text, across, [read])
        else:
            source.reads.append(read)

    # ------------------------------------------------------------------ reading

    def plain(self) -> Iterator[tuple[str, str, str, int]]:
        """(name, kind, help, value) of every plain counter, maximum and gauge."""
        for item in fields(self):
            help_text = item.metadata.get("help")
            if help_text is None:
                continue
            kind = "counter" if "across" not in item.metadata else "gauge"
            yield item.name, kind, help_text, getattr(self, item.name)
        for name, source in sorted(self.gauges.items()):
            yield name, "gauge", source.help, source.value()

    def snapshot(self) -> dict[str, int]:
        """Every plain counter and gauge by its short name (no prefix, no `_total`)."""
        return {name: value for name, _, _, value in self.plain()}

    def exposition(self) -> bytes:
        """The Prometheus text of this node (of all its workers with `--workers N`)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self.publish()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    # ------------------------------------------------------------------ several workers

    def publish(self) -> None:
        """Copy the plain values into this process' multiprocess files (workers only)."""
        for name, kind, help_text, value in self.plain():
            if kind == "counter":
                counter = self._counters.get(name)
                if counter is None:  # registered nowhere: only its file is read
                    counter = self._counters[name] = Counter(
                        f"{PREFIX}{name}", help_text, registry=None
                    )
                delta = value - self._published.get(name, 0)
                if delta:
                    counter.inc(delta)
                    self._published[name] = value
                continue
            gauge = self._gauges.get(name)
            if gauge is None:
                source = self.gauges.get(name)
                across: Across = "max" if source is None else source.across
                gauge = self._gauges[name] = Gauge(
                    f"{PREFIX}{name}", help_text, registry=None,
                    multiprocess_mode=_LIVE_MODE[across],
                )  # fmt: skip
            gauge.set(value)

    async def watch_loop_lag(self, interval_s: float = LOOP_LAG_EVERY_S) -> None:
        """Observe how late a timer due every `interval_s` runs (a background task's body)."""
        loop = asyncio.get_running_loop()
        observe = self.histograms.event_loop_lag.observe
        while True:
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            observe(max(0.0, loop.time() - due))

    async def publish_every(self, interval_s: float = PUBLISH_EVERY_S) -> None:
        """Keep this worker's share of the merged view fresh (a background task's body)."""
        while True:
            self.publish()
            await asyncio.sleep(interval_s)


class _PlainCollector(Collector):
    """The plain integers as Prometheus families, read at scrape time (one process)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for name, kind, help_text, value in self.metrics.plain():
            if kind == "counter":
                yield CounterMetricFamily(f"{PREFIX}{name}", help_text, value=value)
            else:
                yield GaugeMetricFamily(f"{PREFIX}{name}", help_text, value=value)

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: every node has its own registry


def share_worker_metrics(path: Path) -> str:
    """Have the workers `serve` starts next share their metrics in `path`, emptied first (a
    previous run's files would add to this one's). Called in the parent before it starts them:
    prometheus_client picks its mode when first imported, in each worker."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return str(path)


def worker_gone(path: str, pid: int) -> None:
    """A worker ended: its live gauges go from the merged view (its counters stay counted)."""
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
