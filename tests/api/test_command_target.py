"""A command's device lookup (`command_target`, one statement per scope) sees exactly the
devices `visible_devices` gives each caller, on SQLite and PostgreSQL: every role, other
tenants' devices, agent subtrees (a path whose characters LIKE would treat as wildcards), bound
and shared devices, devices with and without a service row."""

from __future__ import annotations

import itertools

import pytest

from aquafleet.models.agents import Agent, AgentLevel
from aquafleet.models.command_target import command_target
from aquafleet.models.devices import Device, DeviceShare, DeviceState, visible_devices
from aquafleet.models.ids import device_id
from aquafleet.models.members import Member
from aquafleet.models.registry import create_vendor
from aquafleet.models.service import DeviceService, ServiceMode
from aquafleet.models.tenancy import Principal, Role, child_path

pytestmark = pytest.mark.usefixtures("db")


async def _world() -> tuple[list[str], list[Principal]]:
    await create_vendor("DEMO", "Demo Water")
    await create_vendor("OTHR", "Other Water")
    top = await Agent.create(vendor_id="DEMO", level=AgentLevel.AGENT, name="A1")
    top.path = child_path(None, top.id)
    await top.save()
    below = await Agent.create(vendor_id="DEMO", level=AgentLevel.DEALER, name="D1", parent=top)
    below.path = child_path(top.path, below.id)
    await below.save()
    # A sibling whose path starts like the top node's would if "_" or "%" matched anything.
    sibling = await Agent.create(vendor_id="DEMO", level=AgentLevel.AGENT, name="A2")
    sibling.path = f"/{top.id}x/"
    await sibling.save()
    other = await Agent.create(vendor_id="OTHR", level=AgentLevel.AGENT, name="O1")
    other.path = child_path(None, other.id)
    await other.save()
    owner = await Member.create(uid="DEMO0000000000011111", vendor_id="DEMO")
    friend = await Member.create(uid="DEMO0000000000022222", vendor_id="DEMO")
    stranger = await Member.create(uid="OTHR0000000000033333", vendor_id="OTHR")
    devices = [
        (device_id("DEMO", 1), "DEMO", None, owner.uid, DeviceState.ACTIVE),
        (device_id("DEMO", 2), "DEMO", top.id, owner.uid, DeviceState.ACTIVE),
        (device_id("DEMO", 3), "DEMO", below.id, None, DeviceState.DISABLED),
        (device_id("DEMO", 4), "DEMO", sibling.id, friend.uid, DeviceState.INACTIVE),
        (device_id("OTHR", 1), "OTHR", other.id, stranger.uid, DeviceState.ACTIVE),
        (device_id("OTHR", 2), "OTHR", None, None, DeviceState.ACTIVE),
    ]
    for did, vendor, agent, member, state in devices:
        await Device.create(did=did, vendor_id=vendor, agent_id=agent, owner_id=member, state=state)
    await DeviceShare.create(device_id=device_id("DEMO", 2), member_id=friend.uid)
    await DeviceShare.create(device_id=device_id("OTHR", 1), member_id=owner.uid)  # across tenants
    await DeviceService.create(did=device_id("DEMO", 2), mode=ServiceMode.VOLUME_RENTAL)
    await DeviceService.create(did=device_id("OTHR", 1), mode=ServiceMode.VENDING)
    principals = [
        Principal(Role.PLATFORM, "1"),
        Principal(Role.VENDOR, "2", vendor_code="DEMO"),
        Principal(Role.VENDOR, "3", vendor_code="OTHR"),
        Principal(Role.AGENT, "4", vendor_code="DEMO", agent_path=top.path),
        Principal(Role.DEALER, "5", vendor_code="DEMO", agent_path=below.path),
        Principal(Role.AGENT, "6", vendor_code="OTHR", agent_path=top.path),  # not its vendor
        Principal(Role.AGENT, "7", vendor_code="DEMO", agent_path="/%/"),  # wildcards, literal
        Principal(Role.AGENT, "8", vendor_code="DEMO", agent_path=f"/{top.id}_/"),
        Principal(Role.TECHNICIAN, "9", vendor_code="DEMO", agent_path=top.path),
        Principal(Role.TECHNICIAN, "10", vendor_code="DEMO"),  # no node: sees no device
        Principal(Role.AGENT, "11"),  # no vendor: sees no device
        Principal(Role.MEMBER, owner.uid),
        Principal(Role.MEMBER, friend.uid),
        Principal(Role.MEMBER, stranger.uid),
    ]
    return [d[0] for d in devices] + [device_id("NOPE", 1), "DEMO0001"], principals


async def test_a_commands_lookup_sees_what_visible_devices_gives_every_caller() -> None:
    dids, principals = await _world()
    seen = 0
    for principal, did, with_mode in itertools.product(principals, dids, (False, True)):
        rows = await visible_devices(principal).filter(did=did).values_list("did", "state")
        service = await DeviceService.get_or_none(did=did)
        target = await command_target(principal, did, with_mode=with_mode)
        if not rows:
            assert target is None, (principal, did)
            continue
        seen += 1
        assert target is not None, (principal, did)
        assert (target.did, int(target.state)) == (rows[0][0], int(rows[0][1]))
        expected_mode = service.mode if with_mode and service is not None else None
        assert target.mode == expected_mode, (principal, did, with_mode)
    assert seen >= 20  # the world above gives callers devices to see, not only refusals


async def test_a_member_commands_only_bound_or_shared_devices() -> None:
    await _world()
    friend = Principal(Role.MEMBER, "DEMO0000000000022222")
    assert await command_target(friend, device_id("DEMO", 2), with_mode=True) is not None  # shared
    assert await command_target(friend, device_id("DEMO", 4), with_mode=False) is not None  # bound
    assert await command_target(friend, device_id("DEMO", 1), with_mode=False) is None  # another's
    assert (
        await command_target(friend, device_id("OTHR", 1), with_mode=False) is None
    )  # another tenant
