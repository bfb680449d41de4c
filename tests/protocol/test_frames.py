"""Framing: golden frames, the resyncing decoder, limits and what it counts."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from aquafleet.protocol import FrameDecoder, FrameType, LocalProtocolError, RemoteProtocolError
from aquafleet.protocol.constants import MAX_PAYLOAD, ErrorCode, Flag
from aquafleet.protocol.frames import Frame, MacKey, encode_frame, frame_mac
from aquafleet.protocol.message_types import Event, Telemetry
from aquafleet.protocol.messages import encode_payload, message_map, parse_message
from tests.protocol.helpers import (
    crc16_bitwise,
    decode_all,
    decode_chunks,
    hmac256,
    make_frame,
    raw_frame,
)

# --------------------------------------------------------------------------- golden frames

# PING, seq 0, msgpack, payload {} (0x80):
#   5a a5 | 01 | 10 | 00 | 00 00 | 00 01 | 80 | 36 90
GOLDEN_PING = bytes.fromhex("5aa5 01 10 00 0000 0001 80 3690")

# TELEMETRY {0: rec 1, 1: boot 7, 2: ts 1700000000, 10: flow 12345 ml, 16: cnt_epoch 0},
# seq 0x1234, flags ACK_REQ.
#   msgpack: 85 | 00 01 | 01 07 | 02 ce 65 53 f1 00 | 0a cd 30 39 | 10 00   (17 bytes)
#   CBOR:    a5 | 00 01 | 01 07 | 02 1a 65 53 f1 00 | 0a 19 30 39 | 10 00   (17 bytes)
GOLDEN_TELEMETRY = {
    0: bytes.fromhex("5aa5 01 20 01 1234 0011 8500010107 02ce6553f100 0acd3039 1000 fcfe"),
    1: bytes.fromhex("5aa5 01 20 11 1234 0011 a500010107 021a6553f100 0a193039 1000 da7b"),
}
TELEMETRY = Telemetry(rec=1, boot=7, ts=1_700_000_000, flow_total_ml=12345, cnt_epoch=0)


def test_golden_ping() -> None:
    assert encode_frame(FrameType.PING, 0, encode_payload({}, 0)) == GOLDEN_PING
    assert decode_all(GOLDEN_PING) == [Frame(0x10, 0, 0, b"\x80")]


@pytest.mark.parametrize("encoding", [0, 1])
def test_golden_telemetry(encoding: int) -> None:
    golden = GOLDEN_TELEMETRY[encoding]
    assert int.from_bytes(golden[-2:], "big") == crc16_bitwise(golden[2:-2])
    payload = encode_payload(message_map(TELEMETRY), encoding)
    flags = Flag.ACK_REQ | encoding << Flag.ENCODING_SHIFT
    assert encode_frame(FrameType.TELEMETRY, 0x1234, payload, flags=flags) == golden
    (frame,) = decode_all(golden)
    assert (frame.type, frame.flags, frame.seq, frame.payload) == (0x20, flags, 0x1234, payload)
    assert frame.encoding == encoding
    assert frame.mac is None
    message = parse_message(frame)
    assert message == Telemetry(
        rec=1,
        boot=7,
        ts=1_700_000_000,
        flow_total_ml=12345,
        cnt_epoch=0,
        seq=0x1234,
        encoding=encoding,
    )


def test_golden_mac_frame() -> None:
    key = bytes(range(32, 64))
    event = Event(rec=2, boot=7, ts=1_700_000_060, kind=1, cid=9, ml=250, flow_total_ml=12595)
    payload = encode_payload(message_map(event), 0)
    head = b"\x5a\xa5\x01\x21\x05\x00\x03" + len(payload).to_bytes(2, "big")
    mac = hmac256(key, head[2:] + payload)[:8]  # over version .. end of payload
    crc = crc16_bitwise(head[2:] + payload + mac).to_bytes(2, "big")
    expected = head + payload + mac + crc
    assert encode_frame(FrameType.EVENT, 3, payload, flags=Flag.ACK_REQ, mac_key=key) == expected
    (frame,) = decode_all(expected)
    assert frame.flags & Flag.MAC
    assert frame.mac == mac
    assert frame.signed == expected[2 : 9 + len(payload)]
    assert frame_mac(key, frame.signed) == mac
    prepared = MacKey(key)  # the prepared key the sessions use gives the same frame
    assert (
        encode_frame(FrameType.EVENT, 3, payload, flags=Flag.ACK_REQ, mac_key=prepared) == expected
    )
    assert frame_mac(prepared, frame.signed) == mac


@pytest.mark.parametrize("key", [b"", bytes(range(32)), b"k" * 64, b"long key " * 20])
def test_mac_key_equals_hmac_digest(key: bytes) -> None:
    """MacKey (pads hashed once, state copied per frame) is HMAC-SHA256 truncated to 8 bytes."""
    mac_key = MacKey(key)
    for size in (0, 1, 55, 56, 60, 64, 119, 1040):
        data = (bytes(range(256)) * 5)[:size]
        expected = hmac.digest(key, data, hashlib.sha256)[:8]
        assert mac_key.mac(data) == expected, size
        assert mac_key.mac(data) == expected, size  # the prepared state is not consumed
        assert frame_mac(key, data) == expected


def test_encode_sets_and_clears_the_mac_flag() -> None:
    plain = encode_frame(FrameType.PING, 0, b"\x80", flags=Flag.MAC)
    assert plain[4] & Flag.MAC == 0
    assert plain == GOLDEN_PING
    signed = encode_frame(FrameType.PING, 0, b"\x80", mac_key=b"k" * 32)
    assert signed[4] == Flag.MAC
    assert len(signed) == len(plain) + 8


def test_dup_flag_round_trips() -> None:
    payload = encode_payload(message_map(TELEMETRY), 0)
    data = encode_frame(FrameType.TELEMETRY, 9, payload, flags=Flag.ACK_REQ | Flag.DUP)
    (frame,) = decode_all(data)
    assert frame.is_dup
    message = parse_message(frame)
    assert isinstance(message, Telemetry)
    assert message.dup
    assert message.seq == 9
    (frame,) = decode_all(encode_frame(FrameType.TELEMETRY, 9, payload))
    assert not frame.is_dup


# --------------------------------------------------------------------------- limits


def test_payload_over_1024_cannot_be_encoded() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(FrameType.TELEMETRY, 0, b"\x00" * (MAX_PAYLOAD + 1))
    assert info.value.code is ErrorCode.BAD_FRAME
    biggest = encode_frame(FrameType.TELEMETRY, 0, b"\x00" * MAX_PAYLOAD, mac_key=b"k" * 32)
    assert len(biggest) == 9 + 1024 + 8 + 2
    (frame,) = decode_all(biggest)
    assert len(frame.payload) == MAX_PAYLOAD


@pytest.mark.parametrize("seq", [-1, 0x10000])
def test_seq_out_of_range_cannot_be_encoded(seq: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(FrameType.PING, seq, b"\x80")


@pytest.mark.parametrize(
    ("frame_type", "flags"),
    [(-1, 0), (256, 0), (0x1000, 0), (0x10, -1), (0x10, 256), (0x10, 0x104), (0x10, -5)],
)
@pytest.mark.parametrize("mac_key", [None, b"k" * 32], ids=["plain", "maced"])
def test_type_and_flags_out_of_range_cannot_be_encoded(
    frame_type: int, flags: int, mac_key: bytes | None
) -> None:
    with pytest.raises(LocalProtocolError) as info:  # not struct.error
        encode_frame(frame_type, 0, b"\x80", flags=flags, mac_key=mac_key)
    assert info.value.code is ErrorCode.BAD_FRAME


def test_type_and_flags_at_the_edges_of_a_byte() -> None:
    data = encode_frame(0xFF, 0, b"", flags=0xFB)  # every bit but MAC
    assert data[3:5] == b"\xff\xfb"
    data = encode_frame(0, 0, b"", flags=0xFF, mac_key=b"k" * 32)
    assert data[3:5] == b"\x00\xff"
    assert encode_frame(0x10, 0, b"\x80", flags=0xFF)[4] == 0xFB  # MAC bit cleared, no key


def test_seq_is_big_endian() -> None:
    data = encode_frame(FrameType.PING, 0xABCD, b"\x80")
    assert data[5:7] == b"\xab\xcd"
    assert decode_all(data)[0].seq == 0xABCD


def test_oversize_length_is_skipped_and_the_next_frame_decodes() -> None:
    oversize = b"\x5a\xa5\x01\x20\x00\x00\x00\x04\x01"  # len 1025
    decoder = FrameDecoder()
    decoder.feed(oversize)
    assert decoder.next_frame() is None  # 8 bytes without a magic; nothing to wait for
    decoder.feed(GOLDEN_PING)
    assert decoder.next_frame() == Frame(0x10, 0, 0, b"\x80")
    assert decoder.next_frame() is None
    assert decoder.stats.oversize_lengths == 1
    assert decoder.stats.garbage_bytes == len(oversize)
    assert decoder.stats.crc_errors == 0
    assert decoder.buffered == 0


def test_exactly_1024_is_not_oversize() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x5a\xa5\x01\x20\x00\x00\x00\x04\x00")  # len 1024: wait for it
    assert decoder.next_frame() is None
    assert decoder.stats.oversize_lengths == 0
    assert decoder.buffered == 9


def test_bad_crc_is_dropped_and_counted() -> None:
    bad = bytearray(GOLDEN_TELEMETRY[0])
    bad[-1] ^= 0x01
    frames, decoder = decode_chunks([bytes(bad) + GOLDEN_PING])
    assert frames == [Frame(0x10, 0, 0, b"\x80")]
    assert decoder.stats.crc_errors == 1
    assert decoder.stats.garbage_bytes == len(bad)


def test_bad_crc_in_the_payload_then_resync() -> None:
    bad = bytearray(GOLDEN_TELEMETRY[1])
    bad[12] ^= 0x40
    frames, decoder = decode_chunks([GOLDEN_PING, bytes(bad), GOLDEN_TELEMETRY[1], GOLDEN_PING])
    assert frames == decode_all(GOLDEN_PING + GOLDEN_TELEMETRY[1] + GOLDEN_PING)
    assert decoder.stats.crc_errors == 1


def test_wrong_version_with_valid_crc_raises_bad_version() -> None:
    v2 = raw_frame(FrameType.PING, 0, b"\x80", version=2)
    decoder = FrameDecoder()
    decoder.feed(v2 + GOLDEN_PING)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.BAD_VERSION
    # the bad frame was consumed: what follows still decodes
    assert decoder.next_frame() == Frame(0x10, 0, 0, b"\x80")


def test_wrong_version_with_bad_crc_is_just_garbage() -> None:
    v2 = raw_frame(FrameType.PING, 0, b"\x80", version=2, crc=0)
    frames, decoder = decode_chunks([v2 + GOLDEN_PING])
    assert frames == [Frame(0x10, 0, 0, b"\x80")]
    assert decoder.stats.crc_errors == 1


def test_unknown_frame_type_is_framed_but_not_parsed() -> None:
    (frame,) = decode_all(raw_frame(0x55, 1, b"\x80"))
    assert frame.type == 0x55
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(frame)
    assert info.value.code is ErrorCode.UNKNOWN_TYPE


def test_truncated_frame_waits() -> None:
    decoder = FrameDecoder()
    for size in range(len(GOLDEN_TELEMETRY[0])):
        decoder = FrameDecoder()
        decoder.feed(GOLDEN_TELEMETRY[0][:size])
        assert decoder.next_frame() is None
        assert decoder.stats.garbage_bytes == 0
        assert decoder.buffered == size


def test_feeding_without_draining_is_capped() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00" * 2049)
    with pytest.raises(LocalProtocolError) as info:
        decoder.feed(b"\x00")
    assert info.value.code is ErrorCode.BUFFER_OVERFLOW
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
    decoder.feed(GOLDEN_PING)  # drained: feeding works again
    assert decoder.next_frame() is not None


# --------------------------------------------------------------------------- splits and garbage

STREAM_FRAMES = [
    GOLDEN_PING,
    GOLDEN_TELEMETRY[0],
    make_frame(FrameType.EVENT, {0: 2, 1: 7, 2: 5, 20: 1, 22: 250}, seq=2, mac_key=b"k" * 32),
    GOLDEN_TELEMETRY[1],
    make_frame(FrameType.ACK, {0: 0x5AA5, 1: 0, 2: [7, 2]}, seq=0x5AA5),  # magic inside
    encode_frame(FrameType.PING, 0xFFFF, b""),  # empty payload
]
STREAM = b"".join(STREAM_FRAMES)
EXPECTED = decode_all(STREAM)


def test_stream_decodes_to_its_frames() -> None:
    assert len(EXPECTED) == len(STREAM_FRAMES)
    assert [f.seq for f in EXPECTED] == [0, 0x1234, 2, 0x1234, 0x5AA5, 0xFFFF]


def test_every_split_point_gives_the_same_frames() -> None:
    for split in range(len(STREAM) + 1):
        frames, decoder = decode_chunks([STREAM[:split], STREAM[split:]])
        assert frames == EXPECTED, split
        assert decoder.stats.garbage_bytes == 0
        assert decoder.buffered == 0


def test_byte_by_byte_gives_the_same_frames() -> None:
    frames, decoder = decode_chunks(STREAM[i : i + 1] for i in range(len(STREAM)))
    assert frames == EXPECTED
    assert decoder.stats.garbage_bytes == 0


_rng = random.Random(1234)
RANDOM_JUNK = bytes(_rng.randrange(256) for _ in range(200)).replace(b"\x5a\xa5", b"")
GARBAGE = [
    b"CONNECT OK\r\n",
    b"+CSQ: 20,0\r\n",
    RANDOM_JUNK,
    b"\x5a",
    b"\x5a\x5a\x00\x5a",
    b"\x5a\xa5junk!!!",  # fake magic, then len 0x2121: oversize
    raw_frame(FrameType.PING, 0, b"hello", crc=0x1234),  # fake magic, plausible header, bad CRC
    b"\r\nCLOSED\r\n\x00\xff",
    b"\x5a",  # a lone first magic byte right before a real frame
]


def garbled_stream() -> bytes:
    parts = []
    for garbage, frame in zip(GARBAGE, STREAM_FRAMES * 2, strict=False):
        parts += [garbage, frame]
    return b"".join(parts)


def test_garbage_between_frames_is_skipped_and_counted() -> None:
    data = garbled_stream()
    expected = (STREAM_FRAMES * 2)[: len(GARBAGE)]
    frames, decoder = decode_chunks([data])
    assert frames == decode_all(b"".join(expected))
    assert decoder.stats.garbage_bytes == len(data) - sum(map(len, expected))
    assert decoder.stats.oversize_lengths == 1
    assert decoder.stats.crc_errors >= 1
    assert decoder.buffered == 0


def test_garbage_at_every_split_point() -> None:
    data = garbled_stream()
    reference, reference_decoder = decode_chunks([data])
    for split in range(len(data) + 1):
        frames, decoder = decode_chunks([data[:split], data[split:]])
        assert frames == reference, split
        assert decoder.stats == reference_decoder.stats, split
    frames, decoder = decode_chunks(data[i : i + 1] for i in range(len(data)))
    assert frames == reference
    assert decoder.stats == reference_decoder.stats


def test_garbage_only_is_all_counted() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"CONNECT OK\r\n+CSQ: 20,0\r\n")
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
    assert decoder.stats.garbage_bytes == 24


def test_trailing_first_magic_byte_is_kept() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"OK\r\n\x5a")
    assert decoder.next_frame() is None
    assert decoder.buffered == 1  # may be the start of a frame
    decoder.feed(GOLDEN_PING[1:])
    assert decoder.next_frame() == Frame(0x10, 0, 0, b"\x80")
    assert decoder.stats.garbage_bytes == 4
