"""The MQTT envelope and both ends' sessions (protocol/mqtt.py), without a broker."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aquafleet.protocol import (
    AckCode,
    Command,
    CommandOp,
    DesiredState,
    ErrorCode,
    Event,
    ProtocolError,
    Telemetry,
    speedups,
)
from aquafleet.protocol.frames import MacKey
from aquafleet.protocol.message_types import Ack, Record, Result
from aquafleet.protocol.messages import message_map
from aquafleet.protocol.mqtt import (
    RECENT_COMMANDS,
    CommandAnswer,
    Dropped,
    MqttDeviceSession,
    MqttServerSession,
    StatusNotice,
    UplinkDropped,
)
from aquafleet.protocol.mqtt_envelope import (
    MAX_SKEW_MS,
    RECENT_TAGS,
    Channel,
    MqttKey,
    ReplayGuard,
    TopicCache,
    open_envelope,
    seal,
    topic,
)

KEY = bytes(range(32))
DID = "DEMO00000001DA9F"
NOW = 1767225600.0


def doc_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_the_byte_examples_in_docs_mqtt_md() -> None:
    record = Telemetry(rec=5, boot=3, ts=1767225600, flow_total_ml=12345, cnt_epoch=3)
    body = {**message_map(record), MqttKey.SEQ: 7, MqttKey.SENT_MS: 1767225600123}
    name = topic("aq", DID, Channel.UP_TELE)
    assert seal(MacKey(KEY), name, body, 0) == doc_bytes(
        "10 87 00 05 01 03 02 ce 69 55 b9 00 0a cd 30 39 10 03 28 07"
        "29 cf 00 00 01 9b 76 da a8 7b a0 e5 f1 11 f6 84 4a 0e"
    )
    ack = {0: 7, 1: 0, 2: [3, 5], MqttKey.SEQ: 0, MqttKey.SENT_MS: 1767225600456}
    assert seal(MacKey(KEY), topic("aq", DID, Channel.DOWN_ACK), ack, 0) == doc_bytes(
        "10 85 00 07 01 00 02 92 03 05 28 00 29 cf 00 00 01 9b 76 da a9 c8c5 9b e5 a6 e4 47 30 89"
    )
    device = MqttDeviceSession("aq", DID, KEY, clock=lambda: NOW)
    assert device.will(1767225600000) == (
        "aq/DEMO00000001DA9F/status",
        doc_bytes(
            "10 83 29 cf 00 00 01 9b 76 da a8 00 32 00 33 cf 00 00 01 9b 76 da a8 00"
            "5a 4a 93 c0 1f bd 10 26"
        ),
    )


def pair(clock: float = NOW) -> tuple[MqttDeviceSession, MqttServerSession]:
    device = MqttDeviceSession("aq", DID, KEY, clock=lambda: clock)
    device.connected(int(clock * 1000))
    server = MqttServerSession(
        "aq", DID, clock, clock=lambda: clock, heartbeat_s=60, login_timeout_s=15
    )
    return device, server


def envelopes(device: MqttDeviceSession) -> list:
    return [open_envelope("aq", name, payload) for name, payload, _ in device.data_to_send()]


def online(device: MqttDeviceSession, server: MqttServerSession) -> None:
    for envelope in envelopes(device):
        server.hold(envelope)
    assert server.verify_login(KEY)
    server.accept_login(now=NOW)


def test_a_record_goes_through_and_its_ack_comes_back() -> None:
    device, server = pair()
    online(device, server)
    (notice,) = server.take_held()
    assert server.receive_data(notice, NOW) == [
        StatusNotice(online=True, connected_ms=int(NOW * 1000))
    ]
    seq = device.send_record(Telemetry(rec=1, boot=9, ts=1, flow_total_ml=10))
    (envelope,) = envelopes(device)
    (record,) = server.receive_data(envelope, NOW)
    assert isinstance(record, Record) and (record.seq, record.boot, record.rec) == (seq, 9, 1)
    server.ack(record.seq, AckCode.STORED, (9, 1))
    ((name, payload, qos),) = server.data_to_send()
    assert (name, qos) == ("aq/DEMO00000001DA9F/down/ack", 0)
    assert device.receive_data((name, payload), 0) == [Ack(seq=seq, rc=0, watermark=(9, 1))]


def test_forged_replayed_stale_and_malformed_uplinks_are_dropped() -> None:
    device, server = pair()
    online(device, server)
    server.take_held()
    device.send_record(Telemetry(rec=1, boot=9, ts=1, flow_total_ml=10))
    (good,) = envelopes(device)
    assert isinstance(server.receive_data(good, NOW)[0], Record)
    assert server.receive_data(good, NOW) == [UplinkDropped("replayed", Channel.UP_TELE)]
    name = topic("aq", DID, Channel.UP_TELE)
    body = {0: 2, 1: 9, 2: 1, MqttKey.SEQ: 5, MqttKey.SENT_MS: int(NOW * 1000)}
    forged = open_envelope("aq", name, seal(MacKey(b"\x01" * 32), name, body, 0))
    assert server.receive_data(forged, NOW) == [UplinkDropped("forged", Channel.UP_TELE)]
    old = {**body, MqttKey.SENT_MS: int(NOW * 1000) - MAX_SKEW_MS - 1}
    stale = open_envelope("aq", name, seal(MacKey(KEY), name, old, 0))
    assert server.receive_data(stale, NOW) == [UplinkDropped("stale", Channel.UP_TELE)]
    behind = {**body, MqttKey.SENT_MS: int(NOW * 1000) - 6000}  # 6 s behind the newest
    assert server.receive_data(
        open_envelope("aq", name, seal(MacKey(KEY), name, behind, 0)), NOW
    ) == [UplinkDropped("replayed", Channel.UP_TELE)]
    bad_record = {**body, 0: 0, MqttKey.SENT_MS: int(NOW * 1000) + 1}  # rec 0 is invalid
    envelope = open_envelope("aq", name, seal(MacKey(KEY), name, bad_record, 0))
    assert server.receive_data(envelope, NOW) == [UplinkDropped("malformed", Channel.UP_TELE)]
    ((_, payload, _),) = server.data_to_send()  # a REJECTED ack: do not resend it
    assert device.receive_data((topic("aq", DID, Channel.DOWN_ACK), payload), 0) == [
        Ack(seq=5, rc=AckCode.REJECTED)
    ]


def test_the_key_lookup_keeps_good_messages_and_drops_forged_ones() -> None:
    device, server = pair()
    name = topic("aq", DID, Channel.UP_TELE)
    body = {0: 1, 1: 9, 2: 1, MqttKey.SEQ: 5, MqttKey.SENT_MS: int(NOW * 1000)}
    server.hold(open_envelope("aq", name, seal(MacKey(b"\x01" * 32), name, body, 0)))
    for envelope in envelopes(device):
        server.hold(envelope)
    assert server.verify_login(KEY)
    assert server.drops == [UplinkDropped("forged", Channel.UP_TELE)]
    assert len(server.take_held()) == 1
    _, lonely = pair()
    lonely.hold(open_envelope("aq", name, seal(MacKey(b"\x01" * 32), name, body, 0)))
    assert not lonely.verify_login(KEY)
    lonely.reject_login(ErrorCode.AUTH_BAD_PROOF, "bad proof")
    assert lonely.is_closed and [d.reason for d in lonely.drops] == ["forged"]


def test_a_will_about_an_older_connection_is_ignored() -> None:
    device, server = pair()
    online(device, server)
    old_will = device.will(int(NOW * 1000) - 60_000)
    for envelope in server.take_held():
        server.receive_data(envelope, NOW)
    envelope = open_envelope("aq", *old_will)
    assert server.receive_data(envelope, NOW) == [UplinkDropped("replayed", Channel.STATUS)]
    will = open_envelope("aq", *device.will(int(NOW * 1000)))
    assert server.receive_data(will, NOW) == [
        StatusNotice(online=False, connected_ms=int(NOW * 1000))
    ]


def test_commands_are_sealed_acked_by_the_device_and_results_come_back() -> None:
    device, server = pair()
    online(device, server)
    server.take_held()
    seq = server.send_command(Command(cid=3, op=CommandOp.LOCK, exp=int(NOW) + 9, args={2: 4}))
    ((name, payload, qos),) = server.data_to_send()
    assert (name, qos) == ("aq/DEMO00000001DA9F/down/cmd", 1)
    (command,) = device.receive_data((name, payload), 0)
    assert isinstance(command, Command) and command.cid == 3
    device.send_result(Result(cid=3, rc=0, out=7))
    ack, result = envelopes(device)
    # Both answers name the cid, so any node can tell whether it sent the command.
    (acked,) = server.receive_data(ack, NOW)
    (answered,) = server.receive_data(result, NOW)
    assert acked == CommandAnswer(3, ack_rc=0)
    assert answered == CommandAnswer(3, result=Result(cid=3, rc=0, out=7, seq=answered.result.seq))
    assert server.answer_for(acked) == Ack(seq=seq, rc=0)  # the seq this session sent it with
    assert server.answer_for(answered) == answered.result
    assert device.receive_data((name, payload), 0) == [Dropped("replayed")]


def test_a_node_that_did_not_send_a_command_ignores_its_answers() -> None:
    device, server = pair()
    online(device, server)
    server.take_held()
    other = pair()[1]  # the same device's session on another node
    online(pair()[0], other)
    first = server.send_command(Command(cid=8, op=CommandOp.LOCK, exp=int(NOW) + 9))
    resent = server.send_command(Command(cid=8, op=CommandOp.LOCK, exp=int(NOW) + 9, dup=True))
    assert resent != first
    assert server.answer_for(CommandAnswer(8, ack_rc=0)) == Ack(seq=resent, rc=0)
    assert other.answer_for(CommandAnswer(8, ack_rc=0)) is None
    assert other.answer_for(CommandAnswer(8, result=Result(cid=8, rc=0))) is None
    for cid in range(100, 100 + RECENT_COMMANDS):  # the memory is bounded: cid 8 falls out
        server.send_command(Command(cid=cid, op=CommandOp.LOCK, exp=int(NOW) + 9))
    assert server.answer_for(CommandAnswer(8, ack_rc=0)) is None


def test_an_ack_without_a_cid_is_matched_by_seq_as_before() -> None:
    device, server = pair()
    online(device, server)
    server.take_held()
    name = topic("aq", DID, Channel.UP_ACK)
    body = {0: 4, 1: 0, MqttKey.SEQ: 9, MqttKey.SENT_MS: int(NOW * 1000)}
    envelope = open_envelope("aq", name, seal(MacKey(KEY), name, body, 0))
    assert server.receive_data(envelope, NOW) == [Ack(seq=4, rc=0)]


def test_the_desired_state_of_a_login_waits_once_for_the_caller() -> None:
    device, server = pair()
    for envelope in envelopes(device):
        server.hold(envelope)
    assert server.verify_login(KEY)
    desired = DesiredState(version=4, locked=True, remaining_ml=-20)
    server.accept_login(now=NOW, desired=desired)
    assert server.take_desired() == desired
    assert server.take_desired() is None


def test_idle_timeout_closes_the_session() -> None:
    device, server = pair()
    online(device, server)
    assert server.check_timers(NOW + 149) is None
    closed = server.check_timers(NOW + 150)
    assert closed is not None and closed.code is ErrorCode.IDLE_TIMEOUT


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=60),
    st.binary(max_size=1100),
)
def test_hostile_messages_raise_nothing_but_our_error(name: str, payload: bytes) -> None:
    device, server = pair(time.time())
    online(device, server)
    for candidate in (name, f"aq/{DID}/up/tele", f"aq/{DID}/status", f"aq/{DID}/down/ack"):
        try:
            envelope = open_envelope("aq", candidate, payload)
        except ProtocolError:
            with pytest.raises(ProtocolError):  # the bridge's cached parse refuses it too
                open_envelope("aq", candidate, payload, TopicCache("aq"))
            continue
        assert open_envelope("aq", candidate, payload, TopicCache("aq")) == envelope
        for event in server.receive_data(envelope, NOW):
            assert isinstance(event, UplinkDropped | Record | StatusNotice | Ack | Result)
        for event in device.receive_data((candidate, payload), 0):
            assert isinstance(event, Dropped | Ack | Command)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([Channel.UP_TELE, Channel.UP_EVENT, Channel.UP_RESULT, Channel.STATUS]),
    st.binary(max_size=200),
    st.dictionaries(
        st.integers(-2, 60),
        st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=8), st.text(max_size=8)),
        max_size=8,
    ),
)
def test_correctly_tagged_garbage_raises_nothing_but_our_error(
    channel: str, raw: bytes, body: dict
) -> None:
    """Past the tag check: any bytes, or any map, under a good tag."""
    device, server = pair(time.time())
    online(device, server)
    name = topic("aq", DID, channel)
    signed_raw = b"\x10" + raw
    for payload in (signed_raw + MacKey(KEY).mac(name.encode() + signed_raw),):
        try:
            envelope = open_envelope("aq", name, payload)
        except ProtocolError:
            continue
        server.receive_data(envelope, NOW)
    try:
        sealed = seal(MacKey(KEY), name, body, 0)
    except ProtocolError:
        return
    for event in server.receive_data(open_envelope("aq", name, sealed), NOW):
        assert isinstance(event, UplinkDropped | Record | StatusNotice | Result)


def test_the_replay_memory_holds_the_last_16_tags() -> None:
    guard = ReplayGuard()
    now_ms = int(NOW * 1000)
    tags = [bytes([i]) * 8 for i in range(RECENT_TAGS + 1)]
    assert all(guard.check(now_ms, tag, now_ms) is None for tag in tags)
    assert [guard.check(now_ms, tag, now_ms) for tag in tags[1:]] == ["replayed"] * RECENT_TAGS
    assert guard.check(now_ms, tags[0], now_ms) is None  # fell out: caught by dedup instead
    assert guard.check(now_ms, tags[2], now_ms) == "replayed"  # tags[1] made room for it


def test_the_topic_cache_parses_each_topic_once_and_stays_bounded() -> None:
    """The bridge parses a device's topic once, not per message; what it remembers is only
    topics that parsed, and at its bound it starts over rather than grow."""
    device, server = pair()
    online(device, server)
    server.take_held()
    cache = TopicCache("aq", max_topics=2)
    device.send_record(Telemetry(rec=1, boot=9, ts=1, flow_total_ml=10))
    ((name, payload, _),) = device.data_to_send()
    first = open_envelope("aq", name, payload, cache)
    assert first == open_envelope("aq", name, payload)
    again = open_envelope("aq", name, payload, cache)
    assert again.topic is first.topic and again.did is first.did and len(cache) == 1
    (record,) = server.receive_data(again, NOW)
    assert isinstance(record, Record)
    for bad in ("other/x/up/tele", f"aq/{DID}/up/nothing", "aq/BAD+ID/up/tele"):
        with pytest.raises(ProtocolError):
            open_envelope("aq", bad, payload, cache)
    assert len(cache) == 1  # refused topics are not remembered
    for channel in (Channel.UP_EVENT, Channel.UP_PING):
        open_envelope("aq", topic("aq", DID, channel), payload, cache)
    assert len(cache) == 1  # full at 2: emptied, then the newest kept
    third = open_envelope("aq", name, payload, cache)
    assert third == first and len(cache) == 2  # parsed again after it was forgotten


# ----------------------------------------------------------------------------- take_record


def twins() -> tuple[MqttDeviceSession, MqttServerSession, MqttServerSession]:
    """A device and two identical server sessions of it, both online."""
    device, first = pair()
    _, second = pair()
    held = envelopes(device)
    for server in (first, second):
        for envelope in held:
            server.hold(envelope)
        assert server.verify_login(KEY)
        server.accept_login(now=NOW)
        server.take_held()
    return device, first, second


def taken_as_received(
    first: MqttServerSession, second: MqttServerSession, name: str, payload: bytes, now: float
) -> object:
    """`first.take_record` and `second.receive_data` on the same message: what take_record
    answers (not None) is receive_data's one event, and when it declines it changed nothing
    (receive_data on `first` then answers as on `second`). Returns take_record's answer."""
    frame_type = {Channel.UP_TELE: 0x20, Channel.UP_EVENT: 0x21}[name.split("/", 2)[2]]
    last_rx = first.last_rx
    taken = first.take_record(name.encode(), frame_type, payload, now, int(NOW * 1000))
    try:
        expected = second.receive_data(open_envelope("aq", name, payload), now)
    except ProtocolError:
        assert taken is None
        return None
    if taken is None:
        assert first.last_rx == last_rx
        assert first.receive_data(open_envelope("aq", name, payload), now) == expected
    else:
        assert [taken] == expected
    assert first.last_rx == second.last_rx
    assert (first.data_to_send(), first.drops) == (second.data_to_send(), second.drops)
    return taken


def sent(device: MqttDeviceSession, record: Telemetry | Event) -> bytes:
    device.send_record(record)
    ((_, payload, _),) = device.data_to_send()
    return payload


def test_take_record_answers_as_receive_data_does() -> None:
    """The bridge's per-read path (`take_record`) and the general one (`receive_data`) give the
    same answer for every kind of message, good or not; take_record only declines (None) what
    it does not take, and then nothing of the session has changed."""
    device, first, second = twins()
    tele, event = topic("aq", DID, Channel.UP_TELE), topic("aq", DID, Channel.UP_EVENT)
    now_ms = int(NOW * 1000)
    device.send_record(Telemetry(rec=1, boot=9, ts=1, flow_total_ml=10))
    ((_, good, _),) = device.data_to_send()
    compiled = taken_as_received(first, second, tele, good, NOW + 1)
    if speedups.compiled is not None:
        assert isinstance(compiled, Record) and compiled.rec == 1
    else:
        assert compiled is None  # no extension: everything goes to receive_data
    assert first.last_rx == NOW + 1
    replayed = taken_as_received(first, second, tele, good, NOW + 2)
    assert replayed in (None, UplinkDropped("replayed", Channel.UP_TELE))
    body = {0: 2, 1: 9, 2: 1, MqttKey.SEQ: 5, MqttKey.SENT_MS: now_ms + 1}
    cases = [
        seal(MacKey(b"\x01" * 32), tele, body, 0),  # forged
        seal(MacKey(KEY), tele, {**body, MqttKey.SENT_MS: now_ms - MAX_SKEW_MS - 1}, 0),  # stale
        seal(MacKey(KEY), tele, {**body, MqttKey.SENT_MS: now_ms - 6000}, 0),  # far behind
        seal(MacKey(KEY), tele, {**body, 0: 0}, 0),  # rec 0: malformed, acked REJECTED
        seal(MacKey(KEY), tele, {**body, 0: 3}, 1),  # CBOR: receive_data's
        seal(MacKey(KEY), tele, {0: 4, 1: 9, 2: 1}, 0),  # no seq, no sent_ms
        sent(device, Event(rec=5, boot=9, ts=1, kind=1, cid=1, ml=100, flow_total_ml=100)),
        sent(device, Telemetry(rec=6, boot=9, ts=1, flow_total_ml=20)),
        b"\x10" + bytes(8),  # an empty map's place, tag wrong
        b"\x20" + bytes(20),  # envelope version 2
    ]
    answers = [taken_as_received(first, second, name, payload, NOW + 3) for name, payload in (
        (event if n == 6 else tele, p) for n, p in enumerate(cases)
    )]  # fmt: skip
    if speedups.compiled is not None:
        assert answers[1:3] == [
            UplinkDropped("stale", Channel.UP_TELE), UplinkDropped("replayed", Channel.UP_TELE),
        ]  # fmt: skip
        assert isinstance(answers[6], Record) and isinstance(answers[7], Record)
    assert answers[0] is None and answers[3:6] == [None] * 3 and answers[8:] == [None] * 2


def test_take_record_declines_a_session_that_is_not_online() -> None:
    device, server = pair()
    for envelope in envelopes(device):
        server.hold(envelope)
    device.send_record(Telemetry(rec=1, boot=9, ts=1, flow_total_ml=10))
    ((name, payload, _),) = device.data_to_send()
    now_ms = int(NOW * 1000)
    assert server.take_record(name.encode(), 0x20, payload, NOW, now_ms) is None  # verifying
    assert server.verify_login(KEY)
    server.accept_login(now=NOW)
    server.close(ErrorCode.IDLE_TIMEOUT, "gone")
    assert server.take_record(name.encode(), 0x20, payload, NOW, now_ms) is None  # closed


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([Channel.UP_TELE, Channel.UP_EVENT]),
    st.dictionaries(
        st.sampled_from([0, 1, 2, 3, 4, 5, 10, 16, 40, 41]),
        st.one_of(st.integers(-1, 2**33), st.binary(max_size=4), st.none()),
        max_size=10,
    ),
    st.integers(0, 40),
    st.binary(min_size=1, max_size=2),
)
def test_take_record_agrees_with_receive_data_on_any_tagged_map_and_any_damage(
    channel: str, body: dict, at: int, damage: bytes
) -> None:
    _, first, second = twins()
    name = topic("aq", DID, channel)
    try:
        sealed = seal(MacKey(KEY), name, body, 0)
    except ProtocolError:
        return
    taken_as_received(first, second, name, sealed, NOW)
    cut = min(at, len(sealed) - 1)
    damaged = sealed[:cut] + damage + sealed[cut + len(damage) :]
    taken_as_received(first, second, name, damaged, NOW)
    taken_as_received(first, second, name, sealed, NOW)  # again: the replay memory's answer
