"""The same record twice in one metering round (docs/protocol.md 8.2): which copy gets which ACK."""

from __future__ import annotations

import time
from typing import Any

from tests.devices import register_devices, telemetry


async def test_the_first_copy_is_stored_and_the_later_one_is_a_duplicate(
    node_factory: Any, device_factory: Any
) -> None:
    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    boot = int(time.time())
    record = telemetry(1, boot, 100)
    # One write: both copies are read, metered and acked in one round.
    first = device.session.send_record(record)
    again = device.session.send_record(record, dup=True)
    await device.flush()
    acks = {ack.seq: (ack.rc, ack.watermark) for ack in await device.acks(2)}
    assert acks == {first: (0, (boot, 1)), again: (1, (boot, 1))}
    assert node.metrics.records_stored == 1 and node.metrics.records_duplicate == 1
