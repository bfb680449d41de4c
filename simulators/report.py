"""The final report of a run: one JSON document and its human-readable rendering."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aquafleet.simulators.check import DeviceOutcome
from aquafleet.simulators.fleet import DRAIN_UNREACHABLE_S, STORM_BUCKET_S
from aquafleet.simulators.options import SimOptions
from aquafleet.simulators.stats import WorkerStats

REPORT_VERSION = 1
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130

History = Sequence[tuple[float, Mapping[str, int]]]


@dataclass
class Report:
    data: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return int(self.data["exit_code"])

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False)

    def write_json(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")

    def render_text(self) -> str:
        return render_text(self.data)


# ----------------------------------------------------------------------------- building


def outcomes_of(finals: Sequence[Mapping[str, Any]]) -> list[DeviceOutcome]:
    return [DeviceOutcome(*row) for final in finals for row in final.get("results", ())]


def _max_time(finals: Sequence[Mapping[str, Any]], key: str, *, all_needed: bool) -> float | None:
    values = [f["times"].get(key) for f in finals]
    present = [v for v in values if v is not None]
    if not present or (all_needed and len(present) != len(values)):
        return None
    return float(max(present))


STORM_SHARES = (0.5, 0.9, 0.99, 0.999)


def storm_back_shares(
    finals: Sequence[Mapping[str, Any]], storm_at: float, dropped: int, bucket_s: float
) -> dict[str, float | None]:
    """By when (seconds after the first worker's storm) each share of the dropped devices was
    back: the workers' recovery curves (devices back per `bucket_s` since their own storm),
    shifted by when each worker's storm came, merged, read at each share's bucket's end.
    None for a share never reached."""
    back: dict[float, int] = {}
    for final in finals:
        times = final["times"]
        offset = float(times.get("storm_at") or storm_at) - storm_at
        for bucket, count in (times.get("storm_back_buckets") or {}).items():
            at = offset + (int(bucket) + 1) * bucket_s
            back[at] = back.get(at, 0) + int(count)
    shares: dict[str, float | None] = {}
    ordered = sorted(back.items())
    for share in STORM_SHARES:
        total, reached = 0, None
        for at, count in ordered:
            total += count
            if total >= share * dropped:
                reached = round(at, 1)
                break
        shares[f"{share * 100:g}%"] = reached
    return shares


def _min_time(finals: Sequence[Mapping[str, Any]], key: str) -> float | None:
    present = [f["times"][key] for f in finals if f["times"].get(key) is not None]
    return min(present) if present else None


def value_at(history: History, at: float, key: str, origin: float) -> float:
    """A counter's value at time `at`, interpolated between once-a-second snapshots."""
    previous_t, previous_v = origin, 0.0
    for t, counters in history:
        value = float(counters.get(key, 0))
        if t >= at:
            if t <= previous_t:
                return value
            share = (at - previous_t) / (t - previous_t)
            return previous_v + (value - previous_v) * max(0.0, min(1.0, share))
        previous_t, previous_v = t, value
    return previous_v


def _rate(
    histories: Sequence[History], keys: Sequence[str], start: float, end: float, origin: float
) -> float | None:
    if end - start <= 0.2:
        return None
    total = 0.0
    for history in histories:
        for key in keys:
            total += value_at(history, end, key, origin) - value_at(history, start, key, origin)
    return round(total / (end - start), 1)


def _peak_rate(histories: Sequence[History], key: str, origin: float) -> float | None:
    """The highest per-second rate of a counter summed over workers (1 s snapshot buckets)."""
    buckets: dict[int, float] = {}
    for history in histories:
        previous_t, previous_v = origin, 0.0
        for t, counters in history:
            value = float(counters.get(key, 0))
            if t > previous_t:
                second = int(t)
                buckets[second] = buckets.get(second, 0.0) + (value - previous_v) / (t - previous_t)
            previous_t, previous_v = t, value
    return round(max(buckets.values()), 1) if buckets else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def build_report(
    options: SimOptions,
    *,
    boot: int,
    started_at: float,
    finals: Sequence[Mapping[str, Any]],
    histories: Sequence[History],
    check: dict[str, Any] | None,
    interrupted: bool,
    workers_lost: int = 0,
) -> Report:
    stats = WorkerStats.merged(WorkerStats.from_dict(f["stats"]) for f in finals)
    outcomes = outcomes_of(finals)
    devices = options.device_count
    ended_at = _max_time(finals, "ended_at", all_needed=False) or started_at
    run_ended_at = _max_time(finals, "run_ended_at", all_needed=False)
    interrupted_at = _min_time(finals, "interrupted_at")
    run_end = run_ended_at or interrupted_at or ended_at
    if interrupted_at is not None:
        run_end = min(run_end, interrupted_at)

    all_logged_in_at = _max_time(finals, "all_logged_in_at", all_needed=True)
    if workers_lost:
        all_logged_in_at = None
    time_to_all = None if all_logged_in_at is None else all_logged_in_at - started_at
    measure_start = started_at
    if all_logged_in_at is not None and all_logged_in_at < run_end - 1.0:
        measure_start = all_logged_in_at
    acked_keys = ("acked_stored", "acked_duplicate", "acked_by_watermark")
    durable = _rate(histories, acked_keys, measure_start, run_end, started_at)
    sent = _rate(histories, ("records_sent", "records_resent"), measure_start, run_end, started_at)

    storm: dict[str, Any] | None = None
    storm_at = _min_time(finals, "storm_at")
    if options.storm_at_s is not None:
        recovered = _max_time(finals, "storm_recovered_at", all_needed=True)
        failed = sum(int(f["times"].get("storm_failed") or 0) for f in finals)
        if storm_at is None:
            failed = devices
        storm = {
            "at_s": options.storm_at_s,
            "happened": storm_at is not None,
            "devices_dropped": stats.storm_drops,
            "storm_recovery_s": _round(
                None if recovered is None or storm_at is None else recovered - storm_at
            ),
            "failed_to_recover": failed,
            "back_after_s": (
                None
                if storm_at is None or not stats.storm_drops
                else storm_back_shares(finals, storm_at, stats.storm_drops, STORM_BUCKET_S)
            ),
        }

    unacked_devices = sum(1 for o in outcomes if o.unacked)
    unacked_records = sum(o.unacked for o in outcomes)
    drain_end = _max_time(finals, "drain_ended_at", all_needed=False)
    drain_s = None if drain_end is None or run_ended_at is None else drain_end - run_ended_at
    never_logged_in = sum(1 for o in outcomes if not o.logged_in) + (devices - len(outcomes))
    # Not one connect succeeded: nothing listens where the devices were sent (or the broker's).
    unreachable = (
        _unreachable_target(options)
        if stats.connects_ok == 0 and stats.connect_failures > 0
        else None
    )

    errors = {
        "login_failures": stats.login_failures,
        "login_timeouts": stats.login_timeouts,
        "rejected": stats.acked_rejected,
        "unmatched_acks": stats.acks_unmatched,
        "server_closes": stats.server_closes,
        "server_errors": stats.server_errors,
        "protocol_errors": stats.protocol_errors,
        "never_logged_in": never_logged_in,
        "records_unacked_at_end": unacked_records,
        "storm_not_recovered": storm["failed_to_recover"] if storm else 0,
        "workers_lost": workers_lost,
    }
    unexpected = sum(errors.values())
    check_passed = True if check is None else bool(check.get("passed"))
    if interrupted:
        exit_code = EXIT_INTERRUPTED
    elif unexpected or not check_passed:
        exit_code = EXIT_FAILED
    else:
        exit_code = EXIT_OK

    data: dict[str, Any] = {
        "version": REPORT_VERSION,
        "interrupted": interrupted,
        "duration_s": options.duration_s,
        "elapsed_s": _round(ended_at - started_at),
        "devices": devices,
        "workers": options.resolved_workers,
        "boot": boot,
        "options": options.describe(),
        "connect": {
            "attempts": stats.connects_started,
            "ok": stats.connects_ok,
            "failures": stats.connect_failures,
            "failure_reasons": dict(stats.connect_fail_codes),
            "peak_connects_per_s": _peak_rate(histories, "connects_ok", started_at),
            "latency_ms": stats.connect_latency.summary_ms(),
            "unreachable": unreachable,
        },
        "login": {
            "ok": stats.logins_ok,
            "devices_logged_in": devices - never_logged_in,
            "all_logged_in": all_logged_in_at is not None,
            "time_to_all_logged_in_s": _round(time_to_all),
            "logins_per_s": None if not time_to_all else round(devices / time_to_all, 1),
            "peak_logins_per_s": _peak_rate(histories, "logins_ok", started_at),
            "failures": stats.login_failures,
            "failure_codes": dict(stats.login_fail_codes),
            "timeouts": stats.login_timeouts,
            "latency_ms": stats.login_latency.summary_ms(),
        },
        "records": {
            "sent": stats.records_sent,
            "resent": stats.records_resent,
            "acked": stats.acked_stored + stats.acked_duplicate + stats.acked_by_watermark,
            "stored": stats.acked_stored,
            "duplicate_acks": stats.acked_duplicate,
            "stale": stats.acked_stale,
            "rejected": stats.acked_rejected,
            "unavailable": stats.acked_unavailable,
            "unmatched_acks": stats.acks_unmatched,
            "late_acks": stats.acks_late,
            "acked_by_watermark": stats.acked_by_watermark,
            "watermark_forgotten": stats.watermark_forgotten,
            "window_full_skips": stats.window_full_skips,
            "in_flight_at_end": unacked_records,
            "durable_per_s": durable,
            "sent_per_s": sent,
            "measure_window_s": _round(run_end - measure_start),
        },
        "ack_latency_ms": stats.ack_latency.summary_ms(),
        "disconnects": {
            "total": stats.disconnects,  # during the run: the closes at its end are apart
            "closed_at_end": stats.closed_at_end,
            "planned_drops": stats.drops_planned,
            "reboots": stats.reboots,
            "storm_drops": stats.storm_drops,
            "unavailable_reconnects": stats.unavailable_reconnects,
            "server_closes": stats.server_closes,
            "announced_closes": stats.announced_closes,
            "server_close_codes": dict(stats.close_codes),
            "connect_failures": stats.connect_failures,
        },
        "commands": {
            "received": stats.commands_received,
            "repeats": stats.command_repeats,
            "results_sent": stats.results_sent,
        },
        "storm": storm,
        "drain": {
            "complete": unacked_devices == 0 and all(o.complete for o in outcomes),
            "devices_with_unacked": unacked_devices,
            "records_unacked": unacked_records,
            "drain_s": _round(drain_s),
            "devices_incomplete": sum(1 for o in outcomes if not o.complete),
            "ended_unreachable": any(f["times"].get("drain_unreachable") for f in finals),
        },
        "check": check if check is not None else {"mode": "none", "passed": None},
        "errors": {"unexpected": unexpected, **errors},
        "exit_code": exit_code,
    }
    return Report(data)


def _unreachable_target(options: SimOptions) -> str:
    """Where the devices could not connect: the gateway's device port, the broker, or both."""
    gateway = f"the gateway at {options.host}:{options.port} (--host, --tcp-port)"
    broker = f"the MQTT broker at {options.mqtt_host}:{options.mqtt_port}"
    if options.transport == "mqtt":
        return broker
    return gateway if options.transport == "tcp" else f"{gateway} or {broker}"


# ----------------------------------------------------------------------------- rendering


def _ms(summary: Mapping[str, Any]) -> str:
    if not summary.get("count"):
        return "no samples"
    return (
        f"p50 {summary['p50']} ms, p99 {summary['p99']} ms, p999 {summary['p999']} ms, "
        f"max {summary['max']} ms ({summary['count']} samples)"
    )


def _litres(ml: int) -> str:
    return f"{ml / 1000:,.1f} L"


def render_text(data: Mapping[str, Any]) -> str:
    login, records, disc = data["login"], data["records"], data["disconnects"]
    lines = [
        f"aquafleet sim: {data['devices']} devices, {data['workers']} worker(s), "
        f"{data['duration_s']} s run, {data['elapsed_s']} s in all"
        + (" (INTERRUPTED: partial report)" if data["interrupted"] else ""),
    ]
    if login["all_logged_in"]:
        ramp = (
            f"all logged in after {login['time_to_all_logged_in_s']} s "
            f"({login['logins_per_s']} logins/s)"
        )
    else:
        ramp = f"{login['devices_logged_in']} of {data['devices']} ever logged in"
    lines += [
        f"  connect     {data['connect']['ok']} ok, {data['connect']['failures']} failed; {ramp}; "
        f"peak {login['peak_logins_per_s']} logins/s",
        *(
            [
                f"  NOT CONNECTED: no device could connect to {data['connect']['unreachable']}: "
                + ", ".join(f"{k} {v}" for k, v in data["connect"]["failure_reasons"].items())
                + " (is `aquafleet serve` running there?)"
            ]
            if data["connect"].get("unreachable")
            else []
        ),
        f"  login       {_ms(login['latency_ms'])}",
        f"  records     sent {records['sent']}, resent {records['resent']} (dup), acked "
        f"{records['acked']} (stored {records['stored']}, duplicate {records['duplicate_acks']}, "
        f"by watermark {records['acked_by_watermark']}), "
        f"stale {records['stale']}, rejected {records['rejected']}, "
        f"unavailable {records['unavailable']}",
        f"  throughput  {records['durable_per_s']} durable records/s over "
        f"{records['measure_window_s']} s (sent {records['sent_per_s']}/s)",
        f"  ack latency {_ms(data['ack_latency_ms'])}",
        f"  disconnects planned drops {disc['planned_drops']}, reboots {disc['reboots']}, "
        f"storm {disc['storm_drops']}, announced by the server {disc['announced_closes']}, "
        f"other server closes {disc['server_closes']}"
        + (f" {disc['server_close_codes']}" if disc["server_close_codes"] else "")
        + f", connect failures {disc['connect_failures']}",
    ]
    storm = data.get("storm")
    if storm:
        if storm["storm_recovery_s"] is not None:
            back = f"all back after {storm['storm_recovery_s']} s"
        else:
            back = "NOT all back"
        lines.append(
            f"  storm       at {storm['at_s']} s, {storm['devices_dropped']} dropped: {back}, "
            f"{storm['failed_to_recover']} failed to recover within the run"
        )
        if storm.get("back_after_s"):
            shares = ", ".join(
                f"{share} by {'-' if at is None else f'{at} s'}"
                for share, at in storm["back_after_s"].items()
            )
            lines.append(f"  storm back  {shares}")
    drain = data["drain"]
    state = "complete" if drain["complete"] else "INCOMPLETE"
    lines.append(
        f"  drain       {state} in {drain['drain_s']} s "
        f"({drain['records_unacked']} records unacked on {drain['devices_with_unacked']} devices)"
        + (
            f"; ended: no device connected for {DRAIN_UNREACHABLE_S:g} s, "
            f"{drain['devices_incomplete']} devices never made their last report"
            if drain.get("ended_unreachable")
            else ""
        )
    )
    check = data["check"]
    if check.get("skipped"):
        lines.append(f"  check       skipped ({check['skipped']})")
    elif check.get("mode") == "db":
        verdict = "PASSED" if check["passed"] else "FAILED"
        lines.append(
            f"  check       {verdict}: {check['devices_matching']}/{check['devices_checked']} "
            f"devices metered == acked; poured {_litres(check['poured_ml'])}, acked "
            f"{_litres(check['acked_ml'])}, metered {_litres(check['metered_ml'])}; "
            f"complete devices metered == poured: {check['complete_devices_metered_eq_poured']} "
            f"(waited {check['waited_s']} s)"
        )
        if check.get("error"):
            lines.append(f"              error: {check['error']}")
        for item in check.get("mismatches", []):
            lines.append(
                f"              {item['did']}: acked {item['acked_ml']} ml, metered "
                f"{item['metered_ml']} ml, poured {item['poured_ml']} ml"
            )
    else:
        lines.append("  check       skipped (--check none)")
    errors = data["errors"]
    if data["exit_code"] == EXIT_OK:
        lines.append("  result      OK")
    else:
        shown = ", ".join(f"{k} {v}" for k, v in errors.items() if k != "unexpected" and v)
        lines.append(
            f"  result      {'INTERRUPTED' if data['interrupted'] else 'FAILED'} "
            f"(exit {data['exit_code']}): "
            + (
                f"could not connect to {data['connect']['unreachable']}; "
                if data["connect"].get("unreachable")
                else ""
            )
            + f"{errors['unexpected']} unexpected errors"
            + (f" ({shown})" if shown else "")
        )
    return "\n".join(lines) + "\n"
