"""Hypothesis strategies: valid messages of every type, and hostile payload objects."""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import msgpack
from hypothesis import strategies as st

from aquafleet.protocol.constants import U8, U16, U32, Flag
from aquafleet.protocol.frames import Frame, encode_frame
from aquafleet.protocol.message_types import (
    MAX_COUNTER,
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
    Ping,
    Pong,
    Result,
    Telemetry,
)
from aquafleet.protocol.messages import FRAME_TYPE_OF, encode_payload, message_map

u8 = st.integers(0, U8)
u16 = st.integers(0, U16)
u32 = st.integers(0, U32)
counter = st.integers(0, MAX_COUNTER)
signed_counter = st.integers(-MAX_COUNTER, MAX_COUNTER)
nonce = st.binary(min_size=8, max_size=8)
proof = st.binary(min_size=32, max_size=32)
reason = st.text(max_size=128)
pair = st.none() | st.tuples(u32, u32)
rec = st.integers(1, U32)  # records count from 1 after each boot


def opt(strategy: st.SearchStrategy[int]) -> st.SearchStrategy[int | None]:
    return st.none() | strategy


desired_states = st.builds(
    DesiredState,
    version=u32,
    locked=st.booleans(),
    remaining_ml=opt(signed_counter),
    rental_expires_at=opt(u32),
)
filters = st.lists(st.builds(FilterReading, u8, u32, u32, u16), max_size=16).map(tuple)

MESSAGES: dict[type, st.SearchStrategy[Message]] = {
    Hello: st.builds(
        Hello, did=st.text(min_size=1, max_size=32), fw=st.text(max_size=32), client_nonce=nonce
    ),
    Challenge: st.builds(Challenge, server_nonce=nonce, server_time=u32),
    Auth: st.builds(Auth, proof=proof),
    AuthOk: st.builds(
        AuthOk,
        proof=proof,
        heartbeat_s=st.integers(1, U16),
        last_acked=pair,
        desired=st.none() | desired_states,
    ),
    AuthFail: st.builds(AuthFail, code=u16, reason=reason),
    Error: st.builds(Error, code=u16, reason=reason, seq=opt(u16)),
    Ping: st.builds(Ping, seq=u16),
    Pong: st.builds(Pong, seq=u16),
    Telemetry: st.builds(
        Telemetry,
        rec=rec,
        boot=u32,
        ts=u32,
        flow_total_ml=opt(counter),
        tds_in_ppm=opt(u16),
        tds_out_ppm=opt(u16),
        temperature_dc=opt(st.integers(-1000, 2000)),
        filters=filters,
        fault_bits=opt(u32),
        cnt_epoch=opt(u32),
        signal=opt(st.integers(-150, 255)),
        state_bits=opt(u32),
        seq=u16,
        dup=st.booleans(),
    ),
    Event: st.builds(
        Event,
        rec=rec,
        boot=u32,
        ts=u32,
        kind=st.integers(1, U8),
        cid=opt(u32),
        ml=opt(u32),
        flow_total_ml=opt(counter),
        seq=u16,
        dup=st.booleans(),
    ),
    Command: st.builds(
        Command,
        cid=u32,
        op=st.integers(1, U8),
        exp=u32,
        args=st.dictionaries(st.integers(0, 255), signed_counter, max_size=16),
        seq=u16,
        dup=st.booleans(),
    ),
    Result: st.builds(Result, cid=u32, rc=u8, out=opt(signed_counter), seq=u16),
    Ack: st.builds(Ack, seq=u16, rc=u8, watermark=pair),
}
messages = st.one_of(*MESSAGES.values())

# Messages whose `seq` (and `dup`) come from the frame header rather than the payload.
FRAME_SEQ = (Ping, Pong, Telemetry, Event, Command, Result)
FRAME_DUP = (Telemetry, Event, Command)
WITH_ENCODING = (Telemetry, Event)


def with_encoding(message: Message, encoding: int) -> Message:
    if isinstance(message, WITH_ENCODING):
        return dataclasses.replace(message, encoding=encoding)
    return message


def frame_of(message: Message, encoding: int) -> Frame:
    """The frame a sender would build for `message` (seq and DUP from the message)."""
    seq = message.seq if isinstance(message, FRAME_SEQ) else 0
    flags = encoding << Flag.ENCODING_SHIFT
    if isinstance(message, FRAME_DUP) and message.dup:
        flags |= Flag.DUP
    payload = encode_payload(message_map(message), encoding)
    return Frame(FRAME_TYPE_OF[type(message)], flags, seq, payload)


def wire_of(message: Message, encoding: int, mac_key: bytes | None = None) -> bytes:
    frame = frame_of(message, encoding)
    return encode_frame(frame.type, frame.seq, frame.payload, flags=frame.flags, mac_key=mac_key)


# --------------------------------------------------------------------------- hostile objects

EDGE_INTS = [0, -1, 1, U8, U16, U32, U32 + 1, 2**53 - 1, 2**53, 2**63 - 1, 2**64 - 1, -(2**63)]
small_keys = st.integers(-3, 40)
CBOR_TAGS = [0, 1, 2, 3, 4, 5, 24, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004]
CBOR_TAGS += [55799, 1234567]


def _ints(cbor: bool) -> st.SearchStrategy[int]:
    # msgpack holds -2**63 .. 2**64-1; CBOR any size (bignum tags 2 and 3).
    wide = st.integers() if cbor else st.integers(-(2**63), 2**64 - 1)
    edges = [*EDGE_INTS, 2**64, -(2**64) - 1, 10**40] if cbor else EDGE_INTS
    return wide | st.sampled_from(edges)


def objects(*, cbor: bool) -> st.SearchStrategy[object]:
    """Arbitrary msgpack- or CBOR-encodable trees (CBOR with tags, msgpack with ext types)."""
    ints = _ints(cbor)
    keys: st.SearchStrategy[Any] = st.one_of(
        st.none(), st.booleans(), small_keys, ints, st.floats(), st.text(max_size=8)
    )
    keys = keys | st.binary(max_size=8)
    base: st.SearchStrategy[Any] = (
        st.none()
        | st.booleans()
        | ints
        | st.floats()
        | st.text(max_size=40)
        | st.binary(max_size=40)
    )
    if cbor:
        base = base | st.builds(cbor2.CBORTag, st.sampled_from(CBOR_TAGS), base)
    else:
        base = (
            base
            | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
            | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 10**9 - 1))
        )

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        containers: st.SearchStrategy[Any] = st.lists(children, max_size=5) | st.dictionaries(
            keys, children, max_size=5
        )
        if cbor:
            containers = containers | st.builds(cbor2.CBORTag, st.sampled_from(CBOR_TAGS), children)
        return containers

    return st.recursive(base, extend, max_leaves=12)


def payload_maps(*, cbor: bool) -> st.SearchStrategy[object]:
    """Mostly maps with the protocol's small integer keys and hostile values; sometimes anything."""
    keyed = st.dictionaries(small_keys, objects(cbor=cbor), max_size=10)
    return keyed | objects(cbor=cbor)
