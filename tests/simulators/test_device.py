"""The virtual purifier against an in-memory gateway: window, resends, reboots, acks, commands."""

from __future__ import annotations

import itertools

from aquafleet.protocol import AckCode, CommandOp, ResultCode
from aquafleet.protocol.message_types import Command
from tests.simulators.gateway_double import BOOT, WALL, GatewayDouble, make_device


def test_login_then_one_record_per_tick_within_the_window() -> None:
    device = make_device(window=2)
    gateway = GatewayDouble(device)
    assert gateway.login() == []
    assert device.online and device.stats.logins_ok == 1
    first = gateway.tick(1.0)
    second = gateway.tick(2.0)
    assert [r.rec for r in first + second] == [1, 2]
    assert gateway.tick(3.0) == []  # window of 2 is full: the tick is skipped, no rec used
    assert device.stats.window_full_skips == 1
    assert len(device.unacked) == 2 and device.stats.in_flight == 2
    gateway.ack(first[0])
    (third,) = gateway.tick(4.0)
    assert third.rec == 3
    assert all(r.boot == BOOT and r.cnt_epoch == BOOT and not r.dup for r in gateway.records)


def test_max_rate_fills_the_window_and_refills_on_each_ack() -> None:
    device = make_device(window=4, max_rate=True)
    gateway = GatewayDouble(device)
    sent = gateway.login()
    assert [r.rec for r in sent] == [1, 2, 3, 4]
    assert len(device.unacked) == 4
    more = gateway.ack(sent[0])
    assert [r.rec for r in more] == [5]  # one acked, one more: never above the window
    assert len(device.unacked) == 4
    totals = [r.flow_total_ml or 0 for r in gateway.records]
    assert totals == sorted(totals)  # a cumulative counter
    assert all(0 <= b - a <= 300 for a, b in itertools.pairwise([0, *totals]))


def test_unacked_records_are_resent_with_dup_same_rec_and_new_seqs_after_reconnect() -> None:
    device = make_device(window=3, max_rate=True)
    gateway = GatewayDouble(device)
    sent = gateway.login()
    gateway.ack(sent[0])  # rec 1 acked; recs 2, 3, 4 in flight
    in_flight = [(r.boot, r.rec, r.flow_total_ml, r.ts) for r in gateway.records[1:]]
    gateway.lose_link()
    assert device.stats.server_closes == 0  # we dropped it: planned
    resent = gateway.login()
    assert [(r.boot, r.rec, r.flow_total_ml, r.ts) for r in resent] == in_flight
    assert all(r.dup for r in resent)
    # The new connection's seqs: HELLO 0 and AUTH 1 went first, so the resends take 2, 3, 4.
    assert [r.seq for r in resent] == [2, 3, 4]
    assert device.stats.records_resent == 3
    more = gateway.ack(resent[0], AckCode.DUPLICATE)  # the gateway had it already
    assert [(r.rec, r.dup) for r in more] == [(5, False)]
    assert device.stats.acked_duplicate == 1
    assert device.acked_total_ml == in_flight[0][2]


def test_reboot_keeps_counter_epoch_and_old_records_and_restarts_rec() -> None:
    device = make_device(window=2, max_rate=True)
    gateway = GatewayDouble(device)
    old = gateway.login()
    total_before = old[-1].flow_total_ml or 0
    gateway.lose_link()
    device.reboot()
    sent = gateway.login()
    # The old boot's unacked records come first, unchanged; the window is then full.
    assert [(r.boot, r.rec, r.dup) for r in sent] == [(BOOT, 1, True), (BOOT, 2, True)]
    after = gateway.ack(sent[0])
    (new,) = after
    assert (new.boot, new.rec, new.cnt_epoch) == (BOOT + 1, 1, BOOT)
    assert (new.flow_total_ml or 0) >= total_before  # the counter survives a power cycle
    assert device.stats.reboots == 1


def test_a_coalesced_ack_settles_every_record_its_watermark_covers() -> None:
    device = make_device(window=4, max_rate=True)
    gateway = GatewayDouble(device)
    sent = gateway.login()
    # One ACK for rec 3 of a round that stored recs 1-3: its watermark acks 1 and 2 too.
    refill = gateway.ack(sent[2], watermark=(BOOT, 3))
    assert [r.rec for r in refill] == [5, 6, 7]
    assert sorted(p.record.rec for p in device.unacked.values()) == [4, 5, 6, 7]
    stats = device.stats
    assert (stats.acked_stored, stats.acked_by_watermark, stats.acks) == (1, 2, 1)
    assert stats.ack_latency.count == 3 and stats.in_flight == 4
    assert device.acked_total_ml == sent[2].flow_total_ml
    # A watermark of another boot settles nothing of this one.
    gateway.ack(sent[3], watermark=(BOOT - 1, 99))
    assert sorted(p.record.rec for p in device.unacked.values()) == [5, 6, 7, 8]


def test_duplicate_acks_behind_a_watermark_are_late_not_unmatched() -> None:
    device = make_device(window=3, max_rate=True)
    gateway = GatewayDouble(device)
    gateway.login()
    gateway.lose_link()
    resent = gateway.login()
    # The gateway had all three: each resend is acked alone as a duplicate, and the first
    # ACK's watermark (the boot's) already covers the other two.
    for record in resent:
        gateway.ack(record, AckCode.DUPLICATE, watermark=(BOOT, 3))
    stats = device.stats
    assert (stats.acked_duplicate, stats.acked_by_watermark, stats.acks_late) == (1, 2, 2)
    assert stats.acks_unmatched == 0


def test_a_stale_ack_settles_only_its_own_record() -> None:
    device = make_device(window=3, max_rate=True)
    gateway = GatewayDouble(device)
    third = gateway.login()[2]
    gateway.ack(third, AckCode.STALE, watermark=(BOOT, 3))
    assert sorted(p.record.rec for p in device.unacked.values()) == [1, 2, 4]
    assert device.stats.acked_stale == 1 and device.acked_total_ml == 0


def test_ack_codes_stale_and_rejected_forget_unavailable_keeps() -> None:
    device = make_device(window=3, max_rate=True)
    gateway = GatewayDouble(device)
    first, second, third = gateway.login()
    gateway.ack(first, AckCode.STALE)
    gateway.ack(second, AckCode.REJECTED)
    assert device.stats.acked_stale == 1 and device.stats.acked_rejected == 1
    assert device.acked_total_ml == 0  # neither was stored
    for record in gateway.records[3:]:
        gateway.ack(record, AckCode.UNAVAILABLE)
    gateway.ack(third, AckCode.UNAVAILABLE)
    assert device.wants_reconnect  # everything in flight refused: resend after a new login
    kept = sorted(p.record.rec for p in device.unacked.values())
    gateway.lose_link()
    resent = gateway.login()
    assert sorted(r.rec for r in resent) == kept and all(r.dup for r in resent)
    assert not device.wants_reconnect


def test_unmatched_acks_are_counted() -> None:
    device = make_device()
    gateway = GatewayDouble(device)
    gateway.login()
    assert gateway.server is not None
    gateway.server.ack(999, AckCode.STORED)
    gateway._to_device()
    assert device.stats.acks_unmatched == 1


def test_watermark_at_login_forgets_stored_records_when_asked() -> None:
    device = make_device(window=3, max_rate=True, use_watermark=True)
    gateway = GatewayDouble(device)
    sent = gateway.login()
    gateway.lose_link()
    resent = gateway.login(last_acked=(BOOT, 2))
    assert [r.rec for r in resent[:1]] == [3]
    assert device.stats.watermark_forgotten == 2
    assert device.acked_total_ml == sent[1].flow_total_ml


def test_dispense_runs_once_and_a_repeated_cid_gets_the_stored_result() -> None:
    device = make_device(window=1)
    gateway = GatewayDouble(device)
    gateway.login()
    before = device.water.level(0.0)
    dispense = Command(cid=42, op=CommandOp.DISPENSE, exp=WALL + 60, args={1: 250})
    gateway.command(dispense)
    gateway.command(dispense)
    first, second = gateway.results
    assert first.cid == second.cid == 42
    assert (first.rc, first.out) == (second.rc, second.out) == (ResultCode.OK, 250)
    assert device.water.level(0.0) == before + 250  # poured once, not twice
    assert device.stats.command_repeats == 1
    expired = Command(cid=43, op=CommandOp.LOCK, exp=WALL - 1)
    gateway.command(expired)
    assert gateway.results[-1].rc == ResultCode.EXPIRED and not device.locked
    gateway.command(Command(cid=44, op=CommandOp.LOCK, exp=WALL + 60))
    assert gateway.results[-1].rc == ResultCode.OK and device.locked


def test_set_state_applies_only_newer_versions_and_shows_in_telemetry() -> None:
    from aquafleet.protocol import DesiredState, desired_state_args
    from aquafleet.protocol.constants import StateBit

    device = make_device(window=1)
    gateway = GatewayDouble(device)
    gateway.login()
    lock = DesiredState(version=5, locked=True, remaining_ml=-20)
    gateway.command(Command(cid=50, op=CommandOp.SET_STATE, exp=WALL + 60,
                            args=desired_state_args(lock)))  # fmt: skip
    assert gateway.results[-1].rc == ResultCode.OK and device.locked
    stale = DesiredState(version=4, locked=False)  # overtaken: ignored, still answered ok
    gateway.command(Command(cid=51, op=CommandOp.SET_STATE, exp=WALL + 60,
                            args=desired_state_args(stale)))  # fmt: skip
    assert gateway.results[-1].rc == ResultCode.OK and device.locked
    (record,) = gateway.tick(1.0)
    assert record.state_bits is not None and record.state_bits & StateBit.LOCKED
    gateway.command(Command(cid=52, op=CommandOp.SET_STATE, exp=WALL + 60, args={1: 1}))
    assert gateway.results[-1].rc == ResultCode.REJECTED  # no version: refused


def test_finish_sends_a_last_record_when_the_counter_moved_then_is_drained() -> None:
    drained = []

    class Hooks:
        def logged_in(self, device: object, first: bool) -> None:
            pass

        def drained(self, device: object) -> None:
            drained.append(device)

    device = make_device(window=1, draw_gap_s=0.5, hooks=Hooks())
    gateway = GatewayDouble(device)
    gateway.login()
    (record,) = gateway.tick(1.0)
    gateway.ack(record)
    gateway.now = 60.0  # a minute of draws since the last report
    device.finish(60.0)
    assert device.final_pending and device.poured_ml > (record.flow_total_ml or 0)
    final = gateway._receive(device.final_bytes(60.0, int(60e9), WALL))
    assert [r.flow_total_ml for r in final] == [device.poured_ml]
    assert gateway.tick(61.0) == []  # draining: no new records
    gateway.ack(final[0])
    assert device.drained and drained == [device]
    assert device.acked_total_ml == device.poured_ml


def test_heartbeat_ping_after_silence() -> None:
    device = make_device()
    gateway = GatewayDouble(device)
    gateway.login()
    assert device.ping_due(30.0) == b""
    assert device.ping_due(61.0) != b""
    assert device.stats.pings_sent == 1


def test_server_close_is_counted_with_its_code() -> None:
    device = make_device()
    gateway = GatewayDouble(device)
    gateway.login()
    assert gateway.server is not None
    from aquafleet.protocol import ErrorCode

    gateway.server.close(ErrorCode.SHUTDOWN, "bye")
    gateway._to_device()
    device.link_lost(error=False)
    # An announced shutdown ("reconnect later") is expected, not an error of the run.
    assert (device.stats.announced_closes, device.stats.server_closes) == (1, 0)
    assert device.stats.close_codes == {"SHUTDOWN": 1}
    gateway.login()
    assert gateway.server is not None
    gateway.server.close(ErrorCode.IDLE_TIMEOUT, "silent")
    gateway._to_device()
    device.link_lost(error=False)
    gateway.login()
    device.link_lost(error=True)  # reset, nothing said
    assert (device.stats.announced_closes, device.stats.server_closes) == (1, 2)
    assert device.stats.close_codes == {"SHUTDOWN": 1, "IDLE_TIMEOUT": 1, "reset": 1}


def test_acked_water_is_counted_and_the_closes_at_the_end_are_not_disconnects() -> None:
    device = make_device(window=3, max_rate=True)
    gateway = GatewayDouble(device)
    sent = gateway.login()
    gateway.ack(sent[1])  # rec 2 settles with its own ack; rec 1 still in flight
    assert device.stats.acked_ml == sent[1].flow_total_ml
    gateway.ack(sent[0])  # an older counter adds nothing: the highest acked counter counts
    assert device.stats.acked_ml == sent[1].flow_total_ml == device.acked_total_ml
    gateway.lose_link()
    assert (device.stats.disconnects, device.stats.closed_at_end) == (1, 0)
    gateway.login()
    device.close_reason = "stop"  # the run is over: we close the link ourselves
    device.link_lost(error=False)
    assert (device.stats.disconnects, device.stats.closed_at_end) == (1, 1)


def test_a_locked_purifier_refuses_to_pour_with_rc_rejected() -> None:
    """Firmware pours nothing while locked (docs/protocol.md, RESULT rc 2), however it was
    locked; unlocked, it pours again."""
    from aquafleet.protocol import DesiredState, desired_state_args

    device = make_device(window=1)
    gateway = GatewayDouble(device)
    gateway.login()
    before = device.water.level(0.0)
    lock = DesiredState(version=3, locked=True)
    gateway.command(Command(cid=60, op=CommandOp.SET_STATE, exp=WALL + 60,
                            args=desired_state_args(lock)))  # fmt: skip
    gateway.command(Command(cid=61, op=CommandOp.DISPENSE, exp=WALL + 60, args={1: 100}))
    refused = gateway.results[-1]
    assert (refused.rc, refused.out) == (ResultCode.REJECTED, None)
    assert device.water.level(0.0) == before  # not a drop
    unlock = DesiredState(version=4, locked=False)
    gateway.command(Command(cid=62, op=CommandOp.SET_STATE, exp=WALL + 60,
                            args=desired_state_args(unlock)))  # fmt: skip
    gateway.command(Command(cid=63, op=CommandOp.DISPENSE, exp=WALL + 60, args={1: 100}))
    assert (gateway.results[-1].rc, gateway.results[-1].out) == (ResultCode.OK, 100)
    assert device.water.level(0.0) == before + 100
