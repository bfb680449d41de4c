"""The protocol's one exception root: hostile bytes never raise anything else."""

from __future__ import annotations

from aquafleet.protocol.constants import ErrorCode


class ProtocolError(Exception):
    """A protocol rule was broken; `code` is what goes into an ERROR/AUTH_FAIL frame."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something invalid (a bug on our side, never the peer's)."""
