"""Who may touch which device: `visible_device` (reads) and `usable_device` (commands) are the
one place other resource modules ask; another tenant's did answers 404, as an unknown one does."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web

from aquafleet.api.devices.schemas import MemberRef
from aquafleet.api.errors import ConflictError, Forbidden, NotFoundError, ValidationFailed
from aquafleet.api.routing import Call
from aquafleet.gateway.appkeys import DEVICE_GATEWAY, SETTINGS
from aquafleet.gateway.device_status import RuntimeStatus
from aquafleet.gateway.facade import LoginEntry
from aquafleet.models.agents import Agent, visible_agents
from aquafleet.models.devices import Device, check_usable, find_visible
from aquafleet.models.errors import DomainError, NotFound
from aquafleet.models.members import Member, agent_path_of, get_member
from aquafleet.models.tenancy import Principal, Role
from aquafleet.protocol.crypto import derive_device_key

# ----------------------------------------------------------------------------- access


async def visible_device(principal: Principal, did: str) -> Device:
    """The device if the caller may see it (platform: any; vendor: its own; agent/dealer: its
    subtree; member: bound or shared to them); 404 otherwise, exactly as for an unknown id."""
    device = await find_visible(principal, did)
    if device is None:
        raise NotFoundError(f"device {did} not found")
    return device


async def usable_device(principal: Principal, did: str) -> Device:
    """The device if the caller may command it (as `visible_device`); a deregistered or
    disabled device answers 409 device_deregistered / device_disabled."""
    device = await visible_device(principal, did)
    try:
        check_usable(device)
    except DomainError as exc:
        raise ConflictError(exc.message, code=exc.code) from None
    return device


async def owned_device(call: Call, action: str) -> Device:
    """The path's device for an owner-only action of a member (admins: visible is enough)."""
    principal = call.principal
    device = await visible_device(principal, call.params.did)
    if principal.role is Role.MEMBER and device.owner_id != principal.subject:
        raise Forbidden(f"a member the device is shared with may use it, not {action} it")
    return device


def invalid_field(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"body {field}: {message}", data=[{"field": field, "message": message}])


async def named_member(principal: Principal, ref: MemberRef, vendor_code: str) -> Member:
    """The member a body names (uid or mobile, exactly one) in the device's vendor, if the
    caller may see it; 404 otherwise."""
    given = ref.model_fields_set & {"uid", "mobile"}
    if len(given) != 1:
        raise invalid_field("uid", "give either uid or mobile")
    member: Member | None
    if ref.uid is not None:
        try:
            member = await get_member(ref.uid)
        except NotFound:
            member = None
    else:
        member = await Member.get_or_none(vendor_id=vendor_code, mobile=ref.mobile)
    if member is None or member.vendor_id != vendor_code:
        raise NotFoundError("no such member")
    if principal.role is not Role.MEMBER and not principal.may_see_node(
        member.vendor_id, await agent_path_of(member)
    ):
        raise NotFoundError("no such member")
    return member


async def visible_node(principal: Principal, agent_id: int, vendor_code: str) -> Agent:
    node = await visible_agents(principal).get_or_none(id=agent_id, vendor_id=vendor_code)
    if node is None:
        raise NotFoundError(f"agent {agent_id} not found")
    return node


def key_derivation(app: web.Application) -> Callable[[str, int], bytes]:
    """The node's key derivation: master secret + did + key version."""
    master = app[SETTINGS].master_secret_bytes()
    return lambda did, version: derive_device_key(master, did, version)


async def publish_logins(
    app: web.Application, devices: Sequence[Device], *, kick: str | None = None
) -> None:
    """Copy the devices' login entries (state, key version) to Redis at once (the registry
    sync would within seconds), then close their connections wherever they are with the kick
    verb `kick` ("disable" or "revoke": the offline reason the status shows)."""
    entries = [LoginEntry(d.did, int(d.state), d.key_version) for d in devices]
    await app[DEVICE_GATEWAY].publish_logins(entries, kick=kick)


async def runtime_of(app: web.Application, dids: Sequence[str]) -> dict[str, RuntimeStatus]:
    """Runtime status of many devices in one batched call."""
    return await app[DEVICE_GATEWAY].runtime_status(dids)
