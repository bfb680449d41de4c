"""AB-11..13, AB-16: binding a device to a member, sharing it, clearing it (factory reset),
and a member's devices."""

from __future__ import annotations

from aquafleet.api.devices.access import named_member, owned_device, visible_device
from aquafleet.api.devices.schemas import (
    DeviceBindIn,
    DeviceBindingOut,
    DeviceOut,
    DevicePath,
    DeviceShareIn,
    DeviceShareOut,
    DeviceSharePath,
    MemberDevicesPath,
    MemberDevicesQuery,
)
from aquafleet.api.devices.shaping import device_outs
from aquafleet.api.errors import Forbidden, NotFoundError
from aquafleet.api.members import visible_member
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.gateway.logs import get_logger
from aquafleet.models.devices import (
    MAX_SHARES,
    Device,
    DeviceShare,
    bind,
    clear_info,
    of_member,
    share,
    unbind,
    unshare,
    visible_devices,
)
from aquafleet.models.ids import is_valid_device_id
from aquafleet.models.members import Member, get_member
from aquafleet.models.tenancy import (
    ANY_ROLE,
    MEMBER_ONLY,
    PLATFORM_OR_VENDOR,
    PLATFORM_VENDOR_OR_MEMBER,
    Role,
)

log = get_logger("aquafleet.api.devices")

routes = RouteTable("devices")


@routes.post(
    "/devices/{did}/bind",
    seed="AB-11",
    summary="Bind a device to a member (the app posts the did of the QR code)",
    roles=ANY_ROLE,
    params=DevicePath,
    body=DeviceBindIn,
    response=DeviceBindingOut,
    errors=(409,),
    description="A member binds a device of its vendor to themself; an admin binds a device "
    "of its subtree to a member it sees (uid or mobile). Binding again to the same member "
    "answers the binding; a device bound to someone else answers 409 device_bound (its owner, "
    "or a platform or vendor admin, unbinds it first).",
)
async def bind_device(call: Call) -> DeviceBindingOut:
    body: DeviceBindIn = call.body
    principal = call.principal
    did = call.params.did
    if principal.role is Role.MEMBER:
        me = await get_member(principal.subject)
        if (body.uid is not None and body.uid != me.uid) or (
            body.mobile is not None and body.mobile != me.mobile
        ):
            raise Forbidden(
                "a member binds devices to themself only (to share one: POST .../shares)"
            )
        device = None
        if is_valid_device_id(did):
            device = await Device.get_or_none(did=did, vendor_id=me.vendor_id)
        if device is None:
            raise NotFoundError(f"device {did} not found")
        member = me
    else:
        device = await visible_device(principal, did)
        member = await named_member(principal, body, device.vendor_id)
    device = await bind(device, member)
    assert device.bound_at is not None and device.owner_id is not None
    log.info("device_bound", did=device.did, uid=device.owner_id, by=str(principal.role))
    return DeviceBindingOut(did=device.did, uid=device.owner_id, bound_tms=device.bound_at)


@routes.delete(
    "/devices/{did}/infos",
    seed="AB-12",
    summary="Clear a device's information (factory reset)",
    roles=PLATFORM_OR_VENDOR,
    params=DevicePath,
    errors=(409,),
    description="恢复出厂: the binding, the shares and the user profile go. The vendor "
    "configuration, the service state, the usage ledger and every history stay.",
)
async def clear_device_info(call: Call) -> None:
    device = await visible_device(call.principal, call.params.did)
    await clear_info(device)
    log.info("device_cleared", did=device.did)


@routes.delete(
    "/devices/{did}/bind",
    seed="AB-13",
    summary="Unbind a device from its member",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=DevicePath,
    errors=(403,),
    description="The member it is bound to, or a platform or vendor admin. Its shares end "
    "with the binding. Unbinding an unbound device answers 204 again.",
)
async def unbind_device(call: Call) -> None:
    device = await owned_device(call, "unbind")
    await unbind(device)


@routes.get(
    "/devices/{did}/shares",
    summary="List the members a device is shared with",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceShareOut,
    many=True,
    errors=(403,),
    description="The member it is bound to, and admins of its subtree.",
)
async def list_device_shares(call: Call) -> list[DeviceShareOut]:
    device = await owned_device(call, "list the shares of")
    rows = await DeviceShare.filter(device_id=device.did).order_by("created_at", "id")
    uids = [row.member_id for row in rows]
    names = dict(await Member.filter(uid__in=uids).values_list("uid", "name"))
    return [
        DeviceShareOut(
            did=device.did,
            uid=row.member_id,
            name=names.get(row.member_id, ""),
            created_tms=row.created_at,
        )
        for row in rows
    ]


@routes.post(
    "/devices/{did}/shares",
    seed="AB-15",
    summary="Share a device with another member",
    roles=MEMBER_ONLY,
    params=DevicePath,
    body=DeviceShareIn,
    response=DeviceShareOut,
    errors=(403, 409),
    description=f"The seed writes POST /devices/<DID>/bind (AB-11's path). The member it is "
    f"bound to shares it with a member of the same vendor (uid or mobile), at most "
    f"{MAX_SHARES}; 409 share_exists, share_limit, or sharing_disabled (the vendor's AX-08 "
    "option). The shared member may use the device, not unbind or share it.",
)
async def share_device(call: Call) -> DeviceShareOut:
    body: DeviceShareIn = call.body
    principal = call.principal
    device = await owned_device(call, "share")
    member = await named_member(principal, body, device.vendor_id)
    row = await share(device, principal.subject, member)
    return DeviceShareOut(
        did=device.did, uid=member.uid, name=member.name, created_tms=row.created_at
    )


@routes.delete(
    "/devices/{did}/shares/{uid}",
    seed="AB-16",
    summary="Remove a device share",
    roles=ANY_ROLE,
    params=DeviceSharePath,
    description="The seed writes DELETE /devices/<DID>/share; the member is named in the path. "
    "The member it is bound to removes any share, a shared member its own, admins any of "
    "their subtree.",
)
async def remove_device_share(call: Call) -> None:
    principal = call.principal
    device = await visible_device(principal, call.params.did)
    if principal.role is Role.MEMBER and principal.subject not in (
        device.owner_id,
        call.params.uid,
    ):
        raise Forbidden("a shared member removes only its own share")
    await unshare(device, call.params.uid)


@routes.get(
    "/users/{uid}/devices",
    summary="List a member's devices (bound or shared)",
    roles=ANY_ROLE,
    params=MemberDevicesPath,
    query=MemberDevicesQuery,
    response=DeviceOut,
    many=True,
    description="Not in the seed (AA-03's `devices` count leads here). A member lists its "
    "own; admins a member of their subtree (only devices they also see). `relation` says "
    "owner or shared for the member.",
)
async def list_member_devices(call: Call) -> Page:
    query: MemberDevicesQuery = call.query
    principal = call.principal
    member = await visible_member(principal, call.params.uid)
    qs = visible_devices(principal).filter(of_member(member.uid))
    rows, total = await query.page(qs, pk="did")
    return Page(await device_outs(call.app, rows, principal, member_uid=member.uid), total)
