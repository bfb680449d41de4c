"""A purifier's end of the link and its memory of recent commands (sans-IO; see link.py)."""

from __future__ import annotations

import secrets
from collections import OrderedDict

from aquafleet.protocol import crypto
from aquafleet.protocol.constants import NONCE_SIZE, AckCode, Encoding, ErrorCode, Flag, FrameType
from aquafleet.protocol.errors import RemoteProtocolError
from aquafleet.protocol.events import DeviceEvent, LoggedIn, LoginFailed
from aquafleet.protocol.frames import Frame
from aquafleet.protocol.link import Link, NonceSource
from aquafleet.protocol.message_types import (
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Challenge,
    Command,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    Result,
    Telemetry,
)
from aquafleet.protocol.messages import parse_message
from aquafleet.protocol.states import DEVICE_ACCEPTS, MAC_REQUIRED, SessionState, Step


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


class DeviceSession(Link):
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
