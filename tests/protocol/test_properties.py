"""Property tests: hostile bytes and payloads give results or ProtocolError, nothing else."""

from __future__ import annotations

import cbor2
import msgpack
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aquafleet.protocol import DeviceSession, ErrorCode, FrameDecoder, ProtocolError, ServerSession
from aquafleet.protocol.constants import MAX_FRAME, MAX_PAYLOAD, Flag, FrameType
from aquafleet.protocol.frames import Frame, encode_frame
from aquafleet.protocol.message_types import Message
from aquafleet.protocol.messages import (
    FRAME_TYPE_OF,
    encode_payload,
    message_map,
    parse_message,
    parse_record,
)
from tests.protocol import strategies
from tests.protocol.helpers import (
    K_DS,
    K_SD,
    NOW,
    awaiting_auth_ok,
    decode_chunks,
    frames_only,
    login_pair,
    new_device,
    new_server,
)

# A good MAC is one per direction: K_ds reaches the servers' handlers, K_sd the devices'.
DIRECTION_KEYS = (K_DS, K_SD)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAME_TYPES = [int(t) for t in FrameType] + [0x00, 0x55, 0xFF]


def parse_everything(data: bytes, chunks: list[int] | None = None) -> list[object]:
    """Decode `data` and parse every frame; only ProtocolError may come out."""
    decoder = FrameDecoder()
    results: list[object] = []
    pieces = [data] if not chunks else _cut(data, chunks)
    for piece in pieces:
        decoder.feed(piece)
        while True:
            try:
                frame = decoder.next_frame()
            except ProtocolError as exc:
                assert exc.code in DECODER_CODES and exc.reason, exc
                results.append(exc.code)
                continue
            if frame is None:
                break
            results.append(frame)
            parse_checked(frame)
        assert decoder.buffered < MAX_FRAME  # at most one incomplete frame is held
    return results


# What each layer may answer hostile bytes with (the reason code goes into an ERROR frame).
DECODER_CODES = frozenset({ErrorCode.BAD_FRAME, ErrorCode.BAD_VERSION, ErrorCode.BUFFER_OVERFLOW})
PARSER_CODES = frozenset(
    {ErrorCode.BAD_PAYLOAD, ErrorCode.UNKNOWN_ENCODING, ErrorCode.UNKNOWN_TYPE,
     ErrorCode.UNEXPECTED_FRAME}
)  # fmt: skip
KNOWN_TYPES = frozenset(int(t) for t in FRAME_TYPE_OF.values())
RECORD_TYPES = frozenset({int(FrameType.TELEMETRY), int(FrameType.EVENT)})


def parse_checked(frame: Frame) -> None:
    """Parse a frame both ways. A message parsed is one of the frame's type that survives a
    round trip (its map re-encoded parses to an equal message); a failure is our error with a
    parser's reason code (UNKNOWN_TYPE exactly for the types no parser knows)."""
    message: Message | None = None
    try:
        message = parse_message(frame)
    except ProtocolError as exc:
        assert exc.code in PARSER_CODES and exc.reason, exc
        assert (exc.code is ErrorCode.UNKNOWN_TYPE) == (frame.type not in KNOWN_TYPES), exc
    else:
        assert int(FRAME_TYPE_OF[type(message)]) == frame.type, message
        # An empty payload is {} under any encoding bits: re-encode those as msgpack.
        encoding = frame.encoding if frame.encoding in (0, 1) else 0
        assert encoding == frame.encoding or frame.payload == b""
        flags = (frame.flags & ~Flag.ENCODING_MASK) | (encoding << Flag.ENCODING_SHIFT)
        payload = encode_payload(message_map(message), encoding)
        assert parse_message(Frame(frame.type, flags, frame.seq, payload)) == message
    try:
        record = parse_record(frame)
    except ProtocolError as exc:
        assert exc.code in PARSER_CODES and exc.reason, exc
    else:
        assert frame.type in RECORD_TYPES, record
        assert (record.frame_type, record.seq) == (frame.type, frame.seq)
        if message is not None:  # the hot path reads what the full parser reads
            assert (record.rec, record.boot, record.ts) == (
                message.rec,  # type: ignore[union-attr]
                message.boot,  # type: ignore[union-attr]
                message.ts,  # type: ignore[union-attr]
            )


def _cut(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for size in sizes:
        pieces.append(data[start : start + size])
        start += size
    pieces.append(data[start:])
    return pieces


def feed_sessions(data: bytes, chunks: list[int] | None = None) -> None:
    """Feed every kind of session; receive_data never raises on peer bytes."""
    pieces = [data] if not chunks else _cut(data, chunks)
    server_online, device_online = login_pair()
    server_fresh = new_server()
    device_fresh = new_device()
    device_fresh.start()
    _verifying, device_auth_sent = awaiting_auth_ok()  # knows Ks: a MACed AUTH_OK gets through
    sessions: list[ServerSession | DeviceSession] = [
        server_online,
        server_fresh,
        device_online,
        device_fresh,
        device_auth_sent,
    ]
    for piece in pieces:
        for session in sessions:
            session.receive_data(piece, NOW + 1)
            if isinstance(session, ServerSession):
                session.check_timers(NOW + 1)
    for session in sessions:
        session.data_to_send()


# --------------------------------------------------------------------------- arbitrary bytes


@SETTINGS
@given(st.binary(max_size=3000), st.lists(st.integers(0, 700), max_size=6))
def test_arbitrary_bytes(data: bytes, chunks: list[int]) -> None:
    parse_everything(data)
    parse_everything(data, chunks)
    feed_sessions(data, chunks)


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 500), max_size=8))
def test_decoder_does_not_depend_on_how_bytes_arrive(data: bytes, chunks: list[int]) -> None:
    whole, whole_decoder = decode_chunks([data])
    pieces, pieces_decoder = decode_chunks(_cut(data, chunks))
    singles, singles_decoder = decode_chunks(data[i : i + 1] for i in range(len(data)))
    assert whole == pieces == singles
    assert whole_decoder.stats == pieces_decoder.stats == singles_decoder.stats


@SETTINGS
@given(
    st.lists(strategies.messages, min_size=1, max_size=4),
    st.lists(st.binary(max_size=30).filter(lambda b: b"\x5a\xa5" not in b), max_size=5),
    st.sampled_from([0, 1]),
)
def test_garbage_without_magic_never_hides_a_frame(
    messages: list[Message], junk: list[bytes], encoding: int
) -> None:
    frames = [strategies.wire_of(strategies.with_encoding(m, encoding), encoding) for m in messages]
    parts: list[bytes] = []
    for index, frame in enumerate(frames):
        if index < len(junk):
            parts.append(junk[index])
        parts.append(frame)
    decoded, decoder = decode_chunks([b"".join(parts)])
    payloads = [f[9 : 9 + int.from_bytes(f[7:9], "big")] for f in frames]
    assert [f.payload for f in frames_only(decoded)] == payloads
    assert len(decoded) == len(frames)
    assert decoder.stats.garbage_bytes == sum(len(j) for j in junk[: len(frames)])
    assert decoder.stats.crc_errors == 0


# --------------------------------------------------------------------------- mutated valid frames


@st.composite
def valid_streams(draw: st.DrawFn) -> bytes:
    encoding = draw(st.sampled_from([0, 1]))
    messages = draw(st.lists(strategies.messages, min_size=1, max_size=4))
    keys = st.sampled_from([None, *DIRECTION_KEYS])
    return b"".join(
        strategies.wire_of(strategies.with_encoding(m, encoding), encoding, draw(keys))
        for m in messages
    )


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_streams()))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=20))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 20))]
        elif kind == "truncate":
            del data[position:]
        elif kind == "dup":
            data[position:position] = data[position : position + draw(st.integers(1, 40))]
    return bytes(data)


@SETTINGS
@given(mutated(), st.lists(st.integers(0, 300), max_size=4))
def test_mutated_frames(data: bytes, chunks: list[int]) -> None:
    parse_everything(data)
    parse_everything(data, chunks)
    feed_sessions(data, chunks)


@SETTINGS
@given(st.sampled_from(FRAME_TYPES), st.integers(0, 255), st.binary(max_size=MAX_PAYLOAD))
def test_valid_frames_with_arbitrary_payload_bytes(
    frame_type: int, flags: int, payload: bytes
) -> None:
    """CRC and MAC hold, so the bytes reach the payload parsers and the session handlers."""
    for key in DIRECTION_KEYS:
        data = encode_frame(frame_type, 7, payload, flags=flags, mac_key=key)
        parse_everything(data)
        feed_sessions(data)
    data = encode_frame(frame_type, 7, payload, flags=flags & ~Flag.MAC)
    parse_everything(data)
    feed_sessions(data)


# ----------------------------------------------------------------------- hostile payload objects


def check_payload(obj: object, encoding: int, frame_type: int) -> None:
    try:
        payload = msgpack.packb(obj, use_bin_type=True) if encoding == 0 else cbor2.dumps(obj)
    except (OverflowError, ValueError, TypeError, cbor2.CBOREncodeError):
        assume(False)
        return
    frame = Frame(frame_type, encoding << Flag.ENCODING_SHIFT, 1, payload)
    parse_checked(frame)
    if len(payload) <= MAX_PAYLOAD:
        flags = encoding << Flag.ENCODING_SHIFT
        for key in DIRECTION_KEYS:
            feed_sessions(encode_frame(frame_type, 1, payload, flags=flags, mac_key=key))


@SETTINGS
@given(strategies.payload_maps(cbor=False), st.sampled_from(FRAME_TYPES))
def test_arbitrary_msgpack_payloads(obj: object, frame_type: int) -> None:
    check_payload(obj, 0, frame_type)


@SETTINGS
@given(strategies.payload_maps(cbor=True), st.sampled_from(FRAME_TYPES))
def test_arbitrary_cbor_payloads(obj: object, frame_type: int) -> None:
    check_payload(obj, 1, frame_type)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_frame_type_with_near_valid_payloads(data: st.DataObject) -> None:
    """A valid message map with one value replaced by something hostile."""
    encoding = data.draw(st.sampled_from([0, 1]))
    message = data.draw(strategies.messages)
    body = dict(message_map(message))
    key = data.draw(st.sampled_from([*body, 0, 1, 2, 9, 14, 33]))
    body[key] = data.draw(strategies.objects(cbor=encoding == 1))
    check_payload(body, encoding, FRAME_TYPE_OF[type(message)])


def test_deeply_nested_payloads() -> None:
    for encoding, prefix in ((0, b"\x91"), (0, b"\x81\x00"), (1, b"\x81"), (1, b"\xa1\x00")):
        payload = b"\x81\x09" + prefix * 500 + b"\x00" if encoding == 0 else prefix * 1000
        for frame_type in FRAME_TYPES:
            frame = Frame(frame_type, encoding << 4, 0, payload[:MAX_PAYLOAD])
            parse_checked(frame)
