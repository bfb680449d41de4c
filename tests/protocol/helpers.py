"""Shared test data: a fixed device, fixed nonces, a logged-in session pair, frame helpers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence

from aquafleet.protocol import (
    DeviceSession,
    Encoding,
    FrameDecoder,
    LoggedIn,
    LoginRequested,
    ProtocolError,
    ServerSession,
)
from aquafleet.protocol.constants import Flag
from aquafleet.protocol.frames import Frame, encode_frame
from aquafleet.protocol.message_types import DesiredState, Error, Message
from aquafleet.protocol.messages import encode_payload, parse_message
from aquafleet.protocol.session import SessionClosed

DID = "AQ0000000001"
FW = "1.4.2"
DEVICE_KEY = bytes(range(32))  # 00 01 02 .. 1f
CLIENT_NONCE = bytes.fromhex("0102030405060708")
SERVER_NONCE = bytes.fromhex("1112131415161718")
NOW = 1_700_000_000
HEARTBEAT_S = 60

ENCODINGS = (Encoding.MSGPACK, Encoding.CBOR)


def fixed_nonce(nonce: bytes) -> Callable[[int], bytes]:
    """A nonce source that always returns `nonce` (deterministic sessions)."""

    def source(size: int) -> bytes:
        assert size == len(nonce)
        return nonce

    return source


def hmac256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def expected_session_key(key: bytes = DEVICE_KEY) -> bytes:
    return hmac256(key, b"S" + CLIENT_NONCE + SERVER_NONCE)


SESSION_KEY = expected_session_key()  # Ks of every session built here (fixed nonces)
# The frame MAC keys derived from it, one per direction (written here from the spec, not taken
# from protocol.crypto): K_ds MACs what the device sends, K_sd what the server sends.
K_DS = hmac256(SESSION_KEY, b"DS")
K_SD = hmac256(SESSION_KEY, b"SD")


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/MODBUS bit by bit, written from the parameters (independent of protocol.crc)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def raw_frame(
    frame_type: int,
    seq: int,
    payload: bytes,
    *,
    flags: int = 0,
    version: int = 1,
    mac: bytes | None = None,
    mac_key: bytes | None = None,
    crc: int | None = None,
) -> bytes:
    """Build a frame by hand from PROTOCOL.md's layout (for frames encode_frame refuses).

    `mac` appends those 8 bytes as the MAC; `mac_key` computes it (HMAC-SHA256, first 8 bytes,
    over version .. end of payload). Either sets the MAC flag.
    """
    if mac is not None or mac_key is not None:
        flags |= Flag.MAC
    body = (
        b"\x5a\xa5"
        + bytes([version, frame_type, flags])
        + seq.to_bytes(2, "big")
        + len(payload).to_bytes(2, "big")
        + payload
    )
    if mac_key is not None:
        mac = hmac256(mac_key, body[2:])[:8]
    body += mac or b""
    if crc is None:
        crc = crc16_bitwise(body[2:])
    return body + crc.to_bytes(2, "big")


def make_frame(
    frame_type: int,
    body: Mapping[int, object],
    *,
    seq: int = 0,
    encoding: int = Encoding.MSGPACK,
    flags: int = 0,
    mac_key: bytes | None = None,
) -> bytes:
    payload = encode_payload(dict(body), encoding)
    return encode_frame(
        frame_type,
        seq,
        payload,
        flags=flags | (encoding << Flag.ENCODING_SHIFT),
        mac_key=mac_key,
    )


def decode_all(data: bytes) -> list[Frame]:
    """Every frame in `data` (fed at once); raises on a bad version like the decoder does."""
    decoder = FrameDecoder()
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def messages(data: bytes) -> list[Message]:
    return [parse_message(frame) for frame in decode_all(data)]


def only_error(data: bytes) -> Error:
    """The one ERROR frame in `data`."""
    (message,) = messages(data)
    assert isinstance(message, Error), message
    return message


def close_code(events: Sequence[object]) -> int:
    """The code of the SessionClosed that must be the only event."""
    (event,) = events
    assert isinstance(event, SessionClosed), event
    return event.code


def frames_only(items: Iterable[Frame | str]) -> list[Frame]:
    frames = [item for item in items if isinstance(item, Frame)]
    return frames


def decode_chunks(chunks: Iterable[bytes]) -> tuple[list[Frame | str], FrameDecoder]:
    """Feed chunks one by one, draining after each; protocol errors are recorded in order."""
    decoder = FrameDecoder()
    out: list[Frame | str] = []
    for chunk in chunks:
        decoder.feed(chunk)
        while True:
            try:
                frame = decoder.next_frame()
            except ProtocolError as exc:
                out.append(f"error {exc.code.name}")
                continue
            if frame is None:
                break
            out.append(frame)
    return out, decoder


def new_server(
    *, encoding: int = Encoding.MSGPACK, heartbeat_s: int = HEARTBEAT_S, now: float = NOW
) -> ServerSession:
    return ServerSession(
        now, heartbeat_s=heartbeat_s, encoding=encoding, nonce_source=fixed_nonce(SERVER_NONCE)
    )


def new_device(*, key: bytes = DEVICE_KEY, encoding: int = Encoding.MSGPACK) -> DeviceSession:
    return DeviceSession(DID, key, fw=FW, encoding=encoding, nonce_source=fixed_nonce(CLIENT_NONCE))


def mac_of(frame: Frame, key: bytes) -> bytes:
    """The MAC `frame` must carry under `key` (K_DS or K_SD), computed here, not by protocol."""
    assert frame.signed, "the frame has no MAC flag, so no signed bytes"
    return hmac256(key, frame.signed)[:8]


def awaiting_auth_ok(
    *, encoding: int = Encoding.MSGPACK, heartbeat_s: int = HEARTBEAT_S, now: float = NOW
) -> tuple[ServerSession, DeviceSession]:
    """Device after AUTH (AUTH_SENT, its MAC keys known), server verifying it; nothing to send."""
    server = new_server(encoding=encoding, heartbeat_s=heartbeat_s, now=now)
    device = new_device(encoding=encoding)
    device.start()
    assert server.receive_data(device.data_to_send(), now) == []
    assert device.receive_data(server.data_to_send(), now) == []
    assert server.receive_data(device.data_to_send(), now) == [LoginRequested(DID, FW)]
    assert server.verify_login(DEVICE_KEY)
    return server, device


def login_pair(
    *,
    encoding: int = Encoding.MSGPACK,
    heartbeat_s: int = HEARTBEAT_S,
    last_acked: tuple[int, int] | None = None,
    desired: DesiredState | None = None,
    now: float = NOW,
) -> tuple[ServerSession, DeviceSession]:
    """A server and a device session, logged in, with nothing left to send."""
    server, device = awaiting_auth_ok(encoding=encoding, heartbeat_s=heartbeat_s, now=now)
    server.accept_login(now=now, last_acked=last_acked, desired=desired)
    events = device.receive_data(server.data_to_send(), now)
    assert len(events) == 1
    assert isinstance(events[0], LoggedIn)
    assert device.data_to_send() == b""
    return server, device
