"""The fuzz entry point (fuzz/fuzz_protocol.py) holds its invariant on a bounded run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_protocol.py"


@pytest.fixture(scope="module")
def fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_protocol", FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_one_on_generated_inputs(fuzz: ModuleType) -> None:
    count = 0
    for data in fuzz.generate(seed=2024, count=2500):
        fuzz.fuzz_one(data)
        count += 1
    assert count == 2500


def test_fuzz_one_on_edge_inputs(fuzz: ModuleType) -> None:
    for data in [b"", b"\x5a", b"\x5a\xa5", b"\x5a\xa5\x01" + b"\xff" * 6, bytes(range(256)) * 8]:
        fuzz.fuzz_one(data)


def test_generated_inputs_are_deterministic(fuzz: ModuleType) -> None:
    assert list(fuzz.generate(seed=5, count=50)) == list(fuzz.generate(seed=5, count=50))


def test_random_frames_are_valid(fuzz: ModuleType) -> None:
    import random

    from tests.protocol.helpers import decode_all

    rng = random.Random(3)
    pool = fuzz.message_pool(3, size=100)
    assert len({type(message) for message in pool}) >= 10  # the strategies' every kind, nearly
    for _ in range(200):
        data = fuzz.random_frame(rng, pool)
        assert len(decode_all(data)) == 1


def test_payload_mode_keys_each_reach_one_side(fuzz: ModuleType) -> None:
    """The target's direction keys are the sessions': K_DS gets a record into the servers only,
    K_SD an ACK into the devices only, and Ks (no direction) into nobody."""
    from aquafleet.protocol import Ack, FrameType
    from aquafleet.protocol.message_types import Record
    from aquafleet.protocol.messages import encode_payload

    record = encode_payload({0: 1, 1: 7, 2: 1_700_000_000, 10: 5}, 0)
    ack = encode_payload({0: 2, 1: 0, 2: [7, 1]}, 0)
    cases = [
        (FrameType.TELEMETRY, record, fuzz.K_DS, Record, (1, 0)),
        (FrameType.TELEMETRY, record, fuzz.K_SD, Record, (0, 0)),
        (FrameType.ACK, ack, fuzz.K_SD, Ack, (0, 1)),
        (FrameType.ACK, ack, fuzz.K_DS, Ack, (1, 0)),  # a delivery ack, at the logged-in server
        (FrameType.ACK, ack, fuzz.SESSION_KEY, Ack, (0, 0)),
    ]
    for frame_type, payload, key, kind, expected in cases:
        frame = fuzz.encode_frame(frame_type, 1, payload, mac_key=key)
        server_events, device_events = fuzz._feed_sessions(frame, len(frame))
        taken = tuple(sum(isinstance(e, kind) for e in ev) for ev in (server_events, device_events))
        assert taken == expected, (FrameType(frame_type).name, key.hex()[:8])


def test_command_line_runs_without_atheris() -> None:
    result = subprocess.run(
        [sys.executable, str(FUZZ), "--iterations", "100", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "100 inputs, seed 7: ok" in result.stdout
