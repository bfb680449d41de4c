"""`aquafleet sim --transport mqtt|mixed` against a node whose bridge uses the real Mosquitto."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from aquafleet.cli import build_parser
from aquafleet.gateway.appkeys import MQTT_BRIDGE
from aquafleet.simulators.cli import options_from_args
from aquafleet.simulators.options import DeviceCredentials, SimError, SimOptions
from aquafleet.simulators.report import EXIT_OK, Report
from aquafleet.simulators.runner import run_simulation
from tests.simulators.conftest import RegisterFleet, sim_options


async def mqtt_node(node_factory: Any, **overrides: Any) -> tuple[Any, str]:
    prefix = f"s{uuid.uuid4().hex[:10]}"
    node = await node_factory(
        mqtt_url="mqtt://127.0.0.1:1883",
        mqtt_topic_prefix=prefix,
        mqtt_share_group=f"g{prefix}",
        **overrides,
    )
    bridge = node.app[MQTT_BRIDGE]
    async with asyncio.timeout(10):
        while not bridge.connected:  # noqa: ASYNC110  # polled: the bridge has no event
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    return node, prefix


def mqtt_options(node: Any, devices: list, prefix: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "transport": "mqtt",
        "mqtt_prefix": prefix,
        "mqtt_client_id_prefix": f"{prefix}-",
    }
    values.update(overrides)
    return sim_options(node, devices, **values)


def assert_exactly_once(report: Report, devices: int) -> None:
    data, text = report.data, report.render_text()
    check = data["check"]
    assert check["passed"], text
    assert check["devices_checked"] == check["devices_matching"] == devices, text
    assert check["complete_devices"] == devices, text
    assert check["poured_ml"] == check["acked_ml"] == check["metered_ml"] > 0, text
    assert data["drain"]["complete"] and data["records"]["in_flight_at_end"] == 0, text
    assert data["errors"]["unexpected"] == 0, text
    assert report.exit_code == EXIT_OK, text


async def test_mqtt_fleet_with_drops_and_reboots_meters_every_millilitre_once(
    node_factory: Any, register_fleet: RegisterFleet
) -> None:
    node, prefix = await mqtt_node(node_factory)
    devices = await register_fleet(node, 60)
    options = mqtt_options(
        node, devices, prefix, max_rate=True, window=4, drop_rate=10.0, reboot_rate=3.0,
        duration_s=4.0,
    )  # fmt: skip
    report = await run_simulation(options)
    data = report.data
    assert data["login"]["devices_logged_in"] == 60
    assert data["records"]["acked"] > 300
    assert data["disconnects"]["planned_drops"] > 0 and data["records"]["resent"] > 0
    assert_exactly_once(report, 60)
    assert node.metrics.mqtt_uplinks_forged == 0
    assert node.metrics.mqtt_offline_notices > 0  # dropped links: their wills came


async def test_mixed_fleet_tcp_and_mqtt_in_one_run(
    node_factory: Any, register_fleet: RegisterFleet
) -> None:
    node, prefix = await mqtt_node(node_factory)
    devices = await register_fleet(node, 60)
    options = mqtt_options(
        node, devices, prefix, transport="mixed", mqtt_fraction=0.5, max_rate=True, window=2,
        duration_s=3.0,
    )  # fmt: skip
    report = await run_simulation(options)
    assert_exactly_once(report, 60)
    assert node.metrics.mqtt_uplinks_received > 0
    assert node.metrics.logins_ok >= 60  # both halves logged in (TCP AUTH, MQTT key checks)


# ----------------------------------------------------------------------------- options


def _devices(count: int) -> list[DeviceCredentials]:
    return [DeviceCredentials(f"SIMT{i:08d}", bytes(32)) for i in range(count)]


def test_mixed_fleets_interleave_evenly_and_size_the_workers() -> None:
    options = SimOptions(devices=_devices(10), transport="mixed", mqtt_fraction=0.3)
    assert [options.is_mqtt(i) for i in range(10)].count(True) == 3
    assert SimOptions(devices=_devices(10), transport="mqtt").mqtt_device_count == 10
    assert SimOptions(devices=_devices(10)).mqtt_device_count == 0
    # An MQTT purifier costs about twice the CPU of a TCP one: 4000 of them per worker, 8000 TCP.
    assert SimOptions(devices=_devices(8000)).resolved_workers == 1
    assert SimOptions(devices=_devices(8000), transport="mqtt").resolved_workers == 2
    assert SimOptions(devices=_devices(8000), transport="mixed").resolved_workers == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"transport": "carrier-pigeon"}, "--transport must be"),
        ({"transport": "mixed", "mqtt_fraction": 1.0}, "--mqtt-fraction"),
        ({"mqtt_port": 0}, "--mqtt-port"),
        ({"mqtt_prefix": "aq/#"}, "--mqtt-prefix"),
    ],
)
def test_bad_mqtt_options_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SimError, match=message):
        SimOptions(devices=_devices(1), **overrides).validate()


def test_command_line_takes_the_mqtt_options(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("did,key\n" + "".join(f"SIMT{i:08d},{i:064x}\n" for i in range(4)))
    args = build_parser().parse_args(
        ["sim", "--devices", "4", "--from", str(path), "--check", "none", "--transport", "mixed",
         "--mqtt-fraction", "0.25", "--mqtt-port", "1884", "--mqtt-prefix", "fleet/a"]
    )  # fmt: skip
    options = options_from_args(args)
    assert (options.transport, options.mqtt_fraction, options.mqtt_port) == ("mixed", 0.25, 1884)
    assert options.mqtt_prefix == "fleet/a" and options.mqtt_device_count == 1
