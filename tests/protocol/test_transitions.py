"""The session state machine: every state change walks TRANSITIONS, and nothing else moves it."""

from __future__ import annotations

import itertools

import pytest

from aquafleet.protocol import LocalProtocolError, SessionState
from aquafleet.protocol.session import TRANSITIONS, Step
from tests.protocol.helpers import DEVICE_KEY, NOW, new_device, new_server


def test_a_login_walks_the_table_on_both_sides() -> None:
    server, device = new_server(), new_device()
    seen_server, seen_device = [server.state], [device.state]
    device.start()
    seen_device.append(device.state)
    server.receive_data(device.data_to_send(), NOW)
    seen_server.append(server.state)
    device.receive_data(server.data_to_send(), NOW)
    seen_device.append(device.state)
    server.receive_data(device.data_to_send(), NOW)
    seen_server.append(server.state)
    assert server.verify_login(DEVICE_KEY)
    server.accept_login(now=NOW)
    seen_server.append(server.state)
    device.receive_data(server.data_to_send(), NOW)
    seen_device.append(device.state)
    assert seen_server == [
        SessionState.AWAIT_HELLO, SessionState.AWAIT_AUTH, SessionState.VERIFYING,
        SessionState.ONLINE,
    ]  # fmt: skip
    assert seen_device == [
        SessionState.IDLE,
        SessionState.HELLO_SENT,
        SessionState.AUTH_SENT,
        SessionState.ONLINE,
    ]
    walked = list(itertools.pairwise(seen_server)) + list(itertools.pairwise(seen_device))
    assert sorted(walked) == sorted((state, after) for (state, _), after in TRANSITIONS.items())


@pytest.mark.parametrize("step", [s for s in Step if s is not Step.HELLO_RECEIVED])
def test_a_step_from_the_wrong_state_is_our_error_and_changes_nothing(step: Step) -> None:
    server = new_server()  # AWAIT_HELLO: only HELLO_RECEIVED leads on from here
    with pytest.raises(LocalProtocolError):
        server._advance(step)
    assert server.state is SessionState.AWAIT_HELLO


def test_accept_login_before_the_proof_arrives_is_refused() -> None:
    server = new_server()
    with pytest.raises(LocalProtocolError):
        server.accept_login(now=NOW)
    assert server.state is SessionState.AWAIT_HELLO
