"""The MQTT 3.1.1 packets a client of ours needs, sans-IO: bytes in, packets out.

Two clients are built on this instead of paho-mqtt: the simulator's virtual ESP8266
(simulators/mqtt_link.py) and the gateway's bridge (gateway/mqtt/client.py). paho parses and
builds every packet in general-purpose Python, with a thread-safe publish path, and took 44%
of the bridge's main thread and ~10x a TCP purifier's cost in the simulator
(docs/benchmarks.md, MQTT). Both need little of MQTT: CONNECT (with a will, a user name and
password), SUBSCRIBE, PUBLISH at QoS 0/1 both ways, PUBACK, PINGREQ, DISCONNECT.

`PacketReader.feed(data)` returns the complete packets in `data` (keeping a partial one for the
next call) and raises only `MqttWireError`, with a hard cap on a packet's size. Its common case
(QoS 0 PUBLISHes, the bridge's whole uplink) is compiled where the extension is in use
(protocol/speedups.py); `PyPacketReader` is the pure-Python reference beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from aquafleet.protocol import speedups

MAX_PACKET = 64 * 1024  # far above any message of ours (1 + 1024 + 8 bytes of payload)
MAX_PACKET_ID = 0xFFFF
PROTOCOL_LEVEL = 4  # MQTT 3.1.1


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    SUBSCRIBE = 8
    SUBACK = 9
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnectFlag:
    USERNAME = 0x80
    PASSWORD = 0x40
    WILL_RETAIN = 0x20
    WILL_QOS_SHIFT = 3
    WILL = 0x04
    CLEAN_SESSION = 0x02


class PublishFlag:
    DUP = 0x08
    QOS_SHIFT = 1
    QOS_MASK = 0x06
    RETAIN = 0x01


SUBACK_FAILURE = 0x80
_PUBLISH_QOS0 = int(PacketType.PUBLISH) << 4  # no DUP, QoS 0, no RETAIN (an int, not the enum)
PINGREQ = bytes((PacketType.PINGREQ << 4, 0))
DISCONNECT = bytes((PacketType.DISCONNECT << 4, 0))


class MqttWireError(Exception):
    """Bytes from the broker that are not a packet we understand (the connection is dropped)."""


class ConnectRefused(Exception):
    """CONNACK with a non-zero return code (4 bad user name or password, 5 not authorised)."""

    def __init__(self, rc: int) -> None:
        super().__init__(f"connection refused, CONNACK return code {rc}")
        self.rc = rc


# --------------------------------------------------------------------------- packets in


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    rc: int


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    codes: tuple[int, ...]


class Publish(NamedTuple):
    """A message from the broker (a NamedTuple: one per message, made cheaply)."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 at QoS 0


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


Packet = ConnAck | SubAck | Publish | PubAck | PingResp
_PING_RESP = PingResp()


# --------------------------------------------------------------------------- packets out


def _remaining_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _text(value: str) -> bytes:
    raw = value.encode()
    return _blob(raw)


def _blob(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise ValueError("a string field holds at most 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining_length(len(body)) + body


def connect(
    client_id: str,
    *,
    keepalive_s: int,
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes, int] | None = None,
) -> bytes:
    """CONNECT; `will` is (topic, payload, qos), never retained."""
    flags = ConnectFlag.CLEAN_SESSION if clean_session else 0
    payload = [_text(client_id)]
    if will is not None:
        will_topic, will_payload, will_qos = will
        flags |= ConnectFlag.WILL | (will_qos << ConnectFlag.WILL_QOS_SHIFT)
        payload += [_text(will_topic), _blob(will_payload)]
    if username is not None:
        flags |= ConnectFlag.USERNAME
        payload.append(_text(username))
    if password is not None:
        flags |= ConnectFlag.PASSWORD
        payload.append(_text(password))
    header = _text("MQTT") + bytes((PROTOCOL_LEVEL, flags)) + keepalive_s.to_bytes(2, "big")
    return _packet(PacketType.CONNECT << 4, header + b"".join(payload))


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_text(f) + bytes((q,)) for f, q in filters)
    return _packet((PacketType.SUBSCRIBE << 4) | 0x02, body)


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    """PUBLISH (never retained, never DUP: a record resent by the purifier is a new message)."""
    name = topic.encode()
    size = 2 + len(name) + (2 if qos else 0) + len(payload)
    first = _PUBLISH_QOS0 | (qos << PublishFlag.QOS_SHIFT)  # not PacketType.PUBLISH: ~0.1 us
    if size < 0x80:  # the common cases, without the general encoder
        head = bytes((first, size))
    elif size < 0x4000:
        head = bytes((first, (size & 0x7F) | 0x80, size >> 7))
    else:
        head = bytes((first,)) + _remaining_length(size)
    ident = packet_id.to_bytes(2, "big") if qos else b""
    return b"".join((head, len(name).to_bytes(2, "big"), name, ident, payload))


def puback(packet_id: int) -> bytes:
    return bytes((PacketType.PUBACK << 4, 2)) + packet_id.to_bytes(2, "big")


# --------------------------------------------------------------------------- reading


class PyPacketReader:
    """Incremental decoder of the packets a broker sends a client: the pure-Python reference.
    `PacketReader` is the same reader with its common case compiled where the extension is
    in use (protocol/speedups.py); tests/protocol/test_speedups.py holds the two alike."""

    __slots__ = ("_buffer", "_read_publishes")

    def __init__(self) -> None:
        self._buffer = b""
        # read_publishes(buffer, at, out, Publish) -> at: the QoS 0 PUBLISHes from `at` on
        self._read_publishes: Callable[[bytes, int, list[Packet], type], int] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        """The complete packets in what was received so far; MqttWireError on bad bytes."""
        buffer = self._buffer + data if self._buffer else data
        packets: list[Packet] = []
        end = len(buffer)
        at = 0
        read_publishes = self._read_publishes
        while end - at >= 2:
            if read_publishes is not None:
                # the compiled common case: it stops at any other packet, which is decided here
                at = read_publishes(buffer, at, packets, Publish)
                if end - at < 2:
                    break
            first = buffer[at]
            size = buffer[at + 1]
            head = 2
            if size & 0x80:
                size, head = _long_length(buffer, at)
                if head == 0:
                    break  # the length itself is incomplete
            if size > MAX_PACKET:
                raise MqttWireError(f"packet of {size} bytes (at most {MAX_PACKET})")
            start = at + head
            stop = start + size
            if stop > end:
                break
            if first == _PUBLISH_QOS0 and size >= 2:
                # The bridge's whole uplink (it subscribes at QoS 0): decoded here, without
                # slicing the packet out first (a third of this reader's cost per message).
                topic_end = start + 2 + ((buffer[start] << 8) | buffer[start + 1])
                if topic_end > stop:
                    raise MqttWireError("PUBLISH shorter than its topic")
                try:
                    topic = buffer[start + 2 : topic_end].decode()
                except UnicodeDecodeError:
                    raise MqttWireError("topic is not UTF-8") from None
                packets.append(Publish(topic, buffer[topic_end:stop], 0, 0))
            else:
                packets.append(_decode(first, buffer[start:stop]))
            at = stop
        self._buffer = buffer[at:] if at < end else b""
        return packets


_compiled_read_publishes = speedups.compiled.read_publishes if speedups.compiled else None


class PacketReader(PyPacketReader):
    """The reader the bridge and the simulator use (see PyPacketReader)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self._read_publishes = _compiled_read_publishes


def _long_length(buffer: bytes, at: int) -> tuple[int, int]:
    """(remaining length, fixed header size) at `at`; head 0 when more bytes are needed."""
    size = 0
    for index in range(4):
        position = at + 1 + index
        if position >= len(buffer):
            return 0, 0
        digit = buffer[position]
        size |= (digit & 0x7F) << (7 * index)
        if not digit & 0x80:
            return size, index + 2
    raise MqttWireError("remaining length longer than 4 bytes")


def _decode(first: int, body: bytes) -> Packet:
    kind = first >> 4
    flags = first & 0x0F
    if kind == PacketType.PUBLISH:
        return _decode_publish(flags, body)
    if kind == PacketType.PUBACK:
        _expect(len(body) == 2, "PUBACK of a wrong size")
        return PubAck(int.from_bytes(body, "big"))
    if kind == PacketType.CONNACK:
        _expect(len(body) == 2 and body[0] <= 1, "malformed CONNACK")
        return ConnAck(bool(body[0]), body[1])
    if kind == PacketType.SUBACK:
        _expect(len(body) >= 3, "SUBACK without return codes")
        return SubAck(int.from_bytes(body[:2], "big"), tuple(body[2:]))
    if kind == PacketType.PINGRESP:
        _expect(not body, "PINGRESP with a body")
        return _PING_RESP
    raise MqttWireError(f"unexpected packet type {kind}")


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags & PublishFlag.QOS_MASK) >> PublishFlag.QOS_SHIFT
    _expect(qos <= 1, f"PUBLISH at QoS {qos} (we subscribe at 1 at most)")
    _expect(len(body) >= 2, "PUBLISH without a topic")
    length = (body[0] << 8) | body[1]
    topic_end = 2 + length
    payload_at = topic_end + (2 if qos else 0)
    _expect(payload_at <= len(body), "PUBLISH shorter than its topic")
    try:
        topic = body[2:topic_end].decode()
    except UnicodeDecodeError:
        raise MqttWireError("topic is not UTF-8") from None
    packet_id = int.from_bytes(body[topic_end:payload_at], "big") if qos else 0
    _expect(not qos or packet_id > 0, "QoS 1 PUBLISH with packet id 0")
    return Publish(topic, body[payload_at:], qos, packet_id)


def _expect(condition: bool, reason: str) -> None:
    if not condition:
        raise MqttWireError(reason)


class PacketIds:
    """Packet identifiers 1..65535, in turn (we never have that many unacknowledged)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> int:
        self._next = self._next % MAX_PACKET_ID + 1
        return self._next
