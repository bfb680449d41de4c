"""Vending: scan to dispense, charged for what was actually poured, exactly once."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from aquafleet.gateway.appkeys import COMMANDS, SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.service import ServiceMode
from aquafleet.models.vending import (
    DeviceOffline,
    DispenseSession,
    DispenseState,
    charge_fen,
    expire_dispenses,
    start_dispense,
)
from aquafleet.protocol import Command, CommandOp, EventKind
from aquafleet.protocol.message_types import Event, Result
from tests.devices import TestDevice, register_devices
from tests.metering.test_volume_rental import ACTOR, eventually

PRICE = 150  # fen per litre (1.50 yuan)


async def vending_machine(node: Any, device_factory: Any) -> tuple[Any, TestDevice]:
    (dev,) = await register_devices(node, 1)
    await service.configure(node.app[SERVICE_STORE], dev.did, ServiceMode.VENDING, actor=ACTOR)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    return dev, device


async def pour(device: TestDevice, command: Command, ml: int, rec: int, total: int) -> None:
    """What firmware does: answer the command, pour, report dispense_done with the counter."""
    device.session.send_result(Result(cid=command.cid, rc=0, out=ml))
    await device.flush()
    done = Event(rec=rec, boot=7, ts=int(time.time()), kind=EventKind.DISPENSE_DONE,
                 cid=command.cid, ml=ml, flow_total_ml=total)  # fmt: skip
    await device.send(done)
    await device.settled()


async def closed(session_id: int) -> DispenseSession | None:
    session = await DispenseSession.get(id=session_id)
    return session if session.state is not DispenseState.PENDING else None


def test_the_charge_is_whole_fen_rounded_half_up() -> None:
    assert charge_fen(0, PRICE) == 0
    assert charge_fen(1000, PRICE) == 150
    assert charge_fen(243, PRICE) == 36  # 36.45 fen
    assert charge_fen(250, PRICE) == 38  # 37.5 fen: half a fen up
    assert charge_fen(3, 1) == 0


async def test_a_pour_is_charged_for_the_actual_ml_once(node_factory, device_factory, database_url):
    node = await node_factory(database_url=database_url)
    dev, device = await vending_machine(node, device_factory)
    await device.login()
    router = node.app[COMMANDS]
    session = await start_dispense(
        router, node.app[SERVICE_STORE], dev.did, 250, price_fen_per_l=PRICE, payer_uid="M1"
    )
    command = await device.wait_for(Command)
    assert command.op == CommandOp.DISPENSE and dict(command.args) == {1: 250}
    assert command.cid == session.cid

    await pour(device, command, 243, rec=1, total=243)  # the cup was full at 243 ml
    done = await eventually(lambda: closed(session.id))
    assert (done.state, done.actual_ml, done.charge_fen) == (DispenseState.DONE, 243, 36)

    # The same event resent (a lost ack) is deduplicated; a replay of it changes nothing.
    await device.send(
        Event(rec=1, boot=7, ts=int(time.time()), kind=EventKind.DISPENSE_DONE,
              cid=command.cid, ml=243, flow_total_ml=243),
        dup=True,
    )  # fmt: skip
    await device.settled()
    again = await DispenseSession.get(id=session.id)
    assert (again.actual_ml, again.charge_fen, again.late_ml) == (243, 36, None)


async def test_a_device_offline_fails_at_once_and_charges_nothing(node_factory, device_factory):
    node = await node_factory()
    dev, _device = await vending_machine(node, device_factory)
    with pytest.raises(DeviceOffline):
        await start_dispense(
            node.app[COMMANDS], node.app[SERVICE_STORE], dev.did, 300, price_fen_per_l=PRICE
        )
    (session,) = await DispenseSession.filter(did=dev.did)
    assert session.state is DispenseState.FAILED and session.charge_fen is None


async def test_no_result_by_the_deadline_fails_and_a_late_pour_is_not_charged(
    node_factory, device_factory
):
    node = await node_factory()
    dev, device = await vending_machine(node, device_factory)
    await device.login()
    session = await start_dispense(
        node.app[COMMANDS],
        node.app[SERVICE_STORE],
        dev.did,
        500,
        price_fen_per_l=PRICE,
        timeout_s=5,
    )
    command = await device.wait_for(Command)
    failed = await expire_dispenses(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6))
    assert failed == 1
    await pour(device, command, 500, rec=1, total=500)  # too late
    late = await eventually(lambda: _late(session.id))
    assert (late.state, late.charge_fen, late.late_ml) == (DispenseState.FAILED, None, 500)


async def _late(session_id: int) -> DispenseSession | None:
    session = await DispenseSession.get(id=session_id)
    return session if session.late_ml is not None else None


async def test_only_vending_machines_dispense(node_factory, device_factory):
    from aquafleet.models.errors import Conflict, InvalidInput

    node = await node_factory()
    (dev,) = await register_devices(node, 1)
    router = node.app[COMMANDS]
    with pytest.raises(Conflict):
        await start_dispense(router, node.app[SERVICE_STORE], dev.did, 100, price_fen_per_l=PRICE)
    await service.configure(node.app[SERVICE_STORE], dev.did, ServiceMode.VENDING, actor=ACTOR)
    with pytest.raises(InvalidInput):
        await start_dispense(router, node.app[SERVICE_STORE], dev.did, 0, price_fen_per_l=PRICE)
    with pytest.raises(InvalidInput):
        await start_dispense(router, node.app[SERVICE_STORE], dev.did, 100, price_fen_per_l=1.5)  # type: ignore[arg-type]
