"""Online sessions: MACs, records and acks, refusals, closes, commands, splits."""

from __future__ import annotations

import dataclasses

import pytest

from aquafleet.protocol import (
    AckCode,
    CommandMemory,
    Encoding,
    ErrorCode,
    FrameRejected,
    FrameType,
    LocalProtocolError,
    SessionClosed,
    SessionState,
)
from aquafleet.protocol.constants import Flag
from aquafleet.protocol.crc import crc16_modbus
from aquafleet.protocol.message_types import (
    Ack,
    Command,
    Error,
    Event,
    Pong,
    Record,
    Result,
    Telemetry,
)
from aquafleet.protocol.messages import FRAME_TYPE_OF, encode_payload, message_map
from aquafleet.protocol.session import DEVICE_ACCEPTS, MAX_BAD_FRAMES
from tests.protocol.helpers import (
    DEVICE_KEY,
    ENCODINGS,
    K_DS,
    K_SD,
    NOW,
    SERVER_NONCE,
    SESSION_KEY,
    close_code,
    decode_all,
    hmac256,
    login_pair,
    mac_of,
    make_frame,
    messages,
    new_device,
    new_server,
    only_error,
    raw_frame,
)

BAD_MAC_CLOSE = SessionClosed(ErrorCode.BAD_MAC, "frame MAC missing or wrong")
OTHER_KS = hmac256(DEVICE_KEY, b"S" + bytes(8) + SERVER_NONCE)  # another connection's Ks...
OTHER_DS = hmac256(OTHER_KS, b"DS")  # ...and its frame MAC keys
OTHER_SD = hmac256(OTHER_KS, b"SD")
TELEMETRY = Telemetry(rec=1, boot=7, ts=NOW, flow_total_ml=12345, cnt_epoch=0, tds_out_ppm=8)
EVENT = Event(rec=2, boot=7, ts=NOW + 5, kind=1, cid=11, ml=250, flow_total_ml=12595)


# --------------------------------------------------------------------------- records and acks


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_records_reach_the_server_and_acks_the_device(encoding: int) -> None:
    server, device = login_pair(encoding=encoding, last_acked=(7, 0))
    tele_seq = device.send_record(TELEMETRY)
    event_seq = device.send_record(EVENT, dup=True)
    events = server.receive_data(device.data_to_send(), NOW + 1)
    assert [type(e) for e in events] == [Record, Record]
    tele, event = events
    assert isinstance(tele, Record) and isinstance(event, Record)
    assert (tele.frame_type, tele.seq, tele.dup, tele.rec, tele.boot, tele.ts) == (
        FrameType.TELEMETRY,
        tele_seq,
        False,
        1,
        7,
        NOW,
    )
    assert (tele.flow_total_ml, tele.cnt_epoch, tele.event_kind) == (12345, 0, 0)
    assert (event.seq, event.dup, event.event_kind, event.flow_total_ml) == (
        event_seq,
        True,
        1,
        12595,
    )
    assert tele.encoding == event.encoding == encoding
    server.ack(tele.seq, AckCode.STORED, (7, 1))
    server.ack(event.seq, AckCode.DUPLICATE, (7, 2))
    assert device.receive_data(server.data_to_send(), NOW + 1) == [
        Ack(seq=tele_seq, rc=0, watermark=(7, 1)),
        Ack(seq=event_seq, rc=1, watermark=(7, 2)),
    ]


def test_record_frames_carry_ack_req_and_dup() -> None:
    _server, device = login_pair()
    device.send_record(TELEMETRY)
    device.send_record(TELEMETRY, dup=True)
    first, resend = decode_all(device.data_to_send())
    assert first.flags == Flag.ACK_REQ | Flag.MAC
    assert resend.flags == Flag.ACK_REQ | Flag.DUP | Flag.MAC
    assert resend.seq == first.seq + 1  # a resend takes the connection's next seq
    assert resend.payload == first.payload


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_telemetry_event_and_result_are_always_maced(encoding: int) -> None:
    server, device = login_pair(encoding=encoding)
    device.send_record(TELEMETRY)
    device.send_record(EVENT)
    device.send_result(Result(cid=11, rc=0, out=250))
    data = device.data_to_send()
    frames = decode_all(data)
    assert [f.type for f in frames] == [FrameType.TELEMETRY, FrameType.EVENT, FrameType.RESULT]
    for frame in frames:
        assert frame.flags & Flag.MAC
        assert frame.mac == mac_of(frame, K_DS)
        assert frame.flags & Flag.ACK_REQ
    events = server.receive_data(data, NOW)
    assert [type(e) for e in events] == [Record, Record, Result]
    assert server.state is SessionState.ONLINE


def test_result_reaches_the_server() -> None:
    server, device = login_pair()
    seq = device.send_result(Result(cid=11, rc=0, out=250))
    assert server.receive_data(device.data_to_send(), NOW) == [Result(11, 0, 250, seq=seq)]


@pytest.mark.parametrize(("key", "value"), [(0, "1"), (0, -1), (0, 2**32), (0, True), (0, 1.5),
                                            (1, "7"), (1, -1), (1, 2**32), (1, False), (1, 7.0),
                                            (2, None), (2, -5), (2, 2**40), (2, True), (2, 0.5),
                                            (0, 0)])  # fmt: skip
@pytest.mark.parametrize("frame_type", [FrameType.TELEMETRY, FrameType.EVENT])
def test_malformed_record_gets_a_rejected_ack(key: int, value: object, frame_type: int) -> None:
    server, device = login_pair()
    body = {0: 5, 1: 7, 2: NOW, 20: 1, key: value}
    data = make_frame(frame_type, body, seq=33, flags=Flag.ACK_REQ, mac_key=K_DS)
    events = server.receive_data(data, NOW)
    assert len(events) == 1
    assert isinstance(events[0], FrameRejected)
    assert events[0].code is ErrorCode.BAD_PAYLOAD
    assert events[0].seq == 33
    assert server.state is SessionState.ONLINE
    reply = server.data_to_send()
    assert messages(reply) == [Ack(seq=33, rc=AckCode.REJECTED)]
    (frame,) = decode_all(reply)
    assert frame.mac == mac_of(frame, K_SD)  # the REJECTED ack is MACed like any other ACK...
    assert device.receive_data(reply, NOW) == [Ack(seq=33, rc=AckCode.REJECTED)]  # ...and accepted
    # the session goes on
    device.send_record(TELEMETRY)
    assert [type(e) for e in server.receive_data(device.data_to_send(), NOW)] == [Record]


@pytest.mark.parametrize(
    ("payload", "flags"),
    [
        (b"\xc1", 0x00),  # a never-used msgpack byte
        (b"\x81\x00\x01\x00", 0x00),  # msgpack {0: 1} and a trailing byte
        (b"\xa1\x00\x01\x00", 0x10),  # CBOR {0: 1} and a trailing byte
        (b"\x80", 0x70),  # an unknown encoding
    ],
)
def test_undecodable_record_payload_is_rejected(payload: bytes, flags: int) -> None:
    server, device = login_pair()
    frame = raw_frame(FrameType.TELEMETRY, 3, payload, flags=flags, mac_key=K_DS)
    events = server.receive_data(frame, NOW)
    assert [type(e) for e in events] == [FrameRejected]
    reply = server.data_to_send()
    assert messages(reply) == [Ack(seq=3, rc=AckCode.REJECTED)]
    assert device.receive_data(reply, NOW) == [Ack(seq=3, rc=AckCode.REJECTED)]


def test_ack_after_close_is_dropped() -> None:
    server, _device = login_pair()
    server.close(ErrorCode.SHUTDOWN, "bye")
    assert only_error(server.data_to_send()).code == ErrorCode.SHUTDOWN
    server.ack(1, AckCode.STORED)
    assert server.data_to_send() == b""


# --------------------------------------------------------------------------- MACs


# What a device sends after login that must carry a good MAC, with a valid body.
DEVICE_MACED: dict[int, dict[int, object]] = {
    FrameType.TELEMETRY: message_map(TELEMETRY),
    FrameType.EVENT: message_map(EVENT),
    FrameType.RESULT: {30: 1, 34: 0},
    FrameType.ACK: {0: 3, 1: 0},  # a COMMAND delivered
}
WRONG_KEYS = [None, b"\x00" * 32, DEVICE_KEY, OTHER_DS, SESSION_KEY, K_SD]
WRONG_KEY_IDS = ["missing", "zero key", "device key", "other session", "Ks", "server's key"]


@pytest.mark.parametrize("mac_key", WRONG_KEYS, ids=WRONG_KEY_IDS)
@pytest.mark.parametrize("frame_type", list(DEVICE_MACED), ids=lambda t: FrameType(t).name)
def test_missing_or_wrong_mac_closes_the_server(frame_type: int, mac_key: bytes | None) -> None:
    server, _device = login_pair()
    data = make_frame(frame_type, DEVICE_MACED[frame_type], flags=Flag.ACK_REQ, mac_key=mac_key)
    assert server.receive_data(data, NOW) == [BAD_MAC_CLOSE]
    assert server.is_closed
    assert server.close_code is ErrorCode.BAD_MAC
    assert only_error(server.data_to_send()).code == ErrorCode.BAD_MAC
    # with the right key the same frame is taken
    server, _device = login_pair()
    data = make_frame(frame_type, DEVICE_MACED[frame_type], mac_key=K_DS)
    assert len(server.receive_data(data, NOW)) == 1
    assert server.state is SessionState.ONLINE


def test_telemetry_without_mac_closes_the_server() -> None:
    """Its flow counter is billed: an unauthenticated TELEMETRY is never metered."""
    server, device = login_pair()
    device.send_record(TELEMETRY)
    (frame,) = decode_all(device.data_to_send())
    stripped = raw_frame(frame.type, frame.seq, frame.payload, flags=frame.flags & ~Flag.MAC)
    assert decode_all(stripped)[0].mac is None
    assert server.receive_data(stripped, NOW) == [BAD_MAC_CLOSE]  # no Record event
    assert only_error(server.data_to_send()).code == ErrorCode.BAD_MAC
    assert server.receive_data(device.data_to_send(), NOW) == []  # closed for good


def test_tampered_telemetry_counter_is_caught_by_its_mac() -> None:
    server, device = login_pair()
    device.send_record(TELEMETRY)
    (frame,) = decode_all(device.data_to_send())
    body = {**message_map(TELEMETRY), 10: 1}  # 12345 ml billed becomes 1 ml
    forged = raw_frame(frame.type, frame.seq, encode_payload(body, 0), flags=frame.flags,
                       mac=frame.mac)  # fmt: skip
    assert server.receive_data(forged, NOW) == [BAD_MAC_CLOSE]


def test_tampered_event_is_caught_by_its_mac() -> None:
    server, device = login_pair()
    device.send_record(EVENT)
    (frame,) = decode_all(device.data_to_send())
    body = {**message_map(EVENT), 22: 25}  # 250 ml poured becomes 25
    forged = raw_frame(frame.type, frame.seq, encode_payload(body, 0), flags=frame.flags,
                       mac=frame.mac)  # fmt: skip
    events = server.receive_data(forged, NOW)
    assert close_code(events) == ErrorCode.BAD_MAC


def test_command_is_maced_and_acked_by_the_device() -> None:
    server, device = login_pair()
    command = Command(cid=42, op=1, exp=NOW + 30, args={1: 250})
    seq = server.send_command(command)
    data = server.data_to_send()
    (frame,) = decode_all(data)
    assert frame.flags == Flag.ACK_REQ | Flag.MAC
    assert frame.mac == hmac256(K_SD, frame.signed)[:8]
    assert device.receive_data(data, NOW) == [dataclasses.replace(command, seq=seq)]
    acks = device.data_to_send()
    assert messages(acks) == [Ack(seq=seq, rc=AckCode.STORED)]
    (ack,) = decode_all(acks)
    assert ack.flags == Flag.MAC  # the delivery ack is MACed too (no ACK_REQ: acks are not acked)
    assert ack.mac == mac_of(ack, K_DS)  # in the device's direction: not the COMMAND's key
    assert server.receive_data(acks, NOW) == [Ack(seq=seq, rc=0)]
    assert server.state is SessionState.ONLINE


@pytest.mark.parametrize("tamper", ["strip", "mac", "payload"])
def test_forged_command_ack_closes_the_server(tamper: str) -> None:
    """A forged delivery ack would mark an undelivered command delivered (and stop its resends)."""
    server, device = login_pair()
    seq = server.send_command(Command(cid=42, op=1, exp=NOW + 30, args={1: 250}))
    device.receive_data(server.data_to_send(), NOW)
    (frame,) = decode_all(device.data_to_send())
    assert frame.mac is not None
    payload, mac = frame.payload, frame.mac
    forged_mac: bytes | None = mac
    if tamper == "strip":
        forged_mac = None
    elif tamper == "mac":
        forged_mac = bytes([mac[0] ^ 0x80]) + mac[1:]
    else:
        payload = encode_payload({0: seq + 1, 1: 0}, 0)
    flags = frame.flags & ~Flag.MAC
    forged = raw_frame(frame.type, frame.seq, payload, flags=flags, mac=forged_mac)
    assert forged != raw_frame(frame.type, frame.seq, frame.payload, flags=flags, mac=mac)
    assert server.receive_data(forged, NOW) == [BAD_MAC_CLOSE]


def test_resent_command_carries_dup() -> None:
    server, device = login_pair()
    server.send_command(Command(cid=42, op=2, exp=NOW + 30, args={2: 3}, dup=True))
    (event,) = device.receive_data(server.data_to_send(), NOW)
    assert isinstance(event, Command)
    assert event.dup


@pytest.mark.parametrize("tamper", ["payload", "mac", "strip"])
def test_tampered_command_closes_the_device(tamper: str) -> None:
    server, device = login_pair()
    server.send_command(Command(cid=42, op=1, exp=NOW + 30, args={1: 250}))
    (frame,) = decode_all(server.data_to_send())
    payload, mac = frame.payload, frame.mac
    assert mac is not None
    if tamper == "payload":
        payload = encode_payload({30: 42, 31: 1, 32: NOW + 30, 33: {1: 2500}}, 0)
    elif tamper == "mac":
        mac = bytes([mac[0] ^ 1]) + mac[1:]
    else:
        mac = None
    forged = raw_frame(frame.type, frame.seq, payload, flags=frame.flags & ~Flag.MAC, mac=mac)
    events = device.receive_data(forged, NOW)
    assert events == [BAD_MAC_CLOSE]  # no Command event: nothing runs
    assert device.is_closed
    assert only_error(device.data_to_send()).code == ErrorCode.BAD_MAC  # and no delivery ack


def test_command_from_another_session_is_refused() -> None:
    _server, device = login_pair()
    data = make_frame(
        FrameType.COMMAND, {30: 1, 31: 9, 32: NOW}, flags=Flag.ACK_REQ, mac_key=OTHER_SD
    )
    events = device.receive_data(data, NOW)
    assert close_code(events) == ErrorCode.BAD_MAC


@pytest.mark.parametrize(
    "tamper", ["strip", "mac", "rc unavailable -> stored", "other session", "device key"]
)
def test_forged_ack_closes_the_device_and_acks_nothing(tamper: str) -> None:
    """A forged ACK must not make the device forget a record the server has not stored."""
    server, device = login_pair()
    seq = device.send_record(TELEMETRY)
    server.receive_data(device.data_to_send(), NOW)
    server.ack(seq, AckCode.UNAVAILABLE)  # storage down: the device must keep the record
    (frame,) = decode_all(server.data_to_send())
    assert frame.mac == mac_of(frame, K_SD)
    payload, mac = frame.payload, frame.mac
    flags = frame.flags & ~Flag.MAC
    if tamper == "strip":
        forged = raw_frame(frame.type, frame.seq, payload, flags=flags)
    elif tamper == "mac":
        assert mac is not None
        forged = raw_frame(frame.type, frame.seq, payload, flags=flags, mac=mac[:7] + b"\x00")
    elif tamper == "rc unavailable -> stored":
        stored = encode_payload({0: seq, 1: AckCode.STORED, 2: [7, 1]}, 0)
        forged = raw_frame(frame.type, frame.seq, stored, flags=flags, mac=mac)
    else:
        key = OTHER_SD if tamper == "other session" else DEVICE_KEY
        stored = encode_payload({0: seq, 1: AckCode.STORED}, 0)
        forged = raw_frame(frame.type, frame.seq, stored, flags=flags, mac_key=key)
    assert forged != raw_frame(frame.type, frame.seq, payload, flags=flags, mac=mac)
    events = device.receive_data(forged, NOW)
    assert events == [BAD_MAC_CLOSE]
    assert not any(isinstance(e, Ack) for e in events)
    assert device.close_code is ErrorCode.BAD_MAC
    assert only_error(device.data_to_send()).code == ErrorCode.BAD_MAC


def with_crc(frame: bytearray) -> bytes:
    """The frame with its CRC recomputed (what an attacker on the path does after an edit)."""
    frame[-2:] = crc16_modbus(bytes(frame[2:-2])).to_bytes(2, "big")
    return bytes(frame)


def tampered_copies(data: bytes) -> list[tuple[int, bytes]]:
    """One bit changed in type, seq, payload or MAC (version, flags and len change the framing)."""
    positions = [3, 5, 6, *range(9, len(data) - 2)]
    copies = []
    for position in positions:
        for bit in (0x01, 0x80):
            frame = bytearray(data)
            frame[position] ^= bit
            copies.append((position, with_crc(frame)))
    return copies


@pytest.mark.parametrize("what", ["TELEMETRY", "EVENT", "RESULT", "COMMAND ack"])
def test_every_changed_bit_of_a_device_frame_closes_the_server(what: str) -> None:
    server, device = login_pair()
    if what == "TELEMETRY":
        device.send_record(TELEMETRY)
    elif what == "EVENT":
        device.send_record(EVENT)
    elif what == "RESULT":
        device.send_result(Result(cid=11, rc=0, out=250))
    else:
        server.send_command(Command(cid=11, op=1, exp=NOW + 30, args={1: 250}))
        device.receive_data(server.data_to_send(), NOW)
    data = device.data_to_send()
    for position, forged in tampered_copies(data):
        server, _device = login_pair()
        events = server.receive_data(forged, NOW)
        if position == 3 and forged[3] not in FRAME_TYPE_OF.values():
            assert [type(e) for e in events] == [FrameRejected], position  # unknown type
            continue
        if position == 3 and forged[3] in (FrameType.COMMAND, FrameType.AUTH_OK):
            assert [type(e) for e in events] == [FrameRejected], position  # not for a server
            continue
        assert events == [BAD_MAC_CLOSE], (position, events)


@pytest.mark.parametrize("what", ["ACK", "REJECTED ack", "COMMAND"])
def test_every_changed_bit_of_a_server_frame_closes_the_device(what: str) -> None:
    server, device = login_pair()
    if what == "ACK":
        server.ack(2, AckCode.STORED, (7, 1))
    elif what == "REJECTED ack":
        server.receive_data(make_frame(0x20, {0: 0}, seq=2, mac_key=K_DS), NOW)
    else:
        server.send_command(Command(cid=11, op=1, exp=NOW + 30, args={1: 250}))
    data = server.data_to_send()
    assert device.receive_data(data, NOW)  # genuine: taken
    for position, forged in tampered_copies(data):
        _server, device = login_pair()
        events = device.receive_data(forged, NOW)
        if position == 3 and forged[3] not in DEVICE_ACCEPTS[SessionState.ONLINE]:
            assert events == [], position  # dropped as unexpected, like any stray frame
            continue
        assert events == [BAD_MAC_CLOSE], (position, events)


def test_genuine_ack_still_reaches_the_device() -> None:
    server, device = login_pair()
    seq = device.send_record(TELEMETRY)
    server.receive_data(device.data_to_send(), NOW)
    server.ack(seq, AckCode.STORED, (7, 1))
    data = server.data_to_send()
    (frame,) = decode_all(data)
    assert frame.flags == Flag.MAC
    assert frame.mac == mac_of(frame, K_SD)
    assert device.receive_data(data, NOW) == [Ack(seq=seq, rc=0, watermark=(7, 1))]


def test_reflected_device_ack_is_refused() -> None:
    """The device's own delivery ack, echoed back to it, is not the server's ACK of its record.

    Both seq counters run in step, so the device's ACK {0: 2, 1: 0} of COMMAND seq 2 has exactly
    the payload of a server ACK (rc 0, stored) of the device's record seq 2. It is MACed with
    K_ds, and the device takes ACKs under K_sd only.
    """
    server, device = login_pair()
    record_seq = device.send_record(TELEMETRY)  # seq 2; the man in the middle holds it back
    device.data_to_send()
    server.send_command(Command(cid=1, op=9, exp=NOW + 30))  # seq 2 as well
    device.receive_data(server.data_to_send(), NOW)
    reflected = device.data_to_send()  # the device's ACK {0: 2, 1: 0}, MACed with K_ds
    assert messages(reflected) == [Ack(seq=record_seq, rc=AckCode.STORED)]
    (frame,) = decode_all(reflected)
    assert frame.mac == mac_of(frame, K_DS)
    events = device.receive_data(reflected, NOW)
    assert events == [BAD_MAC_CLOSE]  # no Ack: the record is kept for a resend
    assert device.close_code is ErrorCode.BAD_MAC
    assert only_error(device.data_to_send()).code == ErrorCode.BAD_MAC


def test_reflected_server_ack_is_refused() -> None:
    """The server's ACK of a record, echoed back to it, is not the device's delivery ack.

    Were it taken, the gateway would mark COMMAND seq 2 delivered and stop resending it.
    """
    server, device = login_pair()
    command_seq = server.send_command(Command(cid=1, op=9, exp=NOW + 30))  # seq 2; held back
    server.data_to_send()
    record_seq = device.send_record(TELEMETRY)  # seq 2 as well
    assert record_seq == command_seq
    assert [type(e) for e in server.receive_data(device.data_to_send(), NOW)] == [Record]
    server.ack(record_seq, AckCode.STORED)  # no watermark: the payload of a delivery ack
    reflected = server.data_to_send()
    assert messages(reflected) == [Ack(seq=command_seq, rc=0)]
    (frame,) = decode_all(reflected)
    assert frame.mac == mac_of(frame, K_SD)
    assert server.receive_data(reflected, NOW) == [BAD_MAC_CLOSE]  # no Ack event
    assert server.close_code is ErrorCode.BAD_MAC
    assert only_error(server.data_to_send()).code == ErrorCode.BAD_MAC


# Every MACed frame with a valid body, by the side that sends it.
SERVER_MACED: dict[int, dict[int, object]] = {
    FrameType.COMMAND: {30: 1, 31: 9, 32: NOW + 30},
    FrameType.ACK: {0: 2, 1: 0, 2: [7, 1]},  # a record stored
}


@pytest.mark.parametrize("key", [K_SD, SESSION_KEY], ids=["server's key", "Ks"])
@pytest.mark.parametrize("frame_type", list(DEVICE_MACED), ids=lambda t: FrameType(t).name)
def test_server_refuses_a_device_frame_maced_for_the_other_direction(
    frame_type: int, key: bytes
) -> None:
    """A server takes device frames under K_ds only: K_sd (its own) or the bare Ks is refused."""
    body = DEVICE_MACED[frame_type]
    server, _device = login_pair()
    assert server.receive_data(make_frame(frame_type, body, mac_key=key), NOW) == [BAD_MAC_CLOSE]
    assert only_error(server.data_to_send()).code == ErrorCode.BAD_MAC
    server, _device = login_pair()
    (event,) = server.receive_data(make_frame(frame_type, body, mac_key=K_DS), NOW)
    assert not isinstance(event, (SessionClosed, FrameRejected))


@pytest.mark.parametrize("key", [K_DS, SESSION_KEY], ids=["device's key", "Ks"])
@pytest.mark.parametrize("frame_type", list(SERVER_MACED), ids=lambda t: FrameType(t).name)
def test_device_refuses_a_server_frame_maced_for_the_other_direction(
    frame_type: int, key: bytes
) -> None:
    """A device takes server frames under K_sd only: K_ds (its own) or the bare Ks is refused."""
    body = SERVER_MACED[frame_type]
    _server, device = login_pair()
    assert device.receive_data(make_frame(frame_type, body, mac_key=key), NOW) == [BAD_MAC_CLOSE]
    assert only_error(device.data_to_send()).code == ErrorCode.BAD_MAC
    _server, device = login_pair()
    (event,) = device.receive_data(make_frame(frame_type, body, mac_key=K_SD), NOW)
    assert isinstance(event, (Ack, Command))


@pytest.mark.parametrize(
    ("seq", "rc"), [(-1, 0), (0x10000, 0), (2**32, 0), (0, -1), (0, 256), (0x10000, 256)]
)
def test_ack_refuses_values_the_device_could_not_parse(seq: int, rc: int) -> None:
    server, _device = login_pair()
    with pytest.raises(LocalProtocolError) as info:
        server.ack(seq, rc)
    assert info.value.code is ErrorCode.BAD_PAYLOAD
    assert server.data_to_send() == b""
    server.close(ErrorCode.SHUTDOWN, "bye")
    with pytest.raises(LocalProtocolError):
        server.ack(seq, rc)  # a bug is a bug, whatever the state
    with pytest.raises(LocalProtocolError):
        new_server().ack(seq, rc)


def test_ack_takes_the_edges_of_the_ranges() -> None:
    server, device = login_pair()
    server.ack(0xFFFF, 0xFF)
    server.ack(0, 0)
    assert device.receive_data(server.data_to_send(), NOW) == [Ack(0xFFFF, 0xFF), Ack(0, 0)]


# --------------------------------------------------------------------------- refusals and closes


def test_unknown_type_after_login_gets_error_and_stays_up() -> None:
    server, device = login_pair()
    events = server.receive_data(raw_frame(0x55, 17, b"\x80"), NOW)
    assert events == [FrameRejected(ErrorCode.UNKNOWN_TYPE, "frame type 0x55 refused", 17)]
    error = only_error(server.data_to_send())
    assert (error.code, error.seq) == (ErrorCode.UNKNOWN_TYPE, 17)
    assert server.state is SessionState.ONLINE
    device.ping()
    assert server.receive_data(device.data_to_send(), NOW) == []
    assert isinstance(messages(server.data_to_send())[0], Pong)


@pytest.mark.parametrize("frame_type", [FrameType.HELLO, FrameType.AUTH, FrameType.COMMAND])
def test_known_but_unexpected_type_after_login(frame_type: int) -> None:
    server, _device = login_pair()
    events = server.receive_data(make_frame(frame_type, {}, seq=9, mac_key=K_DS), NOW)
    (event,) = events
    assert isinstance(event, FrameRejected)
    assert (event.code, event.seq) == (ErrorCode.UNEXPECTED_FRAME, 9)
    assert only_error(server.data_to_send()).seq == 9
    assert server.state is SessionState.ONLINE


def test_malformed_result_gets_error_and_stays_up() -> None:
    server, _device = login_pair()
    data = make_frame(FrameType.RESULT, {30: "x", 34: 0}, seq=4, mac_key=K_DS)
    events = server.receive_data(data, NOW)
    assert [type(e) for e in events] == [FrameRejected]
    error = only_error(server.data_to_send())
    assert (error.code, error.seq) == (ErrorCode.BAD_PAYLOAD, 4)
    assert server.state is SessionState.ONLINE


def test_device_ignores_unexpected_frames_when_online() -> None:
    _server, device = login_pair()
    telemetry = make_frame(FrameType.TELEMETRY, {0: 1, 1: 1, 2: 1}, mac_key=K_SD)
    assert device.receive_data(telemetry, NOW) == []  # not a frame a server sends
    assert device.receive_data(make_frame(FrameType.TELEMETRY, {0: 1, 1: 1, 2: 1}), NOW) == []
    # a MACed ACK that does not parse: dropped (the MAC held, so it is a server bug, not a forgery)
    assert device.receive_data(make_frame(FrameType.ACK, {0: "x"}, mac_key=K_SD), NOW) == []
    assert device.state is SessionState.ONLINE
    assert device.data_to_send() == b""
    assert device.bad_frames == 3


def test_device_checks_the_mac_before_parsing_an_ack() -> None:
    _server, device = login_pair()
    assert device.receive_data(make_frame(FrameType.ACK, {0: "x"}), NOW) == [BAD_MAC_CLOSE]


def test_device_answers_ping_and_reports_errors() -> None:
    _server, device = login_pair()
    assert device.receive_data(make_frame(FrameType.PING, {}, seq=5), NOW) == []
    assert [type(m) for m in messages(device.data_to_send())] == [Pong]
    error = make_frame(FrameType.ERROR, {1: 6, 2: "frame type 0x55 refused", 3: 3})
    assert device.receive_data(error, NOW) == [Error(6, "frame type 0x55 refused", 3)]


def bad_crc_frame(seq: int) -> bytes:
    frame = bytearray(make_frame(FrameType.PING, {}, seq=seq))
    frame[-1] ^= 0xFF
    return bytes(frame)


@pytest.mark.parametrize("online", [True, False])
def test_too_many_corrupt_frames_close_the_session(online: bool) -> None:
    server = login_pair()[0] if online else new_server()
    for seq in range(MAX_BAD_FRAMES):
        assert server.receive_data(bad_crc_frame(seq), NOW) == []
    assert server.decoder_stats.crc_errors == MAX_BAD_FRAMES
    assert not server.is_closed
    events = server.receive_data(bad_crc_frame(99), NOW)
    assert events == [SessionClosed(ErrorCode.BAD_FRAME, "too many corrupt frames")]
    assert only_error(server.data_to_send()).code == ErrorCode.BAD_FRAME


def test_refused_frames_count_towards_the_limit() -> None:
    server, _device = login_pair()
    data = b"".join(raw_frame(0x55, seq, b"") for seq in range(MAX_BAD_FRAMES + 1))
    events = server.receive_data(data, NOW)
    assert [type(e) for e in events] == [FrameRejected] * (MAX_BAD_FRAMES + 1) + [SessionClosed]
    assert close_code(events[-1:]) == ErrorCode.BAD_FRAME


def test_device_closes_after_too_many_corrupt_frames() -> None:
    _server, device = login_pair()
    data = b"".join(bad_crc_frame(seq) for seq in range(MAX_BAD_FRAMES + 1))
    assert device.receive_data(data, NOW) == [
        SessionClosed(ErrorCode.BAD_FRAME, "too many corrupt frames")
    ]


@pytest.mark.parametrize("online", [True, False])
def test_wrong_version_gets_error_then_close(online: bool) -> None:
    server = login_pair()[0] if online else new_server()
    data = raw_frame(FrameType.PING, 0, b"\x80", version=2)
    events = server.receive_data(data + make_frame(FrameType.PING, {}), NOW)
    assert len(events) == 1
    assert isinstance(events[0], SessionClosed)
    assert events[0].code is ErrorCode.BAD_VERSION
    assert only_error(server.data_to_send()).code == ErrorCode.BAD_VERSION  # no PONG
    assert server.receive_data(make_frame(FrameType.PING, {}), NOW) == []


def test_device_closes_on_wrong_version() -> None:
    _server, device = login_pair()
    events = device.receive_data(raw_frame(FrameType.ACK, 0, b"\x80", version=0), NOW)
    assert close_code(events) == ErrorCode.BAD_VERSION


def test_garbage_and_modem_text_in_a_session() -> None:
    server, device = login_pair()
    device.send_record(TELEMETRY)
    device.send_record(EVENT)
    _tele, event = decode_all(frames := device.data_to_send())
    split = len(frames) - (2 + len(event.signed) + 8 + 2)  # where the EVENT frame starts
    junk = [b"CONNECT OK\r\n", b"+CSQ: 20,0\r\n\x5a", b"\x5a\xa5\xff\xff\xff\xff\xff\xff\xff"]
    data = junk[0] + frames[:split] + junk[1] + frames[split:] + junk[2]
    events = server.receive_data(data, NOW)
    records = [e for e in events if isinstance(e, Record)]
    assert [(r.rec, r.frame_type) for r in records] == [(1, 0x20), (2, 0x21)]
    assert len(events) == 2
    assert server.decoder_stats.garbage_bytes == sum(map(len, junk))
    assert server.decoder_stats.oversize_lengths == 1
    assert server.state is SessionState.ONLINE


def test_sequence_numbers_wrap_at_65536() -> None:
    _server, device = login_pair()
    for _ in range(0x10000 - 2):  # after HELLO and AUTH
        device.ping()
        device.data_to_send()
    assert device.ping() == 0  # wrapped
    assert decode_all(device.data_to_send())[0].seq == 0


def test_server_first_frames_start_at_seq_0() -> None:
    server = new_server()
    device = new_device()
    device.start()
    assert decode_all(device.data_to_send())[0].seq == 0
    assert server.data_to_send() == b""


def test_cbor_server_and_msgpack_device_interoperate() -> None:
    # Each frame says its own encoding; a reader decodes by the frame's flags.
    server = new_server(encoding=Encoding.CBOR)
    device = new_device(encoding=Encoding.MSGPACK)
    device.start()
    server.receive_data(device.data_to_send(), NOW)
    data = server.data_to_send()
    assert decode_all(data)[0].encoding == Encoding.CBOR
    device.receive_data(data, NOW)
    assert server.receive_data(device.data_to_send(), NOW)


# --------------------------------------------------------------------------- command memory


def test_command_memory_answers_a_repeated_cid() -> None:
    memory = CommandMemory()
    assert memory.lookup(7) is None
    memory.remember(Result(cid=7, rc=0, out=250))
    assert memory.lookup(7) == Result(cid=7, rc=0, out=250)


def test_command_memory_keeps_only_the_last_16() -> None:
    memory = CommandMemory()
    for cid in range(20):
        memory.remember(Result(cid=cid, rc=0))
    assert [cid for cid in range(20) if memory.lookup(cid)] == list(range(4, 20))
    memory.remember(Result(cid=4, rc=1))  # remembered again: now the newest
    memory.remember(Result(cid=20, rc=0))
    assert memory.lookup(4) == Result(cid=4, rc=1)
    assert memory.lookup(5) is None


def test_repeated_dispense_is_answered_from_memory() -> None:
    """Firmware loop: a resent COMMAND with a known cid gets the stored RESULT, no second pour."""
    server, device = login_pair()
    memory = CommandMemory()
    poured = []
    dispense = Command(cid=900, op=1, exp=NOW + 30, args={1: 250})
    results = []
    for resend in (False, True):
        server.send_command(dataclasses.replace(dispense, dup=resend))
        (command,) = device.receive_data(server.data_to_send(), NOW)
        assert isinstance(command, Command)
        result = memory.lookup(command.cid)
        if result is None:
            poured.append(command.args[1])
            result = Result(cid=command.cid, rc=0, out=command.args[1])
            memory.remember(result)
        device.send_result(result)
        events = server.receive_data(device.data_to_send(), NOW)
        results += [e for e in events if isinstance(e, Result)]
    assert poured == [250]
    assert [(r.cid, r.rc, r.out) for r in results] == [(900, 0, 250)] * 2
