"""What both ends of a link share (sans-IO, h2-style): framing, sequence numbers, MACs, closing.

`receive_data(data, now)` returns the events the bytes produced; replies the protocol makes by
itself (CHALLENGE, PONG, ACK of a COMMAND, ERROR before a close) and everything the caller asks
to send collect in an outbound buffer that `data_to_send()` empties. Time is whatever the caller
passes as `now` (unix seconds); nothing here reads a clock, sleeps or touches a socket.
The gateway's end is protocol/server_session.py, the purifier's protocol/device_session.py.
"""

from __future__ import annotations

from collections.abc import Callable

from aquafleet.protocol import crypto
from aquafleet.protocol.constants import SEQ_MODULO, Encoding, ErrorCode, Flag
from aquafleet.protocol.errors import LocalProtocolError, RemoteProtocolError
from aquafleet.protocol.events import SessionClosed
from aquafleet.protocol.frames import DecoderStats, Frame, FrameDecoder, MacKey, encode_frame
from aquafleet.protocol.message_types import Error, Message
from aquafleet.protocol.messages import FRAME_TYPE_OF, encode_payload, message_map
from aquafleet.protocol.states import TRANSITIONS, SessionState, Step

# Read per frame: an enum member as a class attribute costs ~60 ns on Python 3.11 (timeit),
# a module constant ~7.
_CLOSED = SessionState.CLOSED

NonceSource = Callable[[int], bytes]

MAX_BAD_FRAMES = 32  # CRC failures and refused frames a session tolerates before it closes


class Link:
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
        return self.state is _CLOSED

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
        return key is not None and key.verify(frame.signed, frame.mac)

    def _next_frame(self, events: list[object]) -> Frame | None:
        """The next frame to handle, or None; a fatal framing error closes the session."""
        if self.state is _CLOSED:
            return None
        try:
            frame = self._decoder.next_frame()
        except RemoteProtocolError as exc:
            events.append(self._close(exc.code, exc.reason))
            return None
        if frame is None:
            self._count_bad_frames(events)
        return frame

    def _count_bad_frames(self, events: list[object]) -> None:
        """Once a read's frames are drained: close when too many were corrupt or refused."""
        if self._decoder.stats.crc_errors + self.bad_frames > MAX_BAD_FRAMES:
            events.append(self._close(ErrorCode.BAD_FRAME, "too many corrupt frames"))
