"""The TCP pump of one virtual purifier: socket bytes in, the device's bytes out. No parsing."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aquafleet.simulators.device import VirtualPurifier


class PurifierLink(asyncio.Protocol):
    """One connection of one device; `closed` resolves when the socket is gone."""

    __slots__ = ("closed", "device", "transport")

    def __init__(self, device: VirtualPurifier, closed: asyncio.Future[None]) -> None:
        self.device = device
        self.closed = closed
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        device = self.device
        device.stats.connected += 1
        out = device.connect(time.monotonic(), time.monotonic_ns())
        self.transport.write(out)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        device = self.device
        transport = self.transport
        if transport is None or device.session is None:
            return
        out = device.receive(data, time.monotonic(), time.monotonic_ns(), int(time.time()))
        if out:
            transport.write(out)
        session = device.session
        if session is not None and session.is_closed:
            transport.close()  # login refused or our session gave up: the data above says why
        elif device.wants_reconnect:
            device.stats.unavailable_reconnects += 1
            self.close("unavailable")
        elif device.draining and device.drained:
            self.close("drained")

    def eof_received(self) -> bool:
        return False  # the gateway half-closed: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        device = self.device
        device.stats.connected -= 1
        self.transport = None
        device.link_lost(exc is not None)
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------------ used by the fleet

    def write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def close(self, reason: str) -> None:
        """A clean close (FIN) that we chose."""
        if self.transport is not None and not self.transport.is_closing():
            self.device.close_reason = reason
            self.transport.close()

    def abort(self, reason: str) -> None:
        """An abrupt close (RST, unsent bytes lost), like a GPRS link that vanishes."""
        if self.transport is not None:
            self.device.close_reason = reason
            self.transport.abort()
