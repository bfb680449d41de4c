"""The two ends of an MQTT device link, sans-IO: `MqttServerSession` is the gateway's view of one
device, `MqttDeviceSession` the device's (the envelope they speak is protocol/mqtt_envelope.py).
Like the TCP sessions (`protocol.link`) they read no clock of their own (the caller injects
one), touch no socket and return events; messages to publish collect as `(topic, payload, qos)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aquafleet.protocol import speedups
from aquafleet.protocol.constants import (
    SEQ_MODULO,
    U16,
    U32,
    AckCode,
    Encoding,
    ErrorCode,
    Flag,
    FrameType,
    Key,
)
from aquafleet.protocol.errors import LocalProtocolError, RemoteProtocolError
from aquafleet.protocol.events import SessionClosed
from aquafleet.protocol.frames import DecoderStats, Frame, MacKey
from aquafleet.protocol.message_types import (
    Ack,
    Command,
    DesiredState,
    Event,
    Message,
    Record,
    Result,
    Telemetry,
)
from aquafleet.protocol.messages import (
    decode_payload,
    message_map,
    parse_message,
    record_from_map,
)
from aquafleet.protocol.mqtt_envelope import (
    CHANNEL_OF_TYPE,
    DOWNLINK_TYPES,
    MAX_COUNTER_MS,
    MAX_MESSAGE,
    QOS_ACK,
    QOS_DATA,
    RECORD_TYPES,
    TAG_SIZE,
    UPLINK_TYPES,
    Channel,
    Clock,
    Envelope,
    MqttKey,
    ReplayGuard,
    TopicCache,
    envelope_byte,
    envelope_fields,
    open_envelope,
    seal,
    seal_topic,
    tag_ok,
    topic,
)
from aquafleet.protocol.states import TRANSITIONS, SessionState, Step

RECENT_COMMANDS = 32  # commands a session remembers (cid -> seq) to recognise their answers
HELD_MAX = 64  # messages held per device while its key is looked up (oldest dropped)
_MIN_MESSAGE = 1 + TAG_SIZE

# --------------------------------------------------------------------------- events


# The record uplink and its ack compiled where the extension is in use (protocol/speedups.py):
# the same checks and bytes as the Python path, which takes whatever they answer None for.
_compiled_uplink = speedups.compiled.parse_uplink_record if speedups.compiled else None
_compiled_seal_ack = speedups.compiled.seal_ack if speedups.compiled else None
_MSGPACK_FIRST = envelope_byte(Encoding.MSGPACK)  # the envelope byte of a msgpack message
# Enum members read per message as module constants: `SessionState.ONLINE` is a class
# attribute lookup through the enum's descriptor on Python 3.11, ~0.1 us each (timeit).
_ONLINE, _VERIFYING = SessionState.ONLINE, SessionState.VERIFYING
_MSGPACK = int(Encoding.MSGPACK)


@dataclass(frozen=True, slots=True)
class UplinkDropped:
    """A message was dropped; `reason` is forged, replayed, stale, malformed, overflow,
    unknown_device, disabled or not_allowed. It was not metered and is not answered."""

    reason: str
    channel: str


@dataclass(frozen=True, slots=True)
class StatusNotice:
    """A verified connect notice (online) or last will (offline) of connection `connected_ms`."""

    online: bool
    connected_ms: int


@dataclass(frozen=True, slots=True)
class CommandAnswer:
    """A device's delivery ACK (`ack_rc` set) or RESULT (`result` set) of command `cid`.

    With several gateway nodes sharing the uplink, the answer may reach a node other than the
    one that sent the command: each node asks its own session what it means
    (`MqttServerSession.answer_for`)."""

    cid: int
    ack_rc: int | None = None
    result: Result | None = None


_DROP_REASON_OF_LOGIN = {
    ErrorCode.AUTH_BAD_PROOF: "forged",
    ErrorCode.AUTH_UNKNOWN_DEVICE: "unknown_device",
    ErrorCode.AUTH_DISABLED: "disabled",
}


# --------------------------------------------------------------------------- server side


class MqttServerSession:
    """The gateway's end of one MQTT device: the same calls and states as `ServerSession` where
    they mean the same (receive_data, data_to_send, verify_login, accept_login, reject_login,
    ack, send_command, timers; SessionState, with login acceptance taken from TRANSITIONS), so
    the gateway's login, metering and presence code serves both transports. It receives one
    broker message (an `Envelope`) where the TCP session receives bytes, and sends
    (topic, payload, qos) triples where the TCP session sends bytes."""

    __slots__ = (
        "_clock",
        "_commands",
        "_desired",
        "_guard",
        "_held",
        "_mac",
        "_out",
        "_prefix",
        "_topics",
        "_tx_seq",
        "close_code",
        "connected_ms",
        "decoder_stats",
        "did",
        "drops",
        "encoding",
        "heartbeat_s",
        "idle_timeout_s",
        "last_rx",
        "login_deadline",
        "state",
    )

    def __init__(
        self,
        prefix: str,
        did: str,
        now: float,
        *,
        clock: Clock,
        heartbeat_s: int,
        login_timeout_s: float,
        idle_factor: float = 2.5,
        encoding: int = Encoding.MSGPACK,
    ) -> None:
        self._prefix = prefix
        self.did = did
        self._clock = clock
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = heartbeat_s * idle_factor
        self.login_deadline = now + login_timeout_s
        self.last_rx = now
        self.encoding = encoding
        self.state = SessionState.VERIFYING
        self.close_code: ErrorCode | None = None
        self.connected_ms = 0  # the newest connection a status message named
        self.decoder_stats = DecoderStats()  # nothing to resync on MQTT: stays zero
        self.drops: list[UplinkDropped] = []  # taken by the caller (counters)
        self._mac: MacKey | None = None
        self._guard = ReplayGuard()
        self._held: list[Envelope] = []
        self._out: list[tuple[str, bytes, int]] = []
        self._tx_seq = 0
        self._topics: dict[str, tuple[str, bytes]] = {}  # channel -> its topic, str and bytes
        self._commands: dict[int, int] = {}  # cid -> seq of the commands sent, newest last
        self._desired: DesiredState | None = None  # claimed at login, not yet taken

    # ----------------------------------------------------------------- state

    @property
    def is_closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def is_online(self) -> bool:
        return self.state is _ONLINE

    @property
    def next_deadline(self) -> float:
        if self.state is _ONLINE:
            return self.last_rx + self.idle_timeout_s
        return self.login_deadline

    def check_timers(self, now: float) -> SessionClosed | None:
        """Close when no verified message came for 2.5 heartbeats (or the key lookup hung)."""
        if self.state is SessionState.CLOSED:
            return None
        if self.state is SessionState.ONLINE:
            if now >= self.last_rx + self.idle_timeout_s:
                return self._close(ErrorCode.IDLE_TIMEOUT, "no message within 2.5 heartbeats")
        elif now >= self.login_deadline:
            self._drop_held("overflow")
            return self._close(ErrorCode.AUTH_TIMEOUT, "device key lookup timed out")
        return None

    def close(self, code: ErrorCode, reason: str) -> None:
        self._close(code, reason)

    def _close(self, code: ErrorCode, reason: str) -> SessionClosed:
        if self.state is not SessionState.CLOSED:
            self.state = SessionState.CLOSED
            self.close_code = code
        return SessionClosed(self.close_code or code, reason)

    # ----------------------------------------------------------------- key lookup (login)

    def hold(self, envelope: Envelope) -> None:
        """Keep a message until the device's key is known (at most HELD_MAX, oldest dropped)."""
        if len(self._held) >= HELD_MAX:
            dropped = self._held.pop(0)
            self.drops.append(UplinkDropped("overflow", dropped.channel))
        self._held.append(envelope)

    def verify_login(self, device_key: bytes) -> bool:
        """Keep the held messages whose tag holds with this key; True when any does."""
        if self.state is not SessionState.VERIFYING:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "verify_login twice")
        mac = MacKey(device_key)
        good = []
        for envelope in self._held:
            if tag_ok(mac, envelope):
                good.append(envelope)
            else:
                self.drops.append(UplinkDropped("forged", envelope.channel))
        self._held = good
        if not good:
            return False
        self._mac = mac
        return True

    def accept_login(
        self,
        *,
        now: float,
        last_acked: tuple[int, int] | None = None,
        desired: DesiredState | None = None,
    ) -> None:
        """The key holds and the presence is claimed: the held messages can be read.

        There is no AUTH_OK on MQTT: the watermark rides on every ACK, and the desired state
        waits in `take_desired()` for the caller to send as a SET_STATE command (it needs a
        command id, which the session cannot make)."""
        following = TRANSITIONS.get((self.state, Step.LOGIN_ACCEPTED))
        if following is None or self._mac is None:
            raise LocalProtocolError(ErrorCode.AUTH_BAD_PROOF, "accept_login before verify_login")
        self.state = following
        self.last_rx = now
        self._desired = desired

    @property
    def needs_flush(self) -> bool:
        """Whether the caller has anything to take: drops, held messages, a desired state or
        messages to publish (after most messages, nothing: the meter's round acks them)."""
        return bool(self.drops or self._held or self._out or self._desired is not None)

    @property
    def has_desired(self) -> bool:
        return self._desired is not None

    def take_desired(self) -> DesiredState | None:
        """The desired state the login found (once), for the caller to send."""
        desired, self._desired = self._desired, None
        return desired

    def reject_login(self, code: ErrorCode, reason: str) -> None:
        self._drop_held(_DROP_REASON_OF_LOGIN.get(code, "not_allowed"))
        self._close(code, reason)

    def _drop_held(self, reason: str) -> None:
        self.drops.extend(UplinkDropped(reason, e.channel) for e in self._held)
        self._held = []

    def take_held(self) -> list[Envelope]:
        held = self._held
        if held:  # no new list per message when nothing is held (the usual case)
            self._held = []
        return held

    # ----------------------------------------------------------------- uplink

    def receive_data(self, envelope: Envelope, now: float) -> list[object]:
        """One message of this device (online): its events, or an UplinkDropped."""
        mac = self._mac
        if self.state is not _ONLINE or mac is None:
            return []
        _, _, channel, encoding, signed, tag = envelope
        if not tag_ok(mac, envelope):
            return [UplinkDropped("forged", channel)]
        payload = signed[1:]
        frame_type = UPLINK_TYPES.get(channel)
        if frame_type in RECORD_TYPES and encoding == _MSGPACK and _compiled_uplink:
            # the common case compiled (protocol/speedups.py): the same checks as below, in one
            # walk of the map; None for anything else, which the path below decides
            parsed = _compiled_uplink(payload, frame_type)
            if parsed is not None:
                verdict = self._guard.check(parsed[1], tag, int(self._clock() * 1000))
                if verdict is not None:
                    return [UplinkDropped(verdict, channel)]
                self.last_rx = now
                return [parsed[2]]
        try:
            body = decode_payload(payload, encoding)
            if channel == Channel.STATUS:
                return self._status(body, envelope, now)
            seq, sent_ms = envelope_fields(body)
        except RemoteProtocolError:
            return [UplinkDropped("malformed", channel)]
        verdict = self._guard.check(sent_ms, tag, int(self._clock() * 1000))
        if verdict is not None:
            return [UplinkDropped(verdict, channel)]
        self.last_rx = now  # a verified, fresh message: the device is alive
        if frame_type is None:
            return [UplinkDropped("malformed", channel)]  # a downlink topic, published by a device
        frame = Frame(frame_type, encoding << Flag.ENCODING_SHIFT, seq, payload)
        try:
            if frame_type in RECORD_TYPES:
                return [record_from_map(body, frame)]
            message = parse_message(frame)
        except RemoteProtocolError:
            if frame_type in RECORD_TYPES:
                self.ack(seq, AckCode.REJECTED)  # malformed: do not resend it
            return [UplinkDropped("malformed", channel)]
        if frame_type == FrameType.PING:
            return []
        if type(message) is Result:
            return [CommandAnswer(message.cid, result=message)]
        if type(message) is Ack:
            cid = body.get(Key.CID)
            if type(cid) is int and 0 < cid <= U32:
                return [CommandAnswer(cid, ack_rc=message.rc)]
        return [message]  # an ACK without a cid (older firmware): matched here by seq

    def take_record(
        self, name: bytes, frame_type: int, payload: bytes, now: float, now_ms: int
    ) -> Record | UplinkDropped | None:
        """receive_data's common case from the message's parts, for a caller that knows the
        topic (its bytes, and the record type its channel names) and read the clock once for
        many messages: a msgpack TELEMETRY or EVENT with a good tag, to an online session ->
        its Record, or UplinkDropped when the clock window or the replay memory refuses it
        (`now_ms` stands for the session's clock). None for anything else, with nothing
        changed: receive_data decides it then. No Envelope, no list, no clock reading per
        message (the bridge's per-read path, docs/benchmarks.md)."""
        mac = self._mac
        if (
            _compiled_uplink is None
            or mac is None
            or self.state is not _ONLINE
            or not _MIN_MESSAGE <= len(payload) <= MAX_MESSAGE
            or payload[0] != _MSGPACK_FIRST
        ):
            return None
        tag = payload[-TAG_SIZE:]
        if not mac.verify_parts(name, payload[:-TAG_SIZE], tag):
            return None  # forged: receive_data counts it
        parsed = _compiled_uplink(payload[1:-TAG_SIZE], frame_type)
        if parsed is None:
            return None
        verdict = self._guard.check(parsed[1], tag, now_ms)
        if verdict is not None:
            return UplinkDropped(verdict, CHANNEL_OF_TYPE[frame_type])
        self.last_rx = now
        return parsed[2]  # type: ignore[no-any-return]

    def _status(self, body: dict[int, object], envelope: Envelope, now: float) -> list[object]:
        state, connected_ms = body.get(MqttKey.STATUS), body.get(MqttKey.CONNECTED_MS)
        if state not in (0, 1) or type(state) is not int:
            raise RemoteProtocolError(ErrorCode.BAD_PAYLOAD, "key 50: expected 0 or 1")
        if type(connected_ms) is not int or not 0 <= connected_ms <= MAX_COUNTER_MS:
            raise RemoteProtocolError(ErrorCode.BAD_PAYLOAD, "key 51: expected unix milliseconds")
        if connected_ms < self.connected_ms:
            return [UplinkDropped("replayed", Channel.STATUS)]  # about an older connection
        if state == 1:
            # A connect notice is fresh like any uplink; a will was sealed at connect time.
            sent_ms = body.get(MqttKey.SENT_MS)
            if type(sent_ms) is not int:
                raise RemoteProtocolError(ErrorCode.BAD_PAYLOAD, "key 41: expected unix ms")
            verdict = self._guard.check(sent_ms, envelope.tag, int(self._clock() * 1000))
            if verdict is not None:
                return [UplinkDropped(verdict, Channel.STATUS)]
            self.last_rx = now
        self.connected_ms = connected_ms
        return [StatusNotice(online=state == 1, connected_ms=connected_ms)]

    # ----------------------------------------------------------------- downlink

    def _next_seq(self) -> int:
        seq = self._tx_seq
        self._tx_seq = (seq + 1) % SEQ_MODULO
        return seq

    def _queue(self, channel: str, body: dict[int, object], qos: int) -> int:
        assert self._mac is not None
        seq = self._next_seq()
        body[MqttKey.SEQ] = seq
        body[MqttKey.SENT_MS] = int(self._clock() * 1000)
        names = self._topics.get(channel)
        if names is None:  # made once per channel: an ack goes out for every few records
            name = topic(self._prefix, self.did, channel)
            names = self._topics[channel] = (name, name.encode())
        self._out.append((names[0], seal_topic(self._mac, names[1], body, self.encoding), qos))
        return seq

    def ack(self, seq: int, rc: int, watermark: tuple[int, int] | None = None) -> None:
        """ACK a record (only once its effect is durable), as ServerSession.ack."""
        if not (0 <= seq <= U16 and 0 <= rc <= 0xFF):
            raise LocalProtocolError(
                ErrorCode.BAD_PAYLOAD, f"ack seq {seq} or rc {rc} out of range"
            )
        if self._mac is None or self.state is _VERIFYING:
            return
        if _compiled_seal_ack is not None and self.encoding == _MSGPACK:
            names = self._topics.get(Channel.DOWN_ACK)
            if names is not None:  # the compiled seal of what _queue builds, byte for byte
                tx_seq = self._tx_seq
                sealed = _compiled_seal_ack(
                    self._mac, names[1], seq, rc, watermark, tx_seq, int(self._clock() * 1000)
                )
                if sealed is not None:
                    self._tx_seq = (tx_seq + 1) % SEQ_MODULO
                    self._out.append((names[0], sealed, QOS_ACK))
                    return
        body: dict[int, object] = {Key.ACK_SEQ: seq, Key.ACK_RC: rc}
        if watermark is not None:
            body[Key.ACK_WATERMARK] = list(watermark)
        self._queue(Channel.DOWN_ACK, body, QOS_ACK)

    def send_command(self, command: Command) -> int:
        """Queue a COMMAND on `down/cmd` (QoS 1); returns its seq, echoed by the device's ACK."""
        if self._mac is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "no device key yet")
        seq = self._queue(Channel.DOWN_CMD, message_map(command), QOS_DATA)
        commands = self._commands
        commands.pop(command.cid, None)  # a resend: its newest seq, moved to the end
        commands[command.cid] = seq
        if len(commands) > RECENT_COMMANDS:
            del commands[next(iter(commands))]
        return seq

    def answer_for(self, answer: CommandAnswer) -> Ack | Result | None:
        """What a device's answer means to this session: the Result, or an Ack echoing the seq
        this session gave the command; None when this session did not send that cid."""
        seq = self._commands.get(answer.cid)
        if seq is None:
            return None
        if answer.result is not None:
            return answer.result
        return Ack(seq=seq, rc=answer.ack_rc if answer.ack_rc is not None else AckCode.STORED)

    def data_to_send(self) -> list[tuple[str, bytes, int]]:
        out = self._out
        if out:  # no new list per message when nothing is queued (the usual case)
            self._out = []
        return out


# --------------------------------------------------------------------------- device side


@dataclass(frozen=True, slots=True)
class Dropped:
    """Device side: a downlink message was refused (forged, stale, replayed, malformed)."""

    reason: str


class MqttDeviceSession:
    """A purifier's end over MQTT: records, results and pings out; acks and commands in.

    The seq counter lives as long as the object, across broker connections, so an ACK of a
    copy sent before a reconnect never matches a record sent after it (keep one per boot).
    """

    __slots__ = (
        "_clock",
        "_downlinks",
        "_guard",
        "_mac",
        "_out",
        "_prefix",
        "_topics",
        "_tx_seq",
        "connected_ms",
        "did",
        "encoding",
        "state",
    )

    def __init__(
        self,
        prefix: str,
        did: str,
        device_key: bytes,
        *,
        clock: Clock,
        encoding: int = Encoding.MSGPACK,
    ) -> None:
        if encoding not in (Encoding.MSGPACK, Encoding.CBOR):
            raise LocalProtocolError(ErrorCode.UNKNOWN_ENCODING, f"encoding {encoding}")
        self._prefix = prefix
        self.did = did
        self._mac = MacKey(device_key)
        self._clock = clock
        self.encoding = encoding
        self._guard = ReplayGuard()
        self._out: list[tuple[str, bytes, int]] = []
        self._tx_seq = 0
        self._topics: dict[str, tuple[str, bytes]] = {}  # channel -> its topic, str and bytes
        self._downlinks = TopicCache(prefix, max_topics=8)  # its own down/ack and down/cmd
        self.connected_ms = 0
        self.state = SessionState.CLOSED

    @property
    def is_closed(self) -> bool:
        return self.state is SessionState.CLOSED

    def topic(self, channel: str) -> str:
        return topic(self._prefix, self.did, channel)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _status(self, online: bool, connected_ms: int, sent_ms: int) -> bytes:
        body: dict[int, object] = {
            MqttKey.SENT_MS: sent_ms,
            MqttKey.STATUS: int(online),
            MqttKey.CONNECTED_MS: connected_ms,
        }
        return seal(self._mac, self.topic(Channel.STATUS), body, self.encoding)

    def will(self, connected_ms: int) -> tuple[str, bytes]:
        """The last will to register at CONNECT: offline, about connection `connected_ms`."""
        return self.topic(Channel.STATUS), self._status(False, connected_ms, connected_ms)

    def connected(self, connected_ms: int) -> None:
        """The broker accepted the connection: queue the connect notice (online)."""
        self.connected_ms = connected_ms
        self.state = SessionState.ONLINE
        self._out.append(
            (self.topic(Channel.STATUS), self._status(True, connected_ms, self._now_ms()), QOS_DATA)
        )

    def disconnected(self) -> None:
        self.state = SessionState.CLOSED
        self._out.clear()

    def _send(self, channel: str, body: dict[int, object], qos: int = QOS_DATA) -> int:
        if self.state is not SessionState.ONLINE:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "not connected to the broker")
        seq = self._tx_seq
        self._tx_seq = (seq + 1) % SEQ_MODULO
        body[MqttKey.SEQ] = seq
        body[MqttKey.SENT_MS] = self._now_ms()
        names = self._topics.get(channel)
        if names is None:  # made once per channel, as on the server side
            name = self.topic(channel)
            names = self._topics[channel] = (name, name.encode())
        self._out.append((names[0], seal_topic(self._mac, names[1], body, self.encoding), qos))
        return seq

    def send_record(self, record: Telemetry | Event, *, dup: bool = False) -> int:
        """Publish a TELEMETRY or EVENT (a resend is the same map with a new seq and sent_ms)."""
        return self._send(CHANNEL_OF_TYPE[_type_of(record)], message_map(record))

    def send_result(self, result: Result) -> int:
        return self._send(Channel.UP_RESULT, message_map(result))

    def ping(self) -> int:
        return self._send(Channel.UP_PING, {}, QOS_ACK)

    def data_to_send(self) -> list[tuple[str, bytes, int]]:
        out, self._out = self._out, []
        return out

    def receive_data(self, message: tuple[str, bytes], now: float) -> list[object]:
        """One downlink message `(topic, payload)`: Ack, Command (acked at once) or Dropped."""
        topic_name, payload = message
        try:
            envelope = open_envelope(self._prefix, topic_name, payload, self._downlinks)
        except RemoteProtocolError:
            return [Dropped("malformed")]
        frame_type = DOWNLINK_TYPES.get(envelope.channel)
        if envelope.did != self.did or frame_type is None:
            return [Dropped("malformed")]
        if not tag_ok(self._mac, envelope):
            return [Dropped("forged")]
        try:
            body = decode_payload(envelope.body, envelope.encoding)
            seq, sent_ms = envelope_fields(body)
            verdict = self._guard.check(sent_ms, envelope.tag, self._now_ms())
            if verdict is not None:
                return [Dropped(verdict)]
            frame = Frame(frame_type, envelope.encoding << Flag.ENCODING_SHIFT, seq, envelope.body)
            parsed = parse_message(frame)
        except RemoteProtocolError:
            return [Dropped("malformed")]
        if isinstance(parsed, Command) and self.state is SessionState.ONLINE:
            # The cid lets whichever gateway node receives the ACK tell the one that sent it.
            self._send(
                Channel.UP_ACK,
                {Key.ACK_SEQ: seq, Key.ACK_RC: AckCode.STORED, Key.CID: parsed.cid},
            )
        return [parsed]


def _type_of(message: Message) -> int:
    if isinstance(message, Telemetry):
        return FrameType.TELEMETRY
    if isinstance(message, Event):
        return FrameType.EVENT
    raise LocalProtocolError(ErrorCode.UNKNOWN_TYPE, f"not a record: {message!r}")
