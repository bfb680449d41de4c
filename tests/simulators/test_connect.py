"""The simulator's TCP connect: done inside connect() when it can, waited for when it cannot."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from aquafleet.simulators.fleet import _bound_socket, _connect_completed, _connected_at_once


def _listener(backlog: int) -> tuple[socket.socket, tuple[str, int]]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(backlog)
    return server, server.getsockname()


async def test_a_connect_the_listener_has_room_for_is_complete_at_once() -> None:
    server, address = _listener(8)
    sock = _bound_socket("127.0.0.1")
    try:
        assert _connected_at_once(sock, address)
        sock.send(b"HELLO")  # connected: the bytes go out without waiting for anything
        peer, _ = server.accept()
        assert peer.recv(5) == b"HELLO"
        peer.close()
    finally:
        sock.close()
        server.close()


def test_a_bound_socket_is_non_blocking_from_its_creation() -> None:
    sock = _bound_socket("127.0.0.1")
    try:
        assert not sock.getblocking()  # an event loop's connect never waits in the kernel
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


async def test_a_connect_asked_about_again_after_it_completed_is_still_complete() -> None:
    """The second connect() says EISCONN once the first answer was 0: still connected."""
    server, address = _listener(8)
    sock = _bound_socket("127.0.0.1")
    try:
        assert _connected_at_once(sock, address)
        assert sock.connect_ex(address) == errno.EISCONN
        peer, _ = server.accept()
        peer.close()
    finally:
        sock.close()
        server.close()


async def test_a_refused_connect_fails_with_its_errno() -> None:
    server, address = _listener(1)
    server.close()  # nobody listens there any more
    sock = _bound_socket("127.0.0.1")
    try:
        with pytest.raises(OSError) as raised:
            if not _connected_at_once(sock, address):
                await _connect_completed(asyncio.get_running_loop(), sock)
        assert raised.value.errno == errno.ECONNREFUSED
    finally:
        sock.close()


async def test_a_connect_queued_behind_a_full_listener_completes_once_it_accepts() -> None:
    """A storm's overflow: the kernel drops the SYN, the connect waits for a retransmission."""
    server, address = _listener(0)
    loop = asyncio.get_running_loop()
    fillers: list[socket.socket] = []
    sock = _bound_socket("127.0.0.1")
    try:
        for _ in range(8):  # fill the accept queue (its size is the backlog + 1 on Linux)
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex(address)
        assert not _connected_at_once(sock, address)
        server.setblocking(False)
        accepted = []

        def accept_all() -> None:
            try:
                while True:
                    accepted.append(server.accept()[0])
            except BlockingIOError:
                pass

        loop.add_reader(server.fileno(), accept_all)
        try:
            async with asyncio.timeout(30):
                await _connect_completed(loop, sock)
        finally:
            loop.remove_reader(server.fileno())
        sock.send(b"AUTH")
        for peer in accepted:
            peer.close()
    finally:
        sock.close()
        for filler in fillers:
            filler.close()
        server.close()
