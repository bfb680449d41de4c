"""The MQTT bridge: ESP8266 devices' messages from the broker into the gateway, acks back.

One broker connection per node (gateway/mqtt/client.py: MQTT 3.1.1 over an asyncio Protocol,
the packets of protocol/mqtt_wire.py) subscribes to every device's uplink with a shared
subscription (`$share/<group>/<prefix>/+/up/#` and `.../+/status`, QoS 0: see SUBSCRIBE_QOS),
so the nodes of a group split the load. Every message a socket read holds is handled as the
read is (as TCP frames are), or, while reads are paused or older messages wait, put in our
bounded queue; acks and commands are published a batch per write. (Through aiomqtt and
paho, the same work took paho's general-purpose packet handling and thread-safe publish path:
44% of the bridge's main thread, docs/benchmarks.md.)
A device's first message on this node holds until its key is known: the hub's LoginBatcher
looks the device up (one registry round trip per tick for all of them), checks the message's
tag with the derived key and claims the device's presence; the desired state that claim
returns goes to the device as a SET_STATE command (MQTT has no AUTH_OK). After that each
message is checked locally (tag, clock window, replay memory) and its records go to the same
MeterBatcher as TCP records: deduplicated, metered and written to the ledger in one script
call per shard per round, then acked on `<prefix>/<did>/down/ack`. A device's answers to
commands (ACK, RESULT) are also told to the other bridges, one of which may have sent the
command (docs/mqtt.md, section 8).

Bounds and what happens at them (docs/mqtt.md, "Overflow"):
- received and not yet handled: `mqtt_queue_max` messages; when full the newest is dropped
  (counted in mqtt_uplinks_dropped). They are not acked, so the device resends them.
- while the hub pauses reads (Redis or the ledger behind) the bridge takes nothing from that
  queue, so it fills and then drops, as above.
- acks and commands waiting for the broker: `mqtt_outbound_max`; when full the oldest is
  dropped (mqtt_downlinks_dropped): a lost ack costs one resend, answered "duplicate".
- held per device while its key is looked up: 64, oldest dropped.
- answers waiting to be told to the other bridges: ANSWERS_MAX, oldest dropped (logged); its
  command is resent and answered from the device's memory.
When the broker goes away the bridge reconnects with exponential backoff (0.5 s doubling to
30 s, jittered) and subscribes again; what it had received stays queued, what it had to send
stays in the outbound queue. No record is acked before it is durable, so a broker restart
loses nothing that was acked; what it loses in flight, devices resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aquafleet.gateway.errors import ConfigError, RedisUnavailable
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.login import LoginBatcher
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.mqtt.client import BrokerConnection, BrokerError, Outgoing, connect_broker
from aquafleet.gateway.mqtt.link import MqttDevice
from aquafleet.gateway.redis_io import Scripts, redis_errors
from aquafleet.gateway.tasks import cancel_and_wait
from aquafleet.protocol import ErrorCode, LoginRequested, ProtocolError
from aquafleet.protocol.message_types import Record, Result
from aquafleet.protocol.mqtt import CommandAnswer, MqttServerSession, StatusNotice, UplinkDropped
from aquafleet.protocol.mqtt_envelope import (
    CHANNEL_OF_TYPE,
    RECORD_TYPES,
    UPLINK_TYPES,
    Envelope,
    TopicCache,
    open_envelope,
    topic,
    uplink_filter,
)
from aquafleet.protocol.mqtt_wire import Publish

if TYPE_CHECKING:
    from aquafleet.gateway.config import Settings
    from aquafleet.gateway.hub import Hub

log = get_logger("aquafleet.mqtt")

MQTT_NODE = "mqtt"  # the presence node of every MQTT device: any bridge reaches it via the broker
MQTT_CONN_ID = "mqtt"  # the presence connection id of an MQTT device, the same on every node
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 30.0
KEEPALIVE_S = 30
BROKER_TIMEOUT_S = 10.0
CONSUME_BATCH = 2000  # messages handled before the loop yields (the meter takes them)
PUBLISH_BATCH = 500
PAUSED_POLL_S = 0.05
FLUSH_GRACE_S = 2.0
# The uplink is taken at QoS 0: a record's safety is the device's (it keeps it until our ACK,
# which comes only once the record is durable), not the broker's. At QoS 1 the broker holds
# at most an in-flight window (Mosquitto: 20) plus a queue (1000) per subscriber and silently
# dropped the rest whenever devices' windows filled together (measured: 7-10% of messages at
# 500 devices x window 8, each resent by its device 5 s later); at QoS 0 bursts wait in the
# socket buffers and in our bounded queue, where a drop is counted (mqtt_uplinks_dropped).
SUBSCRIBE_QOS = 0
FORGET_BATCH = 1000
ANSWERS_MAX = 10_000  # device answers waiting to be told to the other bridges (oldest dropped)
ANSWERS_BATCH = 500
RELAY_RETRY_S = 1.0

# A record topic's way to its session: (device, its session, the topic's bytes, record type).
Route = tuple[MqttDevice, MqttServerSession, bytes, int]
ROUTED_CHANNELS = tuple(CHANNEL_OF_TYPE[t] for t in RECORD_TYPES)

_DROP_COUNTERS = {
    "forged": "mqtt_uplinks_forged",
    "replayed": "mqtt_uplinks_replayed",
    "stale": "mqtt_uplinks_stale",
    "malformed": "mqtt_uplinks_malformed",
    "overflow": "mqtt_uplinks_dropped",
    "unknown_device": "mqtt_uplinks_refused",
    "disabled": "mqtt_uplinks_refused",
    "not_allowed": "mqtt_uplinks_refused",
}


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an mqtt:// or mqtts:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"mqtt_url: {url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


class MqttBridge:
    """The MQTT transport of one node. Its tasks are started and stopped by node.mqtt_ctx."""

    def __init__(
        self,
        *,
        hub: Hub,
        settings: Settings,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        metrics: Metrics,
        master_secret: bytes,
        presence_ttl_ms: int,
    ) -> None:
        assert settings.mqtt_url is not None
        self.hub = hub
        self.settings = settings
        self.redis = client
        self.keyspace = keyspace
        self.metrics = metrics
        self.prefix = settings.mqtt_topic_prefix
        self.host, self.port, self.tls = broker_address(settings.mqtt_url)
        self.client_id = f"aquafleet-{hub.node_id}"[:64]
        self.logins = LoginBatcher(
            hub=hub,
            client=client,
            scripts=scripts,
            keyspace=keyspace,
            metrics=metrics,
            master_secret=master_secret,
            presence_ttl_ms=presence_ttl_ms,
            history_size=settings.presence_history_size,
            presence_node=MQTT_NODE,
        )
        self.devices: dict[str, MqttDevice] = {}
        self.topics = TopicCache(self.prefix)  # bounded: emptied when full
        # The record topics (up/tele, up/event) of the devices online here, to their device:
        # a read's records go from topic to session without an Envelope or a device lookup
        # (`_on_messages`). Bounded by the devices: a device's go when it closes.
        self.routes: dict[str, Route] = {}
        self.outbound: deque[Outgoing] = deque()
        self.outbound_max = settings.mqtt_outbound_max
        self.incoming: deque[tuple[str, bytes]] = deque()  # topic, payload
        self.incoming_max = settings.mqtt_queue_max
        self._in_wake = asyncio.Event()
        self.connected = False
        self.accepting = True
        self._out_wake = asyncio.Event()
        self._out_empty = asyncio.Event()  # set by the publisher when nothing is left
        self._forget: list[str] = []
        self._answers: deque[tuple[str, CommandAnswer]] = deque(maxlen=ANSWERS_MAX)
        self._announce_wake = asyncio.Event()
        self.answers_channel = f"{keyspace.node_channel(MQTT_NODE)}:answers"
        self._stopping = asyncio.Event()
        metrics.gauge(
            "mqtt_connected", "1 while connected to the broker", lambda: int(self.connected)
        )
        metrics.gauge("mqtt_devices", "MQTT devices with a session here", lambda: len(self.devices))
        metrics.gauge("mqtt_incoming_queued", "Uplinks queued", lambda: len(self.incoming))
        metrics.gauge("mqtt_outbound_queued", "Downlinks queued", lambda: len(self.outbound))
        metrics.gauge(
            "mqtt_answers_queued",
            "Answers queued for the other bridges",
            lambda: len(self._answers),
        )

    # ------------------------------------------------------------------ the broker connection

    async def _connect(self) -> BrokerConnection:
        password = self.settings.mqtt_password
        return await connect_broker(
            self.host,
            self.port,
            client_id=self.client_id,
            on_messages=self._on_messages,
            username=self.settings.mqtt_username,
            password=None if password is None else password.get_secret_value(),
            keepalive_s=KEEPALIVE_S,
            tls=ssl.create_default_context() if self.tls else None,
            timeout_s=BROKER_TIMEOUT_S,
        )

    def _on_messages(self, messages: list[Publish]) -> None:
        """The messages of one socket read from the broker, as the read is handled: each
        handled at once, as a TCP frame is, unless reads are paused or older messages wait
        (then queued behind them; full: the newest dropped, counted: it was not acked, its
        device resends it). Handling them here spares a task switch per read (the consumer's),
        most of what MQTT cost above TCP per record once the messages themselves were cheap
        (docs/benchmarks.md); one call and one clock reading a read, not a message.
        A record of a device online here goes by its topic's route straight to the session's
        `take_record` and the meter; anything else (and anything that declines) to `receive`."""
        incoming = self.incoming
        hub = self.hub
        routes = self.routes
        submit = hub.meter.submit
        now = time.time()
        now_ms = int(now * 1000)
        taken = 0
        for topic_name, payload, _qos, _packet_id in messages:
            if incoming or not self.accepting or hub.reads_paused:
                if len(incoming) >= self.incoming_max:
                    self.metrics.mqtt_uplinks_dropped += 1
                else:
                    incoming.append((topic_name, payload))
                    self._in_wake.set()
                continue
            route = routes.get(topic_name)
            if route is not None:
                device, session, name, frame_type = route
                record = session.take_record(name, frame_type, payload, now, now_ms)
                if record is not None:
                    taken += 1
                    if type(record) is Record:
                        submit(device, record)
                    else:
                        self.count_drops((record,))  # type: ignore[arg-type]
                    if session.needs_flush:
                        device.flush()
                    continue
            self.receive(topic_name, payload, now)
        if taken:
            self.metrics.mqtt_uplinks_received += taken

    async def run(self) -> None:
        """Connect, subscribe, pump; on any broker failure reconnect with backoff."""
        delay = RECONNECT_MIN_S
        while not self._stopping.is_set():
            conn: BrokerConnection | None = None
            try:
                conn = await self._connect()
                filters = uplink_filter(self.prefix, self.settings.mqtt_share_group)
                await conn.subscribe([(f, SUBSCRIBE_QOS) for f in filters], BROKER_TIMEOUT_S)
                self.connected = True
                self.metrics.mqtt_broker_connects += 1
                delay = RECONNECT_MIN_S
                log.info("mqtt_connected", broker=f"{self.host}:{self.port}", client=self.client_id)
                await self._pump(conn)
            except (BrokerError, TimeoutError) as exc:
                log.warning("mqtt_broker_unavailable", error=str(exc), retry_in_s=round(delay, 2))
            finally:
                if conn is not None:
                    await conn.disconnect(BROKER_TIMEOUT_S)
                if self.connected:
                    self.connected = False
                    self.metrics.mqtt_broker_disconnects += 1
            if self._stopping.is_set():
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _pump(self, conn: BrokerConnection) -> None:
        """Receive and publish until the connection fails (raises BrokerError) or we stop."""
        tasks: set[asyncio.Future[Any]] = {
            asyncio.create_task(self._consume(), name="mqtt-consume"),
            asyncio.create_task(conn.keep_alive(KEEPALIVE_S), name="mqtt-keepalive"),
            asyncio.create_task(self._publish(conn), name="mqtt-publish"),
            asyncio.create_task(self._stopping.wait(), name="mqtt-stop"),
            conn.closed,
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(t for t in tasks if t is not conn.closed)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _consume(self) -> None:
        """Take received messages a batch at a time (the meter takes the batch's records
        while this waits for the next)."""
        incoming = self.incoming
        while True:
            if not incoming:
                self._in_wake.clear()
                await self._in_wake.wait()
            # The hub signals no resume: poll. Meanwhile the bounded queue fills, then drops.
            while not self.accepting or self.hub.reads_paused:  # noqa: ASYNC110
                await asyncio.sleep(PAUSED_POLL_S)
            now = time.time()
            receive = self.receive
            for _ in range(min(CONSUME_BATCH, len(incoming))):
                topic_name, payload = incoming.popleft()
                receive(topic_name, payload, now)
            await asyncio.sleep(0)

    async def _publish(self, conn: BrokerConnection) -> None:
        """Publish queued acks and commands a batch per write; what fails stays queued.

        Each batch is waited for until the socket took it, so the transport's buffer never
        holds much more than one batch; the rest waits in ours (bounded, oldest dropped).
        """
        while True:
            if not self.outbound:
                self._out_empty.set()
                self._out_wake.clear()
                await self._out_wake.wait()
            count = min(PUBLISH_BATCH, len(self.outbound))
            batch = [self.outbound.popleft() for _ in range(count)]
            try:
                conn.publish_many(batch)
            except BrokerError:
                self.outbound.extendleft(reversed(batch))
                self._trim_outbound()
                raise
            self.metrics.mqtt_downlinks_sent += count
            await conn.drain(BROKER_TIMEOUT_S)

    # ------------------------------------------------------------------ uplink

    def receive(self, topic_name: str, payload: bytes, now: float) -> None:
        """One message from the broker."""
        self.metrics.mqtt_uplinks_received += 1
        try:
            envelope = open_envelope(self.prefix, topic_name, payload, self.topics)
        except ProtocolError:
            self.metrics.mqtt_uplinks_malformed += 1
            return
        device = self.devices.get(envelope.did)
        if device is None or device.closed:
            device = self._new_device(envelope.did, now)
            if device is None:
                return
            device.session.hold(envelope)
            self.logins.submit(device, LoginRequested(did=envelope.did, fw=""))
            return
        if not device.session.is_online:
            device.session.hold(envelope)  # its key is being looked up
            device.flush()  # counts a held message the bound dropped
            return
        frame_type = UPLINK_TYPES.get(envelope.channel)
        if frame_type in RECORD_TYPES:  # its next records here go by the route (_on_messages)
            self.routes[topic_name] = (device, device.session, envelope.topic, frame_type)
        self.handle(device, envelope, now)

    def _new_device(self, did: str, now: float) -> MqttDevice | None:
        device = MqttDevice(self, did, MQTT_CONN_ID, now)
        self.hub.connection_made(device)  # refused (node full or stopping): closed at once
        if device.closed:
            self.metrics.mqtt_uplinks_dropped += 1
            return None
        self.devices[did] = device
        return device

    def handle(self, device: MqttDevice, envelope: Envelope, now: float) -> None:
        """A message of a device whose key is known: check it, then meter or dispatch it."""
        session = device.session
        for event in session.receive_data(envelope, now):
            kind = type(event)
            if kind is Record:
                self.hub.meter.submit(device, event)  # type: ignore[arg-type]
            elif kind is UplinkDropped:
                self.count_drops((event,))  # type: ignore[arg-type]
            elif kind is CommandAnswer:
                self._answered(device, event)  # type: ignore[arg-type]
            elif kind is StatusNotice:
                if not event.online:  # type: ignore[attr-defined]
                    self._offline(device)
                    return
            else:
                self.hub.device_message(device, event)  # an ACK without cid: matched by seq
        if session.needs_flush:
            device.flush()

    def _answered(self, device: MqttDevice, answer: CommandAnswer) -> None:
        """A device's ACK or RESULT of a command: to the command service here, and to every
        other bridge, since any of them may have sent the command (a device's messages are
        shared among the bridges, its commands are not). An ACK counts only on the node that
        sent the command (it names our seq of it); a RESULT is recorded wherever it arrives."""
        local = device.session.answer_for(answer)
        if local is None:
            local = answer.result
        if local is not None:
            self.hub.device_message(device, local)
        if len(self._answers) == ANSWERS_MAX:
            log.warning("mqtt_answer_relay_full", dropped_did=self._answers[0][0])
        self._answers.append((device.session.did, answer))
        self._announce_wake.set()

    def _offline(self, device: MqttDevice) -> None:
        """The device's last will: it left the broker. Release its presence, and have every
        bridge forget its session so the next message (after a reconnect) claims it again."""
        self.metrics.mqtt_offline_notices += 1
        did = device.session.did
        device.close(ErrorCode.SHUTDOWN, "last will: the device left the broker", release=True)
        self._forget.append(did)
        self._announce_wake.set()

    def count_drops(self, drops: Iterable[UplinkDropped]) -> None:
        metrics = self.metrics
        for drop in drops:
            name = _DROP_COUNTERS.get(drop.reason, "mqtt_uplinks_malformed")
            setattr(metrics, name, getattr(metrics, name) + 1)

    def device_closed(self, device: MqttDevice, *, release: bool) -> None:
        did = device.session.did
        if self.devices.get(did) is device:
            del self.devices[did]
        for channel in ROUTED_CHANNELS:  # its routes go with it (a new session makes its own)
            topic_name = topic(self.prefix, did, channel)
            route = self.routes.get(topic_name)
            if route is not None and route[0] is device:
                del self.routes[topic_name]
        self.hub.connection_lost(device, release=release)

    # ------------------------------------------------------------------ downlink

    def send(self, messages: list[Outgoing]) -> None:
        """Queue messages for the broker (bounded: the oldest go first when it is full)."""
        self.outbound.extend(messages)
        self._trim_outbound()
        self._out_empty.clear()
        self._out_wake.set()

    def _trim_outbound(self) -> None:
        excess = len(self.outbound) - self.outbound_max
        if excess > 0:
            for _ in range(excess):
                self.outbound.popleft()
            self.metrics.mqtt_downlinks_dropped += excess

    async def run_announce(self) -> None:
        """Tell every bridge what concerns them all: devices that went offline (forget their
        sessions; the shared presence channel) and devices' answers to commands."""
        while True:
            await self._announce_wake.wait()
            self._announce_wake.clear()
            while self._forget or self._answers:
                forget = self._forget[:FORGET_BATCH]
                del self._forget[:FORGET_BATCH]
                count = min(ANSWERS_BATCH, len(self._answers))
                answers = [self._answers.popleft() for _ in range(count)]
                try:
                    with redis_errors("telling the bridges"):
                        pipe = self.redis.pipeline(transaction=False)
                        for did in forget:
                            command, channel = self.keyspace.device_node_channel(did, MQTT_NODE)
                            pipe.execute_command(command, channel, f"kick {did} {MQTT_CONN_ID}")
                        for did, answer in answers:
                            pipe.publish(
                                self.answers_channel, pack_answer(self.client_id, did, answer)
                            )
                        await pipe.execute()
                except RedisUnavailable as exc:
                    # Not retried: the other bridges' sessions of these devices end on their
                    # own (idle timeout) or at the next kick; an unanswered command is resent.
                    log.warning(
                        "mqtt_announce_failed", error=str(exc), offline=len(forget),
                        answers=len(answers),
                    )  # fmt: skip

    async def run_answers(self) -> None:
        """Hand the answers other bridges received to the command service here, for the
        commands this node sent."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.answers_channel)
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None:
                        self.relayed_answer(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("mqtt_answers_listener_reconnecting", error=str(exc))
                await asyncio.sleep(RELAY_RETRY_S)
            finally:
                await pubsub.aclose()

    def relayed_answer(self, data: bytes) -> None:
        """One answer another bridge received (our own come back too: skipped)."""
        try:
            origin, did, answer = unpack_answer(data)
        except ValueError:
            log.warning("mqtt_answer_malformed", data=data[:96])
            return
        if origin == self.client_id:
            return
        device = self.devices.get(did)
        if device is None or device.closed or not device.session.is_online:
            return
        local = device.session.answer_for(answer)
        if local is not None:
            self.hub.device_message(device, local)

    # ------------------------------------------------------------------ shutdown

    async def drain(self, grace_s: float) -> None:
        """Stop taking messages, let what was taken be metered and acked, publish the acks."""
        self.accepting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self.hub.meter.drained()
        if self.connected and self.outbound:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_GRACE_S):
                    await self._out_empty.wait()
        if self.outbound:
            log.warning("mqtt_acks_unsent", count=len(self.outbound))

    def stop(self) -> None:
        """Leave the broker cleanly (run() returns) and end every local device session; their
        presence stays: the devices are still connected to the broker."""
        self._stopping.set()
        for device in list(self.devices.values()):
            device.close(ErrorCode.SHUTDOWN, "gateway stopping")

    def tasks(self) -> dict[str, Any]:
        """The bridge's long-running coroutines by task name (owned by the node's TaskGroup)."""
        return {
            "mqtt-bridge": self.run,
            "mqtt-logins": self.logins.run,
            "mqtt-announce": self.run_announce,
            "mqtt-answers": self.run_answers,
        }


def pack_answer(origin: str, did: str, answer: CommandAnswer) -> bytes:
    """An answer on the bridges' channel: msgpack [origin, did, cid, ack_rc, rc, out]."""
    result = answer.result
    return msgpack.packb(  # type: ignore[no-any-return]
        [
            origin, did, answer.cid, answer.ack_rc,
            None if result is None else result.rc, None if result is None else result.out,
        ]
    )  # fmt: skip


def unpack_answer(data: bytes) -> tuple[str, str, CommandAnswer]:
    """(origin, did, answer) of a message from `pack_answer`; ValueError when it is not one."""
    try:
        origin, did, cid, ack_rc, rc, out = msgpack.unpackb(data)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError("not an answer") from exc
    if not (isinstance(origin, str) and isinstance(did, str) and type(cid) is int):
        raise ValueError("not an answer")
    if (ack_rc is None) == (rc is None) or not all(
        v is None or type(v) is int for v in (ack_rc, rc, out)
    ):
        raise ValueError("an answer is an ack or a result")
    result = None if rc is None else Result(cid=cid, rc=rc, out=out)
    return origin, did, CommandAnswer(cid, ack_rc=ack_rc, result=result)
