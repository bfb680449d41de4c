"""Commands whose device moves between nodes: a final command is never sent again by any node,
a rerouted command carries DUP (real Redis, two in-process nodes, real TCP devices)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from aquafleet.api.commands import command_out
from aquafleet.gateway.appkeys import COMMANDS, KEYSPACE, REDIS, SCRIPTS, SERVICE_STORE
from aquafleet.gateway.commands import CommandEvents, CommandState
from aquafleet.models import service
from aquafleet.models.service import ServiceMode
from aquafleet.protocol import Command, CommandOp, EventKind
from aquafleet.protocol.message_types import Event, Result
from tests.devices import TestDevice, register_devices, telemetry
from tests.gateway.test_commands import state_of
from tests.metering.test_volume_rental import ACTOR, eventually

pytestmark = pytest.mark.usefixtures("redis_client")


async def next_command(device: TestDevice, seconds: float) -> Command | None:
    """The next command the device receives within `seconds`, if any."""
    try:
        return await device.wait_for(Command, timeout=seconds)  # type: ignore[no-any-return]
    except TimeoutError:
        return None


async def test_a_command_finished_on_another_node_is_never_sent_again(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    """Dispense X on A, acked and poured; the link drops before the RESULT; the device logs in
    on B, where X is rerouted and succeeds; back on A (rebooted: it remembers no cid), A must
    not send X again, or the device would pour twice."""
    node_a = await node_factory(database_url=sqlite_url)
    node_b = await node_factory(database_url=sqlite_url, rental_scheduler=False)
    commands = node_a.app[COMMANDS]
    (dev,) = await register_devices(node_a, 1)

    on_a = device_factory(dev.did, dev.key, node_a.tcp_port)
    await on_a.login()
    cid, _ = await commands.issue(dev.did, CommandOp.DISPENSE, {1: 250}, timeout_s=60)
    assert (await on_a.wait_for(Command)).cid == cid
    await state_of(node_a, dev.did, cid, CommandState.DELIVERED)
    on_a.abort()  # it pours, and the link drops before its RESULT

    on_b = device_factory(dev.did, dev.key, node_b.tcp_port)
    await on_b.login()
    rerouted = await on_b.wait_for(Command, timeout=5.0)
    # A copy of a command sent before: DUP, as every resend (docs/commands.md).
    assert (rerouted.cid, rerouted.dup, dict(rerouted.args)) == (cid, True, {1: 250})
    on_b.session.send_result(Result(cid=cid, rc=0, out=250))
    await on_b.flush()
    record = await commands.wait(dev.did, cid, 5.0)
    assert (record.state, record.out) == (CommandState.SUCCEEDED, 250)
    await on_b.close()

    again_on_a = device_factory(dev.did, dev.key, node_a.tcp_port)
    await again_on_a.login()
    # A resends at once on a new link, and again after 10 s on the same one: wait past both
    # a few resend ticks (1 s each) without reading anything.
    assert await next_command(again_on_a, 4.0) is None
    assert (await commands.get(dev.did, cid)).state is CommandState.SUCCEEDED


@pytest.fixture
def quick_resends(monkeypatch: pytest.MonkeyPatch) -> None:
    from aquafleet.gateway import command_sender

    monkeypatch.setattr(command_sender, "RESEND_AFTER_S", 0.5)  # 10 s in production


async def test_a_timed_resend_carries_dup_and_stops_once_the_command_is_final_elsewhere(
    node_factory: Any, device_factory: Any, sqlite_url: str, quick_resends: None
) -> None:
    """No RESULT: the node resends on the same link, DUP. Once the command is final in the log
    (its RESULT recorded by another node, as an MQTT bridge may), no copy follows."""
    node = await node_factory(database_url=sqlite_url)
    commands = node.app[COMMANDS]
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    cid, _ = await commands.issue(dev.did, CommandOp.REBOOT, {}, timeout_s=60)
    first = await device.wait_for(Command)
    assert (first.cid, first.dup) == (cid, False)
    again = await device.wait_for(Command, timeout=3.0)
    assert (again.cid, again.dup) == (cid, True)

    elsewhere = CommandEvents(node.app[REDIS], node.app[SCRIPTS], node.app[KEYSPACE])
    elsewhere.result(dev.did, cid, 0, None)  # another node heard the device's RESULT
    await elsewhere.flush()
    assert (await commands.get(dev.did, cid)).state is CommandState.SUCCEEDED
    # The next resend was due 1 s after the second copy; wait past it (and a tick or two).
    assert await next_command(device, 3.0) is None


async def test_a_lock_while_the_devices_node_is_dead_stays_queued(
    node_factory: Any, device_factory: Any, sqlite_url: str, redis_client: Any
) -> None:
    """The presence still names a node that died (it outlives it by up to the idle timeout):
    nobody wrote the lock, so it is `queued`, not `sent`, until the device holds it."""
    node = await node_factory(database_url=sqlite_url)
    commands, store = node.app[COMMANDS], node.app[SERVICE_STORE]
    (dev,) = await register_devices(node, 1)
    await service.configure(store, dev.did, ServiceMode.SALE, actor=ACTOR)
    presence = node.app[KEYSPACE].presence(dev.did)
    await redis_client.hset(presence, mapping={"node": "dead-node", "conn": "dead-node/1",
                                               "since": 1, "seen": 1})  # fmt: skip
    outcome = await service.lock(store, dev.did, actor=ACTOR, reason="unpaid")
    cid, state = await commands.record_state_change(dev.did, CommandOp.LOCK, outcome.version)
    assert state is CommandState.QUEUED
    record = await commands.get(dev.did, cid)
    assert (record.state, record.sent_ms, record.node) == (CommandState.QUEUED, None, "dead-node")

    await redis_client.delete(presence)  # it expires; the device logs in on a live node
    device = device_factory(dev.did, dev.key, node.tcp_port)
    assert (await device.login()).desired.locked
    record = await commands.wait(dev.did, cid, 5.0)
    assert (record.state, record.sent_ms) == (CommandState.SUCCEEDED, None)


async def test_a_timed_out_dispense_gets_the_pour_its_device_reports_later(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    """The device ran the dispense but its RESULT never came (its node died): the command times
    out; the dispense_done EVENT naming its cid, stored later, links the pour to it."""
    node = await node_factory(database_url=sqlite_url)
    commands = node.app[COMMANDS]
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    cid, _ = await commands.issue(dev.did, CommandOp.DISPENSE, {1: 250}, timeout_s=30)
    other, _ = await commands.issue(dev.did, CommandOp.DISPENSE, {1: 100}, timeout_s=30)
    await device.wait_for(Command)
    await device.wait_for(Command)
    assert await commands.expire_due(now=time.time() + 40) == 2
    timed_out = await commands.get(dev.did, cid)
    assert (timed_out.state, timed_out.poured_ml, timed_out.pour_record) == (
        CommandState.TIMED_OUT, None, None,
    )  # fmt: skip

    await device.send(telemetry(1, 7, 0))
    poured = Event(rec=2, boot=7, ts=int(time.time()), kind=EventKind.DISPENSE_DONE, cid=cid,
                   ml=243, flow_total_ml=243)  # fmt: skip
    await device.send(poured)
    await device.send(replace(poured, rec=3))  # the same pour reported again: linked once
    assert set((await device.settled()).values()) == {0}

    async def linked() -> Any:
        record = await commands.get(dev.did, cid)
        return record if record.poured_ml is not None else None

    record = await eventually(linked, timeout=10.0)
    # The state says what the gateway saw; the pour says what the device did.
    assert (record.state, record.poured_ml, record.pour_record) == (
        CommandState.TIMED_OUT, 243, "7:2",
    )  # fmt: skip
    out = command_out(record)
    assert (out.state, out.poured_ml, out.pour_record) == ("timed_out", 243, "7:2")
    # The other dispense poured nothing: no pour is linked to it.
    assert (await commands.get(dev.did, other)).poured_ml is None


def test_a_routed_command_message_says_whether_it_is_a_copy() -> None:
    from aquafleet.gateway.node_bus import NodeMessageError, RoutedCommand, decode_node_message

    text = b"cmd DEV1 7 1 1800000000 1=250"
    first = decode_node_message(text)
    assert isinstance(first, RoutedCommand)
    assert (first.did, first.command.cid, dict(first.command.args), first.command.dup) == (
        "DEV1", 7, {1: 250}, False,
    )  # fmt: skip
    copy = decode_node_message(text + b" dup")
    assert isinstance(copy, RoutedCommand) and copy.command.dup and copy.command.cid == 7
    with pytest.raises(NodeMessageError):
        decode_node_message(text + b" again")
