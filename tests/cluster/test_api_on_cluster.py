"""The REST API of nodes whose Redis is a Redis Cluster (the fixtures of
tests/cluster/conftest.py): device commands and their outcomes, the device list and a device's
runtime status with presence, key re-issue and deregistration (which kick the device through
the node channels), service state, an exchange's hand-over given back (its markers in the
device's slot); and a command sent through one node's API to a device
logged in on another. The API cases run unchanged from tests/api, on SQLite only: the cluster
is what is under test here, the database backends have their own runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.conftest import ApiClient, Tenant
from tests.api.test_commands_api import *  # noqa: F403
from tests.api.test_commands_api import answer_next, logged_in
from tests.api.test_devices_api import (  # noqa: F401
    register,
    test_a_batch_answers_each_key_once_and_the_devices_log_in_at_once,
    test_a_reissued_key_revokes_the_old_one_at_once,
    test_deregistering_disconnects_the_device_and_keeps_its_history,
    test_runtime_status_and_filter_life,
    test_service_state_through_the_metering_services,
)
from tests.api.test_ticket_work_api import (  # noqa: F401
    test_cancelling_an_exchange_after_its_hand_over_gives_the_quota_back_once,
)


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


async def test_a_command_through_one_nodes_api_reaches_a_device_on_another(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, node_factory: Any,
    device_factory: Any,
) -> None:  # fmt: skip
    from aquafleet.protocol import CommandOp

    a, _ = tenants
    other = await node_factory(database_url=api_node.settings.database_url)
    issued = await register(api, a.vid, 3)
    devices = [await logged_in(other, device_factory, one) for one in issued]
    dids = [one["did"] for one in issued]

    # Presence written by the other node, read through this node's API.
    listed = await a.vendor.call("GET", "/devices", params={"vid": a.vid, "online": "true"})
    assert sorted(d["did"] for d in listed.data) == sorted(dids), listed
    for did in dids:
        stat = await a.vendor.call("GET", f"/devices/{did}/stat")
        assert stat.data["online"] is True and stat.data["node"] == other.hub.node_id, stat

    # Each device's command crosses the node channel of its own slot and comes back.
    for device, did, poured in zip(devices, dids, (101, 202, 303), strict=True):
        call = asyncio.create_task(
            a.vendor.call("POST", f"/devices/{did}/commands",
                          {"op": "dispense", "ml": 300, "wait_ms": 10000})
        )  # fmt: skip
        command = await answer_next(device, out=poured)
        assert command.op == CommandOp.DISPENSE
        answer = await call
        assert (answer.data["state"], answer.data["poured_ml"]) == ("succeeded", poured), answer

    # Gone from the other node: offline through this node's API.
    await devices[0].close()
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        stat = await a.vendor.call("GET", f"/devices/{dids[0]}/stat")
        if stat.data["online"] is False:
            break
        assert asyncio.get_running_loop().time() < deadline, stat
        await asyncio.sleep(0.1)
    listed = await a.vendor.call("GET", "/devices", params={"vid": a.vid, "online": "true"})
    assert sorted(d["did"] for d in listed.data) == sorted(dids[1:]), listed
