"""The typed messages of protocol version 1: frozen dataclasses, one per frame type, and the
bounds their fields keep (protocol/messages.py parses and builds their payload maps). Every field
is an integer with a stated unit, a short text or raw bytes: no floats on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aquafleet.protocol.constants import (
    Encoding,
)

# Counters must stay exact in Redis' Lua (IEEE doubles): 2**53 - 1 ml is 9 billion m3.
MAX_COUNTER = 2**53 - 1
MAX_FILTERS = 16
MAX_REASON_LEN = 128
MAX_ARGS = 16
MIN_TEMPERATURE_DC, MAX_TEMPERATURE_DC = -1000, 2000
MIN_SIGNAL, MAX_SIGNAL = -150, 255
MIN_REMAINING_ML = -MAX_COUNTER  # volume rental may run negative (water poured in flight)

Payload = dict[int, Any]


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    did: str
    fw: str
    client_nonce: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    server_nonce: bytes
    server_time: int


@dataclass(frozen=True, slots=True)
class Auth:
    proof: bytes


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What the platform wants the device to be (AUTH_OK key 9, set_* commands)."""

    version: int = 0
    locked: bool = False
    remaining_ml: int | None = None
    rental_expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class AuthOk:
    proof: bytes
    heartbeat_s: int
    last_acked: tuple[int, int] | None = None
    desired: DesiredState | None = None


@dataclass(frozen=True, slots=True)
class AuthFail:
    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    reason: str = ""
    seq: int | None = None  # the offending frame, when there is one


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Pong:
    seq: int = 0


@dataclass(frozen=True, slots=True)
class FilterReading:
    index: int
    work_h: int
    power_on_h: int
    reset_count: int


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A periodic report. `payload`/`encoding` keep the bytes as received, for the ledger."""

    rec: int
    boot: int
    ts: int
    flow_total_ml: int | None = None
    tds_in_ppm: int | None = None
    tds_out_ppm: int | None = None
    temperature_dc: int | None = None
    filters: tuple[FilterReading, ...] = ()
    fault_bits: int | None = None
    cnt_epoch: int | None = None
    signal: int | None = None
    state_bits: int | None = None
    seq: int = 0
    dup: bool = False
    payload: bytes = field(default=b"", repr=False, compare=False)
    encoding: int = Encoding.MSGPACK


@dataclass(frozen=True, slots=True)
class Event:
    rec: int
    boot: int
    ts: int
    kind: int
    cid: int | None = None
    ml: int | None = None
    flow_total_ml: int | None = None
    cnt_epoch: int | None = None  # optional (key 16); without it: the current epoch
    seq: int = 0
    dup: bool = False
    payload: bytes = field(default=b"", repr=False, compare=False)
    encoding: int = Encoding.MSGPACK


@dataclass(frozen=True, slots=True)
class Command:
    cid: int
    op: int
    exp: int
    args: Mapping[int, int] = field(default_factory=dict)
    seq: int = 0
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    cid: int
    rc: int
    out: int | None = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    rc: int
    watermark: tuple[int, int] | None = None


class Record(NamedTuple):
    """What the gateway meters from a TELEMETRY or EVENT frame, validated on the hot path.

    Only the record header and the counter are checked here; the full message (filters, TDS,
    temperature...) is `parse_message(frame)` or `parse_record_payload(record)`, read by whoever
    needs it (the ledger writer) without slowing acks down.
    """

    frame_type: int
    seq: int
    dup: bool
    rec: int
    boot: int
    ts: int
    flow_total_ml: int | None
    cnt_epoch: int | None
    event_kind: int  # 0 for telemetry
    payload: bytes
    encoding: int
    state_bits: int = -1  # TELEMETRY key 18 when present (the device's reported lock), else -1


Message = (
    Hello
    | Challenge
    | Auth
    | AuthOk
    | AuthFail
    | Error
    | Ping
    | Pong
    | Telemetry
    | Event
    | Command
    | Result
    | Ack
)
