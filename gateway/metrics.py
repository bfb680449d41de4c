"""Counters and gauges of one node, served as Prometheus text on /metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields


@dataclass(slots=True)
class Metrics:
    """Plain integers bumped on the hot path; no locks (one event loop)."""

    connections_accepted: int = 0
    connections_refused: int = 0
    connections_closed: int = 0
    logins_ok: int = 0
    logins_failed: int = 0
    logins_rate_limited: int = 0
    logins_timed_out: int = 0
    sessions_replaced: int = 0
    idle_timeouts: int = 0
    records_received: int = 0
    records_stored: int = 0
    records_duplicate: int = 0
    records_stale: int = 0
    records_rejected: int = 0
    metered_ml: int = 0
    meter_rounds: int = 0
    meter_round_records_max: int = 0
    redis_errors: int = 0
    frames_bad_crc: int = 0
    garbage_bytes: int = 0
    protocol_errors: int = 0
    read_pauses: int = 0
    ledger_entries_written: int = 0
    ledger_records_written: int = 0
    ledger_records_dead: int = 0
    ledger_claimed: int = 0
    ledger_db_errors: int = 0
    desired_pushed: int = 0
    desired_answered: int = 0
    desired_resent: int = 0
    desired_unanswered: int = 0
    desired_push_failed: int = 0
    commands_issued: int = 0
    commands_reroute_attempts: int = 0
    commands_timed_out: int = 0
    node_messages_malformed: int = 0  # on a node channel: logged and dropped
    node_messages_unhandled: int = 0  # a kind nobody here subscribes to
    payments_paid: int = 0  # bills a channel confirmed paid
    payments_notices_refused: int = 0  # forged, stale, unreadable or of another merchant
    payments_amount_mismatch: int = 0  # the channel named another amount: alerted, never paid
    payments_refunds_sent: int = 0
    rental_locks: int = 0
    rental_reminders: int = 0
    rental_dismantle_tickets: int = 0
    rental_passes: int = 0  # full passes of the scheduler (a barrier for tests and operators)
    mqtt_uplinks_received: int = 0
    mqtt_uplinks_forged: int = 0  # tag does not verify with the device's key: never metered
    mqtt_uplinks_replayed: int = 0  # a copy seen before, or far behind the device's newest
    mqtt_uplinks_stale: int = 0  # sent more than 10 min from our clock
    mqtt_uplinks_malformed: int = 0
    mqtt_uplinks_refused: int = 0  # unknown or disabled device
    mqtt_uplinks_dropped: int = 0  # a bounded queue was full (the device resends)
    mqtt_downlinks_sent: int = 0
    mqtt_downlinks_dropped: int = 0  # outbound queue full or the broker refused them
    mqtt_offline_notices: int = 0  # last wills applied
    mqtt_broker_connects: int = 0
    mqtt_broker_disconnects: int = 0
    gauges: dict[str, Callable[[], int]] = field(default_factory=dict)

    def render(self) -> str:
        lines = []
        for item in fields(self):
            if item.name == "gauges":
                continue
            name = f"aquafleet_{item.name}"
            lines.append(f"# TYPE {name} counter")
            lines.append(f"{name} {getattr(self, item.name)}")
        for gauge, read in sorted(self.gauges.items()):
            name = f"aquafleet_{gauge}"
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {read()}")
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, int]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "gauges"}
        values.update({name: read() for name, read in self.gauges.items()})
        return values
