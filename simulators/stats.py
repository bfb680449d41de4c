"""Counters of one worker (plain integers bumped on the hot path) and their aggregation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from aquafleet.simulators.histogram import Histogram

# Counters that add up across workers; gauges are summed too (each worker holds its own devices).
COUNTERS = (
    "connects_started",
    "connects_ok",
    "connect_failures",
    "logins_ok",
    "first_logins",
    "login_failures",
    "login_timeouts",
    "records_sent",
    "records_resent",
    "acks",
    "acked_stored",
    "acked_duplicate",
    "acked_stale",
    "acked_rejected",
    "acked_unavailable",
    "acks_unmatched",
    "acks_late",
    "acked_by_watermark",
    "watermark_forgotten",
    "window_full_skips",
    "pings_sent",
    "commands_received",
    "command_repeats",
    "results_sent",
    "drops_planned",
    "reboots",
    "storm_drops",
    "unavailable_reconnects",
    "server_closes",
    "announced_closes",
    "server_errors",
    "protocol_errors",
    "disconnects",
    "closed_at_end",
    "acked_ml",
)
GAUGES = ("connected", "online", "in_flight")


@dataclass(slots=True)
class WorkerStats:
    """Everything one worker counts. Devices bump these attributes directly."""

    connects_started: int = 0
    connects_ok: int = 0
    connect_failures: int = 0
    logins_ok: int = 0
    first_logins: int = 0
    login_failures: int = 0
    login_timeouts: int = 0
    records_sent: int = 0  # new records (first send)
    records_resent: int = 0  # DUP resends after a reconnect
    acks: int = 0
    acked_stored: int = 0
    acked_duplicate: int = 0
    acked_stale: int = 0
    acked_rejected: int = 0
    acked_unavailable: int = 0
    acks_unmatched: int = 0
    acks_late: int = 0  # an ACK for a record a watermark had already settled
    acked_by_watermark: int = 0  # stored records an ACK's watermark settled (coalesced acks)
    watermark_forgotten: int = 0  # unacked records AUTH_OK's watermark settled (--use-watermark)
    window_full_skips: int = 0  # report ticks skipped because the window was full
    pings_sent: int = 0
    commands_received: int = 0
    command_repeats: int = 0
    results_sent: int = 0
    drops_planned: int = 0
    reboots: int = 0
    storm_drops: int = 0
    unavailable_reconnects: int = 0
    server_closes: int = 0  # closes nobody announced (reset, EOF, idle timeout, ...): errors
    announced_closes: int = 0  # the gateway said why and to come back (SHUTDOWN, OVERLOADED)
    server_errors: int = 0  # ERROR frames the gateway sent while the session stayed up
    protocol_errors: int = 0  # our session closed on bad bytes from the gateway
    disconnects: int = 0  # connections lost or dropped during the run
    closed_at_end: int = 0  # connections we closed because the run was over (not disconnects)
    acked_ml: int = 0  # water of the records the gateway acked (stored or duplicate)
    connected: int = 0
    online: int = 0
    in_flight: int = 0
    close_codes: Counter[str] = field(default_factory=Counter)
    login_fail_codes: Counter[str] = field(default_factory=Counter)
    connect_fail_codes: Counter[str] = field(default_factory=Counter)
    ack_latency: Histogram = field(default_factory=Histogram)
    login_latency: Histogram = field(default_factory=Histogram)
    connect_latency: Histogram = field(default_factory=Histogram)

    def counters(self) -> dict[str, int]:
        """Counters and gauges (what the per-second snapshot carries)."""
        values = {name: getattr(self, name) for name in COUNTERS}
        values.update({name: getattr(self, name) for name in GAUGES})
        return values

    def to_dict(self) -> dict[str, Any]:
        """Everything, picklable (the final message of a worker)."""
        values: dict[str, Any] = self.counters()
        values["close_codes"] = dict(self.close_codes)
        values["login_fail_codes"] = dict(self.login_fail_codes)
        values["connect_fail_codes"] = dict(self.connect_fail_codes)
        values["ack_latency"] = self.ack_latency.to_dict()
        values["login_latency"] = self.login_latency.to_dict()
        values["connect_latency"] = self.connect_latency.to_dict()
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerStats:
        stats = cls()
        for name in (*COUNTERS, *GAUGES):
            setattr(stats, name, int(data.get(name, 0)))
        stats.close_codes.update(data.get("close_codes", {}))
        stats.login_fail_codes.update(data.get("login_fail_codes", {}))
        stats.connect_fail_codes.update(data.get("connect_fail_codes", {}))
        for name in ("ack_latency", "login_latency", "connect_latency"):
            if name in data:
                setattr(stats, name, Histogram.from_dict(data[name]))
        return stats

    def merge(self, other: WorkerStats) -> None:
        for name in (*COUNTERS, *GAUGES):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.close_codes.update(other.close_codes)
        self.login_fail_codes.update(other.login_fail_codes)
        self.connect_fail_codes.update(other.connect_fail_codes)
        self.ack_latency.merge(other.ack_latency)
        self.login_latency.merge(other.login_latency)
        self.connect_latency.merge(other.connect_latency)

    @classmethod
    def merged(cls, parts: Iterable[WorkerStats]) -> WorkerStats:
        total = cls()
        for part in parts:
            total.merge(part)
        return total


def sum_counters(snapshots: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = dict.fromkeys((*COUNTERS, *GAUGES), 0)
    for snapshot in snapshots:
        for name in total:
            total[name] += int(snapshot.get(name, 0))
    return total


assert {f.name for f in fields(WorkerStats)} >= set(COUNTERS) | set(GAUGES)
