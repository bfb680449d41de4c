"""The TCP session layer in one import: both ends, their events and their tables.

Each concern has its own module: protocol/states.py (states, transitions, what each end
accepts), protocol/events.py, protocol/link.py (what both ends share),
protocol/server_session.py (the gateway's end), protocol/device_session.py (the purifier's).
"""

from aquafleet.protocol.device_session import CommandMemory, DeviceSession
from aquafleet.protocol.events import (
    DeviceEvent,
    FrameRejected,
    LoggedIn,
    LoginFailed,
    LoginRequested,
    ServerEvent,
    SessionClosed,
)
from aquafleet.protocol.link import MAX_BAD_FRAMES, NonceSource
from aquafleet.protocol.server_session import (
    DEFAULT_HEARTBEAT_S,
    IDLE_FACTOR,
    LOGIN_TIMEOUT_S,
    ServerSession,
)
from aquafleet.protocol.states import (
    DEVICE_ACCEPTS,
    MAC_REQUIRED,
    SERVER_ACCEPTS,
    TRANSITIONS,
    SessionState,
    Step,
)

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEVICE_ACCEPTS",
    "IDLE_FACTOR",
    "LOGIN_TIMEOUT_S",
    "MAC_REQUIRED",
    "MAX_BAD_FRAMES",
    "SERVER_ACCEPTS",
    "TRANSITIONS",
    "CommandMemory",
    "DeviceEvent",
    "DeviceSession",
    "FrameRejected",
    "LoggedIn",
    "LoginFailed",
    "LoginRequested",
    "NonceSource",
    "ServerEvent",
    "ServerSession",
    "SessionClosed",
    "SessionState",
    "Step",
]
