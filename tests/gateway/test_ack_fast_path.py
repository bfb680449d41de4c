"""The gateway's ACKs of stored records take the compiled encoder where it is built (issue 20):
the Python encoder is the reference and the fallback, not the common case."""

from __future__ import annotations

import time
from typing import Any

import pytest

from aquafleet.protocol import FrameType, server_session, speedups
from tests.devices import register_devices, telemetry

pytestmark = pytest.mark.skipif(
    speedups.compiled is None, reason="extension switched off (AQUAFLEET_NO_EXTENSIONS)"
)


async def test_acks_of_a_metering_round_are_encoded_by_the_compiled_path(
    node_factory: Any, device_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    python_acks: list[int] = []
    reference = server_session.encode_frame

    def counting_encode_frame(frame_type: int, *args: Any, **kwargs: Any) -> bytes:
        if frame_type == FrameType.ACK:
            python_acks.append(frame_type)
        return reference(frame_type, *args, **kwargs)

    monkeypatch.setattr(server_session, "encode_frame", counting_encode_frame)
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    boot = int(time.time())
    # One record alone (window 1), then three in one write: acked by the last one's watermark.
    first = device.session.send_record(telemetry(1, boot, 100))
    await device.flush()
    (ack,) = await device.acks(1)
    assert (ack.seq, ack.rc, ack.watermark) == (first, 0, (boot, 1))
    for rec in (2, 3, 4):
        last = device.session.send_record(telemetry(rec, boot, 100 + rec))
    await device.flush()
    (ack,) = await device.acks(1)
    assert (ack.seq, ack.rc, ack.watermark) == (last, 0, (boot, 4))
    assert python_acks == []
