"""The bridge's connection to the broker: MQTT 3.1.1 over an asyncio Protocol, no paho.

What the bridge needs of a client is small: connect (user name, password, clean session,
keepalive), subscribe, take the PUBLISHes of each read the moment its bytes are read,
publish acks and commands a batch per write, ping, and tell us when the connection breaks.
The packets are `protocol/mqtt_wire.py`'s (sans-IO, shared with the simulator's purifiers);
this module is only the pump: one `data_received` decodes everything a read holds and hands
its messages to the bridge's callback in one call, one `transport.write` sends a batch. paho
did the same work through a general-purpose client with a thread-safe publish path and three
`recv()` calls per message (44% of the bridge's main thread, docs/benchmarks.md).

Every wait is bounded (`timeout_s`); a broken connection, a refused CONNECT or SUBSCRIBE, a
broker that stops answering pings or bytes that are not MQTT all raise `BrokerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from aquafleet.gateway.errors import GatewayError
from aquafleet.protocol import mqtt_wire as wire

Outgoing = tuple[str, bytes, int]  # topic, payload, qos
MessagesCallback = Callable[[list[wire.Publish]], None]  # the messages of one socket read
WRITE_HIGH_WATER = 256 * 1024  # above this, `drain()` waits for the socket to take it


class BrokerError(GatewayError):
    """The broker connection failed, was refused, or broke."""


class BrokerConnection(asyncio.Protocol):
    """One connection to the broker. Build it with `connect_broker`."""

    def __init__(self, on_messages: MessagesCallback) -> None:
        loop = asyncio.get_running_loop()
        self.on_messages = on_messages
        self.transport: asyncio.Transport | None = None
        self.reader = wire.PacketReader()
        self.ids = wire.PacketIds()
        self.closed: asyncio.Future[None] = loop.create_future()  # fails when the link breaks
        self._connack: asyncio.Future[wire.ConnAck] = loop.create_future()
        self._subacks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self.last_rx = time.monotonic()
        self.unacked = 0  # QoS 1 messages we published that the broker has not acked yet

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        try:
            packets = self.reader.feed(data)
        except wire.MqttWireError as exc:
            self._broken(BrokerError(f"the broker sent what is not MQTT: {exc}"))
            return
        acks: list[bytes] = []
        messages: list[wire.Publish] = []
        add_message = messages.append
        for packet in packets:
            kind = type(packet)
            if kind is wire.Publish:
                if packet.qos:  # type: ignore[union-attr]
                    acks.append(wire.puback(packet.packet_id))  # type: ignore[union-attr]
                add_message(packet)  # type: ignore[arg-type]
            elif kind is wire.PubAck:
                self.unacked = max(0, self.unacked - 1)
            elif kind is wire.ConnAck:
                if not self._connack.done():
                    self._connack.set_result(packet)  # type: ignore[arg-type]
            elif kind is wire.SubAck:
                waiter = self._subacks.pop(packet.packet_id, None)  # type: ignore[union-attr]
                if waiter is not None and not waiter.done():
                    waiter.set_result(packet.codes)  # type: ignore[union-attr]
        if messages:
            self.on_messages(messages)
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken(BrokerError(f"connection to the broker lost: {exc!r}" if exc else
                                 "the broker closed the connection"))  # fmt: skip

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _broken(self, error: BrokerError) -> None:
        futures: list[asyncio.Future[Any]] = [self.closed, self._connack, *self._subacks.values()]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        self._subacks.clear()
        self._writable.set()  # nobody waits to write on a dead link
        if self.transport is not None:
            self.transport.abort()
        self.closed.exception()  # retrieved: nobody may be waiting on it yet

    # ------------------------------------------------------------------ used by the bridge

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    def _write(self, data: bytes) -> None:
        if self.transport is None or not self.is_open:
            raise BrokerError("not connected to the broker")
        self.transport.write(data)

    async def subscribe(self, filters: list[tuple[str, int]], timeout_s: float) -> None:
        """SUBSCRIBE and wait for its SUBACK; a refused filter raises BrokerError."""
        packet_id = self.ids.take()
        waiter: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = waiter
        self._write(wire.subscribe(packet_id, filters))
        async with asyncio.timeout(timeout_s):
            codes = await waiter
        if any(code == wire.SUBACK_FAILURE for code in codes):
            raise BrokerError(f"the broker refused the subscription to {filters}")

    def publish_many(self, messages: Iterable[Outgoing]) -> int:
        """Queue messages for the socket, in one write; returns how many."""
        ids = self.ids
        packets = []
        for topic, payload, qos in messages:
            packets.append(wire.publish(topic, payload, qos, ids.take() if qos else 0))
            if qos:
                self.unacked += 1
        if packets:
            self._write(b"".join(packets))
        return len(packets)

    async def drain(self, timeout_s: float) -> None:
        """Wait until the socket took what was written (below its high-water mark)."""
        if not self._writable.is_set():
            try:
                async with asyncio.timeout(timeout_s):
                    await self._writable.wait()
            except TimeoutError:
                raise BrokerError("the broker takes no more messages") from None
        if not self.is_open:
            await self.closed  # raises the reason

    async def keep_alive(self, keepalive_s: float) -> None:
        """PINGREQ every half keepalive; the broker silent for 1.5 keepalives: broken."""
        while self.is_open:
            await asyncio.sleep(keepalive_s / 2)
            if time.monotonic() - self.last_rx > keepalive_s * 1.5:
                self._broken(BrokerError("the broker stopped answering pings"))
                return
            with contextlib.suppress(BrokerError):
                self._write(wire.PINGREQ)

    async def disconnect(self, timeout_s: float) -> None:
        """DISCONNECT (the broker drops our will and session) and close, bounded."""
        if self.transport is None or not self.is_open:
            return
        self.transport.write(wire.DISCONNECT)
        self.transport.close()
        with contextlib.suppress(BrokerError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.closed


async def connect_broker(
    host: str,
    port: int,
    *,
    client_id: str,
    on_messages: MessagesCallback,
    username: str | None = None,
    password: str | None = None,
    keepalive_s: int = 30,
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
) -> BrokerConnection:
    """Open a connection, CONNECT (clean session) and wait for the broker's CONNACK."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            _, conn = await loop.create_connection(
                lambda: BrokerConnection(on_messages), host, port, ssl=tls
            )
    except (OSError, TimeoutError) as exc:
        raise BrokerError(f"cannot connect to the broker at {host}:{port}: {exc!r}") from None
    conn._write(
        wire.connect(client_id, keepalive_s=keepalive_s, username=username, password=password)
    )
    try:
        async with asyncio.timeout(timeout_s):
            connack = await conn._connack
    except TimeoutError:
        conn._broken(BrokerError("no CONNACK from the broker"))
        raise BrokerError(f"the broker at {host}:{port} did not answer CONNECT") from None
    if connack.rc != 0:
        conn._broken(BrokerError("refused"))
        raise BrokerError(f"the broker refused the connection: {wire.ConnectRefused(connack.rc)}")
    return conn
