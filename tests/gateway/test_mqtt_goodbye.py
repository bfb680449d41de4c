"""An MQTT device leaving cleanly (docs/mqtt.md section 3, steps 7 and 8): the broker sends no
last will on a clean DISCONNECT, so the device publishes it itself first (its goodbye); the
gateway takes it offline at once, and its next connect is a login that brings the desired state
as a SET_STATE. Without the goodbye the gateway cannot tell, and no SET_STATE comes."""

from __future__ import annotations

import asyncio
from typing import Any

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.service import ServiceMode
from aquafleet.protocol import Command, CommandOp
from aquafleet.protocol.message_types import Result
from tests.devices import register_devices
from tests.gateway.test_mqtt_bridge import (
    MqttTestDevice,
    mqtt_devices,  # noqa: F401  # the fixture
    mqtt_node,
    presence,
    unique_prefix,
    wait_until,
)
from tests.gateway.test_mqtt_desired import purifier_links  # noqa: F401  # the fixture

ACTOR = "test-admin"


async def connected(did: str, key: bytes, prefix: str, made: list[MqttTestDevice]) -> Any:
    """A device on the broker that answered the SET_STATE of its login."""
    device = MqttTestDevice(did, key, prefix)
    made.append(device)
    await device.connect()
    state = await device.wait_for(Command)
    assert state.op == CommandOp.SET_STATE
    device.session.send_result(Result(cid=state.cid, rc=0))
    await device.flush()
    return device


async def next_command(device: MqttTestDevice, seconds: float) -> Command | None:
    try:
        return await device.wait_for(Command, timeout=seconds)  # type: ignore[no-any-return]
    except TimeoutError:
        return None


async def test_a_goodbye_takes_the_device_offline_at_once_and_its_return_is_a_login(
    node_factory: Any,
    mqtt_devices: list,  # noqa: F811
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)  # idle timeout: 150 s
    (dev,) = await register_devices(node, 1)
    await service.configure(node.app[SERVICE_STORE], dev.did, ServiceMode.SALE, actor=ACTOR)
    device = await connected(dev.did, dev.key, prefix, mqtt_devices)

    async def online() -> bool:
        return bool(await presence(node, dev.did))

    async def offline() -> bool:
        return not await presence(node, dev.did)

    await wait_until(online)
    assert device.client is not None
    topic, will = device.session.will(device.connected_ms)
    await device.client.publish(topic, will, qos=1)  # the goodbye: its will, published by itself
    await device.close()  # a clean DISCONNECT: the broker publishes no will
    await wait_until(offline, timeout=3.0)
    assert node.metrics.mqtt_offline_notices == 1
    assert dev.did not in node.hub.online

    await connected(dev.did, dev.key, prefix, mqtt_devices)  # a login: the desired state comes
    await wait_until(online)


async def test_a_clean_disconnect_without_goodbye_goes_unnoticed(
    node_factory: Any,
    mqtt_devices: list,  # noqa: F811
) -> None:
    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)
    (dev,) = await register_devices(node, 1)
    await service.configure(node.app[SERVICE_STORE], dev.did, ServiceMode.SALE, actor=ACTOR)
    device = await connected(dev.did, dev.key, prefix, mqtt_devices)
    await device.close()
    await asyncio.sleep(1.0)
    assert await presence(node, dev.did)  # still online: until the idle timeout
    again = MqttTestDevice(dev.did, dev.key, prefix)
    mqtt_devices.append(again)
    await again.connect()  # its connect notice: no login on a node that holds its session
    assert await next_command(again, 2.0) is None
    assert node.metrics.mqtt_offline_notices == 0


async def test_the_simulated_purifier_says_goodbye_when_it_disconnects_cleanly(
    node_factory: Any,
    purifier_links: list,  # noqa: F811
) -> None:
    """simulators/mqtt_link.py does step 8: a load test's clean disconnects show at once."""
    from tests.gateway.test_mqtt_desired import online as sim_online
    from tests.gateway.test_mqtt_desired import simulated_purifier

    prefix = unique_prefix()
    node = await mqtt_node(node_factory, prefix)  # idle timeout: 150 s
    (dev,) = await register_devices(node, 1)
    await service.configure(node.app[SERVICE_STORE], dev.did, ServiceMode.SALE, actor=ACTOR)
    device = await simulated_purifier(dev, prefix)
    link = await sim_online(device, purifier_links)

    async def is_online() -> bool:
        return bool(await presence(node, dev.did))

    async def is_offline() -> bool:
        return not await presence(node, dev.did)

    await wait_until(is_online)
    notices = node.metrics.mqtt_offline_notices
    link.close("test")
    await wait_until(is_offline, timeout=3.0)  # not the 150 s idle timeout
    # The goodbye did it (seen 1 run in 7: a record sent just before it arrived after it and
    # counted a second short login and notice; the device ends offline either way).
    assert node.metrics.mqtt_offline_notices > notices
    assert dev.did not in node.hub.online
