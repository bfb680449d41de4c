"""Connection state machines for both ends of a link (sans-IO, h2-style).

`receive_data(data, now)` returns the events the bytes produced; replies the protocol makes by
itself (CHALLENGE, PONG, ACK of a COMMAND, ERROR before a close) and everything the caller asks
to send collect in an outbound buffer that `data_to_send()` empties. Time is whatever the caller
passes as `now` (unix seconds); nothing here reads a clock, sleeps or touches a socket.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from aquafleet.protocol import crypto
from aquafleet.protocol.constants import (
    NONCE_SIZE,
    SEQ_MODULO,
    U8,
    U16,
    AckCode,
    Encoding,
    ErrorCode,
    Flag,
    FrameType,
    Key,
)
from aquafleet.protocol.errors import LocalProtocolError, RemoteProtocolError
from aquafleet.protocol.frames import (
    DecoderStats,
    Frame,
    FrameDecoder,
    MacKey,
    encode_frame,
)
from aquafleet.protocol.message_types import (
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Challenge,
    Command,
    DesiredState,
    Error,
    Event,
    Hello,
    Message,
    Ping,
    Pong,
    Record,
    Result,
    Telemetry,
)
from aquafleet.protocol.messages import (
    FRAME_TYPE_OF,
    encode_payload,
    message_map,
    parse_message,
    parse_record,
)

NonceSource = Callable[[int], bytes]

DEFAULT_HEARTBEAT_S = 60
LOGIN_TIMEOUT_S = 15.0
IDLE_FACTOR = 2.5
MAX_BAD_FRAMES = 32  # CRC failures and refused frames a session tolerates before it closes


class SessionState(IntEnum):
    AWAIT_HELLO = 0
    AWAIT_AUTH = 1
    VERIFYING = 2  # AUTH received: the caller looks the device up and verifies the proof
    ONLINE = 3
    CLOSED = 4
    # device side only
    IDLE = 10
    HELLO_SENT = 11
    AUTH_SENT = 12


class Step(IntEnum):
    """What moves a session from one state to the next (closing is allowed from any state)."""

    HELLO_RECEIVED = 1
    AUTH_RECEIVED = 2
    LOGIN_ACCEPTED = 3  # the gateway verified the proof and queued AUTH_OK
    STARTED = 10  # device side: HELLO queued
    CHALLENGE_RECEIVED = 11
    AUTH_OK_RECEIVED = 12


# Every state change but the close, in one place: (state, step) -> next state.
TRANSITIONS: dict[tuple[SessionState, Step], SessionState] = {
    (SessionState.AWAIT_HELLO, Step.HELLO_RECEIVED): SessionState.AWAIT_AUTH,
    (SessionState.AWAIT_AUTH, Step.AUTH_RECEIVED): SessionState.VERIFYING,
    (SessionState.VERIFYING, Step.LOGIN_ACCEPTED): SessionState.ONLINE,
    (SessionState.IDLE, Step.STARTED): SessionState.HELLO_SENT,
    (SessionState.HELLO_SENT, Step.CHALLENGE_RECEIVED): SessionState.AUTH_SENT,
    (SessionState.AUTH_SENT, Step.AUTH_OK_RECEIVED): SessionState.ONLINE,
}

# What each side accepts from its peer, by state. Anything else: ERROR (and a close before login).
SERVER_ACCEPTS: dict[SessionState, frozenset[int]] = {
    SessionState.AWAIT_HELLO: frozenset({FrameType.HELLO}),
    SessionState.AWAIT_AUTH: frozenset({FrameType.AUTH}),
    SessionState.VERIFYING: frozenset(),
    SessionState.ONLINE: frozenset(
        {
            FrameType.PING,
            FrameType.PONG,
            FrameType.TELEMETRY,
            FrameType.EVENT,
            FrameType.RESULT,
            FrameType.ACK,
            FrameType.ERROR,
        }
    ),
    SessionState.CLOSED: frozenset(),
}
DEVICE_ACCEPTS: dict[SessionState, frozenset[int]] = {
    SessionState.IDLE: frozenset(),
    SessionState.HELLO_SENT: frozenset({FrameType.CHALLENGE, FrameType.AUTH_FAIL, FrameType.ERROR}),
    SessionState.AUTH_SENT: frozenset({FrameType.AUTH_OK, FrameType.AUTH_FAIL, FrameType.ERROR}),
    SessionState.ONLINE: frozenset(
        {FrameType.ACK, FrameType.COMMAND, FrameType.PING, FrameType.PONG, FrameType.ERROR}
    ),
    SessionState.CLOSED: frozenset(),
}
# Every frame after the handshake that carries data either side acts on is MACed with the
# session key: AUTH_OK (desired state, watermark), records (billed water), ACKs (the device
# forgets what they cover), COMMANDs and RESULTs. PING, PONG and ERROR carry nothing to forge.
MAC_REQUIRED = frozenset(
    {
        FrameType.AUTH_OK,
        FrameType.TELEMETRY,
        FrameType.EVENT,
        FrameType.COMMAND,
        FrameType.RESULT,
        FrameType.ACK,
    }
)
_RECORD_TYPES = (FrameType.TELEMETRY, FrameType.EVENT)
_ACK_SEQ, _ACK_RC, _ACK_WATERMARK = int(Key.ACK_SEQ), int(Key.ACK_RC), int(Key.ACK_WATERMARK)
_compare_digest = hmac.compare_digest


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """AUTH arrived: look the device up, then verify_login / accept_login or reject_login."""

    did: str
    fw: str


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """Device side: the server proved itself and accepted the login."""

    heartbeat_s: int
    server_time: int
    last_acked: tuple[int, int] | None
    desired: DesiredState | None


@dataclass(frozen=True, slots=True)
class LoginFailed:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame was refused (ERROR or a REJECTED ack was queued); the session goes on."""

    code: ErrorCode
    reason: str
    seq: int


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session closed itself: send data_to_send(), then close the transport."""

    code: ErrorCode
    reason: str


ServerEvent = LoginRequested | Record | Result | Ack | Error | FrameRejected | SessionClosed
DeviceEvent = LoggedIn | LoginFailed | Ack | Command | Error | Pong | SessionClosed


# --------------------------------------------------------------------------- shared machinery


class _Link:
    """Framing, sequence numbers, MACs and the outbound buffer shared by both ends."""

    _is_server: bool

    __slots__ = (
        "_decoder",
        "_encoding_flags",
        "_nonce_source",
        "_out",
        "_rx_mac",
        "_tx_mac",
        "_tx_seq",
        "bad_frames",
        "close_code",
        "close_reason",
        "encoding",
        "state",
    )

    def __init__(self, state: SessionState, encoding: int, nonce_source: NonceSource) -> None:
        if encoding not in (Encoding.MSGPACK, Encoding.CBOR):
            raise LocalProtocolError(ErrorCode.UNKNOWN_ENCODING, f"encoding {encoding}")
        self.state = state
        self.encoding = encoding
        self._encoding_flags = encoding << Flag.ENCODING_SHIFT
        self._nonce_source = nonce_source
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []  # frames queued for the peer, joined by data_to_send()
        self._tx_seq = 0
        self._tx_mac: MacKey | None = None  # MAC keys of frames we send / receive
        self._rx_mac: MacKey | None = None
        self.bad_frames = 0
        self.close_code: ErrorCode | None = None
        self.close_reason = ""

    @property
    def decoder_stats(self) -> DecoderStats:
        return self._decoder.stats

    @property
    def is_closed(self) -> bool:
        return self.state is SessionState.CLOSED

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def _next_seq(self) -> int:
        seq = self._tx_seq
        self._tx_seq = (seq + 1) % SEQ_MODULO
        return seq

    def _send(self, message: Message, *, mac: bool = False, flags: int = 0) -> int:
        seq = self._next_seq()
        payload = encode_payload(message_map(message), self.encoding)
        self._out.append(
            encode_frame(
                FRAME_TYPE_OF[type(message)],
                seq,
                payload,
                flags=flags | self._encoding_flags,
                mac_key=self._tx_mac if mac else None,
            )
        )
        return seq

    def _close(self, code: ErrorCode, reason: str, *, notify: bool = True) -> SessionClosed:
        if self.state is not SessionState.CLOSED:
            if notify:
                self._send(Error(code=code, reason=reason[:128]))
            self.state = SessionState.CLOSED
            self.close_code = code
            self.close_reason = reason
        return SessionClosed(self.close_code or code, self.close_reason or reason)

    def _advance(self, step: Step) -> None:
        """Take `step` from the current state (TRANSITIONS); anything else is our own bug."""
        following = TRANSITIONS.get((self.state, step))
        if following is None:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_FRAME, f"session is {self.state.name}: no {step.name}"
            )
        self.state = following

    def _require(self, state: SessionState) -> None:
        if self.state is not state:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_FRAME, f"session is {self.state.name}, not {state.name}"
            )

    def close(self, code: ErrorCode, reason: str) -> None:
        """Queue an ERROR telling the peer why, and close."""
        self._close(code, reason)

    def _set_keys(self, session_key: bytes) -> None:
        device_to_server, server_to_device = crypto.direction_keys(session_key)
        if self._is_server:
            self._tx_mac, self._rx_mac = MacKey(server_to_device), MacKey(device_to_server)
        else:
            self._tx_mac, self._rx_mac = MacKey(device_to_server), MacKey(server_to_device)

    def _mac_ok(self, frame: Frame) -> bool:
        key = self._rx_mac
        received = frame.mac
        if received is None or key is None:
            return False
        return _compare_digest(key.mac(frame.signed), received)

    def _next_frame(self, events: list[object]) -> Frame | None:
        """The next frame to handle, or None; a fatal framing error closes the session."""
        if self.state is SessionState.CLOSED:
            return None
        try:
            frame = self._decoder.next_frame()
        except RemoteProtocolError as exc:
            events.append(self._close(exc.code, exc.reason))
            return None
        if frame is None and self._decoder.stats.crc_errors + self.bad_frames > MAX_BAD_FRAMES:
            events.append(self._close(ErrorCode.BAD_FRAME, "too many corrupt frames"))
        return frame


# --------------------------------------------------------------------------- server side


class ServerSession(_Link):
    """The gateway's end of one device connection."""

    _is_server = True

    __slots__ = (
        "_client_nonce",
        "_device_key",
        "_proof",
        "_server_nonce",
        "did",
        "fw",
        "heartbeat_s",
        "idle_timeout_s",
        "last_rx",
        "login_deadline",
        "login_timeout_s",
    )

    def __init__(
        self,
        now: float,
        *,
        heartbeat_s: int = DEFAULT_HEARTBEAT_S,
        login_timeout_s: float = LOGIN_TIMEOUT_S,
        idle_factor: float = IDLE_FACTOR,
        encoding: int = Encoding.MSGPACK,
        nonce_source: NonceSource = secrets.token_bytes,
    ) -> None:
        super().__init__(SessionState.AWAIT_HELLO, encoding, nonce_source)
        self.did: str | None = None
        self.fw = ""
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = heartbeat_s * idle_factor
        self.login_timeout_s = login_timeout_s
        self.login_deadline = now + login_timeout_s
        self.last_rx = now
        self._client_nonce = b""
        self._server_nonce = b""
        self._proof = b""
        self._device_key: bytes | None = None

    @property
    def next_deadline(self) -> float:
        if self.state is SessionState.ONLINE:
            return self.last_rx + self.idle_timeout_s
        return self.login_deadline

    def check_timers(self, now: float) -> SessionClosed | None:
        """Close the session when its login or idle deadline has passed."""
        state = self.state
        if state is SessionState.CLOSED:
            return None
        if state is SessionState.ONLINE:
            if now >= self.last_rx + self.idle_timeout_s:
                return self._close(ErrorCode.IDLE_TIMEOUT, "no frame within 2.5 heartbeats")
        elif now >= self.login_deadline:
            return self._close(ErrorCode.AUTH_TIMEOUT, "login not completed in time")
        return None

    def receive_data(self, data: bytes, now: float) -> list[ServerEvent]:
        if self.state is SessionState.CLOSED:
            return []
        self._decoder.feed(data)
        events: list[ServerEvent] = []
        while (frame := self._next_frame(events)) is not None:  # type: ignore[arg-type]
            self.last_rx = now  # a frame, not just bytes: modem text must not keep a link alive
            if self.state is SessionState.ONLINE:
                self._handle_online(frame, events)
            else:
                self._handle_login(frame, now, events)
        return events

    # ----------------------------------------------------------------- login

    def _handle_login(self, frame: Frame, now: float, events: list[ServerEvent]) -> None:
        if frame.type not in SERVER_ACCEPTS[self.state]:
            events.append(
                self._close(
                    ErrorCode.UNEXPECTED_FRAME,
                    f"frame type 0x{frame.type:02x} not allowed before login",
                )
            )
            return
        try:
            message = parse_message(frame)
        except RemoteProtocolError as exc:
            events.append(self._close(exc.code, exc.reason))
            return
        if isinstance(message, Hello):
            self.did = message.did
            self.fw = message.fw
            self._client_nonce = message.client_nonce
            self._server_nonce = self._nonce_source(NONCE_SIZE)
            self._send(Challenge(server_nonce=self._server_nonce, server_time=int(now)))
            self._advance(Step.HELLO_RECEIVED)
        elif isinstance(message, Auth) and self.did is not None:
            self._proof = message.proof
            # The device has done its part: from here the wait is ours (a login queued behind
            # a storm's others), so the server's answer gets its own login_timeout_s
            # (docs/protocol.md section 6) instead of what is left of the device's.
            self.login_deadline = now + self.login_timeout_s
            self._advance(Step.AUTH_RECEIVED)
            events.append(LoginRequested(did=self.did, fw=self.fw))

    def verify_login(self, device_key: bytes) -> bool:
        """Check the AUTH proof against the device's key; remembers the key when it holds."""
        self._require(SessionState.VERIFYING)
        assert self.did is not None
        expected = crypto.auth_proof(device_key, self.did, self._client_nonce, self._server_nonce)
        if not crypto.proofs_equal(expected, self._proof):
            return False
        self._device_key = device_key
        return True

    def accept_login(
        self,
        *,
        now: float,
        last_acked: tuple[int, int] | None = None,
        desired: DesiredState | None = None,
    ) -> None:
        """Queue AUTH_OK (the server's proof, heartbeat, watermark, desired state); go online."""
        self._require(SessionState.VERIFYING)
        if self._device_key is None or self.did is None:
            raise LocalProtocolError(ErrorCode.AUTH_BAD_PROOF, "accept_login before verify_login")
        proof = crypto.server_proof(
            self._device_key, self.did, self._server_nonce, self._client_nonce
        )
        self._set_keys(crypto.session_key(self._device_key, self._client_nonce, self._server_nonce))
        self._send(
            AuthOk(
                proof=proof, heartbeat_s=self.heartbeat_s, last_acked=last_acked, desired=desired
            ),
            mac=True,
        )
        self._advance(Step.LOGIN_ACCEPTED)
        self.last_rx = now
        # The login's material is spent (the MAC keys are derived): a gateway holds one session
        # per connected device, so these ~230 bytes each are worth giving back.
        self._client_nonce = self._server_nonce = self._proof = b""
        self._device_key = None

    def reject_login(self, code: ErrorCode, reason: str) -> None:
        """Queue AUTH_FAIL and close."""
        if self.state is SessionState.CLOSED:
            return
        self._send(AuthFail(code=code, reason=reason[:128]))
        self._close(code, reason, notify=False)

    # ----------------------------------------------------------------- online

    def _handle_online(self, frame: Frame, events: list[ServerEvent]) -> None:
        frame_type = frame.type
        if frame_type not in SERVER_ACCEPTS[SessionState.ONLINE]:
            code = (
                ErrorCode.UNKNOWN_TYPE
                if frame_type not in FRAME_TYPE_OF.values()
                else ErrorCode.UNEXPECTED_FRAME
            )
            events.append(self._refuse(frame, code, f"frame type 0x{frame_type:02x} refused"))
            return
        needs_mac = frame.mac is not None or frame_type in MAC_REQUIRED
        if needs_mac and not self._mac_ok(frame):
            events.append(self._close(ErrorCode.BAD_MAC, "frame MAC missing or wrong"))
            return
        try:
            if frame_type in _RECORD_TYPES:
                events.append(parse_record(frame))
                return
            message = parse_message(frame)
        except RemoteProtocolError as exc:
            events.append(self._refuse(frame, exc.code, exc.reason))
            return
        if frame_type == FrameType.PING:
            self._send(Pong())
            return
        if frame_type == FrameType.PONG:
            return
        events.append(message)  # type: ignore[arg-type]

    def _refuse(self, frame: Frame, code: ErrorCode, reason: str) -> FrameRejected:
        """Refuse one frame: a record gets a REJECTED ack (so it is not resent), others ERROR."""
        self.bad_frames += 1
        if frame.type in _RECORD_TYPES:
            self._send(Ack(seq=frame.seq, rc=AckCode.REJECTED), mac=True)
        else:
            self._send(Error(code=code, reason=reason[:128], seq=frame.seq))
        return FrameRejected(code, reason, frame.seq)

    def ack(self, seq: int, rc: int, watermark: tuple[int, int] | None = None) -> None:
        """Acknowledge one record frame (only once its effect is durable).

        `seq` (u16) and `rc` (u8) out of range raise LocalProtocolError, whatever the state:
        the device could not parse such an ACK and would resend the record forever.
        """
        if not (0 <= seq <= U16 and 0 <= rc <= U8):
            raise LocalProtocolError(
                ErrorCode.BAD_PAYLOAD, f"ack seq {seq} or rc {rc} out of range"
            )
        if self.state is not SessionState.ONLINE:
            return
        body: dict[int, object] = {_ACK_SEQ: seq, _ACK_RC: rc}
        if watermark is not None:  # not range-checked: the gateway builds it from parsed u32s
            body[_ACK_WATERMARK] = watermark
        tx_seq = self._tx_seq
        self._tx_seq = (tx_seq + 1) % SEQ_MODULO
        self._out.append(
            encode_frame(
                FrameType.ACK,
                tx_seq,
                encode_payload(body, self.encoding),
                flags=self._encoding_flags,
                mac_key=self._tx_mac,
            )
        )

    def send_command(self, command: Command) -> int:
        """Queue a COMMAND (always MACed); returns its seq, echoed by the device's ACK."""
        self._require(SessionState.ONLINE)
        return self._send(command, mac=True, flags=Flag.ACK_REQ | (Flag.DUP if command.dup else 0))


# --------------------------------------------------------------------------- device side


def _error_code(code: int) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL


class CommandMemory:
    """The device's last 16 command ids and results: a repeated cid is answered, not re-run."""

    __slots__ = ("_results", "_size")

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._results: OrderedDict[int, Result] = OrderedDict()

    def lookup(self, cid: int) -> Result | None:
        return self._results.get(cid)

    def remember(self, result: Result) -> None:
        self._results[result.cid] = result
        self._results.move_to_end(result.cid)
        while len(self._results) > self._size:
            self._results.popitem(last=False)


class DeviceSession(_Link):
    """A purifier's end of the link: login, records out, acks and commands in."""

    _is_server = False

    __slots__ = (
        "_client_nonce",
        "_device_key",
        "_server_nonce",
        "_server_time",
        "did",
        "fw",
    )

    def __init__(
        self,
        did: str,
        device_key: bytes,
        *,
        fw: str = "",
        encoding: int = Encoding.MSGPACK,
        nonce_source: NonceSource = secrets.token_bytes,
    ) -> None:
        super().__init__(SessionState.IDLE, encoding, nonce_source)
        self.did = did
        self.fw = fw
        self._device_key = device_key
        self._client_nonce = b""
        self._server_nonce = b""
        self._server_time = 0

    def start(self) -> None:
        """Queue HELLO."""
        self._require(SessionState.IDLE)  # before anything is queued
        self._client_nonce = self._nonce_source(NONCE_SIZE)
        self._send(Hello(did=self.did, fw=self.fw, client_nonce=self._client_nonce))
        self._advance(Step.STARTED)

    def receive_data(self, data: bytes, now: float) -> list[DeviceEvent]:
        if self.state is SessionState.CLOSED:
            return []
        self._decoder.feed(data)
        events: list[DeviceEvent] = []
        while (frame := self._next_frame(events)) is not None:  # type: ignore[arg-type]
            self._handle(frame, events)
        return events

    def _handle(self, frame: Frame, events: list[DeviceEvent]) -> None:
        if frame.type not in DEVICE_ACCEPTS[self.state]:
            self.bad_frames += 1
            if self.state is not SessionState.ONLINE:
                events.append(self._close(ErrorCode.UNEXPECTED_FRAME, "unexpected frame"))
            return
        if frame.type in MAC_REQUIRED and not self._mac_ok(frame):
            events.append(self._close(ErrorCode.BAD_MAC, "frame MAC missing or wrong"))
            if frame.type == FrameType.AUTH_OK:
                events.append(LoginFailed(ErrorCode.BAD_MAC, "AUTH_OK MAC wrong"))
            return
        try:
            message = parse_message(frame)
        except RemoteProtocolError as exc:
            self.bad_frames += 1
            if self.state is not SessionState.ONLINE:
                events.append(self._close(exc.code, exc.reason))
            return
        match message:
            case Challenge():
                self._server_nonce = message.server_nonce
                self._server_time = message.server_time
                proof = crypto.auth_proof(
                    self._device_key, self.did, self._client_nonce, self._server_nonce
                )
                self._send(Auth(proof=proof))
                # Known from here on; AUTH_OK is the first frame MACed with it.
                self._set_keys(
                    crypto.session_key(self._device_key, self._client_nonce, self._server_nonce)
                )
                self._advance(Step.CHALLENGE_RECEIVED)
            case AuthOk():
                expected = crypto.server_proof(
                    self._device_key, self.did, self._server_nonce, self._client_nonce
                )
                if not crypto.proofs_equal(expected, message.proof):
                    self._close(ErrorCode.AUTH_BAD_SERVER_PROOF, "server proof wrong", notify=False)
                    events.append(LoginFailed(ErrorCode.AUTH_BAD_SERVER_PROOF, "server proof"))
                    return
                self._advance(Step.AUTH_OK_RECEIVED)
                events.append(
                    LoggedIn(
                        heartbeat_s=message.heartbeat_s,
                        server_time=self._server_time,
                        last_acked=message.last_acked,
                        desired=message.desired,
                    )
                )
            case AuthFail():
                self._close(_error_code(message.code), message.reason, notify=False)
                events.append(LoginFailed(message.code, message.reason))
            case Error() if self.state is not SessionState.ONLINE:
                # The server gave up on this login (timeout, bad frame, ...) and is closing.
                self._close(_error_code(message.code), message.reason, notify=False)
                events.append(LoginFailed(message.code, message.reason))
            case Command():
                self._send(Ack(seq=frame.seq, rc=AckCode.STORED), mac=True)  # delivered
                events.append(message)
            case Pong() | Ack() | Error():
                events.append(message)
            case _:  # PING
                self._send(Pong())

    def send_record(self, record: Telemetry | Event, *, dup: bool = False) -> int:
        """Queue a TELEMETRY or EVENT (a resend keeps its rec and sets DUP); returns its seq."""
        self._require(SessionState.ONLINE)
        return self._send(record, mac=True, flags=Flag.ACK_REQ | (Flag.DUP if dup else 0))

    def send_result(self, result: Result) -> int:
        self._require(SessionState.ONLINE)
        return self._send(result, mac=True, flags=Flag.ACK_REQ)

    def ping(self) -> int:
        self._require(SessionState.ONLINE)
        return self._send(Ping())
