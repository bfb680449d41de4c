"""The MQTT envelope of protocol version 1 (ESP8266 devices through a broker), sans-IO: topics,
the envelope byte, sealing and checking a message's tag, and the replay memory.

A message is `envelope byte | payload map | tag`: the envelope byte is version (bits 4-7) and
encoding (bits 0-3), the map is the TCP message map plus two keys of its own (40 seq, 41
sent_ms), and the tag is `HMAC-SHA256(K_dev, topic | envelope byte | map)[:8]`. The topic says
what the message is (`aq/<did>/up/tele` is a TELEMETRY), so nothing is trusted on topic alone:
the tag binds the device key to both. `sent_ms` (the sender's clock when it published this
copy) and a small memory of recent tags make a captured message useless later.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from aquafleet.protocol.constants import (
    MAC_SIZE,
    MAX_DID_LEN,
    MAX_PAYLOAD,
    U16,
    VERSION,
    Encoding,
    ErrorCode,
    FrameType,
)
from aquafleet.protocol.errors import LocalProtocolError, RemoteProtocolError
from aquafleet.protocol.frames import MacKey
from aquafleet.protocol.messages import encode_payload

Clock = Callable[[], float]  # unix seconds

TAG_SIZE = MAC_SIZE
MAX_MESSAGE = 1 + MAX_PAYLOAD + TAG_SIZE
MAX_SKEW_MS = 600_000  # a copy sent more than 10 min before or after our clock is refused
REORDER_MS = 5_000  # how far behind the newest copy of a device another copy may arrive
RECENT_TAGS = 16  # tags remembered per device to recognise a copy seen before
MAX_COUNTER_MS = 2**53 - 1
QOS_ACK = 0  # a lost ACK costs one resend, answered "duplicate"
QOS_DATA = 1


class MqttKey:
    """Map keys the MQTT envelope adds to the TCP maps (no TCP message uses 40-59)."""

    SEQ = 40  # u16, the sender's message counter per device; an ACK's key 0 echoes it
    SENT_MS = 41  # unix ms when this copy was published (a resend gets a new one)
    STATUS = 50  # status messages: 1 online (connect notice), 0 offline (last will)
    CONNECTED_MS = 51  # status messages: the connection they are about (its connect time)


class Channel:
    """Topic suffixes after `<prefix>/<did>/`."""

    UP_TELE = "up/tele"
    UP_EVENT = "up/event"
    UP_RESULT = "up/result"
    UP_ACK = "up/ack"  # the device's ACK of a COMMAND (delivered)
    UP_PING = "up/ping"  # a heartbeat after `hb` seconds of silence
    STATUS = "status"  # connect notice and last will
    DOWN_CMD = "down/cmd"
    DOWN_ACK = "down/ack"


UPLINK_TYPES: dict[str, int] = {
    Channel.UP_TELE: FrameType.TELEMETRY,
    Channel.UP_EVENT: FrameType.EVENT,
    Channel.UP_RESULT: FrameType.RESULT,
    Channel.UP_ACK: FrameType.ACK,
    Channel.UP_PING: FrameType.PING,
}
DOWNLINK_TYPES: dict[str, int] = {
    Channel.DOWN_CMD: FrameType.COMMAND,
    Channel.DOWN_ACK: FrameType.ACK,
}
CHANNEL_OF_TYPE: dict[int, str] = {
    FrameType.TELEMETRY: Channel.UP_TELE,
    FrameType.EVENT: Channel.UP_EVENT,
    FrameType.RESULT: Channel.UP_RESULT,
}
RECORD_TYPES = (FrameType.TELEMETRY, FrameType.EVENT)
_FORBIDDEN_IN_DID = frozenset("/+#$\x00")


def topic(prefix: str, did: str, channel: str) -> str:
    return f"{prefix}/{did}/{channel}"


def uplink_filter(prefix: str, group: str | None = None) -> list[str]:
    """What a gateway subscribes to: every device's uplink and status, shared by `group`."""
    filters = [f"{prefix}/+/up/#", f"{prefix}/+/status"]
    return [f"$share/{group}/{f}" for f in filters] if group else filters


def envelope_byte(encoding: int) -> int:
    return (VERSION << 4) | encoding


# --------------------------------------------------------------------------- envelope


class Envelope(NamedTuple):
    """One MQTT message taken apart, its tag not yet checked (a NamedTuple: one per message
    on the bridge's hot path, and a frozen dataclass costs ~1 us more to make)."""

    topic: bytes
    did: str
    channel: str
    encoding: int
    signed: bytes  # envelope byte and map: the tag covers topic | signed
    tag: bytes

    @property
    def body(self) -> bytes:
        return self.signed[1:]


def split_topic(prefix: str, topic_name: str) -> tuple[str, str]:
    """`<prefix>/<did>/<channel>` -> (did, channel); RemoteProtocolError otherwise."""
    head = prefix + "/"
    if not topic_name.startswith(head):
        raise RemoteProtocolError(ErrorCode.UNEXPECTED_FRAME, "topic outside the prefix")
    did, _, channel = topic_name[len(head) :].partition("/")
    if not 1 <= len(did) <= MAX_DID_LEN or _FORBIDDEN_IN_DID.intersection(did):
        raise RemoteProtocolError(ErrorCode.BAD_PAYLOAD, "topic names no valid device id")
    return did, channel


class ParsedTopic(NamedTuple):
    """A topic taken apart and checked: its bytes (the tag covers them), device and channel."""

    name: bytes
    did: str
    channel: str


_CHANNELS = {c: c for c in (*UPLINK_TYPES, *DOWNLINK_TYPES, Channel.STATUS)}


def parse_topic(prefix: str, topic_name: str) -> ParsedTopic:
    """`<prefix>/<did>/<channel>` with a known channel; RemoteProtocolError otherwise."""
    did, channel = split_topic(prefix, topic_name)
    known = _CHANNELS.get(channel)
    if known is None:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown channel {channel[:32]!r}")
    return ParsedTopic(topic_name.encode(), did, known)


class TopicCache:
    """Topics already taken apart, by name: a device publishes on the same few topics all its
    life, so the bridge parses each once instead of once per message (~2.5 us of ~15 per
    message, docs/benchmarks.md). Bounded: at `max_topics` it is emptied and refills."""

    __slots__ = ("_known", "max_topics", "prefix")

    def __init__(self, prefix: str, max_topics: int = 262_144) -> None:
        self.prefix = prefix
        self.max_topics = max_topics
        self._known: dict[str, ParsedTopic] = {}

    def __len__(self) -> int:
        return len(self._known)

    def get(self, topic_name: str) -> ParsedTopic:
        """The parsed topic; RemoteProtocolError (not remembered) when it is not ours."""
        parsed = self._known.get(topic_name)
        if parsed is None:
            parsed = parse_topic(self.prefix, topic_name)
            if len(self._known) >= self.max_topics:
                self._known.clear()
            self._known[topic_name] = parsed
        return parsed


def open_envelope(
    prefix: str, topic_name: str, payload: bytes, topics: TopicCache | None = None
) -> Envelope:
    """Take a message apart (nothing verified yet); RemoteProtocolError when it cannot be.
    With `topics` (whose prefix must be `prefix`) a topic seen before is not parsed again."""
    name, did, channel = (
        parse_topic(prefix, topic_name) if topics is None else topics.get(topic_name)
    )
    if not 1 + TAG_SIZE <= len(payload) <= MAX_MESSAGE:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"message of {len(payload)} bytes")
    first = payload[0]
    if first >> 4 != VERSION:
        raise RemoteProtocolError(ErrorCode.BAD_VERSION, f"envelope version {first >> 4}")
    encoding = first & 0x0F
    if encoding not in (Encoding.MSGPACK, Encoding.CBOR):
        raise RemoteProtocolError(ErrorCode.UNKNOWN_ENCODING, f"encoding {encoding}")
    return Envelope(name, did, channel, encoding, payload[:-TAG_SIZE], payload[-TAG_SIZE:])


def seal(mac: MacKey, topic_name: str, body: dict[int, object], encoding: int) -> bytes:
    """Encode a map into a tagged MQTT payload for `topic_name`."""
    return seal_topic(mac, topic_name.encode(), body, encoding)


_ENVELOPE_BYTES: dict[int, bytes] = {
    e: bytes((envelope_byte(e),)) for e in (Encoding.MSGPACK, Encoding.CBOR)
}


def seal_topic(mac: MacKey, topic_name: bytes, body: dict[int, object], encoding: int) -> bytes:
    """`seal` for a topic already encoded (a session's topics are, once)."""
    first = _ENVELOPE_BYTES.get(encoding) or bytes((envelope_byte(encoding),))
    signed = first + encode_payload(body, encoding)
    if len(signed) > 1 + MAX_PAYLOAD:
        raise LocalProtocolError(ErrorCode.BAD_PAYLOAD, f"payload of {len(signed) - 1} bytes")
    return signed + mac.mac(topic_name + signed)


def tag_ok(mac: MacKey, envelope: Envelope) -> bool:
    return mac.verify_parts(envelope.topic, envelope.signed, envelope.tag)


def envelope_fields(body: dict[int, object]) -> tuple[int, int]:
    seq, sent_ms = body.get(MqttKey.SEQ), body.get(MqttKey.SENT_MS)
    if type(seq) is not int or not 0 <= seq <= U16:
        raise RemoteProtocolError(ErrorCode.BAD_PAYLOAD, "key 40: expected integer 0..65535")
    if type(sent_ms) is not int or not 0 <= sent_ms <= MAX_COUNTER_MS:
        raise RemoteProtocolError(ErrorCode.BAD_PAYLOAD, "key 41: expected unix milliseconds")
    return seq, sent_ms


class ReplayGuard:
    """Refuses copies sent outside the clock window, far behind the newest copy, or seen before.

    What it cannot catch (a copy within REORDER_MS that fell out of the recent tags) changes
    nothing: records are deduplicated on (did, boot, rec), commands on cid.
    """

    __slots__ = ("_newest_ms", "_recent", "_seen")

    def __init__(self) -> None:
        self._newest_ms = 0
        self._recent: deque[bytes] = deque()  # oldest first, at most RECENT_TAGS
        self._seen: set[bytes] = set()  # the same tags, for a lookup without a scan

    def check(self, sent_ms: int, tag: bytes, now_ms: int) -> str | None:
        """None when the copy is fresh (and remember it), else "stale" or "replayed"."""
        if abs(sent_ms - now_ms) > MAX_SKEW_MS:
            return "stale"
        if sent_ms < self._newest_ms - REORDER_MS or tag in self._seen:
            return "replayed"
        recent = self._recent
        if len(recent) >= RECENT_TAGS:
            self._seen.discard(recent.popleft())
        recent.append(tag)
        self._seen.add(tag)
        if sent_ms > self._newest_ms:
            self._newest_ms = sent_ms
        return None
