"""The device port as `serve --workers N` binds it: one listening socket per worker sharing the
port (SO_REUSEPORT), which the kernel spreads connections over, and which nobody else joins."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from aquafleet.gateway.startup import (
    PortInUse,
    bind_listeners,
    effective_backlog,
    group_is_ours,
    listen_group,
)
from tests.platform.test_serve_startup import hold_port
from tests.processes import free_port

CONNECTIONS = 60  # a worker left without any of 60 would be a (2/3)**60 chance: never


def test_each_worker_gets_its_own_socket_and_a_share_of_the_connections() -> None:
    listeners = bind_listeners("127.0.0.1", 0, "127.0.0.1", 0, tcp_sockets=3, tcp_backlog=256)
    clients: list[socket.socket] = []
    try:
        ports = {sock.getsockname()[1] for sock in listeners.tcp_sockets}
        assert len(listeners.tcp_sockets) == 3 and len(ports) == 1
        (port,) = ports
        assert [listeners.for_worker(i).tcp for i in range(3)] == list(listeners.tcp_sockets)
        assert listeners.for_worker(2).http is listeners.http
        for _ in range(CONNECTIONS):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        shares = [_accept_all(sock) for sock in listeners.tcp_sockets]
        assert sum(shares) == CONNECTIONS
        assert all(share > 0 for share in shares), shares
    finally:
        for client in clients:
            client.close()
        listeners.close()


def _accept_all(sock: socket.socket) -> int:
    """Accept what the kernel queued on this socket (the handshakes are done: no waiting)."""
    accepted = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return accepted
        conn.close()
        accepted += 1


def test_a_second_serve_cannot_join_the_group() -> None:
    group = listen_group("127.0.0.1", 0, "tcp_port", backlog=16, count=2)
    port = group[0].getsockname()[1]
    try:
        with pytest.raises(PortInUse, match=rf"port {port} is in use \(tcp_port\)"):
            listen_group("127.0.0.1", port, "tcp_port", backlog=16, count=2)
    finally:
        for sock in group:
            sock.close()


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_another_program_listens_on_is_refused(reuse_port: bool) -> None:
    port = free_port()
    holder = hold_port(port, reuse_port=reuse_port)
    try:
        with pytest.raises(PortInUse):
            listen_group("0.0.0.0", port, "tcp_port", backlog=16, count=3)
    finally:
        holder.close()


def test_a_stranger_that_joined_the_group_is_seen() -> None:
    """What a serve starting in the same instant as another one checks after binding."""
    group = listen_group("0.0.0.0", 0, "tcp_port", backlog=16, count=2)
    port = group[0].getsockname()[1]
    try:
        assert group_is_ours(list(group), port)
        stranger = hold_port(port, reuse_port=True)  # same user, SO_REUSEPORT: Linux lets it in
        try:
            assert not group_is_ours(list(group), port)
        finally:
            stranger.close()
        assert group_is_ours(list(group), port)
    finally:
        for sock in group:
            sock.close()


def test_the_backlog_the_kernel_gives_is_capped_at_somaxconn() -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert effective_backlog(somaxconn + 1) == (somaxconn, somaxconn)
    assert effective_backlog(1) == (1, somaxconn)
