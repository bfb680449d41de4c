"""Every input split at every byte offset (and fed byte by byte) gives the same events."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from aquafleet.protocol import DesiredState, DeviceSession, ErrorCode, ServerSession
from aquafleet.protocol.message_types import Command, Error, Event, Result, Telemetry
from tests.protocol.helpers import (
    DEVICE_KEY,
    ENCODINGS,
    K_DS,
    NOW,
    login_pair,
    make_frame,
    messages,
    new_device,
    new_server,
)

GARBAGE = b"CONNECT OK\r\n"


def two_pieces(data: bytes) -> Iterable[list[bytes]]:
    for split in range(len(data) + 1):
        yield [data[:split], data[split:]]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def run(
    session: ServerSession | DeviceSession, chunks: Iterable[bytes]
) -> tuple[list[object], bytes]:
    events: list[object] = []
    for chunk in chunks:
        events += session.receive_data(chunk, NOW + 1)
    return events, session.data_to_send()


def check_all_splits(
    make: Callable[[], ServerSession | DeviceSession], data: bytes
) -> tuple[list[object], bytes]:
    reference = run(make(), [data])
    for chunks in two_pieces(data):
        assert run(make(), chunks) == reference, len(chunks[0])
    assert run(make(), byte_by_byte(data)) == reference
    return reference


# --------------------------------------------------------------------------- server side


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_server_login_stream(encoding: int) -> None:
    device = new_device(encoding=encoding)
    device.start()
    hello = device.data_to_send()
    server = new_server()
    server.receive_data(hello, NOW)
    device.receive_data(server.data_to_send(), NOW)
    stream = GARBAGE + hello + GARBAGE + device.data_to_send()  # HELLO, AUTH

    def fresh() -> ServerSession:
        return new_server(now=NOW)

    events, sent = check_all_splits(fresh, stream)
    assert [type(e).__name__ for e in events] == ["LoginRequested"]
    assert sent  # the CHALLENGE


def device_records(encoding: int) -> bytes:
    server, device = login_pair(encoding=encoding)
    device.send_record(Telemetry(rec=1, boot=7, ts=NOW, flow_total_ml=1000, cnt_epoch=1))
    parts = [device.data_to_send()]
    device.send_record(Event(rec=2, boot=7, ts=NOW, kind=1, cid=5, ml=250, flow_total_ml=1250))
    device.ping()
    parts += [b"\x5a", device.data_to_send()]  # a stray first magic byte between frames
    device.send_record(Telemetry(rec=1, boot=7, ts=NOW, flow_total_ml=1000), dup=True)
    device.send_result(Result(cid=5, rc=0, out=250))
    server.send_command(Command(cid=6, op=2, exp=NOW + 60, args={2: 9}))
    device.receive_data(server.data_to_send(), NOW)  # the device ACKs it
    parts += [GARBAGE, device.data_to_send()]
    parts.append(make_frame(0x20, {0: "one", 1: 7, 2: NOW}, seq=999, mac_key=K_DS))
    parts += [b"+CSQ: 20,0\r\n", make_frame(0x55, {}, seq=1000)]  # ERROR, stays up
    return b"".join(parts)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_server_online_stream(encoding: int) -> None:
    stream = device_records(encoding)

    def fresh() -> ServerSession:
        return login_pair(encoding=encoding)[0]

    events, sent = check_all_splits(fresh, stream)
    names = [type(e).__name__ for e in events]
    assert names == [
        "Record",
        "Record",
        "Record",
        "Result",
        "Ack",
        "FrameRejected",
        "FrameRejected",
    ]
    assert [type(m).__name__ for m in messages(sent)] == ["Pong", "Ack", "Error"]  # Ack: REJECTED


@pytest.mark.parametrize(
    "unmaced",
    [(0x21, {0: 3, 1: 7, 2: NOW, 20: 1}), (0x20, {0: 3, 1: 7, 2: NOW}), (0x7F, {0: 5, 1: 0})],
)
def test_server_stream_that_ends_in_a_close(unmaced: tuple[int, dict[int, object]]) -> None:
    stream = device_records(0) + make_frame(*unmaced) + GARBAGE + device_records(0)

    def fresh() -> ServerSession:
        return login_pair()[0]

    events, sent = check_all_splits(fresh, stream)
    assert type(events[-1]).__name__ == "SessionClosed"  # EVENT, TELEMETRY or ACK without MAC
    assert len(events) == 8  # the 7 of device_records, then the close: nothing after it
    assert messages(sent)[-1] == Error(ErrorCode.BAD_MAC, "frame MAC missing or wrong")


# --------------------------------------------------------------------------- device side


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_device_stream(encoding: int) -> None:
    server = new_server(encoding=encoding)
    device = new_device(encoding=encoding)
    device.start()
    server.receive_data(device.data_to_send(), NOW)
    challenge = server.data_to_send()
    device.receive_data(challenge, NOW)
    server.receive_data(device.data_to_send(), NOW)
    server.verify_login(DEVICE_KEY)
    server.accept_login(now=NOW, last_acked=(7, 3), desired=DesiredState(2, True, 5000, None))
    server.send_command(Command(cid=6, op=1, exp=NOW + 60, args={1: 250}))
    server.ack(3, 0, (7, 4))
    server.close(ErrorCode.SHUTDOWN, "shutting down")
    stream = GARBAGE + challenge + b"\x5a" + server.data_to_send()
    stream += make_frame(0x10, {}, seq=0x5AA5, encoding=encoding)  # after the close: ignored

    def fresh() -> DeviceSession:
        session = new_device(encoding=encoding)
        session.start()
        session.data_to_send()
        return session

    events, sent = check_all_splits(fresh, stream)
    assert [type(e).__name__ for e in events] == ["LoggedIn", "Command", "Ack", "Error"]
    assert sent  # AUTH, ACK of the command
