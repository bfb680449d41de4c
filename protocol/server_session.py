"""The gateway's end of one device connection (sans-IO; see link.py)."""

from __future__ import annotations

import secrets

from aquafleet.protocol import crypto, speedups
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
from aquafleet.protocol.events import FrameRejected, LoginRequested, ServerEvent, SessionClosed
from aquafleet.protocol.frames import Frame, encode_frame
from aquafleet.protocol.link import Link, NonceSource
from aquafleet.protocol.message_types import (
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Challenge,
    Command,
    DesiredState,
    Error,
    Hello,
    Pong,
    Record,
)
from aquafleet.protocol.messages import FRAME_TYPE_OF, encode_payload, parse_message, parse_record
from aquafleet.protocol.states import MAC_REQUIRED, SERVER_ACCEPTS, SessionState, Step

DEFAULT_HEARTBEAT_S = 60
LOGIN_TIMEOUT_S = 15.0
IDLE_FACTOR = 2.5
_RECORD_TYPES = (FrameType.TELEMETRY, FrameType.EVENT)
# Enum members read per record as module constants: a member as a class attribute costs
# ~60 ns on Python 3.11 (timeit), a module constant ~7 (protocol/mqtt.py does the same).
_ONLINE, _CLOSED = SessionState.ONLINE, SessionState.CLOSED
_ONLINE_ACCEPTS = frozenset(map(int, SERVER_ACCEPTS[SessionState.ONLINE]))
_ACK_SEQ, _ACK_RC, _ACK_WATERMARK = int(Key.ACK_SEQ), int(Key.ACK_RC), int(Key.ACK_WATERMARK)
# The ACK frame built in C where the extension is in use (protocol/speedups.py), byte for byte
# what the Python path below builds.
_compiled_encode_ack = speedups.compiled.encode_ack if speedups.compiled else None
# The compiled decoder's next_record (protocol/_speedups.c): an online session's usual frame,
# a MACed record, decoded, verified and parsed in one call (receive_data).
_compiled_online = speedups.compiled is not None


class ServerSession(Link):
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
        state = self.state
        if state is _CLOSED:
            return []
        decoder = self._decoder
        decoder.feed(data)
        events: list[ServerEvent] = []
        if state is _ONLINE and _compiled_online:
            # Online with the compiled decoder: `next_record` gives a MACed record frame that
            # verifies, in parse_record's common case, as its Record (what _handle_online
            # would append, without its Frame, MAC and signed bytes), and any other frame as
            # the Frame for _handle_online to decide. Online is followed only by closed, so
            # this ends drained or closed, as the loop below does.
            rx_mac = self._rx_mac
            while True:
                try:
                    item = decoder.next_record(rx_mac)  # type: ignore[attr-defined]
                except RemoteProtocolError as exc:
                    events.append(self._close(exc.code, exc.reason))
                    return events
                if item is None:
                    self._count_bad_frames(events)  # type: ignore[arg-type]
                    return events
                self.last_rx = now
                if type(item) is Record:
                    events.append(item)
                else:
                    self._handle_online(item, events)
                    if self.state is not _ONLINE:
                        return events
        while (frame := self._next_frame(events)) is not None:  # type: ignore[arg-type]
            self.last_rx = now  # a frame, not just bytes: modem text must not keep a link alive
            if self.state is _ONLINE:
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
        if frame_type not in _ONLINE_ACCEPTS:
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
        if self.state is not _ONLINE:
            return
        tx_seq = self._tx_seq
        self._tx_seq = (tx_seq + 1) % SEQ_MODULO
        frame = None
        if _compiled_encode_ack is not None:  # None for what only the Python path encodes
            frame = _compiled_encode_ack(
                self._tx_mac, tx_seq, self._encoding_flags, seq, rc, watermark
            )
        if frame is None:
            body: dict[int, object] = {_ACK_SEQ: seq, _ACK_RC: rc}
            if watermark is not None:  # not range-checked: built from parsed u32s
                body[_ACK_WATERMARK] = watermark
            frame = encode_frame(
                FrameType.ACK,
                tx_seq,
                encode_payload(body, self.encoding),
                flags=self._encoding_flags,
                mac_key=self._tx_mac,
            )
        self._out.append(frame)

    def send_command(self, command: Command) -> int:
        """Queue a COMMAND (always MACed); returns its seq, echoed by the device's ACK."""
        self._require(SessionState.ONLINE)
        return self._send(command, mac=True, flags=Flag.ACK_REQ | (Flag.DUP if command.dup else 0))
