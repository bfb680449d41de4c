"""The MQTT pump of one virtual ESP8266: an aiomqtt client per connection. No parsing here.

It offers the fleet what `simulators.link.PurifierLink` offers (write, close, abort, `closed`,
`transport` while connected), so the fleet's timers, drops, storms and drain drive both kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

import aiomqtt

from protocol.crypto import mqtt_password
from simulators.mqtt_device import MqttPurifier

KEEPALIVE_S = 60
QUIET = logging.getLogger("aquafleet.sim.mqtt")
QUIET.setLevel(logging.ERROR)  # paho/aiomqtt chatter about each forced disconnect


class MqttPurifierLink:
    """One broker connection of one purifier; `closed` resolves when it is over."""

    __slots__ = ("_stop", "client", "closed", "device", "transport")

    def __init__(self, device: MqttPurifier, closed: asyncio.Future[None]) -> None:
        self.device = device
        self.closed = closed
        self.client: aiomqtt.Client | None = None
        self.transport: aiomqtt.Client | None = None  # set while connected (the fleet checks it)
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ used by the fleet

    def write(self, data: Any) -> None:
        """Publish what the device queued: a list of (topic, payload, qos)."""
        client = self.transport
        if not data or client is None:
            return
        # paho's publish only queues the packet (the loop writes it); aiomqtt's awaits the
        # PUBACK, which would serialise a purifier's window behind round trips.
        paho = client._client
        for name, payload, qos in data:
            paho.publish(name, payload, qos)

    def close(self, reason: str) -> None:
        """A clean DISCONNECT (the broker drops the will)."""
        if self.transport is not None and not self._stop.is_set():
            self.device.close_reason = reason
            self._stop.set()

    def abort(self, reason: str) -> None:
        """Vanish (the WiFi went): the broker sees the socket die and publishes the will."""
        self.device.close_reason = reason
        client = self.transport
        if client is None:
            self._stop.set()
            return
        # No public abort in aiomqtt: shut paho's socket down; the reader then ends on the
        # disconnect (and takes aiomqtt's error with it).
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
                return
            except OSError:
                pass
        self._stop.set()

    # ------------------------------------------------------------------ the connection

    async def open(self, host: str, port: int, timeout_s: float) -> aiomqtt.Client:
        """CONNECT (raises MqttError/TimeoutError when the broker refuses or does not answer)."""
        device = self.device
        will_topic, will_payload = device.will()
        client = aiomqtt.Client(
            host,
            port,
            identifier=device.client_id,
            username=device.did,
            password=mqtt_password(device.key, device.did, int(time.time())),
            will=aiomqtt.Will(will_topic, will_payload, qos=1),
            keepalive=KEEPALIVE_S,
            clean_session=True,
            timeout=timeout_s,
            logger=QUIET,
        )
        client.pending_calls_threshold = 1 << 30  # we never await publishes
        await client.__aenter__()
        try:
            await client.subscribe(device.mqtt.topic("down/#"), qos=1)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise
        self.client = client
        return client

    async def run(self) -> None:
        """Pump until closed; then tell the device and resolve `closed`."""
        client = self.client
        assert client is not None
        device = self.device
        error = False
        self.transport = client
        device.stats.connected += 1
        try:
            self.write(device.broker_connected(time.monotonic(), time.monotonic_ns()))
            reader = asyncio.ensure_future(self._read(client))
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, stopper):
                    task.cancel()
                await asyncio.gather(reader, stopper, return_exceptions=True)
            error = reader in done and not reader.cancelled() and reader.exception() is not None
        finally:
            self.transport = None
            device.stats.connected -= 1
            with contextlib.suppress(aiomqtt.MqttError, OSError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await client.__aexit__(None, None, None)
            device.link_lost(error)
            if not self.closed.done():
                self.closed.set_result(None)

    async def _read(self, client: aiomqtt.Client) -> None:
        device = self.device
        async for message in client.messages:
            out = device.receive(
                (message.topic.value, message.payload),
                time.monotonic(),
                time.monotonic_ns(),
                int(time.time()),
            )
            self.write(out)
            if device.wants_reconnect:
                device.stats.unavailable_reconnects += 1
                self.close("unavailable")
            elif device.draining and device.drained:
                self.close("drained")


async def connect_mqtt(
    device: MqttPurifier, host: str, port: int, timeout_s: float, closed: asyncio.Future[None]
) -> MqttPurifierLink:
    """Open a broker connection for `device` (raises on failure); the caller runs link.run()."""
    link = MqttPurifierLink(device, closed)
    async with asyncio.timeout(timeout_s):
        await link.open(host, port, timeout_s)
    return link
