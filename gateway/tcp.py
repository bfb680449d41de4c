"""The device TCP transport: a thin pump between sockets and protocol.ServerSession."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

from aquafleet.gateway.startup import TCP_BACKLOG
from aquafleet.protocol import (
    ErrorCode,
    FrameRejected,
    LoginRequested,
    ServerSession,
    SessionClosed,
)
from aquafleet.protocol.message_types import Record

if TYPE_CHECKING:
    from aquafleet.gateway.hub import Hub

WRITE_HIGH_WATER = 64 * 1024  # a device that does not read its acks stops being read
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 60, 20, 3


def set_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


class DeviceConnection(asyncio.Protocol):
    """One device socket. Parsing is the session's; business is the hub's."""

    __slots__ = (
        "_peer_ip",
        "closed",
        "conn_id",
        "did",
        "hub",
        "session",
        "shard",
        "touched_rx",
        "transport",
        "write_paused",
    )

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.session: ServerSession | None = None
        self.conn_id = ""
        self.did = ""  # set once the login is accepted
        self.shard = 0
        self._peer_ip: str | None = None  # asked of the socket when first needed (peer_ip)
        self.closed = False
        self.write_paused = False
        self.touched_rx: float | None = None

    @property
    def peer_ip(self) -> str:
        """The device's IP address ("" when unknown). Only the failed-login limit and a few
        log lines need it: it is read from the socket the first time, while it is open."""
        ip = self._peer_ip
        if ip is None:
            ip = ""
            transport = self.transport
            if transport is not None and not self.closed:
                try:
                    peer = transport.get_extra_info("peername")
                except (AttributeError, OSError):  # uvloop: the socket is already gone
                    peer = None
                ip = peer[0] if peer else ""
            self._peer_ip = ip
        return ip

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        # Keepalive comes with the accepted socket (set on the listener, Linux copies it), and
        # the peer's address is asked for only when needed (peer_ip): asking uvloop for either
        # here would keep a socket object per connection and make more system calls and
        # objects per accept, in the middle of a reconnect storm.
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[union-attr]
        self.session = self.hub.new_session()
        self.hub.connection_made(self)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None or self.closed:
            return
        hub = self.hub
        for event in session.receive_data(data, time.time()):
            kind = type(event)
            if kind is Record:
                hub.meter.submit(self, event)  # type: ignore[arg-type]
            elif kind is LoginRequested:
                hub.logins.submit(self, event)  # type: ignore[arg-type]
            elif kind is SessionClosed:
                hub.session_closed(self, event)  # type: ignore[arg-type]
            elif kind is FrameRejected:
                hub.frame_rejected(self, event)  # type: ignore[arg-type]
            else:
                hub.device_message(self, event)
        out = session.data_to_send()  # what flush() does, without its call per read
        if out and not self.closed and self.transport is not None:
            self.transport.write(out)
        if session.is_closed:
            self._close_transport()

    def eof_received(self) -> bool:
        return False  # half-closed devices are gone: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.hub.connection_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.hub.reads_paused:
            self.transport.resume_reading()

    # ------------------------------------------------------------------ used by the hub

    def flush(self) -> None:
        """Write whatever the session queued (challenge, acks, pongs, errors)."""
        if self.closed or self.session is None:
            return
        out = self.session.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def close(self, code: ErrorCode, reason: str) -> None:
        """Tell the device why (ERROR frame), then close once the write buffer drains."""
        if self.closed or self.session is None:
            return
        self.session.close(code, reason)
        self.flush()
        self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.write_paused:
            self.transport.resume_reading()


async def start_tcp_server(
    hub: Hub, sock: socket.socket, *, backlog: int = TCP_BACKLOG
) -> asyncio.Server:
    """Serve devices on a listening socket (gateway/startup.py binds it). The loop listens on
    it again with `backlog`, so this is the backlog the socket keeps (settings.tcp_backlog)."""
    loop = asyncio.get_running_loop()
    set_keepalive(sock)  # inherited by every accepted connection
    return await loop.create_server(lambda: DeviceConnection(hub), sock=sock, backlog=backlog)
