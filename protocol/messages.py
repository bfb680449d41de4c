"""Payload maps of protocol version 1 (msgpack or CBOR) to and from the typed messages of
protocol/message_types.py.

`parse_message(frame)` turns a frame into a message or raises `RemoteProtocolError`;
`message_map(message)` and `encode_payload` are the reverse.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, NoReturn

import cbor2
import msgpack

from aquafleet.protocol import speedups
from aquafleet.protocol.constants import (
    MAX_DID_LEN,
    MAX_FW_LEN,
    NONCE_SIZE,
    PROOF_SIZE,
    U8,
    U16,
    U32,
    DesiredKey,
    Encoding,
    ErrorCode,
    Flag,
    FrameType,
    Key,
)
from aquafleet.protocol.errors import LocalProtocolError, RemoteProtocolError
from aquafleet.protocol.frames import Frame
from aquafleet.protocol.message_types import (
    MAX_ARGS,
    MAX_COUNTER,
    MAX_FILTERS,
    MAX_REASON_LEN,
    MAX_SIGNAL,
    MAX_TEMPERATURE_DC,
    MIN_REMAINING_ML,
    MIN_SIGNAL,
    MIN_TEMPERATURE_DC,
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Challenge,
    Command,
    DesiredState,
    Error,
    Event,
    FilterReading,
    Hello,
    Message,
    Payload,
    Ping,
    Pong,
    Record,
    Result,
    Telemetry,
)

# --------------------------------------------------------------------------- payload codecs


def _reject_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def decode_payload(payload: bytes, encoding: int) -> Payload:
    """Decode a payload into its map, or raise RemoteProtocolError; nothing else escapes."""
    if not payload:
        return {}
    try:
        if encoding == Encoding.MSGPACK:
            obj = msgpack.unpackb(
                payload, raw=False, strict_map_key=False, ext_hook=_reject_ext, use_list=True
            )
        elif encoding == Encoding.CBOR:
            # cbor2.loads ignores bytes after the first item; read from a seekable stream, whose
            # position the decoder rewinds to the item's end, and refuse what is left over.
            stream = io.BytesIO(payload)
            obj = cbor2.CBORDecoder(stream).decode()
            trailing = len(payload) - stream.tell()
            if trailing:
                raise RemoteProtocolError(
                    ErrorCode.BAD_PAYLOAD, f"{trailing} bytes after the top-level item"
                )
        else:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_ENCODING, f"encoding {encoding}")
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack/cbor2 raise many kinds on hostile input
        raise RemoteProtocolError(
            ErrorCode.BAD_PAYLOAD, f"undecodable payload ({type(exc).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(ErrorCode.BAD_PAYLOAD, "payload is not a map")
    return obj


_msgpack_packer = msgpack.Packer(use_bin_type=True)


def encode_payload(payload: Payload, encoding: int) -> bytes:
    if encoding == Encoding.MSGPACK:
        return _msgpack_packer.pack(payload)  # type: ignore[no-any-return]
    if encoding == Encoding.CBOR:
        return cbor2.dumps(payload)
    raise LocalProtocolError(ErrorCode.UNKNOWN_ENCODING, f"encoding {encoding}")


# --------------------------------------------------------------------------- field readers


def _bad(key: int, expected: str) -> NoReturn:
    raise RemoteProtocolError(ErrorCode.BAD_PAYLOAD, f"key {key}: expected {expected}")


def _int(m: Payload, key: int, low: int, high: int) -> int:
    value = m.get(key)
    if type(value) is not int or not low <= value <= high:
        _bad(key, f"integer {low}..{high}")
    return value


def _opt_int(m: Payload, key: int, low: int, high: int) -> int | None:
    value = m.get(key)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        _bad(key, f"integer {low}..{high}")
    return value


def _bytes(m: Payload, key: int, size: int) -> bytes:
    value = m.get(key)
    if type(value) is not bytes or len(value) != size:
        _bad(key, f"{size} bytes")
    return value


def _text(m: Payload, key: int, min_len: int, max_len: int) -> str:
    value = m.get(key, "" if min_len == 0 else None)
    if type(value) is not str or not min_len <= len(value) <= max_len:
        _bad(key, f"text of {min_len}..{max_len} characters")
    return value


def _pair(m: Payload, key: int) -> tuple[int, int] | None:
    value = m.get(key)
    if value is None:
        return None
    if (
        type(value) not in (list, tuple)
        or len(value) != 2
        or any(type(v) is not int or not 0 <= v <= U32 for v in value)
    ):
        _bad(key, "[boot, rec] of two u32")
    return value[0], value[1]


def _filter_rows(m: Payload) -> list[list[int]]:
    """Key 9 validated, as the [index, work_h, power_on_h, reset_count] lists decoded."""
    value = m.get(Key.FILTERS)
    if value is None:
        return []
    if type(value) is not list or len(value) > MAX_FILTERS:
        _bad(Key.FILTERS, f"a list of at most {MAX_FILTERS} filters")
    for item in value:
        if type(item) is not list or len(item) != 4:
            _bad(Key.FILTERS, "[index u8, work_h u32, power_on_h u32, reset_count u16]")
        index, work_h, power_on_h, reset_count = item
        if (
            type(index) is not int
            or type(work_h) is not int
            or type(power_on_h) is not int
            or type(reset_count) is not int
            or not 0 <= index <= U8
            or not 0 <= work_h <= U32
            or not 0 <= power_on_h <= U32
            or not 0 <= reset_count <= U16
        ):
            _bad(Key.FILTERS, "[index u8, work_h u32, power_on_h u32, reset_count u16]")
    return value


def _filters(m: Payload) -> tuple[FilterReading, ...]:
    return tuple(FilterReading(*item) for item in _filter_rows(m))


def _desired(m: Payload) -> DesiredState | None:
    value = m.get(Key.DESIRED)
    if value is None:
        return None
    if type(value) is not dict:
        _bad(Key.DESIRED, "a desired-state map")
    locked = _int(value, DesiredKey.LOCK, 0, 1) if DesiredKey.LOCK in value else 0
    return DesiredState(
        version=_int(value, DesiredKey.VERSION, 0, U32),
        locked=bool(locked),
        remaining_ml=_opt_int(value, DesiredKey.REMAINING_ML, MIN_REMAINING_ML, MAX_COUNTER),
        rental_expires_at=_opt_int(value, DesiredKey.RENTAL_EXPIRES_AT, 0, U32),
    )


def _args(m: Payload) -> dict[int, int]:
    value = m.get(Key.ARGS)
    if value is None:
        return {}
    if (
        type(value) is not dict
        or len(value) > MAX_ARGS
        or any(type(k) is not int or type(v) is not int for k, v in value.items())
        or any(not -MAX_COUNTER <= v <= MAX_COUNTER for v in value.values())
    ):
        _bad(Key.ARGS, "a map of integers")
    return value


# --------------------------------------------------------------------------- parsers


def _parse_hello(m: Payload, frame: Frame) -> Hello:
    return Hello(
        did=_text(m, Key.DID, 1, MAX_DID_LEN),
        fw=_text(m, Key.FW, 0, MAX_FW_LEN),
        client_nonce=_bytes(m, Key.CLIENT_NONCE, NONCE_SIZE),
    )


def _parse_challenge(m: Payload, frame: Frame) -> Challenge:
    return Challenge(
        server_nonce=_bytes(m, Key.SERVER_NONCE, NONCE_SIZE),
        server_time=_int(m, Key.SERVER_TIME, 0, U32),
    )


def _parse_auth(m: Payload, frame: Frame) -> Auth:
    return Auth(proof=_bytes(m, Key.PROOF, PROOF_SIZE))


def _parse_auth_ok(m: Payload, frame: Frame) -> AuthOk:
    return AuthOk(
        proof=_bytes(m, Key.SERVER_PROOF, PROOF_SIZE),
        heartbeat_s=_int(m, Key.HEARTBEAT, 1, U16),
        last_acked=_pair(m, Key.LAST_ACKED),
        desired=_desired(m),
    )


def _parse_auth_fail(m: Payload, frame: Frame) -> AuthFail:
    return AuthFail(code=_int(m, Key.CODE, 0, U16), reason=_text(m, Key.REASON, 0, MAX_REASON_LEN))


def _parse_error(m: Payload, frame: Frame) -> Error:
    return Error(
        code=_int(m, Key.CODE, 0, U16),
        reason=_text(m, Key.REASON, 0, MAX_REASON_LEN),
        seq=_opt_int(m, Key.ERROR_SEQ, 0, U16),
    )


def _parse_ping(m: Payload, frame: Frame) -> Ping:
    return Ping(seq=frame.seq)


def _parse_pong(m: Payload, frame: Frame) -> Pong:
    return Pong(seq=frame.seq)


def _parse_telemetry(m: Payload, frame: Frame) -> Telemetry:
    return Telemetry(
        rec=_int(m, Key.REC, 1, U32),
        boot=_int(m, Key.BOOT, 0, U32),
        ts=_int(m, Key.TS, 0, U32),
        flow_total_ml=_opt_int(m, Key.FLOW_TOTAL, 0, MAX_COUNTER),
        tds_in_ppm=_opt_int(m, Key.TDS_IN, 0, U16),
        tds_out_ppm=_opt_int(m, Key.TDS_OUT, 0, U16),
        temperature_dc=_opt_int(m, Key.TEMPERATURE, MIN_TEMPERATURE_DC, MAX_TEMPERATURE_DC),
        filters=_filters(m),
        fault_bits=_opt_int(m, Key.FAULTS, 0, U32),
        cnt_epoch=_opt_int(m, Key.CNT_EPOCH, 0, U32),
        signal=_opt_int(m, Key.SIGNAL, MIN_SIGNAL, MAX_SIGNAL),
        state_bits=_opt_int(m, Key.STATE_BITS, 0, U32),
        seq=frame.seq,
        dup=frame.is_dup,
        payload=frame.payload,
        encoding=frame.encoding,
    )


def _parse_event(m: Payload, frame: Frame) -> Event:
    return Event(
        rec=_int(m, Key.REC, 1, U32),
        boot=_int(m, Key.BOOT, 0, U32),
        ts=_int(m, Key.TS, 0, U32),
        kind=_int(m, Key.EVENT_KIND, 1, U8),
        cid=_opt_int(m, Key.EVENT_CID, 0, U32),
        ml=_opt_int(m, Key.EVENT_ML, 0, U32),
        flow_total_ml=_opt_int(m, Key.EVENT_FLOW_TOTAL, 0, MAX_COUNTER),
        cnt_epoch=_opt_int(m, Key.CNT_EPOCH, 0, U32),
        seq=frame.seq,
        dup=frame.is_dup,
        payload=frame.payload,
        encoding=frame.encoding,
    )


def _parse_command(m: Payload, frame: Frame) -> Command:
    return Command(
        cid=_int(m, Key.CID, 0, U32),
        op=_int(m, Key.OP, 1, U8),
        exp=_int(m, Key.EXP, 0, U32),
        args=_args(m),
        seq=frame.seq,
        dup=frame.is_dup,
    )


def _parse_result(m: Payload, frame: Frame) -> Result:
    return Result(
        cid=_int(m, Key.CID, 0, U32),
        rc=_int(m, Key.RESULT_RC, 0, U8),
        out=_opt_int(m, Key.RESULT_OUT, -MAX_COUNTER, MAX_COUNTER),
        seq=frame.seq,
    )


def _parse_ack(m: Payload, frame: Frame) -> Ack:
    return Ack(
        seq=_int(m, Key.ACK_SEQ, 0, U16),
        rc=_int(m, Key.ACK_RC, 0, U8),
        watermark=_pair(m, Key.ACK_WATERMARK),
    )


_PARSERS: dict[int, Callable[[Payload, Frame], Message]] = {
    FrameType.HELLO: _parse_hello,
    FrameType.CHALLENGE: _parse_challenge,
    FrameType.AUTH: _parse_auth,
    FrameType.AUTH_OK: _parse_auth_ok,
    FrameType.AUTH_FAIL: _parse_auth_fail,
    FrameType.ERROR: _parse_error,
    FrameType.PING: _parse_ping,
    FrameType.PONG: _parse_pong,
    FrameType.TELEMETRY: _parse_telemetry,
    FrameType.EVENT: _parse_event,
    FrameType.COMMAND: _parse_command,
    FrameType.RESULT: _parse_result,
    FrameType.ACK: _parse_ack,
}


def py_parse_record(frame: Frame) -> Record:
    """Decode a TELEMETRY/EVENT frame's header and counter (the reference of parse_record)."""
    return record_from_map(decode_payload(frame.payload, frame.encoding), frame)


_compiled_parse_record = speedups.compiled.parse_record if speedups.compiled else None


def parse_record(frame: Frame) -> Record:
    """Decode a TELEMETRY/EVENT frame's header and counter (the hot path of the gateway).

    The compiled twin takes the common case (msgpack, plain integers) and answers None for
    anything else, which `py_parse_record` then accepts or refuses with its own error."""
    if _compiled_parse_record is not None:
        record: Record | None = _compiled_parse_record(frame)
        if record is not None:
            return record
    return record_from_map(decode_payload(frame.payload, frame.encoding), frame)


def record_from_map(m: Payload, frame: Frame) -> Record:
    """`parse_record` of a payload already decoded into `m` (MQTT decodes it once for its
    envelope keys: not twice)."""
    rec = m.get(Key.REC)
    boot = m.get(Key.BOOT)
    ts = m.get(Key.TS)
    if type(rec) is not int or not 1 <= rec <= U32:
        _bad(Key.REC, "integer 1..4294967295")
    if type(boot) is not int or not 0 <= boot <= U32:
        _bad(Key.BOOT, "integer 0..4294967295")
    if type(ts) is not int or not 0 <= ts <= U32:
        _bad(Key.TS, "integer 0..4294967295")
    if frame.type == FrameType.TELEMETRY:
        total = m.get(Key.FLOW_TOTAL)
        total_key = Key.FLOW_TOTAL
        kind = 0
    elif frame.type == FrameType.EVENT:
        total = m.get(Key.EVENT_FLOW_TOTAL)
        total_key = Key.EVENT_FLOW_TOTAL
        kind = _int(m, Key.EVENT_KIND, 1, U8)
    else:
        raise RemoteProtocolError(ErrorCode.UNEXPECTED_FRAME, "not a record frame")
    state = m.get(Key.STATE_BITS)
    if state is None:
        state = -1
    elif type(state) is not int or not 0 <= state <= U32:
        _bad(Key.STATE_BITS, "integer 0..4294967295")
    epoch = m.get(Key.CNT_EPOCH)
    if epoch is not None and (type(epoch) is not int or not 0 <= epoch <= U32):
        _bad(Key.CNT_EPOCH, "integer 0..4294967295")
    if total is not None and (type(total) is not int or not 0 <= total <= MAX_COUNTER):
        _bad(total_key, f"integer 0..{MAX_COUNTER}")
    return Record(
        frame.type,
        frame.seq,
        bool(frame.flags & Flag.DUP),
        rec,
        boot,
        ts,
        total,
        epoch,
        kind,
        frame.payload,
        frame.encoding,
        state,
    )


def parse_record_payload(frame_type: int, payload: bytes, encoding: int) -> Telemetry | Event:
    """The full, validated message of a record kept as (type, payload, encoding)."""
    frame = Frame(frame_type, encoding << Flag.ENCODING_SHIFT, 0, payload)
    message = parse_message(frame)
    assert isinstance(message, Telemetry | Event)
    return message


class TelemetryReport(NamedTuple):
    """What a device snapshot keeps of a TELEMETRY payload (parse_telemetry_report)."""

    rec: int
    boot: int
    ts: int
    tds_in_ppm: int | None
    tds_out_ppm: int | None
    temperature_dc: int | None
    filters: list[list[int]] | None  # [index, work_h, power_on_h, reset_count]; None: none
    fault_bits: int | None
    signal: int | None
    state_bits: int | None


_REC, _BOOT, _TS = int(Key.REC), int(Key.BOOT), int(Key.TS)
_TDS_IN, _TDS_OUT, _TEMPERATURE = int(Key.TDS_IN), int(Key.TDS_OUT), int(Key.TEMPERATURE)
_FAULTS, _SIGNAL, _STATE_BITS = int(Key.FAULTS), int(Key.SIGNAL), int(Key.STATE_BITS)
_FLOW_TOTAL, _CNT_EPOCH = int(Key.FLOW_TOTAL), int(Key.CNT_EPOCH)


def parse_telemetry_report(payload: bytes, encoding: int) -> TelemetryReport:
    """`py_parse_telemetry_report`, its common case (msgpack, plain values) compiled where the
    extension is in use (protocol/speedups.py): whatever that does not take, the Python path
    accepts or refuses with its own error."""
    if _compiled_report is not None and encoding == Encoding.MSGPACK:
        report: TelemetryReport | None = _compiled_report(payload)
        if report is not None:
            return report
    return py_parse_telemetry_report(payload, encoding)


def py_parse_telemetry_report(payload: bytes, encoding: int) -> TelemetryReport:
    """A TELEMETRY payload validated by the same rules as `parse_message` (it accepts and
    refuses the same payloads: tests/protocol/test_messages.py), without building the message:
    the ledger writer reads every device's newest report of a transaction (at window 1 nearly
    every record), and the frozen Telemetry and its FilterReadings were most of that cost."""
    m = decode_payload(payload, encoding)
    get = m.get
    rec, boot, ts = get(_REC), get(_BOOT), get(_TS)
    tds_in, tds_out, temperature = get(_TDS_IN), get(_TDS_OUT), get(_TEMPERATURE)
    faults, signal, state_bits = get(_FAULTS), get(_SIGNAL), get(_STATE_BITS)
    total, epoch = get(_FLOW_TOTAL), get(_CNT_EPOCH)
    # The common case checked in one expression (a call per field was a third of the time);
    # whatever it does not accept takes the field-by-field path, which raises the right error.
    if (
        type(rec) is int and 1 <= rec <= U32
        and type(boot) is int and 0 <= boot <= U32
        and type(ts) is int and 0 <= ts <= U32
        and (tds_in is None or (type(tds_in) is int and 0 <= tds_in <= U16))
        and (tds_out is None or (type(tds_out) is int and 0 <= tds_out <= U16))
        and (temperature is None or (
            type(temperature) is int and MIN_TEMPERATURE_DC <= temperature <= MAX_TEMPERATURE_DC))
        and (faults is None or (type(faults) is int and 0 <= faults <= U32))
        and (signal is None or (type(signal) is int and MIN_SIGNAL <= signal <= MAX_SIGNAL))
        and (state_bits is None or (type(state_bits) is int and 0 <= state_bits <= U32))
        and (total is None or (type(total) is int and 0 <= total <= MAX_COUNTER))
        and (epoch is None or (type(epoch) is int and 0 <= epoch <= U32))
    ):  # fmt: skip
        return TelemetryReport(
            rec, boot, ts, tds_in, tds_out, temperature, _filter_rows(m) or None, faults,
            signal, state_bits,
        )  # fmt: skip
    return _checked_telemetry_report(m)


_compiled_report = None
if speedups.compiled is not None:
    speedups.compiled.setup_report(TelemetryReport)
    _compiled_report = speedups.compiled.parse_telemetry_report


def _checked_telemetry_report(m: Payload) -> TelemetryReport:
    """parse_telemetry_report field by field: the first bad field raises its error."""
    _opt_int(m, Key.FLOW_TOTAL, 0, MAX_COUNTER)  # validated; the meter's value is what is kept
    _opt_int(m, Key.CNT_EPOCH, 0, U32)
    return TelemetryReport(
        _int(m, Key.REC, 1, U32),
        _int(m, Key.BOOT, 0, U32),
        _int(m, Key.TS, 0, U32),
        _opt_int(m, Key.TDS_IN, 0, U16),
        _opt_int(m, Key.TDS_OUT, 0, U16),
        _opt_int(m, Key.TEMPERATURE, MIN_TEMPERATURE_DC, MAX_TEMPERATURE_DC),
        _filter_rows(m) or None,
        _opt_int(m, Key.FAULTS, 0, U32),
        _opt_int(m, Key.SIGNAL, MIN_SIGNAL, MAX_SIGNAL),
        _opt_int(m, Key.STATE_BITS, 0, U32),
    )


def parse_message(frame: Frame) -> Message:
    """Decode and validate a frame's payload into its typed message."""
    parser = _PARSERS.get(frame.type)
    if parser is None:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, f"frame type 0x{frame.type:02x}")
    return parser(decode_payload(frame.payload, frame.encoding), frame)


# --------------------------------------------------------------------------- builders


def _drop_none(m: dict[int, Any]) -> Payload:
    return {k: v for k, v in m.items() if v is not None}


def _desired_map(desired: DesiredState) -> Payload:
    return _drop_none(
        {
            DesiredKey.LOCK: int(desired.locked),
            DesiredKey.REMAINING_ML: desired.remaining_ml,
            DesiredKey.RENTAL_EXPIRES_AT: desired.rental_expires_at,
            DesiredKey.VERSION: desired.version,
        }
    )


def desired_state_args(desired: DesiredState) -> dict[int, int]:
    """The args of a SET_STATE command: the same map as AUTH_OK key 9."""
    return dict(_desired_map(desired))


def desired_state_from_args(args: Mapping[int, int]) -> DesiredState:
    """A SET_STATE command's args as a DesiredState; raises RemoteProtocolError when invalid."""
    return _desired({Key.DESIRED: dict(args)}) or DesiredState()


def _pair_list(pair: tuple[int, int] | None) -> list[int] | None:
    return None if pair is None else [pair[0], pair[1]]


def _general_map(message: Message) -> Payload:
    match message:
        case Hello():
            return {
                Key.DID: message.did,
                Key.FW: message.fw,
                Key.CLIENT_NONCE: message.client_nonce,
            }
        case Challenge():
            return {Key.SERVER_NONCE: message.server_nonce, Key.SERVER_TIME: message.server_time}
        case Auth():
            return {Key.PROOF: message.proof}
        case AuthOk():
            return _drop_none(
                {
                    Key.SERVER_PROOF: message.proof,
                    Key.HEARTBEAT: message.heartbeat_s,
                    Key.LAST_ACKED: _pair_list(message.last_acked),
                    Key.DESIRED: None if message.desired is None else _desired_map(message.desired),
                }
            )
        case AuthFail():
            return {Key.CODE: message.code, Key.REASON: message.reason}
        case Error():
            return _drop_none(
                {Key.CODE: message.code, Key.REASON: message.reason, Key.ERROR_SEQ: message.seq}
            )
        case Ping() | Pong():
            return {}
        case Telemetry():
            return _drop_none(
                {
                    Key.REC: message.rec,
                    Key.BOOT: message.boot,
                    Key.TS: message.ts,
                    Key.FLOW_TOTAL: message.flow_total_ml,
                    Key.TDS_IN: message.tds_in_ppm,
                    Key.TDS_OUT: message.tds_out_ppm,
                    Key.TEMPERATURE: message.temperature_dc,
                    Key.FILTERS: [
                        [f.index, f.work_h, f.power_on_h, f.reset_count] for f in message.filters
                    ]
                    or None,
                    Key.FAULTS: message.fault_bits,
                    Key.CNT_EPOCH: message.cnt_epoch,
                    Key.SIGNAL: message.signal,
                    Key.STATE_BITS: message.state_bits,
                }
            )
        case Event():
            return _drop_none(
                {
                    Key.REC: message.rec,
                    Key.BOOT: message.boot,
                    Key.TS: message.ts,
                    Key.EVENT_KIND: message.kind,
                    Key.EVENT_CID: message.cid,
                    Key.EVENT_ML: message.ml,
                    Key.EVENT_FLOW_TOTAL: message.flow_total_ml,
                    Key.CNT_EPOCH: message.cnt_epoch,
                }
            )
        case Command():
            return _drop_none(
                {
                    Key.CID: message.cid,
                    Key.OP: message.op,
                    Key.EXP: message.exp,
                    Key.ARGS: dict(message.args) or None,
                }
            )
        case Result():
            return _drop_none(
                {Key.CID: message.cid, Key.RESULT_RC: message.rc, Key.RESULT_OUT: message.out}
            )
        case Ack():
            return _drop_none(
                {
                    Key.ACK_SEQ: message.seq,
                    Key.ACK_RC: message.rc,
                    Key.ACK_WATERMARK: _pair_list(message.watermark),
                }
            )
    raise LocalProtocolError(ErrorCode.UNKNOWN_TYPE, f"not a message: {message!r}")


def _telemetry_map(t: Telemetry) -> Payload:
    """The hot one (every report of every device): no intermediate dict, no None filtering."""
    m: Payload = {Key.REC: t.rec, Key.BOOT: t.boot, Key.TS: t.ts}
    if t.flow_total_ml is not None:
        m[Key.FLOW_TOTAL] = t.flow_total_ml
    if t.tds_in_ppm is not None:
        m[Key.TDS_IN] = t.tds_in_ppm
    if t.tds_out_ppm is not None:
        m[Key.TDS_OUT] = t.tds_out_ppm
    if t.temperature_dc is not None:
        m[Key.TEMPERATURE] = t.temperature_dc
    if t.filters:
        m[Key.FILTERS] = [[f.index, f.work_h, f.power_on_h, f.reset_count] for f in t.filters]
    if t.fault_bits is not None:
        m[Key.FAULTS] = t.fault_bits
    if t.cnt_epoch is not None:
        m[Key.CNT_EPOCH] = t.cnt_epoch
    if t.signal is not None:
        m[Key.SIGNAL] = t.signal
    if t.state_bits is not None:
        m[Key.STATE_BITS] = t.state_bits
    return m


def message_map(message: Message) -> Payload:
    """The payload map of a message (the inverse of the parsers)."""
    if type(message) is Telemetry:
        return _telemetry_map(message)
    return _general_map(message)


FRAME_TYPE_OF: dict[type, FrameType] = {
    Hello: FrameType.HELLO,
    Challenge: FrameType.CHALLENGE,
    Auth: FrameType.AUTH,
    AuthOk: FrameType.AUTH_OK,
    AuthFail: FrameType.AUTH_FAIL,
    Error: FrameType.ERROR,
    Ping: FrameType.PING,
    Pong: FrameType.PONG,
    Telemetry: FrameType.TELEMETRY,
    Event: FrameType.EVENT,
    Command: FrameType.COMMAND,
    Result: FrameType.RESULT,
    Ack: FrameType.ACK,
}
