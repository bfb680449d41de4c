"""Payload maps: every message round-trips in both encodings; bad fields are refused."""

from __future__ import annotations

import dataclasses

import cbor2
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aquafleet.protocol import Encoding, LocalProtocolError, RemoteProtocolError
from aquafleet.protocol.constants import ErrorCode, Flag, FrameType
from aquafleet.protocol.frames import Frame
from aquafleet.protocol.message_types import (
    MAX_COUNTER,
    AuthOk,
    Command,
    DesiredState,
    Event,
    Hello,
    Message,
    Ping,
    Record,
    Telemetry,
)
from aquafleet.protocol.messages import (
    decode_payload,
    encode_payload,
    message_map,
    parse_message,
    parse_record,
    parse_record_payload,
    parse_telemetry_report,
)
from tests.protocol import strategies
from tests.protocol.helpers import ENCODINGS, decode_all

encodings = st.sampled_from(ENCODINGS)


@settings(max_examples=400, deadline=None)
@given(strategies.messages, encodings)
def test_every_message_round_trips(message: Message, encoding: int) -> None:
    message = strategies.with_encoding(message, encoding)
    frame = strategies.frame_of(message, encoding)
    assert parse_message(frame) == message
    # and through the wire: encode_frame, then the decoder
    (decoded,) = decode_all(strategies.wire_of(message, encoding))
    assert decoded == frame
    assert parse_message(decoded) == message


@pytest.mark.parametrize("message_type", list(strategies.MESSAGES), ids=lambda t: t.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), encoding=encodings)
def test_each_message_type_round_trips(
    message_type: type, data: st.DataObject, encoding: int
) -> None:
    message = strategies.with_encoding(data.draw(strategies.MESSAGES[message_type]), encoding)
    assert parse_message(strategies.frame_of(message, encoding)) == message


@settings(max_examples=200, deadline=None)
@given(st.one_of(strategies.MESSAGES[Telemetry], strategies.MESSAGES[Event]), encodings)
def test_parse_record_agrees_with_parse_message(message: Telemetry | Event, encoding: int) -> None:
    message = dataclasses.replace(message, encoding=encoding)
    frame = strategies.frame_of(message, encoding)
    record = parse_record(frame)
    assert record == Record(
        frame_type=frame.type,
        seq=message.seq,
        dup=message.dup,
        rec=message.rec,
        boot=message.boot,
        ts=message.ts,
        flow_total_ml=message.flow_total_ml,
        cnt_epoch=message.cnt_epoch,
        event_kind=message.kind if isinstance(message, Event) else 0,
        payload=frame.payload,
        encoding=encoding,
        state_bits=-1
        if isinstance(message, Event) or message.state_bits is None
        else message.state_bits,
    )
    full = parse_record_payload(record.frame_type, record.payload, record.encoding)
    assert full == dataclasses.replace(message, seq=0, dup=False)


def _report_of(payload: bytes, encoding: int) -> object:
    """parse_telemetry_report's answer, or the error code it refused the payload with."""
    try:
        return parse_telemetry_report(payload, encoding)
    except RemoteProtocolError as exc:
        return exc.code


def _report_via_message(payload: bytes, encoding: int) -> object:
    """The same fields taken from parse_message's Telemetry, or its error code."""
    try:
        t = parse_record_payload(FrameType.TELEMETRY, payload, encoding)
    except RemoteProtocolError as exc:
        return exc.code
    assert isinstance(t, Telemetry)
    filters = [[f.index, f.work_h, f.power_on_h, f.reset_count] for f in t.filters] or None
    return (
        t.rec, t.boot, t.ts, t.tds_in_ppm, t.tds_out_ppm, t.temperature_dc, filters,
        t.fault_bits, t.signal, t.state_bits,
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(strategies.MESSAGES[Telemetry], encodings)
def test_telemetry_report_agrees_with_parse_message(message: Telemetry, encoding: int) -> None:
    payload = encode_payload(message_map(message), encoding)
    assert _report_of(payload, encoding) == _report_via_message(payload, encoding)


TELEMETRY_KEYS = [0, 1, 2, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]


def _hostile_changes(encoding: int) -> st.SearchStrategy[dict[int, object]]:
    values = (
        st.sampled_from(strategies.EDGE_INTS)
        | st.none()
        | strategies.objects(cbor=encoding == Encoding.CBOR)
        | st.lists(st.lists(st.sampled_from(strategies.EDGE_INTS), max_size=5), max_size=6)
    )
    return st.dictionaries(st.sampled_from(TELEMETRY_KEYS), values, min_size=1, max_size=3)


@settings(max_examples=400, deadline=None)
@given(strategies.MESSAGES[Telemetry], encodings, st.data())
def test_telemetry_report_refuses_what_parse_message_refuses(
    message: Telemetry, encoding: int, data: st.DataObject
) -> None:
    """A valid report with one to three fields made hostile: both accept it, or both refuse it
    with the same code (and when they accept, they read the same fields)."""
    body = {**message_map(message), **data.draw(_hostile_changes(encoding))}
    payload = (
        cbor2.dumps(body)
        if encoding == Encoding.CBOR
        else msgpack.packb(body, use_bin_type=True, datetime=False)
    )
    assert _report_of(payload, encoding) == _report_via_message(payload, encoding)


def test_record_header_sits_flat_in_the_map() -> None:
    body = message_map(Telemetry(rec=3, boot=4, ts=5, flow_total_ml=6, cnt_epoch=1))
    assert body == {0: 3, 1: 4, 2: 5, 10: 6, 16: 1}
    body = message_map(Event(rec=3, boot=4, ts=5, kind=1, cid=7, ml=250, flow_total_ml=9))
    assert body == {0: 3, 1: 4, 2: 5, 20: 1, 21: 7, 22: 250, 23: 9}


def test_parse_record_fields() -> None:
    body = {0: 12, 1: 3, 2: 1_700_000_000, 10: 5000, 16: 2, 14: "not checked here"}
    frame = Frame(FrameType.TELEMETRY, Flag.DUP, 77, encode_payload(body, 0))
    record = parse_record(frame)
    assert (record.rec, record.boot, record.ts) == (12, 3, 1_700_000_000)
    assert (record.flow_total_ml, record.cnt_epoch, record.event_kind) == (5000, 2, 0)
    assert (record.seq, record.dup, record.frame_type) == (77, True, FrameType.TELEMETRY)
    # the fast path checks only the header and the counter; the full parse refuses key 14
    with pytest.raises(RemoteProtocolError):
        parse_message(frame)


def test_parse_record_of_an_event() -> None:
    body = {0: 1, 1: 1, 2: 0, 20: 1, 21: 5, 22: 300, 23: 800}
    record = parse_record(Frame(FrameType.EVENT, 0x10, 4, encode_payload(body, 1)))
    assert (record.event_kind, record.flow_total_ml, record.cnt_epoch) == (1, 800, None)
    assert record.encoding == Encoding.CBOR


def test_parse_record_refuses_other_types() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_record(Frame(FrameType.PING, 0, 0, encode_payload(HEADER, 0)))
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME


HEADER = {0: 1, 1: 2, 2: 3}
BAD_VALUES = ["1", -1, 2**32, True, 1.0, None, b"\x01", [1]]


BAD_HEADERS = [(key, value) for key in (0, 1, 2) for value in BAD_VALUES] + [(0, 0)]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("key", "value"), BAD_HEADERS, ids=repr)
def test_bad_record_header_is_refused(key: int, value: object, encoding: int) -> None:
    body = {**HEADER, key: value}
    for frame_type, extra in ((FrameType.TELEMETRY, {}), (FrameType.EVENT, {20: 1})):
        frame = Frame(frame_type, encoding << 4, 0, encode_payload({**body, **extra}, encoding))
        with pytest.raises(RemoteProtocolError) as info:
            parse_record(frame)
        assert info.value.code is ErrorCode.BAD_PAYLOAD
        with pytest.raises(RemoteProtocolError):
            parse_message(frame)


@pytest.mark.parametrize(
    ("frame_type", "extra"),
    [
        (FrameType.TELEMETRY, {10: -1}),
        (FrameType.TELEMETRY, {10: MAX_COUNTER + 1}),
        (FrameType.TELEMETRY, {10: 1.5}),
        (FrameType.TELEMETRY, {16: -1}),
        (FrameType.TELEMETRY, {16: True}),
        (FrameType.EVENT, {}),  # no kind
        (FrameType.EVENT, {20: 0}),
        (FrameType.EVENT, {20: 1, 23: MAX_COUNTER + 1}),
        (FrameType.EVENT, {20: 1, 23: "5"}),
    ],
)
def test_bad_record_counter_is_refused(frame_type: int, extra: dict[int, object]) -> None:
    frame = Frame(frame_type, 0, 0, encode_payload({**HEADER, **extra}, 0))
    with pytest.raises(RemoteProtocolError):
        parse_record(frame)


def test_counter_limit_is_2_pow_53_minus_1() -> None:
    frame = Frame(FrameType.TELEMETRY, 0, 0, encode_payload({**HEADER, 10: 2**53 - 1}, 0))
    assert parse_record(frame).flow_total_ml == 2**53 - 1


BAD_MESSAGES = [
    (FrameType.HELLO, {1: "", 2: "", 3: b"12345678"}),
    (FrameType.HELLO, {1: "x" * 33, 2: "", 3: b"12345678"}),
    (FrameType.HELLO, {1: "d", 2: "x" * 33, 3: b"12345678"}),
    (FrameType.HELLO, {1: b"d", 3: b"12345678"}),
    (FrameType.HELLO, {1: "d", 3: b"1234567"}),
    (FrameType.HELLO, {1: "d", 3: "12345678"}),
    (FrameType.CHALLENGE, {3: b"12345678", 4: -1}),
    (FrameType.CHALLENGE, {3: b"12345678"}),
    (FrameType.AUTH, {5: b"x" * 31}),
    (FrameType.AUTH_OK, {6: b"x" * 32, 7: 0}),
    (FrameType.AUTH_OK, {6: b"x" * 32, 7: 60, 8: [1]}),
    (FrameType.AUTH_OK, {6: b"x" * 32, 7: 60, 8: [1, -1]}),
    (FrameType.AUTH_OK, {6: b"x" * 32, 7: 60, 9: {1: 1}}),  # desired without a version
    (FrameType.AUTH_OK, {6: b"x" * 32, 7: 60, 9: {1: 2, 4: 1}}),  # lock is 0 or 1
    (FrameType.AUTH_OK, {6: b"x" * 32, 7: 60, 9: [1]}),
    (FrameType.AUTH_FAIL, {1: "22"}),
    (FrameType.ERROR, {1: 1, 2: "x" * 129}),
    (FrameType.ERROR, {1: 1, 3: 0x10000}),
    (FrameType.TELEMETRY, {**HEADER, 13: -1001}),
    (FrameType.TELEMETRY, {**HEADER, 14: [[1, 2, 3]]}),
    (FrameType.TELEMETRY, {**HEADER, 14: [[256, 0, 0, 0]]}),
    (FrameType.TELEMETRY, {**HEADER, 14: [[0, 0, 0, 0]] * 17}),
    (FrameType.TELEMETRY, {**HEADER, 17: 256}),
    (FrameType.COMMAND, {30: 1, 31: 0, 32: 0}),
    (FrameType.COMMAND, {30: 1, 31: 1, 32: 0, 33: {1: "250"}}),
    (FrameType.COMMAND, {30: 1, 31: 1, 32: 0, 33: {"1": 250}}),
    (FrameType.COMMAND, {30: 1, 31: 1, 32: 0, 33: {i: 0 for i in range(17)}}),
    (FrameType.RESULT, {30: 1}),
    (FrameType.ACK, {0: 1}),
    (FrameType.ACK, {0: 1, 1: 256}),
]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("frame_type", "body"), BAD_MESSAGES)
def test_invalid_fields_are_refused(
    frame_type: int, body: dict[int, object], encoding: int
) -> None:
    frame = Frame(frame_type, encoding << 4, 0, encode_payload(dict(body), encoding))
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(frame)
    assert info.value.code is ErrorCode.BAD_PAYLOAD


def test_desired_state_defaults() -> None:
    frame = Frame(FrameType.AUTH_OK, 0, 0, encode_payload({6: b"x" * 32, 7: 60, 9: {4: 3}}, 0))
    message = parse_message(frame)
    assert isinstance(message, AuthOk)
    assert message.desired == DesiredState(version=3)
    desired = DesiredState(4, True, -500, 1_800_000_000)
    body = message_map(AuthOk(proof=b"x" * 32, heartbeat_s=60, desired=desired))
    assert body[9] == {1: 1, 2: -500, 3: 1_800_000_000, 4: 4}


def test_command_args_are_a_map_of_integers() -> None:
    command = Command(cid=7, op=1, exp=1_700_000_100, args={1: 250})
    assert message_map(command) == {30: 7, 31: 1, 32: 1_700_000_100, 33: {1: 250}}
    assert message_map(Command(cid=7, op=9, exp=0)) == {30: 7, 31: 9, 32: 0}


# --------------------------------------------------------------------------- payload codecs


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_payload_is_an_empty_map(encoding: int) -> None:
    assert decode_payload(b"", encoding) == {}
    assert parse_message(Frame(FrameType.PING, encoding << 4, 3, b"")) == Ping(seq=3)


@pytest.mark.parametrize(
    ("payload", "encoding"),
    [
        (msgpack.packb([1, 2]), 0),
        (cbor2.dumps([1, 2]), 1),
        (msgpack.packb(5), 0),
        (b"\xc1", 0),  # never-used msgpack byte
        (b"\x85\x00", 0),  # truncated map
        (b"\xa5\x00", 1),
        (b"\xff", 1),
        (msgpack.packb({1: msgpack.ExtType(5, b"x")}), 0),
        (msgpack.packb({1: 2}) + b"\x00", 0),  # trailing bytes
        (cbor2.dumps({1: 2}) + b"\x00", 1),  # trailing bytes
        (b"\xd9\xd9\xf7" + cbor2.dumps({1: 2}), 1),  # self-described CBOR: a tag, not a map
    ],
)
def test_undecodable_payloads(payload: bytes, encoding: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_payload(payload, encoding)
    assert info.value.code is ErrorCode.BAD_PAYLOAD


@pytest.mark.parametrize("encoding", range(2, 16))
def test_unknown_encoding(encoding: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_payload(b"\x80", encoding)
    assert info.value.code is ErrorCode.UNKNOWN_ENCODING
    with pytest.raises(LocalProtocolError):
        encode_payload({}, encoding)


CBOR_MAP = cbor2.dumps({1: 2})  # a1 01 02


@pytest.mark.parametrize(
    "trailing",
    [
        b"\x00",  # a whole second item
        b"\xa0",  # a second (empty) map
        b"\xff",  # a stray break
        b"\x19",  # the start of an item, cut short
        b"\x00" * 1000,
        CBOR_MAP,  # the same map twice
    ],
    ids=repr,
)
@pytest.mark.parametrize(
    "head",
    [CBOR_MAP, b"\xbf\x01\x02\xff", b"\xb9\x00\x01\x01\x02"],  # definite, indefinite, wide
    ids=["definite", "indefinite", "wide length"],
)
def test_trailing_bytes_after_a_cbor_map_are_refused(head: bytes, trailing: bytes) -> None:
    assert decode_payload(head, Encoding.CBOR) == {1: 2}
    with pytest.raises(RemoteProtocolError) as info:
        decode_payload(head + trailing, Encoding.CBOR)
    assert info.value.code is ErrorCode.BAD_PAYLOAD


def test_trailing_bytes_are_refused_in_both_encodings() -> None:
    for encoding in ENCODINGS:
        payload = encode_payload({0: 1, 1: 7, 2: 3}, encoding) + b"\x00"
        for frame_type in (FrameType.TELEMETRY, FrameType.ACK):
            frame = Frame(frame_type, encoding << 4, 0, payload)
            with pytest.raises(RemoteProtocolError) as info:
                parse_message(frame)
            assert info.value.code is ErrorCode.BAD_PAYLOAD
        with pytest.raises(RemoteProtocolError):
            parse_record(Frame(FrameType.TELEMETRY, encoding << 4, 0, payload))


@settings(max_examples=200, deadline=None)
@given(strategies.messages, st.binary(min_size=1, max_size=20))
def test_any_cbor_payload_with_trailing_bytes_is_refused(message: Message, junk: bytes) -> None:
    payload = encode_payload(message_map(message), Encoding.CBOR)
    assert decode_payload(payload, Encoding.CBOR) == message_map(message)
    with pytest.raises(RemoteProtocolError):
        decode_payload(payload + junk, Encoding.CBOR)


def test_message_map_refuses_a_non_message() -> None:
    with pytest.raises(LocalProtocolError):
        message_map(object())  # type: ignore[arg-type]  # deliberately not a message


def test_text_is_utf8() -> None:
    hello = Hello(did="净水器-01", fw="v1", client_nonce=b"\x00" * 8)
    payload = encode_payload(message_map(hello), 0)
    assert "净水器-01".encode() in payload
    assert parse_message(Frame(FrameType.HELLO, 0, 0, payload)) == hello


def test_set_state_args_round_trip_the_desired_state_map() -> None:
    from aquafleet.protocol import DesiredState, desired_state_args, desired_state_from_args

    desired = DesiredState(
        version=9, locked=True, remaining_ml=-120, rental_expires_at=1_800_000_000
    )
    args = desired_state_args(desired)
    assert args == {1: 1, 2: -120, 3: 1_800_000_000, 4: 9}
    assert desired_state_from_args(args) == desired
    assert desired_state_from_args({4: 2}) == DesiredState(version=2)


def test_set_state_args_without_a_version_are_refused() -> None:
    from aquafleet.protocol import RemoteProtocolError, desired_state_from_args

    with pytest.raises(RemoteProtocolError):
        desired_state_from_args({1: 1})
    with pytest.raises(RemoteProtocolError):
        desired_state_from_args({1: 2, 4: 1})  # lock is 0 or 1
