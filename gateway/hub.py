"""The session hub of one node: which device is connected here, timers, read pausing, kicks."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from typing import Any, Protocol

from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.protocol import (
    Command,
    DesiredState,
    ErrorCode,
    FrameRejected,
    LoginRequested,
    ServerSession,
    SessionClosed,
)
from aquafleet.protocol.frames import DecoderStats
from aquafleet.protocol.message_types import Ack, Record, Result

log = get_logger("aquafleet.hub")

SWEEP_INTERVAL_S = 1.0
MAX_TRACKED_IPS = 100_000


class LinkSession(Protocol):
    """The protocol state of one device link (ServerSession on TCP, MqttServerSession on MQTT)."""

    last_rx: float

    @property
    def next_deadline(self) -> float: ...

    @property
    def decoder_stats(self) -> DecoderStats: ...

    def check_timers(self, now: float) -> SessionClosed | None: ...

    def verify_login(self, device_key: bytes) -> bool: ...

    def accept_login(
        self,
        *,
        now: float,
        last_acked: tuple[int, int] | None = None,
        desired: DesiredState | None = None,
    ) -> None: ...

    def reject_login(self, code: ErrorCode, reason: str) -> None: ...

    def ack(self, seq: int, rc: int, watermark: tuple[int, int] | None = None) -> None:
        """Acknowledge a record (once its effect is durable)."""

    def send_command(self, command: Command) -> int:
        """Queue a COMMAND for the device; returns the seq its delivery ACK will echo."""


class DeviceLink(Protocol):
    """One device's link, whatever the transport: what the hub, logins, the meter and presence
    use. Outbound messages (acks, commands) are queued on `session` and go out on `flush()`."""

    did: str
    shard: int
    conn_id: str
    closed: bool
    transport: asyncio.Transport | None  # None on MQTT: the broker holds the socket
    touched_rx: float | None  # the last_rx presence last wrote for it (None: not yet)

    @property
    def peer_ip(self) -> str:
        """The device's IP address, "" when there is none (MQTT) or it is not known."""

    @property
    def session(self) -> LinkSession | None: ...

    def flush(self) -> None: ...

    def close(self, code: ErrorCode, reason: str) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


# What the hub and the transports hand on, and to whom: the node (gateway/node.py) plugs the
# parts in after it built the hub, each typed here by what is asked of it, so the hub imports
# none of them (they all import the hub).


class RecordMeter(Protocol):
    """Meters records and acks them once durable (gateway.meter.MeterBatcher)."""

    pending: list[tuple[DeviceLink, Record]]

    def submit(self, conn: DeviceLink, record: Record) -> None: ...

    async def drained(self) -> None:
        """Return once every record read so far is durable and acked."""


class LoginQueue(Protocol):
    """Verifies logins a batch at a time (gateway.login.LoginBatcher)."""

    def submit(self, conn: DeviceLink, request: LoginRequested) -> None: ...


class PresenceKeeper(Protocol):
    """Keeps who is online in Redis (gateway.presence.Presence)."""

    def release_link(self, did: str, conn: DeviceLink) -> None: ...

    async def flushed(self) -> None:
        """Return once every release so far is written."""


class CommandDelivery(Protocol):
    """Sends commands to this node's devices (gateway.command_sender.CommandSender)."""

    def can_push(self) -> bool:
        """Whether a desired state can go out now (a command id is at hand)."""

    def push(self, did: str, desired: DesiredState) -> bool: ...

    def delivered(self, did: str, seq: int) -> bool: ...

    def result(self, did: str, result: Result) -> bool: ...

    def applied_at_login(self, did: str, version: int) -> None: ...


class FailedLoginLimiter:
    """Failed logins per source IP in a fixed window; bounded memory (oldest IPs forgotten).

    Devices behind one carrier NAT share an IP: only failures count, so healthy devices never
    trip it; the limit is a setting (failed_logins_per_ip).
    """

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    @property
    def tracking(self) -> bool:
        """Whether any IP has failed lately (if none has, no IP is blocked)."""
        return bool(self._windows)

    def blocked(self, ip: str, now: float) -> bool:
        entry = self._windows.get(ip)
        return entry is not None and now - entry[0] < self.window_s and entry[1] >= self.limit

    def failed(self, ip: str, now: float) -> None:
        start, count = self._windows.get(ip, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        self._windows[ip] = (start, count + 1)
        self._windows.move_to_end(ip)
        while len(self._windows) > MAX_TRACKED_IPS:
            self._windows.popitem(last=False)


class Hub:
    """Connections of this node. The meter, logins, presence and the command sender plug in
    after construction (gateway/node.py)."""

    def __init__(
        self,
        *,
        node_id: str,
        metrics: Metrics,
        heartbeat_s: int,
        login_timeout_s: float,
        max_connections: int,
        limiter: FailedLoginLimiter,
    ) -> None:
        self.node_id = node_id
        self.metrics = metrics
        self.heartbeat_s = heartbeat_s
        self.login_timeout_s = login_timeout_s
        self.max_connections = max_connections
        self.limiter = limiter
        self.connections: set[DeviceLink] = set()
        self.online: dict[str, DeviceLink] = {}
        self._conn_ids = itertools.count(1)
        self._pause_reasons: set[str] = set()
        # While any reason holds. A plain attribute, not a property over the set: the MQTT
        # bridge reads it for every message it handles as a read is handled.
        self.reads_paused = False
        self.accepting = True
        self._all_closed = asyncio.Event()
        self.meter: RecordMeter
        self.logins: LoginQueue
        self.presence: PresenceKeeper
        self.sender: CommandDelivery | None = None  # set by the node once it runs
        metrics.gauge("connections", "Open device connections", lambda: len(self.connections))
        metrics.gauge("devices_online", "Devices logged in", lambda: len(self.online))
        metrics.gauge(
            "reads_paused", "1 while reading devices is paused", lambda: int(self.reads_paused)
        )

    # ------------------------------------------------------------------ connections

    def new_session(self) -> ServerSession:
        return ServerSession(
            time.time(), heartbeat_s=self.heartbeat_s, login_timeout_s=self.login_timeout_s
        )

    def connection_made(self, conn: DeviceLink) -> None:
        if not self.accepting or len(self.connections) >= self.max_connections:
            self.metrics.connections_refused += 1
            conn.close(ErrorCode.OVERLOADED, "node is full or stopping")
            return
        if not conn.conn_id:  # an MQTT device keeps its transport-wide id
            conn.conn_id = f"{self.node_id}/{next(self._conn_ids)}"
        self.connections.add(conn)
        self.metrics.connections_accepted += 1
        # Not paused even when reads are: a login is a few small frames and sends no records,
        # and devices must be able to log in while the node works off a backlog.

    def connection_lost(self, conn: DeviceLink, *, release: bool = True) -> None:
        """A link ended. `release=False` keeps its presence in Redis: an MQTT device that went
        quiet on this node may be talking to another one (its presence expires on its own)."""
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        if not self.connections:
            self._all_closed.set()
        self.metrics.connections_closed += 1
        did = conn.did
        if did and self.online.get(did) is conn:
            del self.online[did]
            if release:
                self.presence.release_link(did, conn)
        session = conn.session
        if session is not None:
            stats = session.decoder_stats
            self.metrics.frames_bad_crc += stats.crc_errors
            self.metrics.garbage_bytes += stats.garbage_bytes

    def go_online(self, conn: DeviceLink, did: str, shard: int) -> None:
        """A verified login took the device's presence: an older local connection goes."""
        conn.did = did
        conn.shard = shard
        if self._pause_reasons:
            conn.pause_reading()  # its records wait until the node reads again
        older = self.online.get(did)
        self.online[did] = conn
        if older is not None and older is not conn:
            # Its end releases nothing: `online` now names the newer connection. Records it
            # read before are still metered for its device (conn.did stays).
            self.metrics.sessions_replaced += 1
            older.close(ErrorCode.REPLACED, "a newer login of this device took over")

    def kick(self, did: str, conn_id: str, code: ErrorCode, reason: str) -> bool:
        """Close the device's connection here if it is `conn_id` (or any, with "*")."""
        conn = self.online.get(did)
        if conn is None or (conn_id != "*" and conn.conn_id != conn_id):
            return False
        if code is ErrorCode.REPLACED:
            self.metrics.sessions_replaced += 1
            # The presence now belongs to the newer login elsewhere: do not release it.
            del self.online[did]
        conn.close(code, reason)
        return True

    # ------------------------------------------------------------------ session events

    def session_closed(self, conn: DeviceLink, event: SessionClosed) -> None:
        self.metrics.protocol_errors += 1
        log.info(
            "session_closed",
            conn=conn.conn_id,
            did=conn.did,
            ip=conn.peer_ip,
            code=event.code.name,
            reason=event.reason,
        )

    def frame_rejected(self, conn: DeviceLink, event: FrameRejected) -> None:
        self.metrics.records_rejected += 1
        log.warning(
            "frame_rejected",
            conn=conn.conn_id,
            did=conn.did,
            code=event.code.name,
            reason=event.reason,
            seq=event.seq,
        )

    def device_message(self, conn: DeviceLink, message: Any) -> None:
        """RESULT/ACK/ERROR from a device: the outcome and delivery of commands."""
        sender = self.sender
        kind = type(message)
        if sender is not None:
            if kind is Result:
                sender.result(conn.did, message)
                return
            if kind is Ack and sender.delivered(conn.did, message.seq):
                return
        log.debug("device_message", did=conn.did, message=kind.__name__)

    # ------------------------------------------------------------------ read pausing

    def pause_reading(self, reason: str) -> None:
        """Stop reading from every logged-in device (Redis or the ledger is behind): bounded
        memory. Connections still logging in are read: a login sends no records."""
        if reason in self._pause_reasons:
            return
        first = not self._pause_reasons
        self._pause_reasons.add(reason)
        self.reads_paused = True
        if first:
            self.metrics.read_pauses += 1
            log.warning("reads_paused", reason=reason, connections=len(self.connections))
            for conn in self.online.values():
                conn.pause_reading()

    def resume_reading(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        self.reads_paused = bool(self._pause_reasons)
        if not self._pause_reasons:
            log.info("reads_resumed", reason=reason)
            for conn in self.connections:
                conn.resume_reading()

    # ------------------------------------------------------------------ timers

    def sweep(self, now: float) -> int:
        """Close connections past their login or idle deadline; returns how many."""
        expired = 0
        for conn in list(self.connections):
            session = conn.session
            if session is None or now < session.next_deadline:
                continue
            event = session.check_timers(now)
            if event is None:
                continue
            expired += 1
            if event.code is ErrorCode.IDLE_TIMEOUT:
                self.metrics.idle_timeouts += 1
            else:
                self.metrics.logins_timed_out += 1
            conn.flush()
            conn.close(event.code, event.reason)
        return expired

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.sweep(time.time())

    def close_all(self, code: ErrorCode, reason: str) -> None:
        for conn in list(self.connections):
            conn.close(code, reason)

    async def all_closed(self) -> None:
        """Return once no connection is left."""
        if self.connections:
            self._all_closed.clear()
            await self._all_closed.wait()

    def abort_all(self) -> None:
        """Drop connections that did not close in time (their unsent bytes are lost)."""
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
