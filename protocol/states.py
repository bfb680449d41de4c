"""Session states, the steps between them, and what each end accepts in each state.

The tables both ends run on, TCP (protocol/server_session.py, protocol/device_session.py) and
MQTT (protocol/mqtt.py): a reader takes every transition in at a glance here.
"""

from __future__ import annotations

from enum import IntEnum

from aquafleet.protocol.constants import FrameType


class SessionState(IntEnum):
    AWAIT_HELLO = 0
    AWAIT_AUTH = 1
    VERIFYING = 2  # AUTH received: the caller looks the device up and verifies the proof
    ONLINE = 3
    CLOSED = 4
    # device side only
    IDLE = 10
    HELLO_SENT = 11
    AUTH_SENT = 12


class Step(IntEnum):
    """What moves a session from one state to the next (closing is allowed from any state)."""

    HELLO_RECEIVED = 1
    AUTH_RECEIVED = 2
    LOGIN_ACCEPTED = 3  # the gateway verified the proof and queued AUTH_OK
    STARTED = 10  # device side: HELLO queued
    CHALLENGE_RECEIVED = 11
    AUTH_OK_RECEIVED = 12


# Every state change but the close, in one place: (state, step) -> next state.
TRANSITIONS: dict[tuple[SessionState, Step], SessionState] = {
    (SessionState.AWAIT_HELLO, Step.HELLO_RECEIVED): SessionState.AWAIT_AUTH,
    (SessionState.AWAIT_AUTH, Step.AUTH_RECEIVED): SessionState.VERIFYING,
    (SessionState.VERIFYING, Step.LOGIN_ACCEPTED): SessionState.ONLINE,
    (SessionState.IDLE, Step.STARTED): SessionState.HELLO_SENT,
    (SessionState.HELLO_SENT, Step.CHALLENGE_RECEIVED): SessionState.AUTH_SENT,
    (SessionState.AUTH_SENT, Step.AUTH_OK_RECEIVED): SessionState.ONLINE,
}

# What each side accepts from its peer, by state. Anything else: ERROR (and a close before login).
SERVER_ACCEPTS: dict[SessionState, frozenset[int]] = {
    SessionState.AWAIT_HELLO: frozenset({FrameType.HELLO}),
    SessionState.AWAIT_AUTH: frozenset({FrameType.AUTH}),
    SessionState.VERIFYING: frozenset(),
    SessionState.ONLINE: frozenset(
        {
            FrameType.PING,
            FrameType.PONG,
            FrameType.TELEMETRY,
            FrameType.EVENT,
            FrameType.RESULT,
            FrameType.ACK,
            FrameType.ERROR,
        }
    ),
    SessionState.CLOSED: frozenset(),
}
DEVICE_ACCEPTS: dict[SessionState, frozenset[int]] = {
    SessionState.IDLE: frozenset(),
    SessionState.HELLO_SENT: frozenset({FrameType.CHALLENGE, FrameType.AUTH_FAIL, FrameType.ERROR}),
    SessionState.AUTH_SENT: frozenset({FrameType.AUTH_OK, FrameType.AUTH_FAIL, FrameType.ERROR}),
    SessionState.ONLINE: frozenset(
        {FrameType.ACK, FrameType.COMMAND, FrameType.PING, FrameType.PONG, FrameType.ERROR}
    ),
    SessionState.CLOSED: frozenset(),
}
# Every frame after the handshake that carries data either side acts on is MACed with the
# session key: AUTH_OK (desired state, watermark), records (billed water), ACKs (the device
# forgets what they cover), COMMANDs and RESULTs. PING, PONG and ERROR carry nothing to forge.
MAC_REQUIRED = frozenset(
    {
        FrameType.AUTH_OK,
        FrameType.TELEMETRY,
        FrameType.EVENT,
        FrameType.COMMAND,
        FrameType.RESULT,
        FrameType.ACK,
    }
)
