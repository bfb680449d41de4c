"""Volume rental end to end: a real node, Redis, the database and devices over TCP.

The quota is drawn down in the same Lua step that meters the water; at 0 the device is locked
within a second; water poured in flight takes the balance below 0 and the next top-up pays it off
first; a top-up unlocks the device wherever it is (online: a SET_STATE command; offline: AUTH_OK).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import filters, service
from aquafleet.models.service import ServiceChange, ServiceMode
from aquafleet.protocol import Command, CommandOp, desired_state_from_args
from aquafleet.protocol.constants import StateBit
from aquafleet.protocol.message_types import Result
from tests.devices import TestDevice, register_devices, telemetry

ACTOR = "test-admin"


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(0.05)


async def next_state(device: TestDevice, *, timeout: float = 5.0) -> tuple[Command, Any]:
    """The next SET_STATE the device receives; it answers RESULT ok like firmware would."""
    command = await device.wait_for(Command, timeout=timeout)
    assert command.op == CommandOp.SET_STATE
    device.session.send_result(Result(cid=command.cid, rc=0))
    await device.flush()
    return command, desired_state_from_args(command.args)


async def volume_device(node: Any, device_factory: Any, quota_ml: int, **options: Any):
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    await service.configure(
        store, dev.did, ServiceMode.VOLUME_RENTAL, remaining_ml=quota_ml, actor=ACTOR, **options
    )
    device = device_factory(dev.did, dev.key, node.tcp_port)
    return dev, store, device


async def test_login_carries_the_quota_and_exhaustion_locks_at_once(
    node_factory, device_factory, database_url
):
    node = await node_factory(database_url=database_url)
    dev, store, device = await volume_device(node, device_factory, 1000)
    logged_in = await device.login()
    assert logged_in.desired is not None
    assert logged_in.desired.remaining_ml == 1000 and not logged_in.desired.locked
    version = logged_in.desired.version
    boot = int(time.time())

    await device.send(telemetry(1, boot, 600))
    await device.settled()
    assert (await store.read(dev.did)).remaining_ml == 400

    await device.send(telemetry(2, boot, 1100))  # 500 ml more: the quota runs out
    await device.settled()
    # Bound by events, not the clock: the lock is pushed as the record is metered, so it is
    # on the wire before the node answers the device's next record (no later pass sends it).
    await device.send(telemetry(3, boot, 1100))
    await device.settled()
    assert any(isinstance(e, Command) for e in device.events), device.events
    _command, desired = await next_state(device)
    assert desired.locked and desired.remaining_ml == -100
    assert desired.version == version + 1
    state = await store.read(dev.did)
    assert state.lock_reasons == ["quota_exhausted"]
    # The lock is recorded (by the ledger writer, with the records that caused it), once.
    rows = await eventually(lambda: ServiceChange.filter(did=dev.did, op="quota_lock").all())
    assert [(r.remaining_ml, r.version, r.actor) for r in rows] == [(-100, version + 1, "meter")]


async def test_water_poured_after_the_lock_is_metered_and_paid_off_first(
    node_factory, device_factory
):
    node = await node_factory()
    dev, store, device = await volume_device(node, device_factory, 300)
    await device.login()
    boot = int(time.time())
    await device.send(telemetry(1, boot, 350))
    _, locked = await next_state(device)
    assert locked.locked and locked.remaining_ml == -50
    await device.send(telemetry(2, boot, 420))  # in flight when the lock landed
    await device.settled()
    assert (await store.read(dev.did)).remaining_ml == -120  # no second lock, no loss

    outcome = await service.top_up(store, dev.did, 100, actor=ACTOR, reason="not enough")
    assert outcome.applied and outcome.locked and outcome.remaining_ml == -20
    _, still = await next_state(device)
    assert still.locked and still.remaining_ml == -20  # the debt is paid first

    outcome = await service.top_up(store, dev.did, 1000, actor=ACTOR, reason="order D1")
    assert not outcome.locked and outcome.remaining_ml == 980
    _, unlocked = await next_state(device)
    assert not unlocked.locked and unlocked.remaining_ml == 980
    assert unlocked.version > still.version > locked.version


async def test_duplicate_and_reordered_reports_draw_the_quota_once(node_factory, device_factory):
    node = await node_factory()
    dev, store, device = await volume_device(node, device_factory, 10_000)
    await device.login()
    boot = int(time.time())
    await device.send(telemetry(2, boot, 700))  # arrives before rec 1
    await device.send(telemetry(1, boot, 300))
    await device.send(telemetry(2, boot, 700), dup=True)  # a resend after a lost ack
    await device.settled()
    assert (await store.read(dev.did)).remaining_ml == 10_000 - 700


async def test_top_up_while_offline_reaches_the_device_at_login(node_factory, device_factory):
    node = await node_factory()
    dev, store, device = await volume_device(node, device_factory, 100)
    await device.login()
    boot = int(time.time())
    await device.send(telemetry(1, boot, 150))
    await next_state(device)
    await device.close()
    await eventually(lambda: _offline(node, dev.did))

    await service.top_up(store, dev.did, 5000, actor=ACTOR, request_id="D20261129TEST0001")
    again = device_factory(dev.did, dev.key, node.tcp_port)
    logged_in = await again.login()
    assert logged_in.desired is not None
    assert not logged_in.desired.locked and logged_in.desired.remaining_ml == 4950


async def _offline(node: Any, did: str) -> bool:
    return did not in node.hub.online


async def test_a_retried_top_up_is_applied_and_recorded_once(
    node_factory, device_factory, database_url
):
    node = await node_factory(database_url=database_url)
    dev, store, _device = await volume_device(node, device_factory, 0)
    first, second = await asyncio.gather(
        service.top_up(store, dev.did, 2000, actor=ACTOR, request_id="D20261129TEST0002"),
        service.top_up(store, dev.did, 2000, actor=ACTOR, request_id="D20261129TEST0002"),
    )
    assert sorted([first.applied, second.applied]) == [False, True]
    assert (await store.read(dev.did)).remaining_ml == 2000
    assert await ServiceChange.filter(did=dev.did, op="topup").count() == 1


async def test_low_balance_fires_once_per_crossing(node_factory, device_factory):
    node = await node_factory()
    dev, _store, device = await volume_device(node, device_factory, 1000, low_balance_ml=200)
    await device.login()
    boot = int(time.time())
    for rec, total in enumerate((700, 850, 900), start=1):  # crosses 200 left at 850
        await device.send(telemetry(rec, boot, total))
        await device.settled()
    rows = await eventually(lambda: ServiceChange.filter(did=dev.did, op="low_balance").all())
    # The ledger writer has written the later records too (and whatever they would record).
    await eventually(lambda: _at_least(node.metrics.ledger_records_written, 3))
    rows = await ServiceChange.filter(did=dev.did, op="low_balance").all()
    assert [r.remaining_ml for r in rows] == [150]


async def test_a_device_reporting_the_wrong_lock_is_brought_back_in_line(
    node_factory, device_factory
):
    node = await node_factory()
    _dev, _store, device = await volume_device(node, device_factory, 5000)
    logged_in = await device.login()
    boot = int(time.time())
    # The device says it is locked; the platform wants it unlocked.
    await device.send(telemetry(1, boot, 10, state_bits=StateBit.POWER | StateBit.LOCKED))
    _, desired = await next_state(device)
    assert not desired.locked and desired.version == logged_in.desired.version
    # Reported again at once: not re-sent within the reconcile interval.
    await device.send(telemetry(2, boot, 20, state_bits=StateBit.LOCKED))
    await device.settled()
    assert not [e for e in device.events if isinstance(e, Command)]


async def test_top_up_of_a_device_not_on_volume_rental_is_refused(node_factory):
    import pytest

    from aquafleet.models.errors import Conflict, InvalidInput, NotFound

    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    await service.configure(store, dev.did, ServiceMode.SALE, actor=ACTOR)
    with pytest.raises(Conflict):
        await service.top_up(store, dev.did, 100, actor=ACTOR)
    with pytest.raises(InvalidInput):
        await service.top_up(store, dev.did, 1.5, actor=ACTOR)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await service.top_up(store, dev.did, 0, actor=ACTOR)
    with pytest.raises(NotFound):
        await service.top_up(store, "TEST000000999999", 100, actor=ACTOR)


async def test_a_gateway_restart_mid_flow_loses_and_double_counts_nothing(
    node_factory, device_factory, tmp_path, migrated_sqlite
):
    database = migrated_sqlite(tmp_path / "restart.sqlite3")
    first = await node_factory(database_url=database)
    dev, _store, device = await volume_device(first, device_factory, 1000)
    await device.login()
    boot = int(time.time())
    await device.send(telemetry(1, boot, 400))
    await device.settled()
    # Sent, then the gateway stops before (or after) acking it: the device resends it.
    seq = device.session.send_record(telemetry(2, boot, 700))
    device.sent[seq] = (boot, 2)
    await device.flush()
    await first.stop()

    second = await node_factory(database_url=database)
    again = device_factory(dev.did, dev.key, second.tcp_port)
    logged_in = await again.login()
    acked = logged_in.last_acked
    for rec, total in ((2, 700), (3, 1200)):
        if acked is None or rec > acked[1]:
            await again.send(telemetry(rec, boot, total), dup=rec == 2)
    await again.settled()
    _, desired = await next_state(again)
    assert desired.locked and desired.remaining_ml == -200
    state = await second.app[SERVICE_STORE].read(dev.did)
    assert state.remaining_ml == -200
    rows = await eventually(lambda: ServiceChange.filter(did=dev.did, op="quota_lock").all())
    assert len(rows) == 1


async def test_reset_filter_reaches_the_device_and_is_recorded(node_factory, device_factory):
    import pytest

    from aquafleet.gateway.appkeys import COMMANDS
    from aquafleet.models.vending import DeviceOffline

    node = await node_factory()
    dev, _store, device = await volume_device(node, device_factory, 1000)
    router = node.app[COMMANDS]
    with pytest.raises(DeviceOffline):
        await filters.reset_filter(router, dev.did, 2, actor=ACTOR)
    await device.login()
    cid = await filters.reset_filter(router, dev.did, 2, actor=ACTOR, reason="replaced RO")
    command = await device.wait_for(Command)
    assert (command.cid, command.op, dict(command.args)) == (cid, CommandOp.RESET_FILTER, {1: 2})
    (row,) = await ServiceChange.filter(did=dev.did, op="reset_filter")
    assert row.actor == ACTOR and "replaced RO" in row.reason


async def _at_least(value: int, floor: int) -> bool:
    return value >= floor
