"""Test (quality-check) devices, the seed's type 8 (FAQ 4): whatever they are configured with
they pour without a quota or an expiry, and a device over TCP is never locked for water."""

from __future__ import annotations

import time

import pytest

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.devices import Device, DeviceType
from aquafleet.models.service import DeviceService, ServiceMode, UnmeteredDevice
from aquafleet.protocol import Command
from tests.devices import register_devices, telemetry

ACTOR = "test-admin"


async def test_a_test_device_pours_without_quota_and_is_never_locked_for_it(
    database_url, node_factory, device_factory
):  # the database first: it is torn down last, after the node has written the ledger
    node = await node_factory(database_url=database_url)
    store = node.app[SERVICE_STORE]
    qc, rented = await register_devices(node, 2)
    await Device.filter(did=qc.did).update(type=DeviceType.TEST)
    for dev in (qc, rented):  # both configured as a volume rental with 100 ml
        outcome = await service.configure(
            store, dev.did, ServiceMode.VOLUME_RENTAL, remaining_ml=100, actor=ACTOR
        )
    assert (outcome.mode, outcome.remaining_ml) == (3, 100)  # the ordinary one
    state = await store.read(qc.did)
    assert (state.mode, state.remaining_ml, state.rental_expires_at, state.lock_bits) == (
        8, None, None, 0,
    )  # fmt: skip
    assert (await DeviceService.get(did=qc.did)).mode is ServiceMode.TEST
    for change in (
        lambda: service.top_up(store, qc.did, 1000, actor=ACTOR),
        lambda: service.extend_rental(store, qc.did, days=30, actor=ACTOR),
        lambda: service.set_expiry(store, qc.did, int(time.time()) + 60, actor=ACTOR),
    ):
        with pytest.raises(UnmeteredDevice, match="type 8"):
            await change()

    boot = int(time.time())
    devices = {}
    for dev in (qc, rented):
        devices[dev.did] = device = device_factory(dev.did, dev.key, node.tcp_port)
        await device.login()
        await device.send(telemetry(1, boot, 600))  # six times the 100 ml
        await device.settled()
        await device.send(telemetry(2, boot, 5000))
        await device.settled()
    # The ordinary device was locked as the first record was metered; the test device never.
    assert any(isinstance(e, Command) for e in devices[rented.did].events)
    assert (await store.read(rented.did)).lock_bits == 1
    assert not any(isinstance(e, Command) for e in devices[qc.did].events)
    after = await store.read(qc.did)
    assert (after.lock_bits, after.remaining_ml) == (0, None)
    # A person's lock still holds on a test device.
    locked = await service.lock(store, qc.did, actor=ACTOR, reason="qc failed")
    assert locked.locked and locked.lock_bits == 4
