"""One virtual purifier: its flash state, its records in flight and its side of the protocol.

Sans-IO like `protocol/`: methods take the time and bytes and return bytes to write; the TCP
pump (`simulators.link`) and the fleet's timers decide when to call them. What survives a
reconnect is what a purifier keeps in flash: boot, rec, epoch, the counter and every record not
yet acked. What belongs to one connection (the DeviceSession, its seqs) is replaced on each
connect, and unacked records are resent on the next login with the new connection's seqs and DUP.
"""

from __future__ import annotations

import random
from typing import Protocol

from aquafleet.protocol import (
    AckCode,
    CommandMemory,
    CommandOp,
    DesiredState,
    DeviceSession,
    ErrorCode,
    FilterReading,
    LoggedIn,
    LoginFailed,
    ProtocolError,
    Result,
    ResultCode,
    SessionClosed,
    Telemetry,
    desired_state_from_args,
)
from aquafleet.protocol.constants import StateBit
from aquafleet.protocol.message_types import Ack, Command, Error
from aquafleet.simulators.stats import WorkerStats
from aquafleet.simulators.water import MAX_RATE_DRAW_ML, WaterMeter

ML_PER_WORK_HOUR = 20_000  # filter work hours grow with water treated
# A gateway that closes with one of these said so and asked to come back later (a graceful
# stop, a restart, a full node): part of running a fleet, not an error of the run.
ANNOUNCED_CLOSES = frozenset({ErrorCode.SHUTDOWN.name, ErrorCode.OVERLOADED.name})
MAX_RESULT_SEQS = 16  # seqs of our RESULT frames kept to recognise their acks
# Seqs a watermark settled before their own ACK arrived (duplicates are acked one by one, after
# an earlier ACK's watermark may have covered them): remembered to tell such a late ACK from an
# unmatched one. A late ACK comes within the window, so twice the largest window is plenty.
MAX_SETTLED_SEQS = 2048
# Links we close ourselves when the run is over: counted apart from disconnects.
END_OF_RUN_CLOSES = frozenset({"drained", "stop"})
_STORED, _DUPLICATE, _STALE, _REJECTED = (
    AckCode.STORED,
    AckCode.DUPLICATE,
    AckCode.STALE,
    AckCode.REJECTED,
)
_POWER, _PUMPING, _LOCKED = StateBit.POWER, StateBit.PUMPING, StateBit.LOCKED


class FleetHooks(Protocol):
    """What a device tells the fleet that runs it."""

    def logged_in(self, device: VirtualPurifier, first: bool) -> None: ...

    def drained(self, device: VirtualPurifier) -> None: ...


class NoHooks:
    def logged_in(self, device: VirtualPurifier, first: bool) -> None:
        pass

    def drained(self, device: VirtualPurifier) -> None:
        pass


class Pending:
    """A record sent and not yet acked. `seq` is its seq on the current connection."""

    __slots__ = ("record", "sent_ns", "seq", "unavailable")

    def __init__(self, record: Telemetry, seq: int, sent_ns: int) -> None:
        self.record = record
        self.seq = seq
        self.sent_ns = sent_ns
        self.unavailable = False


class VirtualPurifier:
    __slots__ = (
        "_filters",
        "_filters_key",
        "_power_h",
        "_signal",
        "_start",
        "_tds_in",
        "_tds_out",
        "_temperature",
        "_work_h",
        "acked_total_ml",
        "boot",
        "close_reason",
        "commands",
        "desired_version",
        "did",
        "draining",
        "epoch",
        "ever_logged_in",
        "final_pending",
        "fw",
        "heartbeat_s",
        "hello_ns",
        "hooks",
        "index",
        "key",
        "last_error",
        "last_reported_ml",
        "last_tx",
        "locked",
        "login_gen",
        "max_rate",
        "online",
        "rec",
        "result_seqs",
        "rng",
        "session",
        "settled_seqs",
        "stats",
        "unacked",
        "unavailable",
        "use_watermark",
        "water",
        "window",
    )

    def __init__(
        self,
        did: str,
        key: bytes,
        *,
        boot: int,
        now: float,
        stats: WorkerStats,
        rng: random.Random,
        window: int = 1,
        max_rate: bool = False,
        draw_gap_s: float = 30.0,
        use_watermark: bool = False,
        fw: str = "sim-1.0",
        index: int = 0,
        hooks: FleetHooks | None = None,
    ) -> None:
        self.did = did
        self.key = key
        self.index = index
        self.fw = fw
        self.stats = stats
        self.rng = rng
        self.hooks: FleetHooks = hooks or NoHooks()
        self.window = window
        self.max_rate = max_rate
        self.use_watermark = use_watermark
        # Flash: survives reconnects (and, except boot/rec, reboots).
        self.boot = boot
        self.epoch = boot  # a new epoch each run: the platform meters this run's water from 0
        self.rec = 0
        self.water = WaterMeter(rng, now, gap_s=draw_gap_s)
        self.unacked: dict[int, Pending] = {}
        self.unavailable = 0  # unacked records the gateway answered UNAVAILABLE
        self.acked_total_ml = 0
        self.last_reported_ml = 0
        self.commands = CommandMemory()
        self.locked = False
        self.desired_version = -1  # the newest desired state applied (AUTH_OK, SET_STATE)
        # The current connection.
        self.session: DeviceSession | None = None
        self.online = False
        self.heartbeat_s = 60
        self.last_tx = now
        self.hello_ns = 0
        self.close_reason: str | None = None  # set when we close or drop the link ourselves
        self.last_error: str | None = None  # the last ERROR code the gateway sent
        self.result_seqs: set[int] = set()
        # Seqs settled by a watermark before their own ACK came (it may still come).
        self.settled_seqs: dict[int, None] = {}
        # Run bookkeeping.
        self.ever_logged_in = False
        self.login_gen = 0
        self.draining = False
        self.final_pending = False
        # Plausible readings, fixed per purifier with a little wobble per record.
        self._start = now
        self._tds_in = rng.randint(210, 390)
        self._tds_out = rng.randint(7, 28)
        self._temperature = rng.randint(155, 295)
        self._signal = rng.randint(12, 29)
        self._work_h = [rng.randint(0, 2000) for _ in range(3)]
        self._power_h = [w + rng.randint(0, 4000) for w in self._work_h]
        self._filters: tuple[FilterReading, ...] = ()
        self._filters_key = (-1, -1)

    # ------------------------------------------------------------------ state

    @property
    def drained(self) -> bool:
        """Nothing left to report: every record acked (or forgotten) and the last one made."""
        return not self.unacked and not self.final_pending

    @property
    def poured_ml(self) -> int:
        return self.water.total_ml if self.water.frozen else self.last_reported_ml

    def room(self) -> bool:
        return len(self.unacked) < self.window

    # ------------------------------------------------------------------ connection

    def connect(self, now: float, now_ns: int) -> bytes:
        """A new connection is up: a fresh session and its HELLO."""
        session = DeviceSession(self.did, self.key, fw=self.fw)
        session.start()
        self.session = session
        self.online = False
        self.close_reason = None
        self.last_error = None
        self.result_seqs.clear()
        self.settled_seqs.clear()
        self.hello_ns = now_ns
        self.last_tx = now
        return session.data_to_send()

    def link_lost(self, error: bool) -> None:
        """The connection is gone; count it unless we closed it ourselves."""
        stats = self.stats
        if self.close_reason in END_OF_RUN_CLOSES:
            stats.closed_at_end += 1
        else:
            stats.disconnects += 1
        if self.online:
            stats.online -= 1
        if self.close_reason is None:
            code = self.last_error or ("reset" if error else "eof")
            if code in ANNOUNCED_CLOSES:
                stats.announced_closes += 1  # expected: it reconnects later, nothing is lost
            else:
                stats.server_closes += 1
            stats.close_codes[code] += 1
        self.session = None
        self.online = False

    def receive(self, data: bytes, now: float, now_ns: int, wall: int) -> bytes:
        """Bytes from the gateway in; bytes to write back out (acks, results, new records)."""
        session = self.session
        if session is None:
            return b""
        for event in session.receive_data(data, now):
            kind = type(event)
            if kind is Ack:
                self._on_ack(event, now_ns)  # type: ignore[arg-type]
            elif kind is LoggedIn:
                self._on_logged_in(event, now, now_ns)  # type: ignore[arg-type]
            elif kind is Command:
                self._on_command(event, now, wall)  # type: ignore[arg-type]
            elif kind is Error:
                self._on_error(event)  # type: ignore[arg-type]
            elif kind is LoginFailed:
                self.stats.login_failures += 1
                self.stats.login_fail_codes[_code_name(event.code)] += 1  # type: ignore[union-attr]
                self.close_reason = "login_failed"
            elif kind is SessionClosed:
                self.stats.protocol_errors += 1
                self.close_reason = "protocol_error"
        if self.online and not session.is_closed:
            if self.draining:
                if self.final_pending and self.room():
                    self._send_new(now, now_ns, wall, final=True)
                if self.drained:
                    self.hooks.drained(self)
            elif self.max_rate:
                self.fill_window(now, now_ns, wall)
        out = session.data_to_send()
        if out:
            self.last_tx = now
        return out

    @property
    def wants_reconnect(self) -> bool:
        """Every record in flight was refused as UNAVAILABLE: resend them after a new login."""
        return self.online and self.unavailable > 0 and self.unavailable == len(self.unacked)

    # ------------------------------------------------------------------ records

    def produce(self, now: float, now_ns: int, wall: int) -> bytes:
        """A report tick (interval mode): one new record when the window has room."""
        if not self.online or self.draining or self.session is None:
            return b""
        if not self.room():
            self.stats.window_full_skips += 1  # the next record carries the counter anyway
            return b""
        self._send_new(now, now_ns, wall)
        self.last_tx = now
        return self.session.data_to_send()

    def fill_window(self, now: float, now_ns: int, wall: int) -> None:
        """--max-rate: as many new records as the window allows (bounded by the window)."""
        for _ in range(self.window - len(self.unacked)):
            self._send_new(now, now_ns, wall)

    def _send_new(self, now: float, now_ns: int, wall: int, *, final: bool = False) -> None:
        assert self.session is not None
        record = self._new_record(now, wall, final)
        seq = self.session.send_record(record)
        self.unacked[seq] = Pending(record, seq, now_ns)
        stats = self.stats
        stats.records_sent += 1
        stats.in_flight += 1

    def _new_record(self, now: float, wall: int, final: bool) -> Telemetry:
        self.rec = rec = self.rec + 1
        water = self.water
        if final or water.frozen:
            total = water.total_ml
            self.final_pending = False
        elif self.max_rate:
            total = water.pour(int(self.rng.random() * (MAX_RATE_DRAW_ML + 1)))  # 0..300 ml
        else:
            total = water.level(now)
        self.last_reported_ml = total
        bits = _POWER
        if water.pumping(now):
            bits |= _PUMPING
        if self.locked:
            bits |= _LOCKED
        wobble = rec % 7 - 3
        return Telemetry(
            rec=rec,
            boot=self.boot,
            ts=wall,
            flow_total_ml=total,
            tds_in_ppm=self._tds_in + wobble * 3,
            tds_out_ppm=self._tds_out + (wobble >> 1),
            temperature_dc=self._temperature + wobble,
            filters=self._filter_readings(now, total),
            fault_bits=0,
            cnt_epoch=self.epoch,
            signal=self._signal + (wobble >> 1),
            state_bits=bits,
        )

    def _filter_readings(self, now: float, total: int) -> tuple[FilterReading, ...]:
        hours = int(now - self._start) // 3600
        work = total // ML_PER_WORK_HOUR
        if (hours, work) != self._filters_key:
            self._filters_key = (hours, work)
            self._filters = tuple(
                FilterReading(i + 1, self._work_h[i] + work, self._power_h[i] + hours, 0)
                for i in range(3)
            )
        return self._filters

    def ping_due(self, now: float) -> bytes:
        """PING after a heartbeat of silence (the gateway drops a link idle for 2.5 hb)."""
        if not self.online or self.session is None or now - self.last_tx < self.heartbeat_s:
            return b""
        self.session.ping()
        self.stats.pings_sent += 1
        self.last_tx = now
        return self.session.data_to_send()

    # ------------------------------------------------------------------ events

    def _on_logged_in(self, event: LoggedIn, now: float, now_ns: int) -> None:
        session = self.session
        assert session is not None
        stats = self.stats
        self.online = True
        stats.online += 1
        stats.logins_ok += 1
        stats.login_latency.record((now_ns - self.hello_ns) // 1000)
        self.heartbeat_s = event.heartbeat_s
        if event.desired is not None:
            self._apply_desired(event.desired)
        pending = list(self.unacked.values())
        self.unacked.clear()
        self.unavailable = 0
        watermark = event.last_acked if self.use_watermark else None
        for item in pending:
            record = item.record
            if watermark is not None and record.boot == watermark[0] and record.rec <= watermark[1]:
                self._forget_acked(record)
                stats.watermark_forgotten += 1
                continue
            item.seq = seq = session.send_record(record, dup=True)
            item.sent_ns = now_ns
            item.unavailable = False
            self.unacked[seq] = item
            stats.records_resent += 1
        first = not self.ever_logged_in
        self.ever_logged_in = True
        self.hooks.logged_in(self, first)

    def _forget_acked(self, record: Telemetry) -> None:
        total = record.flow_total_ml or 0
        if total > self.acked_total_ml:
            self.stats.acked_ml += total - self.acked_total_ml
            self.acked_total_ml = total
        self.stats.in_flight -= 1

    def _on_ack(self, ack: Ack, now_ns: int) -> None:
        stats = self.stats
        stats.acks += 1
        seq = ack.seq
        rc = ack.rc
        item = self.unacked.get(seq)
        if item is None:
            if seq in self.settled_seqs:
                del self.settled_seqs[seq]  # its own ACK after a watermark had settled it
                stats.acks_late += 1
            elif seq in self.result_seqs:
                self.result_seqs.discard(seq)
            else:
                stats.acks_unmatched += 1
        elif rc in (_STORED, _DUPLICATE):
            if rc == _STORED:
                stats.acked_stored += 1
            else:
                stats.acked_duplicate += 1
            self._settle(seq, item, now_ns)
        elif rc == _STALE:
            stats.acked_stale += 1  # an old boot the gateway no longer tracks: forget it
            self._drop(seq, item)
        elif rc == _REJECTED:
            stats.acked_rejected += 1  # an error: the gateway refused a record we made
            self._drop(seq, item)
        else:
            # UNAVAILABLE (or an unknown error code): keep it, resend after the next login.
            stats.acked_unavailable += 1
            if not item.unavailable:
                item.unavailable = True
                self.unavailable += 1
            return
        watermark = ack.watermark
        if watermark is not None and self.unacked and rc in (_STORED, _DUPLICATE):
            self._settle_through(watermark, now_ns)

    def _settle_through(self, watermark: tuple[int, int], now_ns: int) -> None:
        """Every record of the watermark's boot at or below its rec is stored (coalesced acks:
        the gateway acks the last record of a round and its watermark covers the others)."""
        boot, rec = watermark
        covered = [
            (seq, item)
            for seq, item in self.unacked.items()
            if item.record.rec <= rec and item.record.boot == boot
        ]
        stats = self.stats
        settled = self.settled_seqs
        for seq, item in covered:
            stats.acked_by_watermark += 1
            self._settle(seq, item, now_ns)
            settled[seq] = None
        while len(settled) > MAX_SETTLED_SEQS:
            del settled[next(iter(settled))]

    def _settle(self, seq: int, item: Pending, now_ns: int) -> None:
        """A record is stored: forget it, count its counter as acked."""
        self.stats.ack_latency.record((now_ns - item.sent_ns) // 1000)
        self._forget_acked(item.record)
        if item.unavailable:
            self.unavailable -= 1
        del self.unacked[seq]

    def _drop(self, seq: int, item: Pending) -> None:
        """A record the gateway will not store (stale or rejected): forget it."""
        self.stats.in_flight -= 1
        if item.unavailable:
            self.unavailable -= 1
        del self.unacked[seq]

    def _on_command(self, command: Command, now: float, wall: int) -> None:
        session = self.session
        assert session is not None
        stats = self.stats
        stats.commands_received += 1
        result = self.commands.lookup(command.cid)
        if result is not None:
            stats.command_repeats += 1  # answered from memory, not run twice
        else:
            result = self._run_command(command, now, wall)
            self.commands.remember(result)
        seq = session.send_result(result)
        stats.results_sent += 1
        if len(self.result_seqs) >= MAX_RESULT_SEQS:
            self.result_seqs.clear()
        self.result_seqs.add(seq)

    def _run_command(self, command: Command, now: float, wall: int) -> Result:
        if command.exp and command.exp < wall:
            return Result(cid=command.cid, rc=ResultCode.EXPIRED)
        op = command.op
        if op == CommandOp.DISPENSE:
            ml = int(command.args.get(1, 0))
            if ml < 0 or self.locked:  # a locked purifier pours nothing (docs/protocol.md)
                return Result(cid=command.cid, rc=ResultCode.REJECTED)
            self.water.level(now)
            self.water.pour(ml)
            if self.draining:
                self.final_pending = True
            return Result(cid=command.cid, rc=ResultCode.OK, out=ml)
        if op == CommandOp.SET_STATE:
            try:
                desired = desired_state_from_args(command.args)
            except ProtocolError:
                return Result(cid=command.cid, rc=ResultCode.REJECTED)
            self._apply_desired(desired)
        elif op == CommandOp.LOCK:
            self.locked = True
        elif op == CommandOp.UNLOCK:
            self.locked = False
        return Result(cid=command.cid, rc=ResultCode.OK)

    def _apply_desired(self, desired: DesiredState) -> None:
        """Firmware applies a desired state only when it is newer than the one it holds."""
        if desired.version > self.desired_version:
            self.desired_version = desired.version
            self.locked = desired.locked

    def _on_error(self, error: Error) -> None:
        if error.seq is not None:
            self.stats.server_errors += 1  # one of our frames was refused; the link stays up
        else:
            self.last_error = _code_name(error.code)  # the gateway is closing: remember why

    # ------------------------------------------------------------------ life events

    def reboot(self) -> None:
        """A power cycle: a new boot, recs from 1 again; counter, epoch and unacked kept."""
        self.boot += 1
        self.rec = 0
        self.stats.reboots += 1

    def finish(self, now: float) -> None:
        """The run is over: pour no more; one last record when the counter moved since."""
        self.draining = True
        total = self.water.freeze(now)
        self.final_pending = total > self.last_reported_ml

    def final_bytes(self, now: float, now_ns: int, wall: int) -> bytes:
        """At the end of the run: the last record at once when online with room."""
        session = self.session
        if session is None or not self.online:
            return b""
        if self.final_pending and self.room():
            self._send_new(now, now_ns, wall, final=True)
            self.last_tx = now
        return session.data_to_send()


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"code_{code}"
