"""aquafleet wire protocol v1, sans-IO: bytes in, typed events out; no sockets, no clocks."""

from aquafleet.protocol.constants import (
    MAX_PAYLOAD,
    AckCode,
    CommandOp,
    Encoding,
    ErrorCode,
    EventKind,
    FrameType,
    ResultCode,
)
from aquafleet.protocol.crypto import derive_device_key
from aquafleet.protocol.device_session import CommandMemory, DeviceSession
from aquafleet.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from aquafleet.protocol.events import (
    FrameRejected,
    LoggedIn,
    LoginFailed,
    LoginRequested,
    SessionClosed,
)
from aquafleet.protocol.frames import Frame, FrameDecoder, encode_frame
from aquafleet.protocol.message_types import (
    Ack,
    Command,
    DesiredState,
    Error,
    Event,
    FilterReading,
    Result,
    Telemetry,
)
from aquafleet.protocol.messages import (
    decode_payload,
    desired_state_args,
    desired_state_from_args,
    parse_message,
)
from aquafleet.protocol.server_session import ServerSession
from aquafleet.protocol.states import SessionState

__all__ = [
    "MAX_PAYLOAD",
    "Ack",
    "AckCode",
    "Command",
    "CommandMemory",
    "CommandOp",
    "DesiredState",
    "DeviceSession",
    "Encoding",
    "Error",
    "ErrorCode",
    "Event",
    "EventKind",
    "FilterReading",
    "Frame",
    "FrameDecoder",
    "FrameRejected",
    "FrameType",
    "LocalProtocolError",
    "LoggedIn",
    "LoginFailed",
    "LoginRequested",
    "ProtocolError",
    "RemoteProtocolError",
    "Result",
    "ResultCode",
    "ServerSession",
    "SessionClosed",
    "SessionState",
    "Telemetry",
    "decode_payload",
    "derive_device_key",
    "desired_state_args",
    "desired_state_from_args",
    "encode_frame",
    "parse_message",
]
