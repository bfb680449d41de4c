"""The MQTT pump of one virtual ESP8266: an asyncio Protocol speaking `protocol.mqtt_wire`.

It offers the fleet what `simulators.link.PurifierLink` offers (write, close, abort, `closed`,
`transport` while connected), so the fleet's timers, drops, storms and drain drive both kinds.
No parsing here: packets come from the PacketReader, messages go to the purifier, and what a
read produces (PUBACKs, acks of commands, results, new records) leaves in one write.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aquafleet.protocol import mqtt_wire as wire
from aquafleet.protocol.crypto import mqtt_password
from aquafleet.simulators.mqtt_device import MqttPurifier

KEEPALIVE_S = 60
SUBSCRIBE_QOS = 1


class MqttPurifierLink(asyncio.Protocol):
    """One broker connection of one purifier; `closed` resolves when it is over."""

    __slots__ = (
        "_ids",
        "_keepalive",
        "_last_write",
        "_reader",
        "_socket",
        "_waiting",
        "closed",
        "device",
        "error",
        "transport",
    )

    def __init__(self, device: MqttPurifier, closed: asyncio.Future[None]) -> None:
        self.device = device
        self.closed = closed
        self.transport: asyncio.Transport | None = None  # set once subscribed (the fleet checks)
        self.error = False  # the connection broke (not closed by us or the broker cleanly)
        self._socket: asyncio.Transport | None = None
        self._reader = wire.PacketReader()
        self._ids = wire.PacketIds()
        self._waiting: asyncio.Future[Any] | None = None  # CONNACK or SUBACK during open()
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_write = 0.0

    # ------------------------------------------------------------------ used by the fleet

    def write(self, data: Any) -> None:
        """Publish what the device queued: a list of (topic, payload, qos)."""
        transport = self.transport
        if not data or transport is None or transport.is_closing():
            return
        take = self._ids.take
        publish = wire.publish
        transport.write(
            b"".join(
                [publish(name, payload, qos, take() if qos else 0) for name, payload, qos in data]
            )
        )
        self._last_write = time.monotonic()

    def close(self, reason: str) -> None:
        """A clean DISCONNECT, after the goodbye (docs/mqtt.md, section 3 step 8): the broker
        drops the will on a clean DISCONNECT, so the device publishes its will message itself
        first, and the gateway shows it offline at once instead of after the idle timeout."""
        socket = self._socket
        if socket is not None and not socket.is_closing():
            self.device.close_reason = reason
            device = self.device
            if device.connected_ms:  # the will registered with this connection's CONNECT
                name, payload = device.mqtt.will(device.connected_ms)
                socket.write(wire.publish(name, payload, 1, self._ids.take()))
            socket.write(wire.DISCONNECT)
            socket.close()

    def abort(self, reason: str) -> None:
        """Vanish (the WiFi went): the broker sees the socket die and publishes the will."""
        self.device.close_reason = reason
        if self._socket is not None:
            self._socket.abort()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._socket = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._reader.feed(data)
        except wire.MqttWireError as exc:
            self._fail(exc)
            return
        device = self.device
        out: list[bytes] = []
        for packet in packets:
            if type(packet) is wire.Publish:
                if packet.qos:
                    out.append(wire.puback(packet.packet_id))
                if self.transport is None:
                    continue  # before SUBACK: nothing of ours can be addressed to us yet
                sends = device.receive(
                    (packet.topic, packet.payload),
                    time.monotonic(),
                    time.monotonic_ns(),
                    int(time.time()),
                )
                if sends:
                    take = self._ids.take
                    out += [wire.publish(n, p, q, take() if q else 0) for n, p, q in sends]
            elif type(packet) is wire.ConnAck or type(packet) is wire.SubAck:
                waiting = self._waiting
                if waiting is not None and not waiting.done():
                    waiting.set_result(packet)
            # PUBACK of our QoS 1 publishes and PINGRESP need nothing: a purifier resends
            # records on its own clock, and a dead broker shows as a dead socket.
        socket = self._socket
        if out and socket is not None and not socket.is_closing():
            socket.write(b"".join(out))
            self._last_write = time.monotonic()
        if self.transport is not None:
            if device.wants_reconnect:
                device.stats.unavailable_reconnects += 1
                self.close("unavailable")
            elif device.draining and device.drained:
                self.close("drained")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.error = True
        self._socket = None
        if self._keepalive is not None:
            self._keepalive.cancel()
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(ConnectionError("the broker closed the connection"))
        if self.transport is not None:
            self.transport = None
            device = self.device
            device.stats.connected -= 1
            device.link_lost(self.error)
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.error = True
        if self._socket is not None:
            self._socket.abort()

    # ------------------------------------------------------------------ the connection

    async def _exchange(self, packet: bytes) -> Any:
        socket = self._socket
        if socket is None:
            raise ConnectionError("the broker closed the connection")
        self._waiting = asyncio.get_running_loop().create_future()
        socket.write(packet)
        try:
            return await self._waiting
        finally:
            self._waiting = None

    async def open(self) -> None:
        """CONNECT (with the will) and SUBSCRIBE; raises ConnectRefused, ConnectionError."""
        device = self.device
        will_topic, will_payload = device.will()
        connack = await self._exchange(
            wire.connect(
                device.client_id,
                keepalive_s=KEEPALIVE_S,
                username=device.did,
                password=mqtt_password(device.key, device.did, int(time.time())),
                will=(will_topic, will_payload, 1),
            )
        )
        if not isinstance(connack, wire.ConnAck):
            raise wire.MqttWireError("expected CONNACK")
        if connack.rc:
            raise wire.ConnectRefused(connack.rc)
        suback = await self._exchange(
            wire.subscribe(self._ids.take(), [(device.mqtt.topic("down/#"), SUBSCRIBE_QOS)])
        )
        if not isinstance(suback, wire.SubAck) or wire.SUBACK_FAILURE in suback.codes:
            raise wire.ConnectRefused(wire.SUBACK_FAILURE)

    def start(self) -> None:
        """Subscribed: online. Tell the device, and keep the connection alive."""
        device = self.device
        self.transport = self._socket
        device.stats.connected += 1
        self.write(device.broker_connected(time.monotonic(), time.monotonic_ns()))
        self._last_write = time.monotonic()
        self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        self._keepalive = loop.call_later(KEEPALIVE_S / 2, self._keepalive_due)

    def _keepalive_due(self) -> None:
        """PINGREQ when nothing went out for half the keepalive (the broker allows 1.5x)."""
        socket = self._socket
        if socket is None:
            return
        if time.monotonic() - self._last_write >= KEEPALIVE_S / 2:
            socket.write(wire.PINGREQ)
            self._last_write = time.monotonic()
        self._schedule_keepalive()

    async def run(self) -> None:
        """Wait until the connection is over (the fleet owns this as a task)."""
        await asyncio.shield(self.closed)


async def connect_mqtt(
    device: MqttPurifier, host: str, port: int, timeout_s: float, closed: asyncio.Future[None]
) -> MqttPurifierLink:
    """Open a broker connection for `device` (raises ConnectRefused, OSError, TimeoutError or
    MqttWireError); the caller runs link.run()."""
    loop = asyncio.get_running_loop()
    link = MqttPurifierLink(device, closed)
    try:
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(lambda: link, host, port)
            await link.open()
    except BaseException:
        link.abort("connect_failed")
        device.close_reason = None
        raise
    link.start()
    return link
