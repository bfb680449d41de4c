"""The command service on one node: states, results, offline devices, deadlines, desired-state
commands, resends after a reconnect (real Redis, real TCP devices)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from aquafleet.gateway.appkeys import COMMANDS, SERVICE_STORE
from aquafleet.gateway.commands import CommandKind, CommandState, format_args, parse_args
from aquafleet.models import service
from aquafleet.models.service import ServiceMode
from aquafleet.protocol import Command, CommandOp
from aquafleet.protocol.message_types import Result
from tests.devices import TestDevice, register_devices
from tests.metering.test_volume_rental import ACTOR, eventually

pytestmark = pytest.mark.usefixtures("redis_client")


async def online_device(node: Any, device_factory: Any) -> TestDevice:
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()
    return device


async def state_of(node: Any, did: str, cid: int, wanted: CommandState) -> Any:
    async def check() -> Any:
        record = await node.app[COMMANDS].get(did, cid)
        return record if record is not None and record.state is wanted else None

    return await eventually(check, timeout=5.0)


def test_args_travel_as_text_and_back() -> None:
    assert format_args({2: 7, 1: 250}) == "1=250,2=7"
    assert format_args({}) == "-"
    assert parse_args("1=250,2=-7") == {1: 250, 2: -7}
    assert parse_args("-") == {}


async def test_a_dispense_goes_through_every_state_and_brings_back_the_ml(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    node = await node_factory(database_url=sqlite_url)
    commands = node.app[COMMANDS]
    device = await online_device(node, device_factory)

    cid, state = await commands.issue(
        device.did, CommandOp.DISPENSE, {1: 250}, timeout_s=60, issuer="admin:ops"
    )
    assert state is CommandState.QUEUED
    command = await device.wait_for(Command)
    assert (command.cid, command.op, dict(command.args)) == (cid, CommandOp.DISPENSE, {1: 250})
    # TestDevice acks a COMMAND as soon as it arrives: delivered.
    delivered = await state_of(node, device.did, cid, CommandState.DELIVERED)
    assert delivered.sent_ms is not None and delivered.delivered_ms >= delivered.sent_ms
    assert delivered.node == node.settings.resolved_node_id

    waiter = asyncio.create_task(commands.wait(device.did, cid, 5.0))
    device.session.send_result(Result(cid=cid, rc=0, out=243))
    await device.flush()
    record = await asyncio.wait_for(waiter, 6.0)
    assert record.state is CommandState.SUCCEEDED
    assert (record.rc, record.out, record.issuer) == (0, 243, "admin:ops")
    assert record.kind is CommandKind.ONCE and record.done_ms >= record.delivered_ms

    # A repeated RESULT (the device answering a resend from memory) changes nothing.
    device.session.send_result(Result(cid=cid, rc=1))
    await device.flush()
    later = await answered_round_trip(node, device)
    again = await commands.get(device.did, cid)
    assert again.state is CommandState.SUCCEEDED and again.out == 243
    assert sorted(r.cid for r in await commands.recent(device.did)) == sorted([cid, later])


async def answered_round_trip(node: Any, device: Any) -> int:
    """A barrier: a TIME_SYNC the device answers after what it sent before. The node queues
    every command event in one queue and writes it in order, so once this outcome is in the
    log, every RESULT the device sent earlier has been applied too. Returns its cid."""
    commands = node.app[COMMANDS]
    cid, _ = await commands.issue(device.did, CommandOp.TIME_SYNC, {1: 1}, timeout_s=30)
    command = await device.wait_for(Command)
    assert command.cid == cid
    device.session.send_result(Result(cid=cid, rc=0))
    await device.flush()
    record = await commands.wait(device.did, cid, 5.0)
    assert record.state is CommandState.SUCCEEDED
    return cid


@pytest.mark.parametrize(
    ("rc", "state"),
    [(1, CommandState.FAILED), (2, CommandState.REJECTED), (3, CommandState.EXPIRED)],
)
async def test_the_result_code_decides_the_final_state(
    node_factory: Any, device_factory: Any, sqlite_url: str, rc: int, state: CommandState
) -> None:
    node = await node_factory(database_url=sqlite_url)
    device = await online_device(node, device_factory)
    cid, _ = await node.app[COMMANDS].issue(device.did, CommandOp.REBOOT, {}, timeout_s=30)
    await device.wait_for(Command)
    device.session.send_result(Result(cid=cid, rc=rc))
    await device.flush()
    record = await node.app[COMMANDS].wait(device.did, cid, 5.0)
    assert (record.state, record.rc) == (state, rc)


async def test_a_one_shot_command_to_an_offline_device_fails_at_once(
    node_factory: Any, sqlite_url: str
) -> None:
    node = await node_factory(database_url=sqlite_url)
    (dev,) = await register_devices(node, 1)
    cid, state = await node.app[COMMANDS].issue(dev.did, CommandOp.DISPENSE, {1: 100}, timeout_s=60)
    assert state is CommandState.FAILED
    record = await node.app[COMMANDS].get(dev.did, cid)
    assert record.error == "device_offline" and record.done_ms is not None


async def test_a_command_without_a_result_times_out_after_its_deadline(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    node = await node_factory(database_url=sqlite_url)
    commands = node.app[COMMANDS]
    device = await online_device(node, device_factory)
    cid, _ = await commands.issue(device.did, CommandOp.TIME_SYNC, {1: 1}, timeout_s=30)
    await device.wait_for(Command)  # delivered, never answered
    await state_of(node, device.did, cid, CommandState.DELIVERED)
    assert await commands.expire_due(now=time.time() + 10) == 0  # before the deadline
    assert await commands.expire_due(now=time.time() + 40) == 1
    record = await commands.get(device.did, cid)
    assert record.state is CommandState.TIMED_OUT
    assert await commands.expire_due(now=time.time() + 80) == 0  # once
    # A RESULT after the timeout does not bring it back.
    device.session.send_result(Result(cid=cid, rc=0))
    await device.flush()
    await answered_round_trip(node, device)
    assert (await commands.get(device.did, cid)).state is CommandState.TIMED_OUT


async def test_the_scheduler_owner_times_out_commands_by_itself(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    node = await node_factory(database_url=sqlite_url)
    device = await online_device(node, device_factory)
    cid, _ = await node.app[COMMANDS].issue(device.did, CommandOp.REBOOT, {}, timeout_s=1)
    await device.wait_for(Command)
    # exp (1 s) + the grace for late results (5 s) + one sweep (1 s)
    record = await node.app[COMMANDS].wait(device.did, cid, 10.0)
    assert record.state is CommandState.TIMED_OUT


async def test_a_device_that_reconnects_gets_the_same_command_again(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    node = await node_factory(database_url=sqlite_url)
    commands = node.app[COMMANDS]
    (dev,) = await register_devices(node, 1)
    first = device_factory(dev.did, dev.key, node.tcp_port)
    await first.login()
    cid, _ = await commands.issue(dev.did, CommandOp.DISPENSE, {1: 300}, timeout_s=60)
    assert (await first.wait_for(Command)).cid == cid
    first.abort()  # the GPRS link drops before the device could answer

    second = device_factory(dev.did, dev.key, node.tcp_port)
    await second.login()
    again = await second.wait_for(Command, timeout=5.0)
    assert (again.cid, again.dup, dict(again.args)) == (cid, True, {1: 300})
    second.session.send_result(Result(cid=cid, rc=0, out=300))
    await second.flush()
    record = await commands.wait(dev.did, cid, 5.0)
    assert (record.state, record.out) == (CommandState.SUCCEEDED, 300)


async def test_a_lock_succeeds_when_the_device_holds_its_version(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    node = await node_factory(database_url=sqlite_url)
    commands, store = node.app[COMMANDS], node.app[SERVICE_STORE]
    device = await online_device(node, device_factory)
    await service.configure(store, device.did, ServiceMode.SALE, actor=ACTOR)
    first = await device.wait_for(Command)  # the configure's SET_STATE
    device.session.send_result(Result(cid=first.cid, rc=0))
    await device.flush()

    outcome = await service.lock(store, device.did, actor=ACTOR, reason="test")
    cid, state = await commands.record_state_change(
        device.did, CommandOp.LOCK, outcome.version, issuer="admin:1"
    )
    # Never "sent": no node writes a desired-state command itself (docs/commands.md).
    assert state in (CommandState.QUEUED, CommandState.SUCCEEDED)
    push = await device.wait_for(Command)
    assert push.op == CommandOp.SET_STATE and push.args[4] == outcome.version
    device.session.send_result(Result(cid=push.cid, rc=0))
    await device.flush()
    record = await commands.wait(device.did, cid, 5.0)
    assert record.state is CommandState.SUCCEEDED
    assert (record.kind, record.target_version) == (CommandKind.STATE, outcome.version)
    assert (record.sent_ms, record.delivered_ms) == (None, None)


async def test_a_lock_for_an_offline_device_waits_and_lands_at_its_login(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    node = await node_factory(database_url=sqlite_url)
    commands, store = node.app[COMMANDS], node.app[SERVICE_STORE]
    (dev,) = await register_devices(node, 1)
    await service.configure(store, dev.did, ServiceMode.SALE, actor=ACTOR)
    outcome = await service.lock(store, dev.did, actor=ACTOR, reason="unpaid")
    cid, state = await commands.record_state_change(dev.did, CommandOp.LOCK, outcome.version)
    assert state is CommandState.QUEUED
    assert await commands.expire_due(now=time.time() + 3600) == 0  # it does not time out

    device = device_factory(dev.did, dev.key, node.tcp_port)
    logged_in = await device.login()
    assert logged_in.desired.locked and logged_in.desired.version == outcome.version
    record = await commands.wait(dev.did, cid, 5.0)
    assert record.state is CommandState.SUCCEEDED

    # A change the device already holds is succeeded at once.
    _, state = await commands.record_state_change(dev.did, CommandOp.LOCK, outcome.version)
    assert state is CommandState.SUCCEEDED


# ----------------------------------------------------------------------------- two nodes


async def test_a_command_issued_on_one_node_reaches_a_device_on_another(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    node_a = await node_factory(database_url=sqlite_url)
    node_b = await node_factory(database_url=sqlite_url, rental_scheduler=False)
    (dev,) = await register_devices(node_a, 1)
    device = device_factory(dev.did, dev.key, node_b.tcp_port)
    await device.login()

    commands = node_a.app[COMMANDS]
    cid, state = await commands.issue(dev.did, CommandOp.DISPENSE, {1: 200}, timeout_s=60)
    assert state is CommandState.QUEUED
    command = await device.wait_for(Command)
    assert command.cid == cid
    device.session.send_result(Result(cid=cid, rc=0, out=200))
    await device.flush()
    record = await commands.wait(dev.did, cid, 5.0)
    assert (record.state, record.out) == (CommandState.SUCCEEDED, 200)
    assert record.origin == node_a.settings.resolved_node_id
    assert record.node == node_b.settings.resolved_node_id
    assert record.delivered_ms is not None  # B recorded the device's ACK


async def test_a_command_in_flight_follows_the_device_to_another_node(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    node_a = await node_factory(database_url=sqlite_url)
    node_b = await node_factory(database_url=sqlite_url, rental_scheduler=False)
    (dev,) = await register_devices(node_a, 1)
    on_b = device_factory(dev.did, dev.key, node_b.tcp_port)
    await on_b.login()
    commands = node_a.app[COMMANDS]
    cid, _ = await commands.issue(dev.did, CommandOp.DISPENSE, {1: 150}, timeout_s=60)
    assert (await on_b.wait_for(Command)).cid == cid
    on_b.abort()  # the link drops before the device answers

    on_a = device_factory(dev.did, dev.key, node_a.tcp_port)
    await on_a.login()
    # B sees the device gone and reroutes the command to A, with the same cid.
    again = await on_a.wait_for(Command, timeout=5.0)
    assert (again.cid, dict(again.args)) == (cid, {1: 150})
    on_a.session.send_result(Result(cid=cid, rc=0, out=150))
    await on_a.flush()
    record = await commands.wait(dev.did, cid, 5.0)
    assert (record.state, record.out) == (CommandState.SUCCEEDED, 150)
    assert record.node == node_a.settings.resolved_node_id


async def test_the_log_survives_a_restart_and_a_late_result_still_closes_the_command(
    node_factory: Any, device_factory: Any, sqlite_url: str
) -> None:
    first = await node_factory(database_url=sqlite_url)
    (dev,) = await register_devices(first, 1)
    device = device_factory(dev.did, dev.key, first.tcp_port)
    await device.login()
    cid, _ = await first.app[COMMANDS].issue(dev.did, CommandOp.DISPENSE, {1: 90}, timeout_s=60)
    assert (await device.wait_for(Command)).cid == cid
    await state_of(first, dev.did, cid, CommandState.DELIVERED)
    await first.stop()  # the device poured meanwhile; its RESULT never reached this node

    second = await node_factory(database_url=sqlite_url)
    assert (await second.app[COMMANDS].get(dev.did, cid)).state is CommandState.DELIVERED
    again = device_factory(dev.did, dev.key, second.tcp_port)
    await again.login()
    again.session.send_result(Result(cid=cid, rc=0, out=90))  # answered from its memory
    await again.flush()
    record = await state_of(second, dev.did, cid, CommandState.SUCCEEDED)
    assert record.out == 90


async def test_command_ids_keep_a_spare_block_and_never_repeat(
    redis_client: Any, keyspace: Any
) -> None:
    from aquafleet.gateway.command_sender import CID_BLOCK, CommandIds
    from aquafleet.gateway.errors import RedisUnavailable

    ids = CommandIds(redis_client, keyspace)
    assert not ids.available()
    with pytest.raises(RedisUnavailable):
        ids.take()
    assert ids.low.is_set()  # the reserve task is woken at once
    await ids.reserve()
    assert ids.available() and not ids.low.is_set()
    taken = [ids.take() for _ in range(CID_BLOCK // 2 + 1)]
    assert ids.low.is_set()  # half used: a spare block is wanted
    await ids.reserve()
    assert not ids.low.is_set()
    taken += [ids.take() for _ in range(CID_BLOCK)]  # runs through into the spare, no I/O
    assert len(set(taken)) == len(taken) and 0 not in taken
    other = CommandIds(redis_client, keyspace)  # another node
    await other.reserve()
    assert not set(taken) & {other.take() for _ in range(100)}
