"""The MQTT 3.1.1 client codec (protocol/mqtt_wire.py): bytes as the spec lays them out,
any split of the input, and "parse or our error" on hostile bytes. Its client is exercised
against the real Mosquitto by tests/simulators and test_mqtt_desired.py."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aquafleet.protocol import mqtt_wire as wire


def test_connect_is_laid_out_as_the_spec_says() -> None:
    packet = wire.connect(
        "DEV1", keepalive_s=60, username="DEV1", password="pw", will=("aq/DEV1/status", b"\x10", 1)
    )
    body = (
        b"\x00\x04MQTT\x04"  # protocol name and level 4 (3.1.1)
        + bytes((0x80 | 0x40 | (1 << 3) | 0x04 | 0x02,))  # user, password, will QoS 1, clean
        + b"\x00\x3c"  # keepalive 60 s
        + b"\x00\x04DEV1"
        + b"\x00\x0eaq/DEV1/status\x00\x01\x10"
        + b"\x00\x04DEV1\x00\x02pw"
    )
    assert packet == bytes((0x10, len(body))) + body


def test_publish_and_its_remaining_length_at_the_boundaries() -> None:
    assert wire.publish("a/b", b"xy") == b"\x30\x07\x00\x03a/bxy"
    assert wire.publish("a/b", b"xy", qos=1, packet_id=258) == b"\x32\x09\x00\x03a/b\x01\x02xy"
    for size, encoded in ((127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
                          (16384, b"\x80\x80\x01")):  # fmt: skip
        packet = wire.publish("t", bytes(size - 3))
        assert packet[1 : 1 + len(encoded)] == encoded
        assert len(packet) == 1 + len(encoded) + size


def broker_stream() -> tuple[bytes, list[wire.Packet]]:
    """What a broker sends a purifier: CONNACK, SUBACK, a QoS 1 command, a QoS 0 ack, ..."""
    big = bytes(range(256)) * 2  # a remaining length of two bytes
    packets: list[wire.Packet] = [
        wire.ConnAck(False, 0),
        wire.SubAck(1, (1,)),
        wire.Publish("aq/D/down/cmd", b"\x10\x85command", 1, 7),
        wire.Publish("aq/D/down/ack", big, 0, 0),
        wire.PubAck(3),
        wire.PingResp(),
    ]
    data = (
        b"\x20\x02\x00\x00"
        + b"\x90\x03\x00\x01\x01"
        + wire.publish("aq/D/down/cmd", b"\x10\x85command", qos=1, packet_id=7)
        + wire.publish("aq/D/down/ack", big)
        + b"\x40\x02\x00\x03"
        + b"\xd0\x00"
    )
    return data, packets


def test_every_split_of_the_input_gives_the_same_packets() -> None:
    data, expected = broker_stream()
    for cut in range(len(data) + 1):
        reader = wire.PacketReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert got == expected, cut
        assert reader.buffered == 0
    reader = wire.PacketReader()
    assert [p for byte in data for p in reader.feed(bytes((byte,)))] == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x30\xff\xff\xff\xff\x01",  # a remaining length of five bytes
        b"\x30\xff\xff\x7f" + bytes(8),  # declares more than MAX_PACKET
        b"\x34\x05\x00\x01a\x00\x01",  # QoS 2
        b"\x32\x05\x00\x01a\x00\x00",  # QoS 1 with packet id 0
        b"\x30\x03\x00\x05a",  # shorter than its topic
        b"\x30\x04\x00\x02\xff\xfe",  # topic not UTF-8
        b"\x20\x03\x00\x00\x00",  # CONNACK of 3 bytes
        b"\x90\x02\x00\x01",  # SUBACK without codes
        b"\xd0\x01\x00",  # PINGRESP with a body
        b"\x10\x00",  # a CONNECT, which no broker sends
    ],
)
def test_malformed_packets_raise_our_error(data: bytes) -> None:
    with pytest.raises(wire.MqttWireError):
        wire.PacketReader().feed(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_hostile_bytes_raise_nothing_but_our_error(data: bytes, cut: int) -> None:
    reader = wire.PacketReader()
    with contextlib.suppress(wire.MqttWireError):
        reader.feed(data[:cut])
        reader.feed(data[cut:])
    assert reader.buffered <= wire.MAX_PACKET + 5  # a partial packet at most, never more


def test_packet_ids_run_1_to_65535_and_wrap() -> None:
    ids = wire.PacketIds()
    taken = [ids.take() for _ in range(wire.MAX_PACKET_ID + 2)]
    assert taken[0] == 1 and taken[wire.MAX_PACKET_ID - 1] == wire.MAX_PACKET_ID
    assert taken[wire.MAX_PACKET_ID :] == [1, 2]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_garbage_after_good_packets_leaves_the_good_ones_intact(garbage: bytes) -> None:
    data, expected = broker_stream()
    reader = wire.PacketReader()
    assert reader.feed(data) == expected
    with contextlib.suppress(wire.MqttWireError):
        reader.feed(garbage)
