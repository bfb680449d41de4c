"""The compiled twins (protocol/_speedups.c) against the pure-Python references.

Three ways, as aiohttp tests its C HTTP parser: the protocol suite's vectors run again with
the extension switched off (so both twins pass the same golden frames), the twins are fed the
same generated input (valid frames, garbage, corrupted and split streams, hostile payloads)
and must answer alike, and the compiled path must really be the one taken for the common case.
"""

from __future__ import annotations

import hmac
import itertools
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aquafleet.protocol import ProtocolError, mqtt_wire, speedups
from aquafleet.protocol.constants import MAX_PAYLOAD, ErrorCode, EventKind, Flag, FrameType
from aquafleet.protocol.frames import (
    Frame,
    FrameDecoder,
    MacKey,
    PyFrameDecoder,
    PyMacKey,
    encode_frame,
)
from aquafleet.protocol.message_types import Event, FilterReading, Record, Telemetry
from aquafleet.protocol.messages import (
    TelemetryReport,
    decode_payload,
    encode_payload,
    message_map,
    parse_record,
    parse_telemetry_report,
    py_parse_record,
    py_parse_telemetry_report,
    record_from_map,
)
from aquafleet.protocol.mqtt_envelope import envelope_fields, seal_topic
from tests.protocol.helpers import raw_frame

ROOT = Path(__file__).resolve().parents[2]
compiled = speedups.compiled

needs_compiled = pytest.mark.skipif(
    compiled is None, reason="extension switched off (AQUAFLEET_NO_EXTENSIONS)"
)


def test_the_extension_is_built_and_in_use() -> None:
    """`pip install` compiles it on a machine like this one; a silent fallback to Python would
    lose the gateway its per-frame speed without anyone noticing."""
    if speedups.DISABLED:
        assert compiled is None and FrameDecoder is PyFrameDecoder
        return
    assert compiled is not None, "protocol/_speedups.c was not built: see setup.py"
    assert speedups.implementation() == "compiled"
    assert FrameDecoder is compiled.FrameDecoder and MacKey is compiled.MacKey


@pytest.mark.timeout(330)  # a suite of its own: the subprocess's 300 s, and its start
def test_the_python_twins_pass_the_same_vectors() -> None:
    """The golden frames, decoder, message and session tests once more, extension off (on
    SQLite only: what the twins decide does not depend on the database, and the PostgreSQL
    half of the ledger writer's tests doubled the run, past the suite's 120 s per test on a
    busy machine)."""
    env = {**os.environ, "AQUAFLEET_NO_EXTENSIONS": "1"}
    files = [
        "protocol/test_frames.py", "protocol/test_messages.py", "protocol/test_session.py",
        "protocol/test_login.py", "gateway/test_mqtt_protocol.py", "gateway/test_ledger_writer.py",
        "gateway/test_mqtt_wire.py", "gateway/test_meter_script.py",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         "-m", "not postgres", *(f"tests/{name}" for name in files)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]


# --------------------------------------------------------------------------- MacKey


@needs_compiled
@given(key=st.binary(max_size=130), message=st.binary(max_size=1100))
def test_mac_keys_agree_with_hmac(key: bytes, message: bytes) -> None:
    expected = hmac.digest(key, message, "sha256")[:8]
    assert MacKey(key).mac(message) == PyMacKey(key).mac(message) == expected
    for twin in (MacKey(key), PyMacKey(key)):
        assert twin.verify(message, expected) is True
        assert twin.verify(message, bytes(8)) is (expected == bytes(8))
        assert twin.verify(message, expected[:7]) is False
        assert twin.verify(message, None) is False


# --------------------------------------------------------------------------- FrameDecoder


def _outcomes(decoder: object, chunks: list[bytes]) -> list[object]:
    """Everything a decoder answers to the chunks, drained after each; then its counts."""
    seen: list[object] = []
    for chunk in chunks:
        try:
            decoder.feed(chunk)  # type: ignore[attr-defined]
        except ProtocolError as exc:
            seen.append(("feed", type(exc).__name__, exc.code, exc.reason))
            continue
        while True:
            try:
                frame = decoder.next_frame()  # type: ignore[attr-defined]
            except ProtocolError as exc:
                seen.append((type(exc).__name__, exc.code, exc.reason))
                continue
            if frame is None:
                break
            assert type(frame) is Frame
            seen.append(tuple(frame))
        seen.append(("buffered", decoder.buffered))  # type: ignore[attr-defined]
    stats = decoder.stats  # type: ignore[attr-defined]
    seen.append((stats.garbage_bytes, stats.crc_errors, stats.oversize_lengths))
    return seen


_KEY = b"\x07" * 32

frame_bytes = st.builds(
    lambda frame_type, seq, payload, flags, version, mac: raw_frame(
        frame_type, seq, payload, flags=flags, version=version,
        mac_key=_KEY if mac else None,
    ),
    st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=80),
    st.integers(0, 255).map(lambda f: f & ~Flag.MAC), st.sampled_from([1, 1, 1, 2]),
    st.booleans(),
)  # fmt: skip


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    parts = draw(
        st.lists(
            st.one_of(
                frame_bytes,
                st.binary(max_size=12),  # garbage, modem text
                st.sampled_from([b"\x5a", b"\x5a\xa5", b"\xa5", b"CONNECT OK\r\n"]),
                frame_bytes.flatmap(  # one byte of a good frame changed
                    lambda f: st.tuples(st.integers(0, len(f) - 1), st.integers(1, 255)).map(
                        lambda c: f[: c[0]] + bytes([f[c[0]] ^ c[1]]) + f[c[0] + 1 :]
                    )
                ),
                frame_bytes.map(lambda f: f[: len(f) // 2]),  # a cut frame
                # a header claiming more than the cap
                st.just(b"\x5a\xa5\x01\x20\x00\x00\x01" + (MAX_PAYLOAD + 1).to_bytes(2, "big")),
            ),
            max_size=12,
        )
    )
    return _cut_anywhere(draw, b"".join(parts))


def _cut_anywhere(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut at up to six drawn places (as reads from a socket would be)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    edges = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


@needs_compiled
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=streams())
def test_decoders_agree_on_any_stream(chunks: list[bytes]) -> None:
    assert _outcomes(FrameDecoder(), chunks) == _outcomes(PyFrameDecoder(), chunks)


@needs_compiled
@given(data=st.binary(max_size=3000), cut=st.integers(0, 3000))
def test_decoders_agree_on_random_bytes(data: bytes, cut: int) -> None:
    chunks = [data[:cut], data[cut:]]
    assert _outcomes(FrameDecoder(), chunks) == _outcomes(PyFrameDecoder(), chunks)


@needs_compiled
def test_decoders_refuse_to_hold_more_than_the_cap_alike() -> None:
    """feed() again without draining, while more than MAX_UNPARSED bytes are held."""
    answers = []
    for decoder in (FrameDecoder(), PyFrameDecoder()):
        decoder.feed(b"\x5a" * 2049)
        with pytest.raises(ProtocolError) as caught:
            decoder.feed(b"\x00")
        answers.append((type(caught.value).__name__, caught.value.code, caught.value.reason))
        assert decoder.buffered == 2049
    assert answers[0] == answers[1] == (
        "LocalProtocolError", ErrorCode.BUFFER_OVERFLOW,
        "feed() called again without draining next_frame()",
    )  # fmt: skip


@needs_compiled
def test_decoders_take_bytearray_and_memoryview_alike() -> None:
    frame = raw_frame(FrameType.PING, 3, b"\x80", mac_key=_KEY)
    for data in (bytearray(frame), memoryview(frame)):
        for decoder in (FrameDecoder(), PyFrameDecoder()):
            decoder.feed(data[:5])
            decoder.feed(data[5:])
            assert decoder.next_frame() == (0x10, Flag.MAC, 3, b"\x80", frame[-10:-2], frame[2:-10])


# --------------------------------------------------------------------------- parse_record


def _py_outcome(frame: Frame) -> object:
    try:
        return py_parse_record(frame)
    except ProtocolError as exc:
        return (exc.code, exc.reason)


def _check_record(frame: Frame) -> Record | None:
    assert compiled is not None
    fast = compiled.parse_record(frame)
    reference = _py_outcome(frame)
    if fast is not None:  # the compiled path never accepts what the reference refuses
        assert type(fast) is Record and fast == reference
        assert [type(v) for v in fast] == [type(v) for v in reference]  # type: ignore[union-attr]
    # and the public function answers as the reference, whichever path it took
    try:
        assert parse_record(frame) == reference
    except ProtocolError as exc:
        assert (exc.code, exc.reason) == reference
    return fast  # type: ignore[no-any-return]


scalar = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, 255, 256, 2**16 - 1, 2**32 - 1, 2**32, 2**53 - 1, 2**53, -1]),
    st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=4),
    st.binary(max_size=4),
)  # fmt: skip
value = st.recursive(
    scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.integers(-5, 30), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from([0, 1, 2, 10, 16, 18, 20, 23]), st.integers(-3, 40))
u32 = st.integers(0, 2**32 - 1)
# A record as devices send them (both kinds' keys), so that most examples get past the checks
valid_record = st.fixed_dictionaries(
    {0: st.integers(1, 2**32 - 1), 1: u32, 2: u32},
    optional={
        10: st.none() | st.integers(0, 2**53 - 1), 23: st.none() | st.integers(0, 2**53 - 1),
        16: st.none() | u32, 18: st.none() | u32, 20: st.integers(1, 255),
        11: st.lists(st.lists(st.integers(0, 70_000), max_size=4), max_size=3), 12: u32,
    },
)  # fmt: skip
payloads = st.one_of(
    valid_record,
    st.tuples(valid_record, st.dictionaries(keys, value, min_size=1, max_size=2)).map(
        lambda both: {**both[0], **both[1]}  # one or two keys changed or added
    ),
    st.tuples(  # a known key at the edge of its range, or of msgpack's integer widths
        valid_record,
        st.sampled_from([0, 1, 2, 10, 16, 18, 20, 23]),
        st.sampled_from(
            [
                -1,
                0,
                1,
                255,
                256,
                2**32 - 1,
                2**32,
                2**53 - 1,
                2**53,
                2**63 - 1,
                2**63,
                2**64 - 1,
                -(2**63),
                None,
                True,
                1.0,
            ]
        ),
    ).map(lambda edge: {**edge[0], edge[1]: edge[2]}),
    st.dictionaries(keys, value, max_size=9),
)


@needs_compiled
@settings(max_examples=1500)
@given(
    payload=payloads,
    frame_type=st.sampled_from([0x20, 0x21, 0x21, 0x30]),
    flags=st.sampled_from([0, Flag.DUP, Flag.ACK_REQ | Flag.DUP, 0x10]),
    trailing=st.sampled_from([b"", b"", b"\x00", b"\xc0\xc0"]),
    seq=st.integers(0, 0xFFFF),
)
def test_parse_record_agrees_with_the_reference(
    payload: dict, frame_type: int, flags: int, trailing: bytes, seq: int
) -> None:
    packed = msgpack.packb(payload, use_bin_type=True) + trailing
    _check_record(Frame(frame_type, flags, seq, packed))


EDGES = [-1, 0, 1, 255, 256, 2**16, 2**32 - 1, 2**32, 2**53 - 1, 2**53, 2**63 - 1, 2**63,
         2**64 - 1, -(2**63), None, True, False, 1.0, "1", b"\x01", [1]]  # fmt: skip


@needs_compiled
@pytest.mark.parametrize("frame_type", [0x20, 0x21])
@pytest.mark.parametrize("key", [0, 1, 2, 10, 16, 18, 20, 23, 11])
def test_every_known_key_at_every_edge(frame_type: int, key: int) -> None:
    """Each key the record reads, set to each edge of its range and of msgpack's encodings."""
    taken = 0
    for edge in EDGES:
        payload = {0: 5, 1: 6, 2: 7, 10: 100, 16: 1, 18: 2, 20: 3, 23: 200, key: edge}
        packed = msgpack.packb(payload, use_bin_type=True)
        taken += _check_record(Frame(frame_type, 0, 1, packed)) is not None
    assert taken >= 2  # the in-range ones (at least 1 and 255) went the compiled way


@needs_compiled
@given(data=st.binary(max_size=64), frame_type=st.sampled_from([0x20, 0x21]))
def test_parse_record_agrees_on_random_payloads(data: bytes, frame_type: int) -> None:
    _check_record(Frame(frame_type, 0, 1, data))


@needs_compiled
def test_repeated_keys_and_non_integer_keys_go_to_the_reference() -> None:
    # {0: 5, 0: 6, 1: 7, 2: 8}: msgpack keeps the last 0 (rec 6); the compiled path steps aside
    repeated = bytes([0x84, 0x00, 0x05, 0x00, 0x06, 0x01, 0x07, 0x02, 0x08])
    frame = Frame(0x20, 0, 1, repeated)
    assert compiled is not None and compiled.parse_record(frame) is None
    assert parse_record(frame).rec == 6
    # True == 1 as a dict key: {0: 1, True: 7, 2: 3} reads boot 7 in the reference
    bool_key = bytes([0x83, 0x00, 0x01, 0xC3, 0x07, 0x02, 0x03])
    frame = Frame(0x20, 0, 1, bool_key)
    assert compiled.parse_record(frame) is None
    assert _check_record(frame) is None and parse_record(frame).boot == 7


def _device_records() -> list[Frame]:
    telemetry = Telemetry(
        rec=9, boot=3, ts=1_790_000_000, flow_total_ml=2**40, tds_in_ppm=300, tds_out_ppm=12,
        temperature_dc=-40, cnt_epoch=2, signal=-90, state_bits=5, fault_bits=0, filters=(),
    )  # fmt: skip
    event = Event(rec=10, boot=3, ts=1_790_000_001, kind=2, flow_total_ml=77)
    frames = []
    for message, frame_type in ((telemetry, 0x20), (event, 0x21)):
        payload = encode_payload(message_map(message), 0)
        frames.append(Frame(frame_type, Flag.DUP, 5, payload))
    return frames


@needs_compiled
def test_the_common_case_takes_the_compiled_path() -> None:
    for frame in _device_records():
        fast = _check_record(frame)
        assert fast is not None, frame
        assert fast.dup is True and fast.seq == 5
    cbor = Frame(0x20, 1 << Flag.ENCODING_SHIFT, 1, encode_payload({0: 1, 1: 2, 2: 3}, 1))
    assert compiled is not None and compiled.parse_record(cbor) is None  # CBOR: the reference
    assert parse_record(cbor).rec == 1


# --------------------------------------------------------------------------- encode_ack


@needs_compiled
@given(
    tx_seq=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    rc=st.integers(0, 255),
    watermark=st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    key=st.none() | st.binary(min_size=32, max_size=32),
)
def test_ack_frames_are_byte_for_byte_the_references(
    tx_seq: int, seq: int, rc: int, watermark: tuple[int, int] | None, key: bytes | None
) -> None:
    assert compiled is not None
    body: dict[int, object] = {0: seq, 1: rc}
    if watermark is not None:
        body[2] = watermark
    expected = encode_frame(
        FrameType.ACK, tx_seq, encode_payload(body, 0), mac_key=PyMacKey(key) if key else None
    )
    fast = compiled.encode_ack(MacKey(key) if key else None, tx_seq, 0, seq, rc, watermark)
    assert fast == expected
    if watermark is not None:
        assert compiled.encode_ack(None, tx_seq, 0, seq, rc, list(watermark)) == (
            encode_frame(FrameType.ACK, tx_seq, encode_payload(body, 0))
        )


@needs_compiled
def test_acks_the_compiled_path_does_not_build_are_left_to_python() -> None:
    assert compiled is not None
    key = MacKey(b"\x01" * 32)
    assert compiled.encode_ack(key, 1, 0x10, 1, 0, None) is None  # CBOR
    assert compiled.encode_ack(key, 1, 0, 1, 0, (2**32, 1)) is None  # beyond a u32
    assert compiled.encode_ack(key, 1, 0, 1, 0, (1, 2, 3)) is None
    assert compiled.encode_ack(PyMacKey(b"\x01" * 32), 1, 0, 1, 0, None) is None
    assert compiled.encode_ack(key, 1, 0, 1, True, None) is None  # a bool is not an int here


# --------------------------------------------------------------------------- telemetry report


def _py_report(payload: bytes) -> object:
    try:
        return py_parse_telemetry_report(payload, 0)
    except ProtocolError as exc:
        return (exc.code, exc.reason)


def _check_report(payload: bytes) -> TelemetryReport | None:
    assert compiled is not None
    fast = compiled.parse_telemetry_report(payload)
    reference = _py_report(payload)
    if fast is not None:
        assert type(fast) is TelemetryReport and fast == reference
        assert [type(v) for v in fast] == [type(v) for v in reference]  # type: ignore[union-attr]
    try:
        assert parse_telemetry_report(payload, 0) == reference
    except ProtocolError as exc:
        assert (exc.code, exc.reason) == reference
    return fast  # type: ignore[no-any-return]


filter_row = st.lists(st.sampled_from([0, 1, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, -1]),
                      min_size=3, max_size=5)  # fmt: skip
valid_report = st.fixed_dictionaries(
    {0: st.integers(1, 2**32 - 1), 1: u32, 2: u32},
    optional={
        10: st.none() | st.integers(0, 2**53 - 1), 11: st.none() | st.integers(0, 2**16 - 1),
        12: st.none() | st.integers(0, 2**16 - 1), 13: st.none() | st.integers(-1000, 2000),
        14: st.none() | st.lists(st.tuples(st.integers(0, 255), u32, u32,
                                           st.integers(0, 2**16 - 1)).map(list), max_size=16),
        15: st.none() | u32, 16: st.none() | u32, 17: st.none() | st.integers(-150, 255),
        18: st.none() | u32, 19: value,
    },
)  # fmt: skip
report_payloads = st.one_of(
    valid_report,
    st.tuples(valid_report, st.dictionaries(keys | st.integers(10, 19), value, max_size=2)).map(
        lambda both: {**both[0], **both[1]}
    ),
    st.tuples(valid_report, st.lists(filter_row, max_size=17)).map(
        lambda both: {**both[0], 14: both[1]}
    ),
)


@needs_compiled
@settings(max_examples=1500)
@given(payload=report_payloads, trailing=st.sampled_from([b"", b"", b"\x00"]))
def test_telemetry_reports_agree_with_the_reference(payload: dict, trailing: bytes) -> None:
    _check_report(msgpack.packb(payload, use_bin_type=True) + trailing)


@needs_compiled
@pytest.mark.parametrize("key", [0, 1, 2, 10, 11, 12, 13, 14, 15, 16, 17, 18])
def test_every_report_key_at_every_edge(key: int) -> None:
    taken = 0
    for edge in [*EDGES, -150, -151, -1000, -1001, 2000, 2001, [], [[1, 2, 3, 4]] * 17]:
        payload = {0: 5, 1: 6, 2: 7, 11: 300, 13: 250, 14: [[1, 2, 3, 4]], 17: 20, key: edge}
        taken += _check_report(msgpack.packb(payload, use_bin_type=True)) is not None
    assert taken >= 2


@needs_compiled
def test_a_device_report_takes_the_compiled_path() -> None:
    telemetry = Telemetry(
        rec=9, boot=3, ts=1_790_000_000, flow_total_ml=2**40, tds_in_ppm=300, tds_out_ppm=12,
        temperature_dc=-40, cnt_epoch=2, signal=-90, state_bits=5, fault_bits=0,
        filters=(FilterReading(1, 100, 900, 0), FilterReading(3, 400, 2000, 65535)),
    )  # fmt: skip
    report = _check_report(encode_payload(message_map(telemetry), 0))
    assert report is not None
    assert report.filters == [[1, 100, 900, 0], [3, 400, 2000, 65535]]
    assert _check_report(msgpack.packb({0: 1, 1: 0, 2: 0, 14: []})).filters is None  # type: ignore[union-attr]


@needs_compiled
def test_every_filter_field_at_every_edge() -> None:
    taken = 0
    for position in range(4):
        for edge in [-1, 0, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, None, True, 1.5]:
            row: list[object] = [1, 2, 3, 4]
            row[position] = edge
            payload = {0: 5, 1: 6, 2: 7, 14: [[9, 9, 9, 9], row]}
            taken += _check_report(msgpack.packb(payload, use_bin_type=True)) is not None
    assert taken >= 4 * 2
    for row in ([1, 2, 3], [1, 2, 3, 4, 5], [], (1, 2, 3, 4)):
        payload = {0: 5, 1: 6, 2: 7, 14: [row, [1, 2, 3, 4]]}
        _check_report(msgpack.packb(payload, use_bin_type=True))


@needs_compiled
def test_a_repeated_filters_key_goes_to_the_reference() -> None:
    # {0: 1, 1: 2, 2: 3, 14: [[1, 2, 3, 4]], 14: nil}: msgpack keeps the last (no filters)
    payload = bytes([0x85, 0, 1, 1, 2, 2, 3, 14, 0x91, 0x94, 1, 2, 3, 4, 14, 0xC0])
    assert compiled is not None and compiled.parse_telemetry_report(payload) is None
    assert parse_telemetry_report(payload, 0).filters is None


# --------------------------------------------------------------------------- MQTT uplink and ack


def _py_uplink(payload: bytes, frame_type: int) -> object:
    """What protocol/mqtt.py's receive_data reads of a record uplink, in Python."""
    try:
        body = decode_payload(payload, 0)
        seq, sent_ms = envelope_fields(body)
        frame = Frame(frame_type, 0, seq, payload)
        return (seq, sent_ms, record_from_map(body, frame))
    except ProtocolError as exc:
        return (exc.code, exc.reason)


def _check_uplink(payload: bytes, frame_type: int) -> object:
    assert compiled is not None
    fast = compiled.parse_uplink_record(payload, frame_type)
    reference = _py_uplink(payload, frame_type)
    if fast is not None:
        assert fast == reference
        assert type(fast[2]) is Record
        assert [type(v) for v in fast[2]] == [type(v) for v in reference[2]]  # type: ignore[index]
    return fast


uplink_payloads = st.tuples(
    payloads,
    st.one_of(st.integers(0, 2**16 - 1), st.sampled_from([-1, 2**16, None, True, 1.5])),
    st.one_of(st.integers(0, 2**53 - 1), st.sampled_from([-1, 2**53, 2**64 - 1, None, "1"])),
).map(lambda parts: {**parts[0], 40: parts[1], 41: parts[2]})


@needs_compiled
@settings(max_examples=1500)
@given(
    payload=uplink_payloads,
    frame_type=st.sampled_from([FrameType.TELEMETRY, FrameType.EVENT, 0x20, 0x21]),
    trailing=st.sampled_from([b"", b"", b"\x00"]),
)
def test_mqtt_uplinks_agree_with_the_reference(
    payload: dict, frame_type: int, trailing: bytes
) -> None:
    _check_uplink(msgpack.packb(payload, use_bin_type=True) + trailing, frame_type)


@needs_compiled
def test_an_mqtt_device_record_takes_the_compiled_path() -> None:
    for frame in _device_records():
        body = {
            **msgpack.unpackb(frame.payload, strict_map_key=False),
            40: 7,
            41: 1_790_000_000_123,
        }
        fast = _check_uplink(msgpack.packb(body), FrameType(frame.type))
        assert fast is not None and fast[:2] == (7, 1_790_000_000_123)
        assert fast[2].frame_type is FrameType(frame.type)  # as the Python path keeps it


@needs_compiled
@given(
    seq=st.integers(0, 0xFFFF), rc=st.integers(0, 255), tx_seq=st.integers(0, 0xFFFF),
    watermark=st.none() | st.tuples(u32, u32), sent_ms=st.integers(0, 2**53 - 1),
    topic=st.binary(max_size=60), key=st.binary(min_size=1, max_size=70),
)  # fmt: skip
def test_mqtt_acks_are_byte_for_byte_the_references(
    seq: int, rc: int, tx_seq: int, watermark: tuple[int, int] | None, sent_ms: int,
    topic: bytes, key: bytes,
) -> None:  # fmt: skip
    assert compiled is not None
    body: dict[int, object] = {0: seq, 1: rc}
    if watermark is not None:
        body[2] = list(watermark)
    body[40], body[41] = tx_seq, sent_ms
    expected = seal_topic(PyMacKey(key), topic, body, 0)
    sealed = compiled.seal_ack(MacKey(key), topic, seq, rc, watermark, tx_seq, sent_ms)
    assert sealed == expected
    assert MacKey(key).verify_parts(topic, sealed[:-8], sealed[-8:])
    assert PyMacKey(key).verify_parts(topic, sealed[:-8], sealed[-8:])
    assert not MacKey(key).verify_parts(topic + b"x", sealed[:-8], sealed[-8:])
    assert compiled.seal_ack(PyMacKey(key), topic, seq, rc, watermark, tx_seq, sent_ms) is None
    assert compiled.seal_ack(MacKey(key), topic, seq, rc, watermark, tx_seq, 2**53) is None


# ------------------------------------------------------------------ a metering round's groups


def _pack_reference(prefix: object, items: list[object]) -> bytes | type:
    from aquafleet.gateway.meter import py_pack_group

    try:
        return py_pack_group(msgpack.Packer(use_bin_type=False), prefix, items)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:
        return type(exc)


INT64 = st.one_of(
    st.sampled_from([0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                     2**53 - 1, 2**63 - 1, -1, -32, -33, -128, -129, -32768, -32769,
                     -(2**31), -(2**31) - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)  # fmt: skip
meter_records = st.builds(
    Record,
    frame_type=st.sampled_from([0x20, 0x21]), seq=st.integers(0, 65535), dup=st.booleans(),
    rec=INT64, boot=INT64, ts=INT64, flow_total_ml=st.one_of(st.none(), INT64),
    cnt_epoch=st.one_of(st.none(), INT64), event_kind=INT64,
    payload=st.one_of(st.binary(max_size=80), st.sampled_from([b"x" * 31, b"y" * 32])),
    encoding=st.sampled_from([0, 1]), state_bits=INT64,
)  # fmt: skip
meter_items = st.tuples(st.text(max_size=40), meter_records)
odd_meter_item = st.one_of(
    meter_items.map(list),  # a list, not a (did, record) tuple
    meter_items.map(lambda t: (t[0].encode(), t[1])),  # a bytes did
    meter_items.map(lambda t: (t[0], tuple(t[1]))),  # a plain tuple, not a Record
    st.tuples(meter_items, st.sampled_from([0, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
              st.one_of(st.booleans(), st.integers(2**63, 2**70), st.integers(-(2**70),
                        -(2**63) - 1), st.floats(), st.text(max_size=3), st.none()))
    .map(lambda t: (t[0][0], t[0][1]._replace(**{Record._fields[t[1]]: t[2]}))),
)  # fmt: skip


def _meter_lua_shape(items: list[object]) -> bool:
    """(str, Record) pairs of exact ints in 64 bits (None for the counter's two) and bytes."""
    return all(
        type(item) is tuple and type(item[0]) is str and type(item[1]) is Record
        and all(type(v) is int and -(2**63) <= v < 2**63
                for name, v in zip(Record._fields, item[1], strict=True)
                if name not in ("seq", "dup", "payload")
                and not (v is None and name in ("flow_total_ml", "cnt_epoch")))
        and type(item[1].payload) is bytes
        for item in items
    )  # fmt: skip


@needs_compiled
@settings(max_examples=800)
@given(
    items=st.lists(st.one_of(meter_items, meter_items, odd_meter_item), max_size=20),
    prefix=st.one_of(st.just("aq:{07}:"), st.text(max_size=40)),
)
def test_metering_groups_are_byte_for_byte_the_references(items: list[object], prefix: str) -> None:
    """What meter.lua reads: the compiled packer writes exactly msgpack's bytes, and leaves
    everything it does not pack itself (another type anywhere) to Python."""
    assert compiled is not None
    fast = compiled.pack_meter_group(prefix, items)
    if fast is not None:
        assert fast == _pack_reference(prefix, items)
    else:  # meter.lua's usual round must take the compiled path
        assert not _meter_lua_shape(items)


@needs_compiled
def test_metering_groups_at_every_length_edge() -> None:
    """Header sizes the random test rarely reaches: 15/16 and 65,535/65,536 records in a
    group, payloads and dids at 31/32 and 65,535/65,536 bytes (str16/str32), non-ASCII dids."""
    assert compiled is not None
    record = Record(0x20, 1, False, 7, 3, 1_790_000_000, 12_345, 2, 0, b"p", 1, -1)
    for count in (0, 1, 15, 16, 65535, 65536):
        items = [(f"DEV{i:08d}", record) for i in range(count)]
        assert compiled.pack_meter_group("aq:{00}:", items) == _pack_reference("aq:{00}:", items)
    for size in (31, 32, 255, 256, 65535, 65536):
        items = [("ü" * (size // 2) + "d" * (size % 2), record._replace(payload=b"z" * size))]
        assert compiled.pack_meter_group("p" * size, items) == _pack_reference("p" * size, items)


@needs_compiled
def test_a_round_packs_through_the_compiled_twin() -> None:
    """MeterScript really takes it (a silent fallback would cost the window-1 path ~1.5 us a
    record), and the whole call's bytes are the reference's."""
    from aquafleet.gateway import meter
    from aquafleet.gateway.keys import Keyspace

    assert meter._compiled_pack_group is compiled.pack_meter_group
    script = meter.MeterScript(None, Keyspace("aq", 16))  # type: ignore[arg-type]
    record = Record(0x20, 1, False, 7, 3, 1_790_000_000, None, None, 0, b"p", 1, -1)
    rows = {0: [("A", record)], 5: [("B", record), ("C", record._replace(rec=8))]}
    packer = msgpack.Packer(use_bin_type=False)
    expected = packer.pack_array_header(2) + b"".join(
        meter.py_pack_group(packer, script._prefix[shard], rows[shard]) for shard in (0, 5)
    )
    assert script._pack([0, 5], rows) == expected
    assert msgpack.unpackb(expected, raw=False)[1][1][1] == [
        "C", 0x20, 3, 8, 1_790_000_000, -1, -1, 0, 1, "p", -1
    ]  # fmt: skip


# --------------------------------------------------------------------------- ledger rows


def _rows_outcome(records: bytes, received_at: object) -> object:
    from aquafleet.gateway.ledger import py_entry_rows

    try:
        return py_entry_rows(records, received_at)  # type: ignore[arg-type]
    except (KeyError, ValueError, TypeError, OverflowError, UnicodeDecodeError, AttributeError,
            msgpack.UnpackException) as exc:  # fmt: skip
        return type(exc)


record_items = st.tuples(
    st.one_of(st.text(max_size=20).map(str.encode), st.binary(max_size=20)),  # did, raw
    st.sampled_from([0x20, 0x21, 0x30]), u32, st.integers(1, 2**32 - 1), u32,
    st.integers(0, 2**53), st.integers(-1, 2**53), st.integers(-1, 2**32 - 1),
    st.sampled_from([0, 1, 2, 7]), st.sampled_from([0, 1]), st.binary(max_size=80),
).map(list)  # fmt: skip
odd_item = st.one_of(
    record_items.map(lambda item: item[:-1]),  # 10 fields
    record_items.map(lambda item: [*item, 0]),  # 12 fields
    st.tuples(record_items, st.integers(0, 10), value).map(
        lambda t: [*t[0][: t[1]], t[2], *t[0][t[1] + 1 :]]  # one field of another type
    ),
)


@needs_compiled
@settings(max_examples=800)
@given(
    items=st.lists(st.one_of(record_items, record_items, odd_item), max_size=8),
    str_type=st.booleans(),
    trailing=st.sampled_from([b"", b"", b"\x00"]),
)
def test_ledger_rows_agree_with_the_reference(
    items: list[list[object]], str_type: bool, trailing: bytes
) -> None:
    """meter.lua's cmsgpack writes a Lua string as a msgpack str; bin is read alike (raw)."""
    import datetime as dt

    from aquafleet.models.usage import UsageRow

    assert compiled is not None
    at = dt.datetime(2026, 12, 6, 21, 0, tzinfo=dt.UTC)
    records = msgpack.packb(items, use_bin_type=not str_type) + trailing
    fast = compiled.entry_rows(records, at, UsageRow)
    reference = _rows_outcome(records, at)
    if fast is not None:
        assert fast == reference
        rows, payloaded = fast
        assert all(type(row) is UsageRow for row in rows)
        assert [[type(v) for v in row] for row in rows] == [
            [type(v) for v in row]
            for row in reference[0]  # type: ignore[index]
        ]
        assert all(any(item[0] is row for row in rows) for item in payloaded)
    elif all(type(item) is list and len(item) == 11 and type(item[0]) is bytes
             and all(type(v) is int and -(2**63) <= v < 2**63 for v in item[1:10])
             and type(item[10]) is bytes for item in items) and not trailing:  # fmt: skip
        # meter.lua's exact shape must take the compiled path (unless a did is not UTF-8)
        assert not all(_utf8(item[0]) for item in items)  # type: ignore[arg-type]


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


@needs_compiled
def test_dispense_done_events_and_telemetry_carry_their_payloads() -> None:
    import datetime as dt

    from aquafleet.models.usage import UsageRow

    assert compiled is not None and int(EventKind.DISPENSE_DONE) == 1
    at = dt.datetime(2026, 12, 6, 21, 0, tzinfo=dt.UTC)
    items = [
        [b"AQ1", 0x20, 1, 1, 5, 10, 100, 0, 0, 0, b"tele"],
        [b"AQ1", 0x21, 1, 2, 5, 0, -1, -1, 1, 0, b"dispense"],
        [b"AQ1", 0x21, 1, 3, 5, 0, -1, -1, 2, 0, b"other event"],
    ]
    rows, payloaded = compiled.entry_rows(msgpack.packb(items), at, UsageRow)
    assert [p[2] for p in payloaded] == [b"tele", b"dispense"]
    assert rows[1].flow_total_ml is None and rows[1].cnt_epoch is None
    assert (rows, payloaded) == _rows_outcome(msgpack.packb(items), at)


@needs_compiled
def test_ledger_rows_are_out_of_the_collector_s_sight() -> None:
    """A transaction holds thousands of rows until its commit; the collector never untracks a
    tuple subclass itself, so every young collection visited them all. The compiled rows and
    their (row, encoding, payload) items hold nothing that can be in a cycle: untracked."""
    import datetime as dt
    import gc

    from aquafleet.models.usage import UsageRow

    assert compiled is not None
    items = [[b"AQ1", 0x20, 1, 1, 5, 10, 100, 0, 0, 0, b"tele"]]
    at = dt.datetime(2026, 12, 6, 21, 0, tzinfo=dt.UTC)
    rows, payloaded = compiled.entry_rows(msgpack.packb(items), at, UsageRow)
    assert not gc.is_tracked(rows[0]) and not gc.is_tracked(payloaded[0])
    reference_rows, _ = _rows_outcome(msgpack.packb(items), at)  # type: ignore[misc]
    assert gc.is_tracked(reference_rows[0])  # what the collector would have kept visiting
    gc.collect()
    assert gc.is_tracked(reference_rows[0])
    # a receive time the collector tracks (never meter.lua's): the rows stay tracked
    tracked_at = type("TrackedTime", (dt.datetime,), {})(2026, 12, 6, tzinfo=dt.UTC)
    assert gc.is_tracked(tracked_at)
    rows, _ = compiled.entry_rows(msgpack.packb(items), tracked_at, UsageRow)
    assert gc.is_tracked(rows[0])


# --------------------------------------------------------------------------- the MQTT reader


def _reader_outcomes(reader: mqtt_wire.PyPacketReader, chunks: list[bytes]) -> list[object]:
    """What a reader answers to each chunk (packets, or its error's text), then what it holds."""
    outcomes: list[object] = []
    for chunk in chunks:
        try:
            outcomes.append(reader.feed(chunk))
        except mqtt_wire.MqttWireError as exc:
            outcomes.append(("MqttWireError", str(exc)))
            break
    return [*outcomes, reader.buffered]


@st.composite
def broker_streams(draw: st.DrawFn) -> list[bytes]:
    """What a broker sends the bridge: mostly QoS 0 PUBLISHes, between them QoS 1 ones, PUBACKs,
    pings, and now and then something broken; cut anywhere."""
    topic = st.text(max_size=40) | st.just("aq/D0001/up/t")
    good = st.one_of(
        st.builds(lambda t, p: mqtt_wire.publish(t, p), topic, st.binary(max_size=300)),
        st.builds(
            lambda t, p, i: mqtt_wire.publish(t, p, qos=1, packet_id=i),
            topic, st.binary(max_size=40), st.integers(1, 0xFFFF),
        ),
        st.just(b"\x40\x02\x00\x03"),  # PUBACK
        st.just(b"\xd0\x00"),  # PINGRESP
    )  # fmt: skip
    bad = st.sampled_from([
        b"\x30\xff\xff\xff\xff\x01",  # a remaining length of five bytes
        b"\x30\xff\xff\x7f",  # declares more than MAX_PACKET
        b"\x30\x03\x00\x05a",  # shorter than its topic
        b"\x30\x04\x00\x02\xff\xfe",  # topic not UTF-8
        b"\x30\x04\x00\x02\xed\xa0",  # a UTF-16 surrogate, which UTF-8 may not hold
        b"\x30\x01\x00",  # QoS 0 PUBLISH without room for its topic's length
        b"\x30\x00",
        b"\x31\x04\x00\x01ax",  # RETAIN set: the Python path's
        b"\x38\x04\x00\x01ax",  # DUP set
    ])  # fmt: skip
    parts = draw(st.lists(st.one_of(good, good, good, bad), max_size=12))
    return _cut_anywhere(draw, b"".join(parts))


@needs_compiled
@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=broker_streams())
def test_mqtt_readers_agree_on_any_broker_stream(chunks: list[bytes]) -> None:
    assert _reader_outcomes(mqtt_wire.PacketReader(), chunks) == _reader_outcomes(
        mqtt_wire.PyPacketReader(), chunks
    )


@needs_compiled
@given(data=st.binary(max_size=600), cut=st.integers(0, 600))
def test_mqtt_readers_agree_on_random_bytes(data: bytes, cut: int) -> None:
    for first in (b"", b"\x30"):  # random, and random behind a QoS 0 PUBLISH's first byte
        chunks = [first + data[:cut], data[cut:]]
        assert _reader_outcomes(mqtt_wire.PacketReader(), chunks) == _reader_outcomes(
            mqtt_wire.PyPacketReader(), chunks
        )


@needs_compiled
def test_the_bridge_uplink_takes_the_compiled_reader() -> None:
    """A read of QoS 0 PUBLISHes is cut by the extension: the Python loop is not entered."""
    read = [mqtt_wire.publish(f"aq/D{i:04d}/up/t", bytes(range(i % 200))) for i in range(50)]
    data = b"".join(read)
    packets: list[mqtt_wire.Packet] = []
    assert compiled.read_publishes(data, 0, packets, mqtt_wire.Publish) == len(data)
    assert packets == mqtt_wire.PyPacketReader().feed(data)
    assert all(type(p) is mqtt_wire.Publish for p in packets)
    assert mqtt_wire.PacketReader()._read_publishes is compiled.read_publishes
    # and it stops, for the Python loop, at the first packet it does not take
    tail = b"\x40\x02\x00\x03" + read[0]
    assert compiled.read_publishes(data + tail, 0, packets, mqtt_wire.Publish) == len(data)
    assert mqtt_wire.PacketReader().feed(data + tail)[-2:] == [
        mqtt_wire.PubAck(3),
        mqtt_wire.Publish("aq/D0000/up/t", b"", 0, 0),
    ]


@needs_compiled
def test_the_compiled_reader_leaves_a_bytearray_to_python() -> None:
    data = mqtt_wire.publish("aq/D/up/t", b"xy")
    packets: list[mqtt_wire.Packet] = []
    assert compiled.read_publishes(bytearray(data), 0, packets, mqtt_wire.Publish) == 0
    assert packets == []
    with pytest.raises(ValueError):
        compiled.read_publishes(data, len(data) + 1, packets, mqtt_wire.Publish)


# ------------------------------------------------- ServerSession's online path (next_record)

from tests.protocol.helpers import K_DS, login_pair  # noqa: E402

_RECORD_PAYLOAD = msgpack.packb({0: 5, 1: 7, 2: 1_790_000_000, 10: 12_345})
online_frame = st.one_of(
    st.builds(  # a record as devices send it: MACed with K_ds, its payload maybe unusual
        lambda frame_type, seq, payload, dup: raw_frame(
            frame_type, seq, msgpack.packb(payload), flags=Flag.DUP if dup else 0, mac_key=K_DS
        ),
        st.sampled_from([0x20, 0x21]), st.integers(0, 0xFFFF), payloads, st.booleans(),
    ),
    st.builds(  # a record under a wrong key, without a MAC, in CBOR, of another version
        lambda frame_type, seq, variant: raw_frame(
            frame_type, seq, _RECORD_PAYLOAD,
            mac_key=b"\x01" * 32 if variant == "wrong key" else None if variant == "no mac"
            else K_DS,
            flags=0x10 if variant == "cbor" else 0,
            version=2 if variant == "version" else 1,
        ),
        st.sampled_from([0x20, 0x21]), st.integers(0, 0xFFFF),
        st.sampled_from(["wrong key", "no mac", "cbor", "version"]),
    ),
    st.builds(  # anything else a device may send online: a ping, an ack, unknown types
        lambda frame_type, seq, mac: raw_frame(
            frame_type, seq, b"\x80", mac_key=K_DS if mac else None
        ),
        st.sampled_from([0x10, 0x11, 0x7F, 0x30, 0x55]), st.integers(0, 0xFFFF), st.booleans(),
    ),
    st.binary(max_size=12),  # garbage, modem text
    frame_bytes.map(lambda f: f[: len(f) // 2]),
)  # fmt: skip


def _session_outcome(chunks: list[bytes], fast: bool) -> list[object]:
    """What a logged-in server session answers to the chunks, with the compiled online path or
    without it: its events, what it sends, its state and counts after each read."""
    from aquafleet.protocol import server_session

    server, _ = login_pair()
    saved = server_session._compiled_online
    server_session._compiled_online = fast
    seen: list[object] = []
    try:
        for n, chunk in enumerate(chunks):
            events = server.receive_data(chunk, float(n))
            seen.append([(type(e).__name__, tuple(e) if type(e) is Record else e) for e in events])
            seen.append((server.data_to_send(), server.state, server.bad_frames, server.last_rx))
    finally:
        server_session._compiled_online = saved
    stats = server.decoder_stats
    seen.append((stats.garbage_bytes, stats.crc_errors, stats.oversize_lengths))
    return seen


@needs_compiled
@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(online_frame, max_size=10), data=st.data())
def test_the_online_path_answers_as_the_frame_by_frame_path(parts: list[bytes], data) -> None:
    """`next_record` and ServerSession's loop around it are a shortcut, not a second protocol:
    on any stream (records good and bad, other frames, garbage, cut anywhere) a session gives
    the same events, sends the same bytes and ends in the same state with it as without it."""
    chunks = _cut_anywhere(data.draw, b"".join(parts))
    assert _session_outcome(chunks, fast=True) == _session_outcome(chunks, fast=False)


@needs_compiled
def test_an_online_record_takes_the_compiled_path_in_one_call(monkeypatch) -> None:
    """A MACed msgpack record read online comes back from the decoder as its Record: the
    Python frame path (parse_record, the MAC check) is not entered."""
    from aquafleet.protocol import server_session

    server, device = login_pair()
    device.send_record(Telemetry(rec=5, boot=7, ts=1_790_000_000, flow_total_ml=12_345))
    frame = device.data_to_send()

    def python_path(*args: object) -> None:
        raise AssertionError("the record took the frame-by-frame path")

    monkeypatch.setattr(server_session.ServerSession, "_handle_online", python_path)
    monkeypatch.setattr(server_session, "parse_record", python_path)
    (record,) = server.receive_data(frame, 1.0)
    assert type(record) is Record and (record.boot, record.rec, record.flow_total_ml) == (
        7, 5, 12_345,
    )  # fmt: skip
    assert server.last_rx == 1.0
