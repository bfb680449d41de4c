"""The events the sessions hand their caller, and per side every type `receive_data` returns."""

from __future__ import annotations

from dataclasses import dataclass

from aquafleet.protocol.constants import ErrorCode
from aquafleet.protocol.message_types import (
    Ack,
    Command,
    DesiredState,
    Error,
    Pong,
    Record,
    Result,
)


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """AUTH arrived: look the device up, then verify_login / accept_login or reject_login."""

    did: str
    fw: str


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """Device side: the server proved itself and accepted the login."""

    heartbeat_s: int
    server_time: int
    last_acked: tuple[int, int] | None
    desired: DesiredState | None


@dataclass(frozen=True, slots=True)
class LoginFailed:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame was refused (ERROR or a REJECTED ack was queued); the session goes on."""

    code: ErrorCode
    reason: str
    seq: int


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session closed itself: send data_to_send(), then close the transport."""

    code: ErrorCode
    reason: str


# What receive_data returns on each side: these events and the peer's parsed messages.
ServerEvent = LoginRequested | Record | Result | Ack | Error | FrameRejected | SessionClosed
DeviceEvent = LoggedIn | LoginFailed | Ack | Command | Error | Pong | SessionClosed
