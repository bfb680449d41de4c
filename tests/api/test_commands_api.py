"""Remote control over REST (issue 5): commands to devices logged in over TCP, their states and
outcomes, waiting, offline devices, roles and tenancy, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.service import ServiceMode
from aquafleet.protocol import Command, CommandOp
from aquafleet.protocol.message_types import Result
from tests.api.conftest import ApiClient, Tenant
from tests.api.test_devices_api import make_member, register

ACTOR = "test"


async def logged_in(api_node: Any, device_factory: Any, issued: dict[str, Any]) -> Any:
    device = device_factory(issued["did"], bytes.fromhex(issued["key"]), api_node.tcp_port)
    await device.login()
    return device


async def answer_next(device: Any, *, rc: int = 0, out: int | None = None) -> Command:
    """What firmware does: take the next command and answer its RESULT."""
    command = await device.wait_for(Command)
    device.session.send_result(Result(cid=command.cid, rc=rc, out=out))
    await device.flush()
    return command


async def test_a_dispense_answers_the_poured_ml_when_waited_for(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, _ = tenants
    (issued,) = await register(api, a.vid, 1)
    device = await logged_in(api_node, device_factory, issued)
    did = issued["did"]

    call = asyncio.create_task(
        a.vendor.call("POST", f"/devices/{did}/commands",
                      {"op": "dispense", "ml": 250, "wait_ms": 5000})
    )  # fmt: skip
    command = await answer_next(device, out=243)
    assert (command.op, dict(command.args)) == (CommandOp.DISPENSE, {1: 250})
    answer = await call
    assert answer.status == 202, answer
    data = answer.data
    assert (data["cid"], data["state"], data["final"]) == (command.cid, "succeeded", True)
    assert (data["op"], data["args"], data["poured_ml"], data["rc"]) == (
        "dispense",
        {"1": 250},
        243,
        0,
    )
    assert data["issuer"].startswith("vendor:") and data["deadline"].endswith("Z")
    for moment in ("created_at", "sent_at", "delivered_at", "done_at"):
        assert data[moment] is not None, moment

    read = await a.agent.call("GET", f"/devices/{did}/commands/{command.cid}", expect=404)
    assert read.status == 404, read  # the device is the vendor's own, not in the agent's tree
    read = await a.vendor.call("GET", f"/devices/{did}/commands/{command.cid}")
    assert read.status == 200 and read.data == data
    listed = await a.vendor.call("GET", f"/devices/{did}/commands")
    assert listed.status == 200 and [c["cid"] for c in listed.data] == [command.cid]


async def test_without_wait_the_command_id_comes_at_once_and_can_be_polled(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, _ = tenants
    (issued,) = await register(api, a.vid, 1)
    device = await logged_in(api_node, device_factory, issued)
    did = issued["did"]
    answer = await a.vendor.call("POST", f"/devices/{did}/commands", {"op": "reboot"})
    assert answer.status == 202 and answer.data["state"] in ("queued", "sent", "delivered")
    cid = answer.data["cid"]
    poll = asyncio.create_task(
        a.vendor.call("GET", f"/devices/{did}/commands/{cid}", params={"wait_ms": 5000})
    )
    await answer_next(device, rc=2)  # the firmware refuses to reboot now
    polled = await poll
    assert (polled.data["state"], polled.data["rc"], polled.data["final"]) == ("rejected", 2, True)


async def test_a_one_shot_command_to_an_offline_device_fails_at_once(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    (issued,) = await register(api, a.vid, 1)
    answer = await a.vendor.call(
        "POST", f"/devices/{issued['did']}/commands", {"op": "dispense", "ml": 100}, expect=409
    )
    assert (answer.status, answer.code) == (409, "device_offline"), answer
    logged = answer.body["data"]
    assert (logged["state"], logged["error"]) == ("failed", "device_offline")
    read = await a.vendor.call("GET", f"/devices/{issued['did']}/commands/{logged['cid']}")
    assert read.data["state"] == "failed"


async def test_a_lock_waits_for_an_offline_device_and_lands_when_it_returns(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, _ = tenants
    (issued,) = await register(api, a.vid, 1)
    did = issued["did"]
    answer = await a.vendor.call("POST", f"/devices/{did}/commands", {"op": "lock"})
    assert answer.status == 202, answer
    assert (answer.data["state"], answer.data["deadline"]) == ("queued", None)
    cid, version = answer.data["cid"], answer.data["target_version"]

    device = await logged_in(api_node, device_factory, issued)
    poll = await a.vendor.call("GET", f"/devices/{did}/commands/{cid}", params={"wait_ms": 5000})
    assert poll.data["state"] == "succeeded", poll
    assert device.session is not None and version >= 1
    unlock = asyncio.create_task(
        a.vendor.call("POST", f"/devices/{did}/commands", {"op": "unlock", "wait_ms": 5000})
    )
    push = await answer_next(device)
    assert push.op == CommandOp.SET_STATE and push.args[1] == 0  # unlocked
    done = await unlock
    assert (done.data["state"], done.data["target_version"]) == ("succeeded", push.args[4])


async def test_members_command_their_own_and_shared_devices_only(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, b = tenants
    owner = await make_member(api_node, api, a.vid)
    friend = await make_member(api_node, api, a.vid)
    stranger = await make_member(api_node, api, a.vid)
    other_vendor = await make_member(api_node, api, b.vid)
    (issued,) = await register(api, a.vid, 1)
    did = issued["did"]
    assert (await owner.client.call("POST", f"/devices/{did}/bind", {})).status == 201
    shared = await owner.client.call("POST", f"/devices/{did}/shares", {"uid": friend.uid})
    assert shared.status == 201, shared
    device = await logged_in(api_node, device_factory, issued)

    for person in (owner, friend):
        call = asyncio.create_task(person.client.call(
            "POST", f"/devices/{did}/commands", {"op": "dispense", "ml": 50, "wait_ms": 5000}
        ))  # fmt: skip
        await answer_next(device, out=50)
        answer = await call
        assert (answer.status, answer.data["state"]) == (202, "succeeded"), answer
        assert answer.data["issuer"] == f"member:{person.uid}"
    for person in (stranger, other_vendor):
        answer = await person.client.call(
            "POST", f"/devices/{did}/commands", {"op": "dispense", "ml": 50}, expect=404
        )
        assert (answer.status, answer.code) == (404, "not_found"), answer
    # Another vendor's admins see no such device either.
    answer = await b.vendor.call("POST", f"/devices/{did}/commands", {"op": "reboot"}, expect=404)
    assert answer.status == 404
    # Firmware notices are the console's; a member's purifier on sale may be child-locked.
    answer = await owner.client.call(
        "POST", f"/devices/{did}/commands", {"op": "firmware_notice", "version_code": 3}, expect=403
    )
    assert (answer.status, answer.code) == (403, "forbidden")
    answer = await owner.client.call("POST", f"/devices/{did}/commands", {"op": "lock"})
    assert answer.status == 202, answer


async def test_a_renter_may_not_unlock_a_rented_device(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, _ = tenants
    renter = await make_member(api_node, api, a.vid)
    (issued,) = await register(api, a.vid, 1)
    did = issued["did"]
    await renter.client.call("POST", f"/devices/{did}/bind", {})
    await service.configure(
        api_node.app[SERVICE_STORE], did, ServiceMode.VOLUME_RENTAL, remaining_ml=0, actor=ACTOR
    )
    answer = await renter.client.call(
        "POST", f"/devices/{did}/commands", {"op": "unlock"}, expect=403
    )
    assert (answer.status, answer.code) == (403, "forbidden"), answer
    answer = await a.vendor.call("POST", f"/devices/{did}/commands", {"op": "unlock"})
    assert answer.status == 202  # the vendor may (the quota lock itself stays: metering.md)


async def test_bad_commands_get_clear_errors(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, _ = tenants
    (issued,) = await register(api, a.vid, 1)
    did = issued["did"]
    cases = [
        {"op": "dispense"},  # needs ml
        {"op": "dispense", "ml": 0},
        {"op": "dispense", "ml": 20_001},
        {"op": "dispense", "ml": "250"},  # strict types
        {"op": "dispense", "ml": 2.5},
        {"op": "reboot", "ml": 5},  # takes no ml
        {"op": "explode"},
        {"op": "reboot", "wait_ms": 30_001},
        {"op": "reboot", "timeout_s": 1},
        {"op": "reboot", "colour": "red"},
        {"op": "reset_filter"},
    ]
    for body in cases:
        answer = await a.vendor.call("POST", f"/devices/{did}/commands", body, expect=422)
        assert (answer.status, answer.code) == (422, "validation_failed"), (body, answer)
    answer = await a.vendor.call("GET", f"/devices/{did}/commands/0", expect=404)
    assert answer.status == 404
    answer = await a.vendor.call("GET", f"/devices/{did}/commands/123456", expect=404)
    assert (answer.status, answer.code) == (404, "not_found")
    answer = await a.vendor.call(
        "POST", "/devices/AAAA0000000099ZZ/commands", {"op": "reboot"}, expect=404
    )
    assert answer.status == 404


async def test_a_locked_device_is_refused_a_dispense_naming_why(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    """Issue 18: a lock answered succeeded, then a dispense poured. The platform refuses it
    (409 device_locked, with the reason), and the device never sees the command."""
    a, _ = tenants
    (issued,) = await register(api, a.vid, 1)
    device = await logged_in(api_node, device_factory, issued)
    did = issued["did"]
    lock = asyncio.create_task(
        a.vendor.call("POST", f"/devices/{did}/commands", {"op": "lock", "wait_ms": 5000})
    )
    push = await answer_next(device)
    assert push.op == CommandOp.SET_STATE and push.args[1] == 1
    assert (await lock).data["state"] == "succeeded"

    refused = await a.vendor.call(
        "POST", f"/devices/{did}/commands", {"op": "dispense", "ml": 100}, expect=409
    )
    assert (refused.status, refused.code) == (409, "device_locked"), refused
    assert "locked by a person" in refused.body["message"]
    listed = await a.vendor.call("GET", f"/devices/{did}/commands")
    assert [c["op"] for c in listed.data] == ["lock"]  # no dispense logged or sent
    with pytest.raises(TimeoutError):  # nothing reached the device
        await device.wait_for(Command, timeout=0.3)

    # An exhausted quota is a lock too, with its own reason, whoever asks.
    await a.vendor.call("POST", f"/devices/{did}/commands", {"op": "unlock"})
    await service.configure(
        api_node.app[SERVICE_STORE], did, ServiceMode.VOLUME_RENTAL, remaining_ml=0, actor=ACTOR
    )
    refused = await a.vendor.call(
        "POST", f"/devices/{did}/commands", {"op": "dispense", "ml": 100}, expect=409
    )
    assert (refused.code, "quota exhausted" in refused.body["message"]) == ("device_locked", True)


async def test_a_locked_vending_machine_is_refused_a_dispense(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    """The vending path reads the live lock (Redis), not the database's copy of it."""
    a, _ = tenants
    (issued,) = await register(api, a.vid, 1)
    device = await logged_in(api_node, device_factory, issued)
    did = issued["did"]
    store = api_node.app[SERVICE_STORE]
    await service.configure(store, did, ServiceMode.VENDING, actor=ACTOR)
    await store.change(did, "lock")  # live only, as a lock whose database write is still due
    refused = await a.vendor.call(
        "POST", f"/devices/{did}/commands", {"op": "dispense", "ml": 100}, expect=409
    )
    assert (refused.code, "locked by a person" in refused.body["message"]) == (
        "device_locked",
        True,
    )
    await service.unlock(store, did, actor=ACTOR)
    call = asyncio.create_task(a.vendor.call(
        "POST", f"/devices/{did}/commands", {"op": "dispense", "ml": 100, "wait_ms": 5000}
    ))  # fmt: skip
    while True:  # the unlock's SET_STATE first, then the pour
        command = await answer_next(device, out=100)
        if command.op == CommandOp.DISPENSE:
            break
    assert (await call).data["state"] == "succeeded"


async def test_a_disabled_or_deregistered_device_is_refused_commands(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    """The command path reads the device and its service row in one query: it still refuses
    a device nobody may command, for every role, the service mode asked for or not."""
    from aquafleet.models.devices import Device, DeviceState

    a, _ = tenants
    disabled, gone = [d["did"] for d in await register(api, a.vid, 2)]
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{disabled}/bind", {})
    await Device.filter(did=disabled).update(state=DeviceState.DISABLED)
    assert (await api.call("DELETE", f"/devices/{gone}")).status == 204
    for client, did, code in (
        (a.vendor, disabled, "device_disabled"),
        (owner.client, disabled, "device_disabled"),
        (a.vendor, gone, "device_deregistered"),
    ):
        for body in ({"op": "dispense", "ml": 50}, {"op": "lock"}, {"op": "reboot"}):
            if client is owner.client and body["op"] == "reboot":
                continue  # a member's reboot is refused for its role first (403)
            answer = await client.call("POST", f"/devices/{did}/commands", body, expect=409)
            assert (answer.status, answer.code) == (409, code), (did, body, answer)
