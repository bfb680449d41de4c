#!/usr/bin/env python3
"""Fuzz target for the wire protocol: decode, or raise ProtocolError, and nothing else.

Coverage-guided, when atheris is installed (libFuzzer flags and corpus directories pass through):

    python fuzz/fuzz_protocol.py -max_len=2048 corpus/

Without atheris, or with --iterations, a bounded random + mutation loop over valid frames:

    python fuzz/fuzz_protocol.py --iterations 200000 --seed 1

The compiled twins of the frame codec (protocol/_speedups.c) must answer as the Python ones on
every input: the decoders, parse_record and parse_telemetry_report are run both ways.

The invariant (as in h11's fuzz/afl-server.py): `FrameDecoder`, `parse_message` and `parse_record`
return results or raise a `ProtocolError`; the sessions' `receive_data` and `check_timers` raise
nothing at all on peer bytes (they turn every peer error into ERROR + `SessionClosed`). Anything
else is a crash: the loop prints the input as hex and exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script from anywhere: the repository root holds the test data it shares with the
# property tests (tests/protocol/helpers.py, tests/protocol/strategies.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import random
import time
from collections.abc import Iterator

from aquafleet.protocol import (
    DeviceSession,
    FrameDecoder,
    LoggedIn,
    LoginFailed,
    ProtocolError,
    ServerSession,
    SessionState,
)
from aquafleet.protocol.constants import MAX_FRAME, MAX_PAYLOAD, ErrorCode, Flag, FrameType
from aquafleet.protocol.crc import crc16_modbus
from aquafleet.protocol.crypto import direction_keys, session_key
from aquafleet.protocol.frames import Frame, PyFrameDecoder, encode_frame, frame_mac
from aquafleet.protocol.message_types import Ack, Command, Message, Record, Result
from aquafleet.protocol.messages import (
    FRAME_TYPE_OF,
    encode_payload,
    message_map,
    parse_message,
    parse_record,
    parse_telemetry_report,
    py_parse_record,
    py_parse_telemetry_report,
)
from aquafleet.protocol.session import MAC_REQUIRED
from tests.protocol.helpers import CLIENT_NONCE, DEVICE_KEY, DID, NOW, SERVER_NONCE

try:  # optional: coverage-guided fuzzing
    import atheris
except ImportError:  # pragma: no cover - depends on the machine
    atheris = None

SESSION_KEY = session_key(DEVICE_KEY, CLIENT_NONCE, SERVER_NONCE)
# Frame MAC keys: K_DS for what a device sends (good at the servers), K_SD for what a server
# sends (good at the devices); each is the wrong key at the other end.
K_DS, K_SD = direction_keys(SESSION_KEY)
WRONG_KEY = session_key(DEVICE_KEY, SERVER_NONCE, CLIENT_NONCE)  # nonces swapped
# Payload mode's MAC keys, picked by the selector byte (see fuzz_one); SESSION_KEY is Ks itself,
# which keys no frame (both directions refuse it).
PAYLOAD_KEYS = (K_DS, K_SD, SESSION_KEY, WRONG_KEY)
POOL_SIZE = 300  # messages drawn per seed for the valid streams
FRAME_TYPES = [int(t) for t in FrameType] + [0x00, 0x55, 0xFF]
# What a session reports only for a frame it took: never for one whose MAC is missing or wrong
# (but LoginFailed(BAD_MAC): the refusal of such an AUTH_OK).
_ACCEPTED = (Record, Result, Ack, Command, LoggedIn, LoginFailed)
MODEM_TEXT = [b"CONNECT OK\r\n", b"+CSQ: 20,0\r\n", b"\r\nCLOSED\r\n", b"AT+CIPSEND\r\n> "]


# --------------------------------------------------------------------------- the target


def _sessions() -> tuple[ServerSession | DeviceSession, ...]:
    """A fresh server, a logged-in server, a device awaiting CHALLENGE, a device awaiting AUTH_OK
    (it knows Ks, so a fuzzed AUTH_OK with a good MAC reaches the proof check), a logged-in device.
    """
    fresh_server = ServerSession(NOW, nonce_source=lambda n: SERVER_NONCE)
    hello_device = DeviceSession(DID, DEVICE_KEY, nonce_source=lambda n: CLIENT_NONCE)
    hello_device.start()
    server = ServerSession(NOW, nonce_source=lambda n: SERVER_NONCE)
    device = DeviceSession(DID, DEVICE_KEY, nonce_source=lambda n: CLIENT_NONCE)
    device.start()
    auth_device = DeviceSession(DID, DEVICE_KEY, nonce_source=lambda n: CLIENT_NONCE)
    auth_device.start()
    server.receive_data(device.data_to_send(), NOW)
    challenge = server.data_to_send()
    device.receive_data(challenge, NOW)
    auth_device.receive_data(challenge, NOW)  # the same nonces: the same Ks as `device`
    server.receive_data(device.data_to_send(), NOW)
    if not server.verify_login(DEVICE_KEY):
        raise AssertionError("fixed login failed")
    server.accept_login(now=NOW)
    device.receive_data(server.data_to_send(), NOW)
    sessions = (fresh_server, server, hello_device, auth_device, device)
    for session in sessions:
        session.data_to_send()
    if auth_device.state is not SessionState.AUTH_SENT or device.state is not SessionState.ONLINE:
        raise AssertionError("fixed login failed")
    return sessions


def _outcome(call: object, *args: object) -> object:
    try:
        return call(*args)  # type: ignore[operator]
    except ProtocolError as exc:
        return (type(exc).__name__, exc.code, exc.reason)


def _decode(data: bytes, chunk: int) -> None:
    """Decode with both twins of the frame codec (protocol/speedups.py): they must agree."""
    decoder, reference = FrameDecoder(), PyFrameDecoder()
    for start in range(0, len(data), chunk):
        decoder.feed(data[start : start + chunk])
        reference.feed(data[start : start + chunk])
        while True:
            frame = _outcome(decoder.next_frame)
            if frame != _outcome(reference.next_frame):
                raise AssertionError("the compiled and the Python decoder differ")
            if frame is None:
                break
            if not isinstance(frame, Frame):
                continue
            for parse, py_parse in ((parse_record, py_parse_record), (parse_message, None)):
                got = _outcome(parse, frame)
                if py_parse is not None and got != _outcome(py_parse, frame):
                    raise AssertionError("the compiled and the Python parse_record differ")
            if frame.type == FrameType.TELEMETRY:
                report = _outcome(parse_telemetry_report, frame.payload, frame.encoding)
                if report != _outcome(py_parse_telemetry_report, frame.payload, frame.encoding):
                    raise AssertionError("the compiled and the Python report parse differ")
        if decoder.buffered >= MAX_FRAME or decoder.buffered != reference.buffered:
            raise AssertionError(f"decoder holds {decoder.buffered} bytes")
        if _counts(decoder.stats) != _counts(reference.stats):
            raise AssertionError("the decoders counted differently")


def _counts(stats: object) -> tuple[int, int, int]:
    return (stats.garbage_bytes, stats.crc_errors, stats.oversize_lengths)  # type: ignore[attr-defined]


def _feed_sessions(data: bytes, chunk: int) -> tuple[list[object], list[object]]:
    """Feed `data` to every session; returns the events of the servers and of the devices."""
    sessions = _sessions()
    server_events: list[object] = []
    device_events: list[object] = []
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        for session in sessions:
            if isinstance(session, ServerSession):
                server_events += session.receive_data(piece, NOW + 1)
            else:
                device_events += session.receive_data(piece, NOW + 1)
    for session in sessions:
        if isinstance(session, ServerSession):
            session.check_timers(NOW + 1000)
        session.data_to_send()
    return server_events, device_events


def _accepted(events: list[object]) -> list[object]:
    return [
        e
        for e in events
        if isinstance(e, _ACCEPTED)
        and not (isinstance(e, LoginFailed) and e.code == ErrorCode.BAD_MAC)
    ]


def fuzz_one(data: bytes) -> None:
    """Run one input through the decoder, the parsers and every kind of session."""
    chunk = (data[0] % 64 + 1) if data else 1
    _decode(data, len(data) or 1)
    _decode(data, chunk)
    _feed_sessions(data, len(data) or 1)
    if len(data) >= 2:
        # Payload mode: the input after two selector bytes becomes the payload of a frame whose
        # CRC holds, so hostile payloads reach the parsers and the online handlers. Byte 0 picks
        # the frame type and (above the type count) the MAC key: K_DS, good at the servers,
        # K_SD, good at the devices, or Ks or another connection's Ks, good nowhere.
        frame_type = FRAME_TYPES[data[0] % len(FRAME_TYPES)]
        key = PAYLOAD_KEYS[data[0] // len(FRAME_TYPES) % len(PAYLOAD_KEYS)]
        flags = data[1]
        payload = data[2 : 2 + MAX_PAYLOAD]
        mac_key = key if flags & Flag.MAC else None
        frame = encode_frame(frame_type, 1, payload, flags=flags, mac_key=mac_key)
        _decode(frame, len(frame))
        server_events, device_events = _feed_sessions(frame, chunk)
        if frame_type in MAC_REQUIRED:
            # A reflected frame (MACed for the other direction) is no better than a forged one.
            for good_key, events in ((K_DS, server_events), (K_SD, device_events)):
                if mac_key != good_key and (accepted := _accepted(events)):
                    raise AssertionError(f"frame without a good MAC accepted: {accepted}")


# --------------------------------------------------------------------------- inputs


def message_pool(seed: int, size: int = POOL_SIZE) -> list[Message]:
    """`size` valid messages drawn from the property tests' own strategies
    (tests/protocol/strategies.py), the same ones for the same seed: one definition of what a
    message may hold serves both."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    from tests.protocol.strategies import messages

    pool: list[Message] = []

    @settings(
        max_examples=size, database=None, deadline=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @fixed_seed(seed)
    @given(messages)
    def draw(message: Message) -> None:
        pool.append(message)

    draw()
    return pool


def random_frame(rng: random.Random, pool: list[Message]) -> bytes:
    """One valid frame: a message of `pool`, a random encoding, flags and seq, MACed with K_DS,
    K_SD or not."""
    message = rng.choice(pool)
    encoding = rng.randrange(2)
    flags = (encoding << Flag.ENCODING_SHIFT) | rng.choice([0, Flag.ACK_REQ, Flag.DUP])
    payload = encode_payload(message_map(message), encoding)
    mac_key = rng.choice((K_DS, K_SD)) if rng.random() < 0.5 else None
    return encode_frame(
        FRAME_TYPE_OF[type(message)], rng.randrange(0x10000), payload, flags=flags, mac_key=mac_key
    )


def _fix_checksums(data: bytearray, mac_key: bytes) -> bytearray:
    """Recompute MAC (with `mac_key`) and CRC of a frame at the start of `data`, when its header
    still parses."""
    if len(data) < 11 or data[:2] != b"\x5a\xa5":
        return data
    length = int.from_bytes(data[7:9], "big")
    end = 9 + length
    if data[4] & Flag.MAC:
        if len(data) < end + 10:
            return data
        data[end : end + 8] = frame_mac(mac_key, bytes(data[2:end]))
        end += 8
    if len(data) < end + 2:
        return data
    data[end : end + 2] = crc16_modbus(bytes(data[2:end])).to_bytes(2, "big")
    return data


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        position = rng.randrange(len(out) + 1)
        kind = rng.randrange(9)
        if kind == 0 and out:
            out[min(position, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[min(position, len(out) - 1)] = rng.choice([0, 0x5A, 0xA5, 0x7F, 0x80, 0xFF])
        elif kind == 2:
            out[position:position] = rng.randbytes(rng.randrange(1, 16))
        elif kind == 3:
            del out[position : position + rng.randrange(1, 16)]
        elif kind == 4:
            del out[position:]
        elif kind == 5:
            out[position:position] = rng.choice([*MODEM_TEXT, b"Z", b"Z\xa5", b"Z\xa5\x01"])
        elif kind == 6:
            out[position:position] = out[position : position + rng.randrange(1, 64)]
        elif kind == 7 and len(out) > 9:
            # a plausible header with a hostile length (oversize or longer than what follows)
            out[7:9] = rng.choice([0, 1, 1024, 1025, 0xFFFF, rng.randrange(0x10000)]).to_bytes(
                2, "big"
            )
        else:
            out = _fix_checksums(out, rng.choice((K_DS, K_SD)))
    if rng.random() < 0.3:
        out = _fix_checksums(out, rng.choice((K_DS, K_SD)))
    return bytes(out)


def payload_input(rng: random.Random, pool: list[Message]) -> bytes:
    """A payload-mode input (see fuzz_one): a valid message map behind its type and key selector
    and random flags, so that well-formed frames with a missing, wrong or good MAC reach the
    sessions.
    """
    message = rng.choice(pool)
    encoding = rng.randrange(2)
    key_index = rng.randrange(len(PAYLOAD_KEYS))
    selector = FRAME_TYPES.index(FRAME_TYPE_OF[type(message)]) + key_index * len(FRAME_TYPES)
    flags = (encoding << Flag.ENCODING_SHIFT) | rng.choice([0, Flag.MAC])
    return bytes([selector, flags]) + encode_payload(message_map(message), encoding)


def generate(seed: int, count: int) -> Iterator[bytes]:
    """`count` inputs: valid streams, mutated streams, modem text mixes, payload-mode inputs and
    random bytes."""
    rng = random.Random(seed)
    pool = message_pool(seed)
    for _ in range(count):
        roll = rng.random()
        stream = b"".join(random_frame(rng, pool) for _ in range(rng.randrange(1, 4)))
        if roll < 0.1:
            yield stream
        elif roll < 0.65:
            yield mutate(stream, rng)
        elif roll < 0.75:
            yield rng.choice(MODEM_TEXT) + stream + rng.choice(MODEM_TEXT)
        elif roll < 0.9:
            yield payload_input(rng, pool)
        else:
            yield rng.randbytes(rng.randrange(0, 300))


# --------------------------------------------------------------------------- drivers


def run_random(iterations: int, seed: int) -> int:
    started = time.perf_counter()
    for index, data in enumerate(generate(seed, iterations)):
        try:
            fuzz_one(data)
        except Exception:
            print(f"crash at input {index} (seed {seed}): {data.hex()}", file=sys.stderr)
            raise
    elapsed = time.perf_counter() - started
    print(f"{iterations} inputs, seed {seed}: ok in {elapsed:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours = any(arg.split("=")[0] in ("--iterations", "--seed", "-h", "--help") for arg in argv)
    if atheris is not None and not ours:  # pragma: no cover - needs atheris
        atheris.instrument_all()
        atheris.Setup([sys.argv[0], *argv], fuzz_one)
        atheris.Fuzz()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run_random(args.iterations, args.seed)


if __name__ == "__main__":
    sys.exit(main())
