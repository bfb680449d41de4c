"""AB-01..06, AB-14, AB-15: the registry (list, register with keys shown once, read, vendor
configuration, user profile, deregistration, key re-issue). A change to a device's login is
handed to the gateway at once (its registry copy, and a kick where it is connected)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from aquafleet.api.devices.access import (
    key_derivation,
    owned_device,
    publish_logins,
    runtime_of,
    visible_device,
    visible_node,
)
from aquafleet.api.devices.schemas import (
    CSV_TYPE,
    MAX_ONLINE_SCAN,
    MAX_REGISTER_BATCH,
    DeviceConfigIn,
    DeviceKeyOut,
    DeviceListQuery,
    DeviceOut,
    DevicePath,
    DeviceProfileIn,
    DeviceProfileOut,
    DeviceRegisterIn,
    RegisterQuery,
)
from aquafleet.api.devices.shaping import (
    config_changes,
    device_outs,
    is_online,
    keys_csv,
    profile_out,
    wants_csv,
)
from aquafleet.api.errors import Forbidden, NotFoundError
from aquafleet.api.list_filters import named_member, named_vendor
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.gateway.appkeys import DEVICE_GATEWAY, SETTINGS
from aquafleet.gateway.device_status import RuntimeStatus
from aquafleet.gateway.facade import LoginEntry
from aquafleet.gateway.logs import get_logger
from aquafleet.models.agents import visible_agents
from aquafleet.models.devices import (
    Device,
    DeviceState,
    refused_config_groups,
    reissue_key,
    update_device,
    visible_devices,
)
from aquafleet.models.devices import deregister_device as mark_deregistered
from aquafleet.models.errors import InvalidInput
from aquafleet.models.filters import filters_due
from aquafleet.models.registry import register_devices
from aquafleet.models.service import is_low_balance
from aquafleet.models.tenancy import ADMIN_ROLES, ANY_ROLE, PLATFORM_ONLY, PLATFORM_OR_VENDOR

log = get_logger("aquafleet.api.devices")

routes = RouteTable("devices")


@routes.get(
    "/devices",
    seed="AB-01",
    summary="List devices",
    roles=ADMIN_ROLES,
    query=DeviceListQuery,
    response=DeviceOut,
    many=True,
    description="The platform sees every vendor's devices (filter by vid); a vendor its own; "
    "an agent or dealer those of its node and the nodes below. `online` is read from the "
    "gateway for the whole page in one batch. `online`, `low_balance` and `filter_due` "
    "filter on live state (presence, the service state in Redis, the latest report) over at "
    f"most {MAX_ONLINE_SCAN} devices matching the other filters.",
)
async def list_devices(call: Call) -> Page:
    query: DeviceListQuery = call.query
    principal = call.principal
    qs = visible_devices(principal)
    filters: dict[str, Any] = {}
    for name in ("state", "type", "model"):
        if name in query.model_fields_set:
            filters[name] = getattr(query, name)
    if query.vid is not None:
        filters["vendor_id"] = await named_vendor(principal, query.vid)
    if query.uid is not None:
        filters["owner_id"] = await named_member(principal, query.uid)
    if query.bound is not None:
        filters["owner_id__isnull"] = not query.bound
    if query.agent_id is not None:
        node = await visible_agents(principal).get_or_none(id=query.agent_id)
        if node is None:
            raise NotFoundError(f"agent {query.agent_id} not found")
        filters["agent__path__startswith"] = node.path
    qs = qs.filter(**filters)
    if query.online is None and query.low_balance is None and query.filter_due is None:
        rows, total = await query.page(qs, pk="did")
        return Page(await device_outs(call.app, rows, principal), total)
    # Filters on live state: over at most MAX_ONLINE_SCAN candidates, in their list order.
    ordered = qs.order_by(*query.ordering(pk="did")).limit(MAX_ONLINE_SCAN + 1)
    dids = [str(d) for d in await ordered.values_list("did", flat=True)]
    if len(dids) > MAX_ONLINE_SCAN:
        raise InvalidInput(
            f"more than {MAX_ONLINE_SCAN} devices match: narrow the list (vid, agent_id, "
            "state, type, model) before filtering by online, low_balance or filter_due"
        )
    runtime = await runtime_of(call.app, dids)
    matching = await live_filtered(call.app, query, dids, runtime)
    page = matching[query.offset : query.offset + query.limit]
    by_did = {d.did: d for d in await Device.filter(did__in=page)}
    rows = [by_did[d] for d in page if d in by_did]
    return Page(await device_outs(call.app, rows, principal, runtime=runtime), len(matching))


async def live_filtered(
    app: web.Application,
    query: DeviceListQuery,
    dids: list[str],
    runtime: dict[str, RuntimeStatus],
) -> list[str]:
    """`dids` (in order) that pass the list's live filters: online (presence), low_balance
    (service state in Redis, models.service.is_low_balance) and filter_due (latest report and
    filter spec, models.filters.filters_due)."""
    settings = app[SETTINGS]
    kept = dids
    if query.online is not None:
        kept = [d for d in kept if is_online(runtime, d) is query.online]
    if query.low_balance is not None:
        states = await app[DEVICE_GATEWAY].service_states(kept)
        days = query.low_balance_days
        within_s = (settings.rental_reminder_days if days is None else days) * 86_400
        now_s = int(time.time())
        kept = [
            d for d in kept
            if is_low_balance(
                remaining_ml=states[d].remaining_ml, low_balance_ml=states[d].low_balance_ml,
                rental_expires_at=states[d].rental_expires_at, now_s=now_s,
                threshold_ml=query.low_balance_ml, within_s=within_s,
            ) is query.low_balance
        ]  # fmt: skip
    if query.filter_due is not None:
        pct = query.filter_due_pct
        due = await filters_due(kept, settings.filter_threshold_pct if pct is None else pct)
        kept = [d for d in kept if (d in due) is query.filter_due]
    return kept


@routes.post(
    "/devices",
    seed="AB-02",
    summary="Register a batch of devices; their keys are answered once",
    roles=PLATFORM_ONLY,
    query=RegisterQuery,
    body=DeviceRegisterIn,
    response=DeviceKeyOut,
    many=True,
    errors=(404, 409),
    description=f"Up to {MAX_REGISTER_BATCH} devices a request. Ids are allocated here: the "
    "vendor code, an 8-digit serial that is never reused and 4 hex check digits. The answer "
    "holds each device's key: it is never shown again (re-issue one with POST "
    "/devices/{did}/key). `Accept: text/csv` or `?format=csv` answers the same as CSV "
    "(did,key,key_version) for the factory. The devices can log in at once.",
)
async def register_device_batch(call: Call) -> list[DeviceKeyOut] | web.Response:
    body: DeviceRegisterIn = call.body
    as_csv = wants_csv(call.request, call.query)
    attributes: dict[str, Any] = {
        "brand": body.brand,
        "hw_version": body.hw_version,
        "sw_version": body.sw_version,
        "fw_version": body.fw_version,
        "manufactured_at": body.manufacture_tms,
    }
    if body.agent_id is not None:
        node = await visible_node(call.principal, body.agent_id, body.vid)
        attributes["agent_id"] = node.id
    issued = await register_devices(
        body.vid,
        body.count,
        key_derivation(call.app),
        device_type=body.type,
        model=body.model,
        attributes=attributes,
    )
    await call.app[DEVICE_GATEWAY].publish_logins(
        [LoginEntry(d.did, int(DeviceState.INACTIVE), d.key_version) for d in issued]
    )
    log.info("devices_registered", vid=body.vid, count=len(issued), first=issued[0].did)
    keys = [DeviceKeyOut(did=d.did, key=d.key.hex(), key_version=d.key_version) for d in issued]
    if as_csv:
        return web.Response(
            text=keys_csv(keys),
            status=201,
            content_type=CSV_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{keys[0].did}-{len(keys)}.csv"',
                "Cache-Control": "no-store",
            },
        )
    return keys


@routes.get(
    "/devices/{did}",
    seed="AB-03",
    summary="Read a device (identity, vendor configuration, owner)",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceOut,
    description="Admins read devices of their subtree; a member those bound or shared to them.",
)
async def read_device(call: Call) -> DeviceOut:
    device = await visible_device(call.principal, call.params.did)
    return (await device_outs(call.app, [device], call.principal))[0]


@routes.put(
    "/devices/{did}",
    seed="AB-04",
    summary="Change a device's vendor configuration",
    roles=ANY_ROLE,
    params=DevicePath,
    body=DeviceConfigIn,
    response=DeviceOut,
    errors=(403, 409),
    description="Only the groups given change. Platform and vendor: everything; agents and "
    "dealers: installation, lbs and agent_id (a node of their subtree); the member it is "
    "bound to: lbs. Other groups answer 403. A deregistered device answers 409.",
)
async def configure_device(call: Call) -> DeviceOut:
    body: DeviceConfigIn = call.body
    principal = call.principal
    device = await owned_device(call, "configure")
    refused = refused_config_groups(principal.role, body.model_fields_set)
    if refused:
        raise Forbidden(f"a {principal.role} may not change {', '.join(refused)}")
    changes = config_changes(body)
    if "agent_id" in changes:
        if changes["agent_id"] is not None:
            await visible_node(principal, changes["agent_id"], device.vendor_id)
        elif principal.role not in PLATFORM_OR_VENDOR:
            raise Forbidden("an agent or dealer moves devices between nodes of its subtree")
    device = await update_device(device, changes)
    return (await device_outs(call.app, [device], principal))[0]


@routes.get(
    "/devices/{did}/prof",
    seed="AB-05",
    summary="Read a device's user profile",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceProfileOut,
)
async def read_device_profile(call: Call) -> DeviceProfileOut:
    return profile_out(await visible_device(call.principal, call.params.did))


@routes.put(
    "/devices/{did}/prof",
    seed="AB-06",
    summary="Change a device's user profile",
    roles=PLATFORM_OR_VENDOR,
    params=DevicePath,
    body=DeviceProfileIn,
    response=DeviceProfileOut,
    errors=(409,),
    description="Only the fields given change (the seed: A#).",
)
async def change_device_profile(call: Call) -> DeviceProfileOut:
    body: DeviceProfileIn = call.body
    device = await visible_device(call.principal, call.params.did)
    changes = {f"profile_{name}": getattr(body, name) for name in body.model_fields_set}
    return profile_out(await update_device(device, changes))


@routes.delete(
    "/devices/{did}",
    seed="AB-14",
    summary="Deregister a device (platform admin only)",
    roles=PLATFORM_ONLY,
    params=DevicePath,
    errors=(503,),
    description="注销: the device is disconnected at once wherever it is connected and can no "
    "longer log in; nothing of it changes any more (409 device_deregistered). The row, its "
    "ledger and every history stay; reads still answer. Repeating it answers 204 again.",
)
async def deregister_device(call: Call) -> None:
    device = await visible_device(call.principal, call.params.did)
    device = await mark_deregistered(device)
    await publish_logins(call.app, [device], kick="disable")
    log.info("device_deregistered", did=device.did)


@routes.post(
    "/devices/{did}/key",
    summary="Re-issue a device's key (the old one stops working at once)",
    roles=PLATFORM_ONLY,
    params=DevicePath,
    response=DeviceKeyOut,
    errors=(409, 503),
    description="Not in the seed. Bumps the key version: the old key no longer logs in, and "
    "the device is disconnected at once wherever it is connected. The new key is answered "
    "once, never again.",
)
async def reissue_device_key(call: Call) -> DeviceKeyOut:
    device = await visible_device(call.principal, call.params.did)
    issued = await reissue_key(device, key_derivation(call.app))
    await publish_logins(call.app, [device], kick="revoke")
    log.info("device_key_reissued", did=device.did, key_version=issued.key_version)
    return DeviceKeyOut(did=issued.did, key=issued.key.hex(), key_version=issued.key_version)
