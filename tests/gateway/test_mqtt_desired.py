"""Desired state (lock, quota, rental expiry) to MQTT devices, end to end: a node with its
bridge, the real Mosquitto, Redis and the database.

A change is published on the channel of node `mqtt`, which every bridge follows; the bridge
holding a session of the device sends it as a SET_STATE command and resends it, same cid,
until the RESULT comes, wherever that lands. At a login (the first message on a node) the
desired state goes out as a SET_STATE too: MQTT has no AUTH_OK to carry it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from aquafleet.gateway import command_sender
from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.gateway.mqtt.bridge import pack_answer, unpack_answer
from aquafleet.gateway.tasks import cancel_and_wait
from aquafleet.models import service
from aquafleet.models.service import ServiceMode
from aquafleet.protocol import Command, CommandOp, DesiredState, desired_state_from_args
from aquafleet.protocol.message_types import Result
from aquafleet.protocol.mqtt import CommandAnswer
from aquafleet.simulators.mqtt_device import MqttPurifier
from aquafleet.simulators.mqtt_link import MqttPurifierLink, connect_mqtt
from aquafleet.simulators.stats import WorkerStats
from tests.devices import register_devices, telemetry
from tests.gateway.test_mqtt_bridge import (
    BROKER_PORT,
    MqttTestDevice,
    mqtt_devices,  # noqa: F401  # the fixture
    mqtt_node,
    presence,
    unique_prefix,
    wait_until,
)

ACTOR = "test-admin"
RESEND_S = 0.5  # the pusher's first resend (10 s in production), so a test sees it


@pytest.fixture
def quick_resends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command_sender, "RESEND_AFTER_S", RESEND_S)


async def next_state(device: MqttTestDevice, timeout: float = 5.0) -> tuple[Command, DesiredState]:
    command = await device.wait_for(Command, timeout=timeout)
    assert command.op == CommandOp.SET_STATE
    return command, desired_state_from_args(command.args)


async def answer(device: MqttTestDevice, command: Command) -> None:
    """RESULT ok, as firmware does once it applied the state."""
    device.session.send_result(Result(cid=command.cid, rc=0))
    await device.flush()


async def volume_rental(node: Any, quota_ml: int) -> Any:
    (dev,) = await register_devices(node, 1)
    await service.configure(
        node.app[SERVICE_STORE], dev.did, ServiceMode.VOLUME_RENTAL, remaining_ml=quota_ml,
        actor=ACTOR,
    )  # fmt: skip
    return dev


async def test_exhausted_quota_locks_the_device_resending_the_same_cid_until_its_result(
    node_factory: Any,
    mqtt_devices: list,  # noqa: F811
    quick_resends: None,
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    dev = await volume_rental(node, 1000)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    # The connect notice is the login: the desired state comes as MQTT's AUTH_OK.
    login, at_login = await next_state(device)
    assert not at_login.locked and at_login.remaining_ml == 1000
    await answer(device, login)

    boot = int(time.time())
    await device.send(telemetry(1, boot, 600, epoch=boot))
    await device.settled()
    await device.send(telemetry(2, boot, 1100, epoch=boot))  # 500 ml more: the quota runs out
    lock, locked = await next_state(device, timeout=2.0)
    assert locked.locked and locked.remaining_ml == -100
    assert locked.version == at_login.version + 1
    # Not answered (as if the RESULT were lost): the same command again, same cid.
    again, _ = await next_state(device, timeout=RESEND_S * 2 + 2.0)
    assert (again.cid, dict(again.args)) == (lock.cid, dict(lock.args))
    await answer(device, again)

    pusher = node.hub.sender

    async def settled() -> bool:
        return pusher.in_flight == 0

    await wait_until(settled)
    await asyncio.sleep(RESEND_S * 2 + 1.0)  # two resend ticks: nothing more comes
    assert not [e for e in device.events if isinstance(e, Command)]
    assert node.metrics.desired_unanswered == 0


async def simulated_purifier(dev: Any, prefix: str) -> MqttPurifier:
    return MqttPurifier(
        dev.did, dev.key, boot=int(time.time()), now=time.monotonic(), stats=WorkerStats(),
        rng=random.Random(1), prefix=prefix, client_id_prefix=f"{prefix}-",
        draw_gap_s=1e9,  # no water of its own: the test pours
    )  # fmt: skip


@pytest.fixture
async def purifier_links() -> AsyncIterator[list[tuple[MqttPurifierLink, asyncio.Task[None]]]]:
    links: list[tuple[MqttPurifierLink, asyncio.Task[None]]] = []
    yield links
    for link, task in links:
        link.close("stop")
        await asyncio.wait({task}, timeout=5)


async def online(device: MqttPurifier, links: list) -> MqttPurifierLink:
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    device.connect(time.monotonic(), time.monotonic_ns())
    link = await connect_mqtt(device, "127.0.0.1", BROKER_PORT, 5.0, closed)
    links.append((link, asyncio.create_task(link.run())))
    return link


def pour(device: MqttPurifier, link: MqttPurifierLink, ml: int) -> None:
    device.water.pour(ml)
    link.write(device.produce(time.monotonic(), time.monotonic_ns(), int(time.time())))


async def test_the_simulated_purifier_locks_at_zero_and_unlocks_on_a_top_up(
    node_factory: Any, purifier_links: list
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    dev = await volume_rental(node, 300)
    store = node.app[SERVICE_STORE]
    start = (await store.read(dev.did)).version
    device = await simulated_purifier(dev, prefix)
    link = await online(device, purifier_links)

    async def holds(version: int, locked: bool) -> bool:
        return device.desired_version == version and device.locked is locked

    await wait_until(lambda: holds(start, False))  # from the login
    pour(device, link, 350)
    await wait_until(lambda: holds(start + 1, True))
    outcome = await service.top_up(store, dev.did, 1000, actor=ACTOR, reason="order D1")
    assert outcome.version == start + 2 and not outcome.locked
    await wait_until(lambda: holds(start + 2, False))
    pusher = node.hub.sender

    async def answered() -> bool:
        return pusher.in_flight == 0

    await wait_until(answered)
    assert device.stats.commands_received == device.stats.results_sent >= 3
    assert node.metrics.desired_unanswered == 0


async def test_a_state_changed_while_offline_arrives_at_the_next_login(
    node_factory: Any,
    mqtt_devices: list,  # noqa: F811
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    dev = await volume_rental(node, 100)
    store = node.app[SERVICE_STORE]
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    await answer(device, (await next_state(device))[0])
    boot = int(time.time())
    await device.send(telemetry(1, boot, 150, epoch=boot))
    lock, locked = await next_state(device)
    assert locked.locked
    await answer(device, lock)
    await device.vanish()  # the WiFi went: the last will takes it offline

    async def offline() -> bool:
        return not await presence(node, dev.did)

    await wait_until(offline)
    outcome = await service.top_up(store, dev.did, 5000, actor=ACTOR, reason="paid offline")
    assert not outcome.locked
    back = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(back)
    await back.connect()  # its connect notice alone: no record needed
    command, desired = await next_state(back)
    assert not desired.locked and desired.remaining_ml == 4950
    assert desired.version == outcome.version > locked.version
    await answer(back, command)


async def test_a_login_without_a_command_id_at_hand_sends_the_state_with_a_later_message(
    node_factory: Any,
    mqtt_devices: list,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    dev = await volume_rental(node, 700)
    ids = node.hub.sender.ids
    monkeypatch.setattr(ids, "available", lambda: False)  # a login storm used the block up
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()

    async def online() -> bool:
        return dev.did in node.hub.online

    await wait_until(online)
    await asyncio.sleep(0.3)
    assert not [e for e in device.events if isinstance(e, Command)]  # kept, not lost
    monkeypatch.undo()
    boot = int(time.time())
    await device.send(telemetry(1, boot, 100, epoch=boot))
    command, desired = await next_state(device)
    assert desired.remaining_ml == 700  # the state the login found, sent with this message
    await answer(device, command)


async def test_with_two_bridges_each_command_is_answered_wherever_the_result_lands(
    node_factory: Any,
    mqtt_devices: list,  # noqa: F811
    quick_resends: None,
) -> None:
    prefix = unique_prefix()
    first = await mqtt_node(node_factory, prefix)
    second = await mqtt_node(node_factory, prefix, rental_scheduler=False)
    nodes = (first, second)
    dev = await volume_rental(first, 10_000)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()
    answered: list[Command] = []

    async def firmware() -> None:
        """Answer every SET_STATE at once, as a purifier does."""
        while True:
            command, _ = await next_state(device, timeout=60)
            answered.append(command)
            await answer(device, command)

    running = asyncio.create_task(firmware())
    try:
        boot = int(time.time())
        for rec in range(1, 9):  # the broker shares them out: the device is online on both
            await device.send(telemetry(rec, boot, rec * 10, epoch=boot))
        await device.settled()
        assert all(dev.did in n.hub.online for n in nodes)
        logins = len(answered)
        outcome = await service.lock(first.app[SERVICE_STORE], dev.did, actor=ACTOR)
        assert outcome.locked

        async def settled() -> bool:
            return len(answered) > logins and all(n.hub.sender.in_flight == 0 for n in nodes)

        # Each node holding a session sends the lock; each RESULT reaches its sender, through
        # the other bridge when the broker handed it there.
        await wait_until(settled)
        await asyncio.sleep(RESEND_S * 2 + 1.0)  # resend ticks pass: nothing is resent
    finally:
        await cancel_and_wait([running])
    assert sum(n.metrics.desired_resent for n in nodes) == 0
    assert all(n.metrics.desired_unanswered == 0 for n in nodes)
    assert {desired_state_from_args(c.args).locked for c in answered[logins:]} == {True}


def test_answers_between_bridges_round_trip_and_bad_ones_are_refused() -> None:
    result = CommandAnswer(7, result=Result(cid=7, rc=2, out=None))
    ack = CommandAnswer(8, ack_rc=0)
    for answer_ in (result, ack):
        assert unpack_answer(pack_answer("node-a", "DEV1", answer_)) == ("node-a", "DEV1", answer_)
    for bad in (
        b"",
        b"\xc1",
        msgpack.packb(["node-a", "DEV1", 7]),
        msgpack.packb(["node-a", "DEV1", 7, 0, 0, None]),  # both an ack and a result
        msgpack.packb(["node-a", "DEV1", 7, None, None, None]),  # neither
        msgpack.packb(["node-a", "DEV1", "7", 0, None, None]),
        msgpack.packb(["node-a", 5, 7, 0, None, None]),
    ):
        with pytest.raises(ValueError):
            unpack_answer(bad)


async def test_one_shot_commands_reach_mqtt_devices_through_the_command_service(
    node_factory: Any,
    mqtt_devices: list,  # noqa: F811
) -> None:
    """The same command service as TCP: states, the device's ACK, its RESULT, the outcome
    back on the issuing node, which here is another node than the bridges'."""
    from aquafleet.gateway.appkeys import COMMANDS
    from aquafleet.gateway.commands import CommandState

    prefix = unique_prefix()
    bridge = await mqtt_node(node_factory, prefix)
    rest_node = await node_factory(
        database_url=bridge.settings.database_url, rental_scheduler=False
    )  # no bridge: a node that only takes REST calls
    (dev,) = await register_devices(bridge, 1)
    device = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(device)
    await device.connect()

    async def online() -> bool:
        return bool(await presence(bridge, dev.did))

    await wait_until(online)
    commands = rest_node.app[COMMANDS]
    cid, state = await commands.issue(dev.did, CommandOp.DISPENSE, {1: 180}, timeout_s=60)
    assert state is CommandState.QUEUED
    command = await device.wait_for(Command, timeout=5.0)
    assert (command.cid, command.op, dict(command.args)) == (cid, CommandOp.DISPENSE, {1: 180})
    device.session.send_result(Result(cid=cid, rc=0, out=176))
    await device.flush()
    record = await commands.wait(dev.did, cid, 5.0)
    assert (record.state, record.out, record.node) == (CommandState.SUCCEEDED, 176, "mqtt")
    assert record.origin == rest_node.settings.resolved_node_id
    assert record.delivered_ms is not None  # the device's ACK (with its cid) was recorded

    await device.vanish()  # offline: a one-shot command fails at once, as on TCP

    async def offline() -> bool:
        return not await presence(bridge, dev.did)

    await wait_until(offline)
    _, state = await commands.issue(dev.did, CommandOp.REBOOT, {}, timeout_s=60)
    assert state is CommandState.FAILED
