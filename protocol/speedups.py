"""Which twin of the frame codec's hot functions runs (aiohttp's `_http_parser` is the model).

protocol/_speedups.c compiles (setup.py, at `pip install`) the per-frame work of the gateway:
the resyncing `FrameDecoder`, `MacKey`, the common case of `parse_record` and the ACK frame of
`ServerSession.ack`, and beside it the MQTT bridge's, the metering round's and the ledger
writer's per-record work (docs/architecture.md lists every twin). The pure-Python code beside
each stays the reference: it runs where the extension was not built (no compiler or no
OpenSSL headers: the install still succeeds) or when `AQUAFLEET_NO_EXTENSIONS=1`, and
tests/protocol/test_speedups.py holds both to the same vectors and to each other.
"""

from __future__ import annotations

import os
from types import ModuleType

DISABLED = os.environ.get("AQUAFLEET_NO_EXTENSIONS", "") not in ("", "0")

compiled: ModuleType | None = None  # the set-up extension, once frames.py has loaded it


def load(frame_cls: type, stats_cls: type) -> ModuleType | None:
    """Import the extension and hand it the Python types it builds (frames.py calls this once
    it has defined them); None where it is disabled or was not built."""
    global compiled
    if DISABLED:
        return None
    try:
        from aquafleet.protocol import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    from aquafleet.protocol.constants import ErrorCode
    from aquafleet.protocol.errors import LocalProtocolError, RemoteProtocolError
    from aquafleet.protocol.message_types import Record

    _speedups.setup(
        frame_cls,
        Record,
        stats_cls,
        RemoteProtocolError,
        LocalProtocolError,
        ErrorCode.BAD_VERSION,
        ErrorCode.BUFFER_OVERFLOW,
    )
    compiled = _speedups
    return compiled


def implementation() -> str:
    """ "compiled" or "python": what the gateway's frames go through (logged at startup)."""
    return "compiled" if compiled is not None else "python"
