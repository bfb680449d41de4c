"""The MQTT bridge: ESP8266 devices' messages from the broker into the gateway, acks back.

One aiomqtt client per node subscribes to every device's uplink with a shared subscription
(`$share/<group>/<prefix>/+/up/#` and `.../+/status`), so the nodes of a group split the load.
A device's first message on this node holds until its key is known: the hub's LoginBatcher
looks the device up (one registry round trip per tick for all of them), checks the message's
tag with the derived key and claims the device's presence. After that each message is checked
locally (tag, clock window, replay memory) and its records go to the same MeterBatcher as TCP
records: deduplicated, metered and written to the ledger in one script call per shard per
round, then acked on `<prefix>/<did>/down/ack`.

Bounds and what happens at them (docs/mqtt.md, "Overflow"):
- received and not yet handled: `mqtt_queue_max` messages; when full the newest is dropped
  (counted in mqtt_uplinks_dropped). They are not acked, so the device resends them.
- while the hub pauses reads (Redis or the ledger behind) the bridge takes nothing from that
  queue, so it fills and then drops, as above.
- acks and commands waiting for the broker: `mqtt_outbound_max`; when full the oldest is
  dropped (mqtt_downlinks_dropped): a lost ack costs one resend, answered "duplicate".
- held per device while its key is looked up: 64, oldest dropped.
When the broker goes away the bridge reconnects with exponential backoff (0.5 s doubling to
30 s, jittered) and subscribes again; what it had received stays queued, what it had to send
stays in the outbound queue. No record is acked before it is durable, so a broker restart
loses nothing that was acked; what it loses in flight, devices resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as mqtt
import redis.asyncio as aioredis

from gateway.errors import ConfigError, RedisUnavailable
from gateway.keys import Keyspace
from gateway.login import LoginBatcher
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.mqtt.link import MqttDevice
from gateway.redis_io import Scripts, redis_errors
from protocol import ErrorCode, LoginRequested, ProtocolError
from protocol.messages import Record
from protocol.mqtt import (
    Envelope,
    StatusNotice,
    UplinkDropped,
    open_envelope,
    uplink_filter,
)

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.hub import Hub

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
SENT_POLL_S = 0.001
READ_BURST = 256
FORGET_BATCH = 1000

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

Outgoing = tuple[str, bytes, int]  # topic, payload, qos


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an mqtt:// or mqtts:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"mqtt_url: {url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


class BurstClient(aiomqtt.Client):
    """aiomqtt's client, reading up to READ_BURST messages per socket wake-up instead of one.

    paho reads one packet per `loop_read()` call while nothing of ours is in flight, and aiomqtt
    calls it once per wake-up, so a busy bridge took one message per event-loop iteration and
    fell behind the broker (measured: acks took ~300 ms at ~4k messages/s). `arrivals` counts
    messages handed over; the burst stops at the first call that handed none (no data left,
    or a control packet).
    """

    def __init__(self, arrivals: Callable[[], int], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arrivals = arrivals

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)  # the reader it registers is replaced
        arrivals = self._arrivals

        def burst() -> None:
            try:
                for _ in range(READ_BURST):
                    before = arrivals()
                    if client.loop_read() != mqtt.MQTT_ERR_SUCCESS or arrivals() == before:
                        return
            except Exception as exc:  # as aiomqtt's own reader: the connection broke
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), burst)


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
            presence_node=MQTT_NODE,
        )
        self.devices: dict[str, MqttDevice] = {}
        self.outbound: deque[Outgoing] = deque()
        self.outbound_max = settings.mqtt_outbound_max
        self.incoming: asyncio.Queue[aiomqtt.Message] | None = None
        self.connected = False
        self.accepting = True
        self.arrivals = 0  # messages paho handed over (queued or dropped)
        self._out_wake = asyncio.Event()
        self._out_empty = asyncio.Event()  # set by the publisher when nothing is left
        self._forget: list[str] = []
        self._forget_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        metrics.gauges["mqtt_connected"] = lambda: int(self.connected)
        metrics.gauges["mqtt_devices"] = lambda: len(self.devices)
        metrics.gauges["mqtt_incoming_queued"] = lambda: (
            0 if self.incoming is None else self.incoming.qsize()
        )
        metrics.gauges["mqtt_outbound_queued"] = lambda: len(self.outbound)

    # ------------------------------------------------------------------ the broker connection

    def _client(self) -> aiomqtt.Client:
        bridge = self

        class IncomingQueue(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt's bounded queue of received messages; full: drop the newest, counted."""

            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                bridge.incoming = self

            def put_nowait(self, item: aiomqtt.Message) -> None:
                bridge.arrivals += 1
                if self.full():
                    bridge.metrics.mqtt_uplinks_dropped += 1
                    raise asyncio.QueueFull
                super().put_nowait(item)

        quiet = logging.getLogger("aquafleet.mqtt.client")
        quiet.setLevel(logging.ERROR)  # a full queue is counted, not logged per message
        password = self.settings.mqtt_password
        client = BurstClient(
            lambda: bridge.arrivals,
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.settings.mqtt_username,
            password=None if password is None else password.get_secret_value(),
            queue_type=IncomingQueue,
            max_queued_incoming_messages=self.settings.mqtt_queue_max,
            clean_session=True,
            keepalive=KEEPALIVE_S,
            timeout=BROKER_TIMEOUT_S,
            tls_context=ssl.create_default_context() if self.tls else None,
            logger=quiet,
        )
        client.pending_calls_threshold = PUBLISH_BATCH * 4
        return client

    async def run(self) -> None:
        """Connect, subscribe, pump; on any broker failure reconnect with backoff."""
        client = self._client()
        delay = RECONNECT_MIN_S
        while not self._stopping.is_set():
            try:
                async with client:
                    for name in uplink_filter(self.prefix, self.settings.mqtt_share_group):
                        await client.subscribe(name, qos=1)
                    self.connected = True
                    self.metrics.mqtt_broker_connects += 1
                    delay = RECONNECT_MIN_S
                    log.info(
                        "mqtt_connected", broker=f"{self.host}:{self.port}", client=self.client_id
                    )
                    await self._pump(client)
            except aiomqtt.MqttError as exc:
                log.warning("mqtt_broker_unavailable", error=str(exc), retry_in_s=round(delay, 2))
            finally:
                if self.connected:
                    self.connected = False
                    self.metrics.mqtt_broker_disconnects += 1
            if self._stopping.is_set():
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Receive and publish until the connection fails (raises MqttError) or we stop."""
        tasks = {
            asyncio.create_task(self._consume(client), name="mqtt-consume"),
            asyncio.create_task(self._publish(client), name="mqtt-publish"),
            asyncio.create_task(self._stopping.wait(), name="mqtt-stop"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Take received messages in batches; the iterator raises MqttError on a disconnect."""
        async for message in client.messages:
            # The hub signals no resume: poll. Meanwhile the bounded queue fills, then drops.
            while not self.accepting or self.hub.reads_paused:  # noqa: ASYNC110
                await asyncio.sleep(PAUSED_POLL_S)
            batch = [message]
            queue = self.incoming
            while queue is not None and len(batch) < CONSUME_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            now = time.time()
            for item in batch:
                self.receive(item.topic.value, item.payload, now)

    async def _publish(self, client: aiomqtt.Client) -> None:
        """Publish queued acks and commands a batch at a time; what fails stays queued.

        Through paho's own non-blocking publish: aiomqtt's awaits each message's confirmation
        in a task of its own (measured: the largest share of the bridge's CPU per record).
        Each batch is waited for until it is on the wire (QoS 0) or acknowledged (QoS 1), so
        paho's unbounded buffer never holds more than one batch; the rest waits in ours.
        """
        paho = client._client  # the paho client aiomqtt wraps
        while True:
            if not self.outbound:
                self._out_empty.set()
                self._out_wake.clear()
                await self._out_wake.wait()
            count = min(PUBLISH_BATCH, len(self.outbound))
            batch = [self.outbound.popleft() for _ in range(count)]
            last = None
            for index, (name, payload, qos) in enumerate(batch):
                info = paho.publish(name, payload, qos)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    self.outbound.extendleft(reversed(batch[index:]))
                    self._trim_outbound()
                    self.metrics.mqtt_downlinks_sent += index
                    raise aiomqtt.MqttError(f"publish refused: {mqtt.error_string(info.rc)}")
                last = info
            self.metrics.mqtt_downlinks_sent += count
            await self._sent(last)

    async def _sent(self, info: mqtt.MQTTMessageInfo | None) -> None:
        """Wait (bounded) until paho has written the message (QoS 0) or the broker acked it."""
        if info is None:
            return
        await asyncio.sleep(0)  # paho writes from the loop's writer callback
        try:
            async with asyncio.timeout(BROKER_TIMEOUT_S):
                while not info.is_published():  # noqa: ASYNC110  # paho sets no event
                    await asyncio.sleep(SENT_POLL_S)
        except TimeoutError:
            raise aiomqtt.MqttError("the broker takes no more messages") from None
        except (RuntimeError, ValueError) as exc:  # paho gave up on it: the connection is gone
            raise aiomqtt.MqttError(str(exc)) from None

    # ------------------------------------------------------------------ uplink

    def receive(self, topic_name: str, payload: bytes, now: float) -> None:
        """One message from the broker."""
        self.metrics.mqtt_uplinks_received += 1
        try:
            envelope = open_envelope(self.prefix, topic_name, payload)
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
        for event in device.session.receive(envelope, now):
            kind = type(event)
            if kind is Record:
                self.hub.meter.submit(device, event)  # type: ignore[arg-type]
            elif kind is UplinkDropped:
                self.count_drops((event,))  # type: ignore[arg-type]
            elif kind is StatusNotice:
                if not event.online:  # type: ignore[attr-defined]
                    self._offline(device)
                    return
            else:
                self.hub.device_message(device, event)  # RESULT, ACK: command delivery
        device.flush()

    def _offline(self, device: MqttDevice) -> None:
        """The device's last will: it left the broker. Release its presence, and have every
        bridge forget its session so the next message (after a reconnect) claims it again."""
        self.metrics.mqtt_offline_notices += 1
        did = device.session.did
        device.close(ErrorCode.SHUTDOWN, "last will: the device left the broker", release=True)
        self._forget.append(did)
        self._forget_wake.set()

    def count_drops(self, drops: Iterable[UplinkDropped]) -> None:
        metrics = self.metrics
        for drop in drops:
            name = _DROP_COUNTERS.get(drop.reason, "mqtt_uplinks_malformed")
            setattr(metrics, name, getattr(metrics, name) + 1)

    def device_closed(self, device: MqttDevice, *, release: bool) -> None:
        did = device.session.did
        if self.devices.get(did) is device:
            del self.devices[did]
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

    async def run_forget(self) -> None:
        """Tell every bridge (the shared presence channel) to forget devices that went offline."""
        channel = self.keyspace.node_channel(MQTT_NODE)
        while True:
            await self._forget_wake.wait()
            self._forget_wake.clear()
            while self._forget:
                batch = self._forget[:FORGET_BATCH]
                del self._forget[:FORGET_BATCH]
                try:
                    with redis_errors("telling bridges a device went offline"):
                        pipe = self.redis.pipeline(transaction=False)
                        for did in batch:
                            pipe.publish(channel, f"kick {did} {MQTT_CONN_ID}")
                        await pipe.execute()
                except RedisUnavailable as exc:
                    # Not retried: the other bridges' sessions of these devices end on their
                    # own (idle timeout) or at the next kick.
                    log.warning("mqtt_forget_failed", error=str(exc), devices=len(batch))

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
            "mqtt-kicks": lambda: self.hub.presence.run_kick_listener(MQTT_NODE),
            "mqtt-forget": self.run_forget,
        }
