"""Login: a golden exchange with fixed nonces, failures, timers and PING."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from aquafleet.protocol import (
    AckCode,
    DesiredState,
    ErrorCode,
    FrameType,
    LocalProtocolError,
    LoggedIn,
    LoginFailed,
    LoginRequested,
    SessionClosed,
    SessionState,
    derive_device_key,
)
from aquafleet.protocol.constants import Flag
from aquafleet.protocol.crypto import direction_keys, mqtt_password, mqtt_tag, session_key
from aquafleet.protocol.message_types import (
    AuthFail,
    Command,
    Error,
    Event,
    Pong,
    Result,
    Telemetry,
)
from aquafleet.protocol.messages import decode_payload, encode_payload
from tests.protocol.helpers import (
    CLIENT_NONCE,
    DEVICE_KEY,
    DID,
    FW,
    K_DS,
    K_SD,
    NOW,
    SERVER_NONCE,
    awaiting_auth_ok,
    close_code,
    crc16_bitwise,
    decode_all,
    expected_session_key,
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

# HMAC-SHA256 with K = 00 01 .. 1f, did "AQ0000000001", cn 01..08, sn 11..18 (see docs/protocol.md)
AUTH_PROOF = hmac256(DEVICE_KEY, b"AQ1" + DID.encode() + CLIENT_NONCE + SERVER_NONCE)
SERVER_PROOF = hmac256(DEVICE_KEY, b"SRV" + DID.encode() + SERVER_NONCE + CLIENT_NONCE)
SESSION_KEY = hmac256(DEVICE_KEY, b"S" + CLIENT_NONCE + SERVER_NONCE)
# Frame MAC keys: HMAC(Ks, "DS") for device -> server, HMAC(Ks, "SD") for server -> device
DS_KEY = hmac.new(SESSION_KEY, b"DS", hashlib.sha256).digest()
SD_KEY = hmac.new(SESSION_KEY, b"SD", hashlib.sha256).digest()


def test_independent_vectors() -> None:
    # Pinned (cross-checked with `openssl dgst -sha256 -mac HMAC`), as in docs/protocol.md.
    assert AUTH_PROOF.hex() == ("00c545004e64345877afb325d5a6a106091e1b10090d411363c5ca2bfff3c826")
    assert SERVER_PROOF.hex() == (
        "5eefd0f96f8bcc8d3cc86591eef1d7f845bfebb73e464b25c0a1be805d90a7b7"
    )
    assert SESSION_KEY.hex() == ("92624e485a39b07ac1e4c09a98aeebfe9a0d34b69b928181fec9b5c754837c46")
    assert DS_KEY.hex() == "74789cc5c061a00b7031eeaefeae12db935df38cdcf42677f4b77bb25be450d7"
    assert SD_KEY.hex() == "e3875d19a726fd0cc0751efaa048ec73a49cb7d5a86aa0a7fe60e61f7e0c0137"


def test_direction_keys_golden_vectors() -> None:
    """protocol.crypto derives Ks, then (K_ds, K_sd) = (HMAC(Ks, "DS"), HMAC(Ks, "SD"))."""
    assert session_key(DEVICE_KEY, CLIENT_NONCE, SERVER_NONCE) == SESSION_KEY
    assert direction_keys(SESSION_KEY) == (DS_KEY, SD_KEY)  # device -> server first
    assert (K_DS, K_SD) == (DS_KEY, SD_KEY)  # the helpers' keys agree
    assert len({SESSION_KEY, DS_KEY, SD_KEY}) == 3
    # another key: computed afresh, not cached
    other = bytes(range(100, 132))
    assert direction_keys(other) == (
        hmac.digest(other, b"DS", "sha256"),
        hmac.digest(other, b"SD", "sha256"),
    )


def test_golden_login_exchange() -> None:
    server = new_server()
    device = new_device()
    device.start()
    hello = device.data_to_send()
    # HELLO, seq 0, msgpack {1: "AQ0000000001", 2: "1.4.2", 3: cn}
    payload = (
        b"\x83"
        + b"\x01\xac"
        + DID.encode()
        + b"\x02\xa5"
        + FW.encode()
        + b"\x03\xc4\x08"
        + CLIENT_NONCE
    )
    head = b"\x5a\xa5\x01\x01\x00\x00\x00" + struct.pack(">H", len(payload))
    assert hello == head + payload + crc16_bitwise(head[2:] + payload).to_bytes(2, "big")

    assert server.receive_data(hello, NOW) == []
    challenge = server.data_to_send()
    (frame,) = decode_all(challenge)
    assert (frame.type, frame.seq) == (FrameType.CHALLENGE, 0)
    assert decode_payload(frame.payload, 0) == {3: SERVER_NONCE, 4: NOW}
    assert server.state is SessionState.AWAIT_AUTH

    assert device.receive_data(challenge, NOW + 1) == []
    auth = device.data_to_send()
    (frame,) = decode_all(auth)
    assert (frame.type, frame.seq) == (FrameType.AUTH, 1)
    assert decode_payload(frame.payload, 0) == {5: AUTH_PROOF}

    assert server.receive_data(auth, NOW + 1) == [LoginRequested(did=DID, fw=FW)]
    assert server.state.name == "VERIFYING"
    assert server.data_to_send() == b""
    assert server.verify_login(DEVICE_KEY)
    desired = DesiredState(
        version=5, locked=False, remaining_ml=-120, rental_expires_at=1_800_000_000
    )
    server.accept_login(now=NOW + 1, last_acked=(7, 41), desired=desired)
    auth_ok = server.data_to_send()
    (frame,) = decode_all(auth_ok)
    assert (frame.type, frame.seq) == (FrameType.AUTH_OK, 1)
    # AUTH_OK is the first frame MACed, with K_sd = HMAC(Ks, "SD"), Ks = HMAC(K, "S" | cn | sn)
    assert frame.flags == Flag.MAC
    assert frame.mac == hmac256(SD_KEY, frame.signed)[:8]
    assert decode_payload(frame.payload, 0) == {
        6: SERVER_PROOF,
        7: 60,
        8: [7, 41],
        9: {1: 0, 2: -120, 3: 1_800_000_000, 4: 5},
    }
    assert server.state.name == "ONLINE"

    events = device.receive_data(auth_ok, NOW + 1)
    assert events == [
        LoggedIn(heartbeat_s=60, server_time=NOW, last_acked=(7, 41), desired=desired)
    ]
    assert device.state is SessionState.ONLINE
    assert device.data_to_send() == b""

    # From here on both ends MAC every frame that carries data: the device with K_ds, the
    # server with K_sd.
    assert expected_session_key() == SESSION_KEY
    device.send_record(Telemetry(rec=1, boot=7, ts=NOW + 2, flow_total_ml=650))
    device.send_record(Event(rec=2, boot=7, ts=NOW + 2, kind=1, ml=250, flow_total_ml=900))
    device.send_result(Result(cid=3, rc=0, out=250))
    server.send_command(Command(cid=4, op=2, exp=NOW + 60, args={2: 6}))
    server.ack(2, AckCode.STORED, (7, 1))
    device.receive_data(server.data_to_send(), NOW + 2)  # COMMAND and ACK: the device acks one
    device_frames = decode_all(device.data_to_send())
    assert [f.type for f in device_frames] == [0x20, 0x21, 0x31, 0x7F]  # TELEMETRY EVENT RESULT ACK
    server.send_command(Command(cid=5, op=9, exp=NOW + 60))
    server.ack(3, AckCode.STORED, (7, 2))
    server_frames = decode_all(server.data_to_send())
    assert [f.type for f in server_frames] == [0x30, 0x7F]  # COMMAND ACK
    for frame in device_frames:
        assert frame.mac == hmac256(DS_KEY, frame.signed)[:8], frame
    for frame in server_frames:
        assert frame.mac == hmac256(SD_KEY, frame.signed)[:8], frame


def test_login_in_cbor() -> None:
    server, device = login_pair(encoding=1)
    assert server.state is device.state is SessionState.ONLINE


def test_wrong_key_fails_both_ways() -> None:
    server = new_server()
    device = new_device(key=b"\xff" * 32)
    device.start()
    server.receive_data(device.data_to_send(), NOW)
    device.receive_data(server.data_to_send(), NOW)
    assert server.receive_data(device.data_to_send(), NOW) == [LoginRequested(DID, FW)]
    assert not server.verify_login(DEVICE_KEY)
    with pytest.raises(LocalProtocolError):
        server.accept_login(now=NOW)  # verify_login said no
    server.reject_login(ErrorCode.AUTH_BAD_PROOF, "bad proof")
    assert server.is_closed
    assert server.close_code is ErrorCode.AUTH_BAD_PROOF
    data = server.data_to_send()
    assert messages(data) == [AuthFail(code=ErrorCode.AUTH_BAD_PROOF, reason="bad proof")]
    assert device.receive_data(data, NOW) == [LoginFailed(ErrorCode.AUTH_BAD_PROOF, "bad proof")]
    assert device.is_closed
    assert device.data_to_send() == b""
    server.reject_login(ErrorCode.AUTH_BAD_PROOF, "again")  # no-op once closed
    assert server.data_to_send() == b""


def test_unknown_device_is_rejected_without_a_key() -> None:
    server = new_server()
    device = new_device()
    device.start()
    server.receive_data(device.data_to_send(), NOW)
    device.receive_data(server.data_to_send(), NOW)
    server.receive_data(device.data_to_send(), NOW)
    server.reject_login(ErrorCode.AUTH_UNKNOWN_DEVICE, "who?")
    assert messages(server.data_to_send()) == [AuthFail(code=20, reason="who?")]


def test_the_device_knows_ks_after_sending_auth() -> None:
    """An AUTH_OK built by hand with K_sd (not by ServerSession) is accepted."""
    _server, device = awaiting_auth_ok()
    assert device.state is SessionState.AUTH_SENT
    body = {6: SERVER_PROOF, 7: 30, 8: [7, 41], 9: {1: 1, 4: 9}}
    events = device.receive_data(make_frame(FrameType.AUTH_OK, body, seq=1, mac_key=SD_KEY), NOW)
    assert events == [LoggedIn(30, NOW, (7, 41), DesiredState(version=9, locked=True))]


def test_wrong_server_proof_fails_the_device() -> None:
    """The MAC holds (the sender knows K_sd) but the proof does not: a server bug, never sent."""
    _server, device = awaiting_auth_ok()
    fake = make_frame(FrameType.AUTH_OK, {6: b"\x00" * 32, 7: 60}, seq=1, mac_key=SD_KEY)
    assert device.receive_data(fake, NOW) == [
        LoginFailed(ErrorCode.AUTH_BAD_SERVER_PROOF, "server proof")
    ]
    assert device.is_closed
    assert device.close_code is ErrorCode.AUTH_BAD_SERVER_PROOF
    assert device.data_to_send() == b""
    assert device.receive_data(make_frame(FrameType.PING, {}), NOW) == []


AUTH_OK_BAD_MAC = [
    SessionClosed(ErrorCode.BAD_MAC, "frame MAC missing or wrong"),
    LoginFailed(ErrorCode.BAD_MAC, "AUTH_OK MAC wrong"),
]


def genuine_auth_ok() -> tuple[bytes, DesiredState]:
    """The device awaiting AUTH_OK, and the server's genuine AUTH_OK (locked, 5000 ml left)."""
    server, _device = awaiting_auth_ok()
    desired = DesiredState(version=5, locked=True, remaining_ml=5000)
    server.accept_login(now=NOW, last_acked=(7, 41), desired=desired)
    return server.data_to_send(), desired


@pytest.mark.parametrize(
    "tamper",
    [
        "unlocked",
        "more water",
        "watermark raised",
        "strip MAC",
        "flip MAC bit",
        "device key",
        "session key",
        "device -> server key",
    ],
)
def test_tampered_auth_ok_fails_the_login(tamper: str) -> None:
    """A man in the middle cannot change the desired state or the watermark in AUTH_OK."""
    data, desired = genuine_auth_ok()
    (frame,) = decode_all(data)
    body = decode_payload(frame.payload, 0)
    assert body[9] == {1: 1, 2: 5000, 4: 5}
    mac = frame.mac
    assert mac is not None and mac == mac_of(frame, SD_KEY)
    if tamper == "unlocked":
        body[9] = {**body[9], 1: 0}
    elif tamper == "more water":
        body[9] = {**body[9], 2: 5_000_000}
    elif tamper == "watermark raised":
        body[8] = [7, 4000]  # the device would drop records 42..4000 unsent
    elif tamper == "strip MAC":
        mac = None
    elif tamper == "flip MAC bit":
        mac = mac[:3] + bytes([mac[3] ^ 0x01]) + mac[4:]
    elif tamper == "device key":
        mac = hmac256(DEVICE_KEY, frame.signed)[:8]  # K_dev instead of K_sd
    elif tamper == "session key":
        mac = hmac256(SESSION_KEY, frame.signed)[:8]  # Ks itself, as before direction keys
    else:
        mac = hmac256(DS_KEY, frame.signed)[:8]  # the device's own direction
    forged = raw_frame(frame.type, frame.seq, encode_payload(body, 0), flags=0, mac=mac)
    _server, device = awaiting_auth_ok()
    events = device.receive_data(forged, NOW)
    assert events == AUTH_OK_BAD_MAC  # no LoggedIn: nothing in the forged AUTH_OK is applied
    assert device.is_closed
    assert device.close_code is ErrorCode.BAD_MAC
    assert only_error(device.data_to_send()).code == ErrorCode.BAD_MAC
    # the untouched frame logs in
    _server, device = awaiting_auth_ok()
    assert device.receive_data(data, NOW) == [LoggedIn(60, NOW, (7, 41), desired)]


def test_impostor_server_fails_on_the_mac() -> None:
    """A server without K_dev can neither MAC AUTH_OK nor prove itself; the MAC is checked first."""
    wrong = b"\x42" * 32
    ks = hmac256(wrong, b"S" + CLIENT_NONCE + SERVER_NONCE)
    proof = hmac256(wrong, b"SRV" + DID.encode() + SERVER_NONCE + CLIENT_NONCE)
    _server, device = awaiting_auth_ok()
    fake = make_frame(FrameType.AUTH_OK, {6: proof, 7: 60}, seq=1, mac_key=hmac256(ks, b"SD"))
    assert device.receive_data(fake, NOW) == AUTH_OK_BAD_MAC


@pytest.mark.parametrize("stage", ["HELLO_SENT", "AUTH_SENT"])
@pytest.mark.parametrize(
    ("code", "closed_with"),
    [
        (ErrorCode.AUTH_TIMEOUT, ErrorCode.AUTH_TIMEOUT),
        (ErrorCode.UNEXPECTED_FRAME, ErrorCode.UNEXPECTED_FRAME),
        (ErrorCode.OVERLOADED, ErrorCode.OVERLOADED),
        (999, ErrorCode.INTERNAL),
    ],
)
def test_error_before_login_closes_the_device(stage: str, code: int, closed_with: int) -> None:
    if stage == "HELLO_SENT":
        device = new_device()
        device.start()
        device.data_to_send()
    else:
        _server, device = awaiting_auth_ok()
    assert device.state.name == stage
    events = device.receive_data(make_frame(FrameType.ERROR, {1: code, 2: "bye"}), NOW)
    assert events == [LoginFailed(code, "bye")]
    assert device.is_closed
    assert device.close_code == closed_with
    assert device.data_to_send() == b""  # an ERROR is not answered with an ERROR
    assert device.receive_data(make_frame(FrameType.CHALLENGE, {3: SERVER_NONCE, 4: 0}), NOW) == []


def test_malformed_error_before_login_closes_the_device() -> None:
    device = new_device()
    device.start()
    device.data_to_send()
    events = device.receive_data(make_frame(FrameType.ERROR, {1: "timeout"}), NOW)
    assert close_code(events) == ErrorCode.BAD_PAYLOAD
    assert only_error(device.data_to_send()).code == ErrorCode.BAD_PAYLOAD


def test_error_after_login_is_reported_and_the_device_stays_up() -> None:
    _server, device = login_pair()
    events = device.receive_data(make_frame(FrameType.ERROR, {1: 6, 2: "?", 3: 4}), NOW)
    assert events == [Error(6, "?", 4)]
    assert device.state is SessionState.ONLINE


def test_auth_fail_with_an_unknown_code() -> None:
    device = new_device()
    device.start()
    device.data_to_send()
    events = device.receive_data(make_frame(FrameType.AUTH_FAIL, {1: 999, 2: "?"}), NOW)
    assert events == [LoginFailed(999, "?")]
    assert device.close_code is ErrorCode.INTERNAL


BEFORE_HELLO = [t for t in FrameType if t is not FrameType.HELLO] + [0x55]


@pytest.mark.parametrize("frame_type", BEFORE_HELLO, ids=lambda t: f"0x{t:02x}")
def test_only_hello_before_login(frame_type: int) -> None:
    server = new_server()
    events = server.receive_data(make_frame(frame_type, {0: 1, 1: 1, 2: 1}, seq=4), NOW)
    assert close_code(events) == ErrorCode.UNEXPECTED_FRAME
    assert server.is_closed
    assert only_error(server.data_to_send()).code == ErrorCode.UNEXPECTED_FRAME


@pytest.mark.parametrize("frame_type", [FrameType.HELLO, FrameType.TELEMETRY, FrameType.PING])
def test_only_auth_after_hello(frame_type: int) -> None:
    server = new_server()
    device = new_device()
    device.start()
    server.receive_data(device.data_to_send(), NOW)
    server.data_to_send()
    events = server.receive_data(make_frame(frame_type, {}), NOW)
    assert close_code(events) == ErrorCode.UNEXPECTED_FRAME
    assert only_error(server.data_to_send()).code == ErrorCode.UNEXPECTED_FRAME


def test_frames_while_verifying_close_the_session() -> None:
    server = new_server()
    device = new_device()
    device.start()
    server.receive_data(device.data_to_send(), NOW)
    device.receive_data(server.data_to_send(), NOW)
    server.receive_data(device.data_to_send(), NOW)
    events = server.receive_data(make_frame(FrameType.PING, {}), NOW)
    assert close_code(events) == ErrorCode.UNEXPECTED_FRAME


def test_malformed_hello_closes() -> None:
    server = new_server()
    events = server.receive_data(make_frame(FrameType.HELLO, {1: "d", 3: b"short"}), NOW)
    assert close_code(events) == ErrorCode.BAD_PAYLOAD
    assert only_error(server.data_to_send()).code == ErrorCode.BAD_PAYLOAD


def test_unexpected_frame_closes_a_device_before_login() -> None:
    device = new_device()
    device.start()
    device.data_to_send()
    events = device.receive_data(make_frame(FrameType.COMMAND, {30: 1, 31: 1, 32: 0}), NOW)
    assert close_code(events) == ErrorCode.UNEXPECTED_FRAME
    assert device.close_code is ErrorCode.UNEXPECTED_FRAME
    assert only_error(device.data_to_send()).code == ErrorCode.UNEXPECTED_FRAME


def test_api_misuse_raises_local_errors() -> None:
    server = new_server()
    with pytest.raises(LocalProtocolError):
        server.verify_login(DEVICE_KEY)
    with pytest.raises(LocalProtocolError):
        server.accept_login(now=NOW)
    with pytest.raises(LocalProtocolError):
        server.send_command(Command(cid=1, op=1, exp=0))
    device = new_device()
    with pytest.raises(LocalProtocolError):
        device.send_record(Telemetry(rec=1, boot=1, ts=1))
    with pytest.raises(LocalProtocolError):
        device.ping()
    device.start()
    with pytest.raises(LocalProtocolError):
        device.start()
    with pytest.raises(LocalProtocolError):
        new_device(encoding=7)


# --------------------------------------------------------------------------- timers


@pytest.mark.parametrize("stage", [0, 1])
def test_login_timeout_15_s_after_the_connection_opened_until_auth_arrives(stage: int) -> None:
    server = new_server()
    device = new_device()
    device.start()
    if stage >= 1:  # HELLO answered, no AUTH yet: still the device's 15 s
        server.receive_data(device.data_to_send(), NOW + 1)
        device.receive_data(server.data_to_send(), NOW + 1)
    server.data_to_send()
    assert server.next_deadline == NOW + 15
    assert server.check_timers(NOW + 14.9) is None
    closed = server.check_timers(NOW + 15)
    assert closed is not None
    assert closed.code is ErrorCode.AUTH_TIMEOUT
    assert server.is_closed
    assert only_error(server.data_to_send()).code == ErrorCode.AUTH_TIMEOUT
    assert server.check_timers(NOW + 100) is None


def test_an_auth_waiting_on_the_server_gets_15_s_from_its_arrival() -> None:
    """A storm's login queued behind the others on our side is not the device's fault."""
    server = new_server()
    device = new_device()
    device.start()
    server.receive_data(device.data_to_send(), NOW + 1)
    device.receive_data(server.data_to_send(), NOW + 1)
    assert server.receive_data(device.data_to_send(), NOW + 12)  # VERIFYING
    assert server.next_deadline == NOW + 27
    assert server.check_timers(NOW + 15) is None  # the device's 15 s are over: not closed
    assert server.check_timers(NOW + 26.9) is None
    closed = server.check_timers(NOW + 27)  # still unanswered (say, the registry is down)
    assert closed is not None and closed.code is ErrorCode.AUTH_TIMEOUT
    assert only_error(server.data_to_send()).code == ErrorCode.AUTH_TIMEOUT


def test_a_late_auth_still_times_out_at_15_s() -> None:
    server = new_server()
    device = new_device()
    device.start()
    server.receive_data(device.data_to_send(), NOW + 1)
    device.receive_data(server.data_to_send(), NOW + 1)
    server.data_to_send()
    closed = server.check_timers(NOW + 15)
    assert closed is not None and closed.code is ErrorCode.AUTH_TIMEOUT
    assert server.receive_data(device.data_to_send(), NOW + 16) == []  # too late: ignored


def test_idle_timeout_after_2_5_heartbeats() -> None:
    server, _device = login_pair(heartbeat_s=60)
    assert server.next_deadline == NOW + 150
    assert server.check_timers(NOW + 149.9) is None
    closed = server.check_timers(NOW + 150)
    assert closed is not None
    assert closed.code is ErrorCode.IDLE_TIMEOUT
    assert only_error(server.data_to_send()).code == ErrorCode.IDLE_TIMEOUT
    assert server.receive_data(b"anything", NOW + 151) == []


def test_any_frame_resets_the_idle_timer() -> None:
    server, device = login_pair(heartbeat_s=10)
    device.ping()
    server.receive_data(device.data_to_send(), NOW + 20)
    assert server.next_deadline == NOW + 45
    assert server.check_timers(NOW + 44) is None
    device.send_record(Telemetry(rec=1, boot=1, ts=1))
    server.receive_data(device.data_to_send(), NOW + 40)
    assert server.check_timers(NOW + 64) is None
    assert server.check_timers(NOW + 65) is not None


def test_garbage_does_not_reset_the_idle_timer() -> None:
    server, _device = login_pair(heartbeat_s=10)
    assert server.receive_data(b"+CSQ: 20,0\r\n", NOW + 20) == []
    assert server.receive_data(b"\x5a\xa5\x01\x10", NOW + 21) == []  # half a header
    assert server.next_deadline == NOW + 25
    assert server.check_timers(NOW + 25) is not None


def test_ping_gets_pong() -> None:
    server, device = login_pair()
    seq = device.ping()
    assert server.receive_data(device.data_to_send(), NOW + 60) == []
    data = server.data_to_send()
    (frame,) = decode_all(data)
    assert frame.type == FrameType.PONG
    assert device.receive_data(data, NOW + 60) == [Pong(seq=frame.seq)]
    assert seq == 2  # seq runs on per connection: HELLO 0, AUTH 1, PING 2


# --------------------------------------------------------------------------- key helpers


def test_device_key_derivation() -> None:
    master = b"m" * 32
    expected = hmac256(master, b"AQK1" + DID.encode() + (3).to_bytes(4, "big"))
    assert derive_device_key(master, DID, 3) == expected
    assert derive_device_key(master, DID, 4) != expected
    with pytest.raises(ValueError):
        derive_device_key(b"short", DID, 1)


def test_mqtt_credentials() -> None:
    digest = hmac256(DEVICE_KEY, b"mqtt" + DID.encode() + b"1700000000")
    assert mqtt_password(DEVICE_KEY, DID, NOW) == f"1700000000.{digest.hex()}"
    topic = f"aq/{DID}/up/tele"
    assert (
        mqtt_tag(DEVICE_KEY, topic, b"\x00\x80")
        == hmac256(DEVICE_KEY, topic.encode() + b"\x00\x80")[:8]
    )
