"""Devices (AB-01..16): registry, vendor configuration, user profile, service state, runtime
status and statistics, binding and sharing (docs/api-devices.md).

Thin: the rules live in models.devices (ownership, sharing, field groups), models.service
(service state) and models.registry (ids and keys). This module checks who may see which device
(another tenant's did answers 404, as an unknown one does), shapes the answers per role, and
tells the gateway (registry copy in Redis, kicks) when a device's login changes.

`visible_device` (reads) and `usable_device` (commands) are the one place other resource
modules ask whether a caller may touch a device.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from aiohttp import web
from pydantic import AwareDatetime, Field
from pydantic.json_schema import SkipJsonSchema

from api.errors import ConflictError, Forbidden, NotFoundError, ValidationFailed
from api.members import UID_PATTERN, visible_member
from api.routing import Call, Page, RouteTable
from api.schemas import (
    UNSET,
    ListQuery,
    Mobile,
    PathParams,
    Query,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    VendorCode,
    text,
)
from gateway.appkeys import DEVICE_GATEWAY, SETTINGS
from gateway.device_status import RuntimeStatus
from gateway.facade import LoginEntry
from gateway.logs import get_logger
from models.agents import Agent, visible_agents
from models.device_stats import device_statistics
from models.devices import (
    MAX_SHARES,
    Device,
    DeviceShare,
    DeviceState,
    DeviceType,
    Relation,
    bind,
    check_changeable,
    check_usable,
    clear_info,
    find_visible,
    of_member,
    refused_config_groups,
    reissue_key,
    relations,
    share,
    share_counts,
    unbind,
    unshare,
    update_device,
    visible_devices,
)
from models.devices import deregister_device as mark_deregistered
from models.errors import DomainError, InvalidInput, NotFound
from models.filters import StageLife, Timer, filter_life, filters_of_devices
from models.ids import device_id, is_valid_device_id
from models.members import Member, agent_path_of, get_member
from models.registry import register_devices
from models.service import MAX_TOP_UP_ML, RENT_PACKAGES, ServiceChangeRequest, ServiceMode
from models.tenancy import (
    ADMIN_ROLES,
    ANY_ROLE,
    MEMBER_ONLY,
    PLATFORM_ONLY,
    PLATFORM_OR_VENDOR,
    PLATFORM_VENDOR_OR_MEMBER,
    Principal,
    Role,
)
from models.usage import DeviceSnapshot
from protocol.crypto import derive_device_key

if TYPE_CHECKING:
    from gateway.service_state import ServiceState

log = get_logger("aquafleet.api.devices")

MAX_REGISTER_BATCH = 1000  # keys of one answer (JSON or CSV); the factory asks again for more
MAX_ONLINE_SCAN = 10_000  # devices the `online` filter may look at in one list request
DID_PATTERN = r"^[A-Z0-9]{4}[0-9]{8}[0-9A-F]{4}$"
Did = Field(
    pattern=DID_PATTERN,
    description="device id: vendor code + 8-digit serial + 4 hex check digits",
    examples=[device_id("DEMO", 1)],
)
Uid = Field(pattern=UID_PATTERN, description="member id")
CSV_TYPE = "text/csv"


# ----------------------------------------------------------------------------- schemas


class DevicePath(PathParams):
    did: str = Did


class DeviceSharePath(PathParams):
    did: str = Did
    uid: str = Uid


class MemberDevicesPath(PathParams):
    uid: str = Uid


class ManufactureOut(ResponseModel):
    product_id: str = Field(description="the product (PID) the device is sold as")
    qc_id: str = Field(description="the quality inspector")
    qc_tms: UtcDateTime | None = Field(description="quality check (leaving the factory)")


class InstallationOut(ResponseModel):
    installer_id: str
    install_tms: UtcDateTime | None


class BasicOut(ResponseModel):
    platform: str = Field(description='module platform, e.g. "ESP8266"')
    project: str
    net_entry: str = Field(description="network access point")
    net_type: str = Field(description='e.g. "GPRS", "WIFI"')
    dev_idcd: str = Field(description="MAC or IMEI")
    sim_iccid: str


class LbsOut(ResponseModel):
    lat_e6: int = Field(description="latitude, millionths of a degree")
    lng_e6: int = Field(description="longitude, millionths of a degree")


class DeviceOut(ResponseModel):
    """A device as AB-01/AB-03 answer it; fields marked "admins only" are null for members."""

    did: str
    vid: str
    state: DeviceState = Field(description="0 disabled, 1 inactive, 2 active, 3 deregistered")
    type: DeviceType = Field(description="0 unknown, 1 sale, 2 time/3 volume rental, 4 vending")
    model: str
    brand: str
    name: str = Field(description="the user profile's name (AB-05)")
    hw_version: str
    sw_version: str
    fw_version: str
    manufacture_tms: UtcDateTime | None
    reg_tms: UtcDateTime = Field(description="registered (AB-02)")
    atv_tms: UtcDateTime | None = Field(description="first report (activation)")
    deregistered_tms: UtcDateTime | None
    online: bool = Field(description="connected now (the gateway's presence)")
    uid: str | None = Field(description="the member it is bound to (the seed's user_id)")
    bound_tms: UtcDateTime | None
    shares: int | None = Field(description="members it is shared with; null for shared members")
    relation: Relation | None = Field(
        description="owner or shared: how the calling member (or, at /users/{uid}/devices, that "
        "member) stands to it; null for admins elsewhere"
    )
    agent_id: int | None = Field(description="admins only: the agent/dealer node it belongs to")
    key_version: int | None = Field(description="admins only: bumped by each key re-issue")
    manufacture: ManufactureOut
    installation: InstallationOut
    basic: BasicOut
    lbs: LbsOut | None = Field(description="where it is installed; null when unknown")


class DeviceListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "did": "did",
        "reg_tms": "created_at",
        "atv_tms": "activated_at",
        "state": "state",
        "type": "type",
        "model": "model",
    }
    sort: Literal["did", "reg_tms", "atv_tms", "state", "type", "model"] = "did"
    state: DeviceState = Field(UNSET, description="only devices in this state")
    type: DeviceType = Field(UNSET, description="only devices of this type")
    vid: VendorCode = Field(UNSET, description="only this vendor's devices")
    model: str = Field(UNSET, max_length=32, description="model equals")
    uid: str = Field(UNSET, pattern=UID_PATTERN, description="bound to this member")
    bound: bool = Field(UNSET, description="true: bound to a member; false: not bound")
    agent_id: int = Field(UNSET, ge=1, le=2**31 - 1, description="of this node and below")
    online: bool = Field(
        UNSET,
        description=f"connected now (or not); at most {MAX_ONLINE_SCAN} devices may match the "
        "other filters",
    )


class MemberDevicesQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {"did": "did", "reg_tms": "created_at"}
    sort: Literal["did", "reg_tms"] = "did"


class RegisterQuery(Query):
    # Hidden from the OpenAPI document until the routing layer can answer a handler's own
    # (CSV) response; docs/api-devices.md documents it.
    format: SkipJsonSchema[Literal["json", "csv"]] = "json"


class DeviceRegisterIn(RequestModel):
    """AB-02: the platform registers `count` devices of a vendor; ids are allocated here
    (vendor code + serial + check digits), never given by the client."""

    vid: VendorCode
    count: int = Field(ge=1, le=MAX_REGISTER_BATCH, description="devices in this batch")
    type: DeviceType = DeviceType.UNKNOWN
    model: str = text(32, default="")
    brand: str = text(64, default="")
    hw_version: str = text(32, default="")
    sw_version: str = text(32, default="")
    fw_version: str = text(32, default="")
    manufacture_tms: AwareDatetime = Field(UNSET, description="manufacture time (ISO 8601)")
    agent_id: int = Field(UNSET, ge=1, le=2**31 - 1, description="the node the devices go to")


class DeviceKeyOut(ResponseModel):
    did: str
    key: str = Field(description="the device key, 64 hex digits: shown once, never again")
    key_version: int


class ManufactureIn(RequestModel):
    product_id: str = text(20, default=None)
    qc_id: str = text(64, default=None)
    qc_tms: AwareDatetime = Field(UNSET)


class InstallationIn(RequestModel):
    installer_id: str = text(64, default=None)
    install_tms: AwareDatetime = Field(UNSET)


class BasicIn(RequestModel):
    platform: str = text(32, default=None)
    project: str = text(64, default=None)
    net_entry: str = text(128, default=None)
    net_type: str = text(16, default=None)
    dev_idcd: str = text(32, default=None)
    sim_iccid: str = text(22, default=None)


class LbsIn(RequestModel):
    lat_e6: int = Field(ge=-90_000_000, le=90_000_000, description="millionths of a degree")
    lng_e6: int = Field(ge=-180_000_000, le=180_000_000, description="millionths of a degree")


class DeviceConfigIn(RequestModel):
    """AB-04: only the groups given change; which groups a caller may change: docs."""

    type: DeviceType = Field(UNSET)
    model: str = text(32, default=None)
    brand: str = text(64, default=None)
    hw_version: str = text(32, default=None)
    sw_version: str = text(32, default=None)
    fw_version: str = text(32, default=None)
    manufacture_tms: AwareDatetime = Field(UNSET)
    manufacture: ManufactureIn = Field(UNSET)
    installation: InstallationIn = Field(UNSET)
    basic: BasicIn = Field(UNSET)
    lbs: LbsIn | None = Field(None, description="null clears the location")
    agent_id: int | None = Field(None, ge=1, le=2**31 - 1, description="null: the vendor's own")


class DeviceProfileIn(RequestModel):
    """AB-06: only the fields given change."""

    name: str = text(64, default=None)
    remark: str = text(255, default=None)
    location: str = text(128, default=None, description='where it stands, e.g. "kitchen"')


class DeviceProfileOut(ResponseModel):
    did: str
    name: str
    remark: str
    location: str


class DeviceServiceOut(ResponseModel):
    did: str
    mode: ServiceMode | None = Field(description="billing mode; null until configured")
    remaining_ml: int | None = Field(description="volume rental: water left (negative: owed)")
    low_balance_ml: int | None
    rental_expires_at: UtcDateTime | None = Field(description="time rental: paid until")
    locked: bool
    lock_reasons: list[str] = Field(description="quota_exhausted, rental_expired, manual")
    version: int = Field(description="bumped by every change")
    applied: bool | None = Field(description="AB-08: false when nothing changed (or a retry)")


ServiceOp = Literal["configure", "top_up", "extend", "set_expiry", "lock", "unlock"]
RentPackage = Literal["30d", "60d", "90d", "180d", "360d"]
assert set(get_args(RentPackage)) == set(RENT_PACKAGES), "models.service changed its packages"


class DeviceServiceIn(RequestModel):
    """AB-08: one change per request; `op` says which, and which other fields apply."""

    op: ServiceOp
    mode: ServiceMode = Field(UNSET, description="configure: the billing mode")
    remaining_ml: int = Field(UNSET, ge=-MAX_TOP_UP_ML, le=MAX_TOP_UP_ML)
    low_balance_ml: int = Field(UNSET, ge=0, le=MAX_TOP_UP_ML)
    rental_expires_at: AwareDatetime = Field(UNSET, description="configure, set_expiry")
    ml: int = Field(UNSET, ge=1, le=MAX_TOP_UP_ML, description="top_up: water to add")
    package: RentPackage = Field(UNSET, description="extend")
    days: int = Field(UNSET, ge=1, le=3660, description="extend")
    reason: str = text(255, default="")
    request_id: str = Field(
        UNSET,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="a retried change with the same id is applied once (e.g. an order id)",
    )


# Fields each service op takes (besides op and reason), and those it needs.
SERVICE_OP_FIELDS: dict[str, frozenset[str]] = {
    "configure": frozenset(
        {"mode", "remaining_ml", "low_balance_ml", "rental_expires_at", "request_id"}
    ),
    "top_up": frozenset({"ml", "request_id"}),
    "extend": frozenset({"package", "days", "request_id"}),
    "set_expiry": frozenset({"rental_expires_at", "request_id"}),
    "lock": frozenset(),
    "unlock": frozenset(),
}
SERVICE_OP_NEEDS: dict[str, frozenset[str]] = {
    "configure": frozenset({"mode"}),
    "top_up": frozenset({"ml"}),
    "set_expiry": frozenset({"rental_expires_at"}),
}


class FilterLifeOut(ResponseModel):
    order: int = Field(description="the filter stage (the spec's order)")
    name: str
    timer: Literal["power_on", "work"] = Field(description="the timer that decided the life")
    life_h: int
    used_h: int
    remaining_h: int
    remaining_pct: int
    reset_count: int = Field(description="replacements so far (the filter cycle)")
    below_threshold: bool


class DeviceRuntimeOut(ResponseModel):
    did: str
    online: bool
    node: str | None = Field(description="admins only: the gateway node holding it")
    since: UtcDateTime | None = Field(description="online since (the login)")
    last_seen: UtcDateTime | None
    offline_at: UtcDateTime | None = Field(description="when it last went offline")
    offline_reason: str | None
    signal: int | None
    state_bits: int | None
    fault_bits: int | None
    tds_in_ppm: int | None
    tds_out_ppm: int | None
    temperature_dc: int | None = Field(description="temperature, tenths of a degree Celsius")
    flow_total_ml: int | None
    filters: list[FilterLifeOut] = Field(description="life left per stage (the stored report)")


class DailyWaterOut(ResponseModel):
    date: dt.date
    water_ml: int


class DeviceStatisticsOut(ResponseModel):
    did: str
    water_ml_today: int
    water_ml_7d: int
    water_ml_30d: int
    daily: list[DailyWaterOut] = Field(description="the last 30 days, oldest first")
    dispense_count: int
    uptime_s: int | None


class MemberRef(RequestModel):
    """A member named by uid or by mobile number (of the device's vendor): exactly one."""

    uid: str = Field(UNSET, pattern=UID_PATTERN)
    mobile: Mobile = Field(UNSET)


class DeviceBindIn(MemberRef):
    """AB-11. A member binds to themself (uid and mobile may be left out); an admin names the
    member."""


class DeviceShareIn(MemberRef):
    """AB-15: the member to share with."""


class DeviceBindingOut(ResponseModel):
    did: str
    uid: str
    bound_tms: UtcDateTime


class DeviceShareOut(ResponseModel):
    did: str
    uid: str
    name: str = Field(description="the member's name")
    created_tms: UtcDateTime


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


async def _owned_device(call: Call, action: str) -> Device:
    """The path's device for an owner-only action of a member (admins: visible is enough)."""
    principal = call.principal
    device = await visible_device(principal, call.params.did)
    if principal.role is Role.MEMBER and device.owner_id != principal.subject:
        raise Forbidden(f"a member the device is shared with may use it, not {action} it")
    return device


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"body {field}: {message}", data=[{"field": field, "message": message}])


async def _named_member(principal: Principal, ref: MemberRef, vendor_code: str) -> Member:
    """The member a body names (uid or mobile, exactly one) in the device's vendor, if the
    caller may see it; 404 otherwise."""
    given = ref.model_fields_set & {"uid", "mobile"}
    if len(given) != 1:
        raise _invalid("uid", "give either uid or mobile")
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


async def _visible_node(principal: Principal, agent_id: int, vendor_code: str) -> Agent:
    node = await visible_agents(principal).get_or_none(id=agent_id, vendor_id=vendor_code)
    if node is None:
        raise NotFoundError(f"agent {agent_id} not found")
    return node


def _derive(app: web.Application) -> Callable[[str, int], bytes]:
    """The node's key derivation: master secret + did + key version."""
    master = app[SETTINGS].master_secret_bytes()
    return lambda did, version: derive_device_key(master, did, version)


async def _publish_logins(
    app: web.Application, devices: Sequence[Device], *, kick: str | None = None
) -> None:
    """Copy the devices' login entries (state, key version) to Redis at once (the registry
    sync would within seconds), then close their connections wherever they are with the kick
    verb `kick` ("disable" or "revoke": the offline reason the status shows)."""
    entries = [LoginEntry(d.did, int(d.state), d.key_version) for d in devices]
    await app[DEVICE_GATEWAY].publish_logins(entries, kick=kick)


async def _runtime(app: web.Application, dids: Sequence[str]) -> dict[str, RuntimeStatus]:
    """Runtime status of many devices in one batched call."""
    return await app[DEVICE_GATEWAY].runtime_status(dids)


# ----------------------------------------------------------------------------- shaping


def device_out(
    device: Device,
    viewer: Principal,
    *,
    online: bool,
    shares: int | None = None,
    relation: Relation | None = None,
) -> DeviceOut:
    """One device for `viewer`; `relation`: how the member in question stands to it."""
    admin = viewer.role in ADMIN_ROLES
    lbs = None
    if device.lbs_lat_e6 is not None and device.lbs_lng_e6 is not None:
        lbs = LbsOut(lat_e6=device.lbs_lat_e6, lng_e6=device.lbs_lng_e6)
    return DeviceOut(
        did=device.did,
        vid=device.vendor_id,
        state=device.state,
        type=device.type,
        model=device.model,
        brand=device.brand,
        name=device.profile_name,
        hw_version=device.hw_version,
        sw_version=device.sw_version,
        fw_version=device.fw_version,
        manufacture_tms=device.manufactured_at,
        reg_tms=device.created_at,
        atv_tms=device.activated_at,
        deregistered_tms=device.deregistered_at,
        online=online,
        uid=device.owner_id,
        bound_tms=device.bound_at,
        shares=shares if admin or relation is Relation.OWNER else None,
        relation=relation,
        agent_id=device.agent_id if admin else None,
        key_version=device.key_version if admin else None,
        manufacture=ManufactureOut(
            product_id=device.product_id, qc_id=device.qc_id, qc_tms=device.qc_at
        ),
        installation=InstallationOut(
            installer_id=device.installer_id, install_tms=device.installed_at
        ),
        basic=BasicOut(
            platform=device.platform,
            project=device.project,
            net_entry=device.net_entry,
            net_type=device.net_type,
            dev_idcd=device.dev_idcd,
            sim_iccid=device.sim_iccid,
        ),
        lbs=lbs,
    )


def _is_online(runtime: dict[str, RuntimeStatus], did: str) -> bool:
    status = runtime.get(did)
    return status is not None and status.online


async def device_outs(
    app: web.Application,
    devices: Sequence[Device],
    viewer: Principal,
    *,
    runtime: dict[str, RuntimeStatus] | None = None,
    member_uid: str | None = None,
) -> list[DeviceOut]:
    """A page of devices: one runtime read, one share count and one relation query, whatever
    the page size. `member_uid`: whose relation to show (default: a member viewer's own)."""
    dids = [d.did for d in devices]
    if runtime is None:
        runtime = await _runtime(app, dids)
    counts = await share_counts(dids)
    if member_uid is None and viewer.role is Role.MEMBER:
        member_uid = viewer.subject
    related = await relations(devices, member_uid) if member_uid is not None else {}
    return [
        device_out(
            device,
            viewer,
            online=_is_online(runtime, device.did),
            shares=counts.get(device.did, 0),
            relation=related.get(device.did),
        )
        for device in devices
    ]


def profile_out(device: Device) -> DeviceProfileOut:
    return DeviceProfileOut(
        did=device.did,
        name=device.profile_name,
        remark=device.profile_remark,
        location=device.profile_location,
    )


def _utc(seconds: int | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


def _utc_ms(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


_SERVICE_MODES = {int(m) for m in ServiceMode}


def service_out(did: str, state: ServiceState, applied: bool | None = None) -> DeviceServiceOut:
    return DeviceServiceOut(
        did=did,
        mode=ServiceMode(state.mode) if state.mode in _SERVICE_MODES else None,
        remaining_ml=state.remaining_ml,
        low_balance_ml=state.low_balance_ml,
        rental_expires_at=_utc(state.rental_expires_at),
        locked=state.locked,
        lock_reasons=state.lock_reasons,
        version=state.version,
        applied=applied,
    )


def keys_csv(keys: Sequence[DeviceKeyOut]) -> str:
    """The factory's file: a header line, then did,key,key_version per device (CRLF)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["did", "key", "key_version"])
    for item in keys:
        writer.writerow([item.did, item.key, item.key_version])
    return out.getvalue()


def wants_csv(request: web.Request, query: RegisterQuery) -> bool:
    if query.format == "csv":
        return True
    return CSV_TYPE in request.headers.get("Accept", "").lower()


def config_changes(body: DeviceConfigIn) -> dict[str, Any]:
    """The device columns an AB-04 body sets (only what was given)."""
    given = body.model_fields_set
    changes: dict[str, Any] = {
        name: getattr(body, name)
        for name in ("type", "model", "brand", "hw_version", "sw_version", "fw_version")
        if name in given
    }
    if "manufacture_tms" in given:
        changes["manufactured_at"] = body.manufacture_tms
    columns = {
        "manufacture": {"product_id": "product_id", "qc_id": "qc_id", "qc_tms": "qc_at"},
        "installation": {"installer_id": "installer_id", "install_tms": "installed_at"},
        "basic": {name: name for name in BasicIn.model_fields},
    }
    for group, mapping in columns.items():
        if group in given:
            sub = getattr(body, group)
            changes.update({mapping[f]: getattr(sub, f) for f in sub.model_fields_set})
    if "lbs" in given:
        changes["lbs_lat_e6"] = None if body.lbs is None else body.lbs.lat_e6
        changes["lbs_lng_e6"] = None if body.lbs is None else body.lbs.lng_e6
    if "agent_id" in given:
        changes["agent_id"] = body.agent_id
    return changes


def check_service_fields(body: DeviceServiceIn) -> None:
    """Refuse fields that do not belong to the op, and missing ones it needs (422)."""
    given = body.model_fields_set - {"op", "reason"}
    extra = sorted(given - SERVICE_OP_FIELDS[body.op])
    if extra:
        raise _invalid(extra[0], f"does not apply to op {body.op}")
    missing = sorted(SERVICE_OP_NEEDS.get(body.op, frozenset()) - given)
    if missing:
        raise _invalid(missing[0], f"op {body.op} needs it")


# A device the gateway has never seen.
NEVER_SEEN = RuntimeStatus(
    online=False, node=None, since_ms=None, last_seen_ms=None, offline_at_ms=None,
    offline_reason=None, signal=None, state_bits=None, fault_bits=None, tds_in_ppm=None,
    tds_out_ppm=None, temperature_dc=None, flow_total_ml=None,
)  # fmt: skip
READINGS = (
    "signal", "state_bits", "fault_bits", "tds_in_ppm", "tds_out_ppm", "temperature_dc",
    "flow_total_ml",
)  # fmt: skip


def filter_life_out(life: StageLife) -> FilterLifeOut:
    values = dataclasses.asdict(life)
    values["timer"] = "power_on" if life.timer is Timer.POWER_ON else "work"
    return FilterLifeOut(**values)


def runtime_out(
    did: str, status: RuntimeStatus, lives: Sequence[StageLife], *, admin: bool
) -> DeviceRuntimeOut:
    return DeviceRuntimeOut(
        did=did,
        online=status.online,
        node=status.node if admin else None,
        since=_utc_ms(status.since_ms),
        last_seen=_utc_ms(status.last_seen_ms),
        offline_at=_utc_ms(status.offline_at_ms),
        offline_reason=status.offline_reason,
        filters=[filter_life_out(life) for life in lives],
        **{name: getattr(status, name) for name in READINGS},
    )


# ----------------------------------------------------------------------------- routes

routes = RouteTable(
    "devices",
    "Devices (设备, AB-01..16): registry and keys, vendor configuration, user profile, service "
    "state, runtime status, statistics, binding and sharing (docs/api-devices.md).",
)


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
    "gateway for the whole page in one batch.",
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
        filters["vendor_id"] = query.vid
    if query.uid is not None:
        filters["owner_id"] = query.uid
    if query.bound is not None:
        filters["owner_id__isnull"] = not query.bound
    if query.agent_id is not None:
        node = await visible_agents(principal).get_or_none(id=query.agent_id)
        if node is None:
            raise NotFoundError(f"agent {query.agent_id} not found")
        filters["agent__path__startswith"] = node.path
    qs = qs.filter(**filters).order_by(*query.ordering(pk="did"))
    if query.online is None:
        total = await qs.count()
        rows = list(await qs.offset(query.offset).limit(query.limit))
        return Page(await device_outs(call.app, rows, principal), total)
    dids = list(await qs.limit(MAX_ONLINE_SCAN + 1).values_list("did", flat=True))
    if len(dids) > MAX_ONLINE_SCAN:
        raise InvalidInput(
            f"more than {MAX_ONLINE_SCAN} devices match: narrow the list (vid, agent_id, "
            "state, type, model) before filtering by online"
        )
    runtime = await _runtime(call.app, [str(d) for d in dids])
    matching = [str(d) for d in dids if _is_online(runtime, str(d)) is query.online]
    page = matching[query.offset : query.offset + query.limit]
    by_did = {d.did: d for d in await Device.filter(did__in=page)}
    rows = [by_did[d] for d in page if d in by_did]
    return Page(await device_outs(call.app, rows, principal, runtime=runtime), len(matching))


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
        node = await _visible_node(call.principal, body.agent_id, body.vid)
        attributes["agent_id"] = node.id
    issued = await register_devices(
        body.vid,
        body.count,
        _derive(call.app),
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
    device = await _owned_device(call, "configure")
    refused = refused_config_groups(principal.role, body.model_fields_set)
    if refused:
        raise Forbidden(f"a {principal.role} may not change {', '.join(refused)}")
    changes = config_changes(body)
    if "agent_id" in changes:
        if changes["agent_id"] is not None:
            await _visible_node(principal, changes["agent_id"], device.vendor_id)
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


@routes.get(
    "/devices/{did}/svc",
    seed="AB-07",
    summary="Read a device's service state (mode, quota, rental, locks)",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceServiceOut,
    errors=(503,),
)
async def read_device_service(call: Call) -> DeviceServiceOut:
    device = await visible_device(call.principal, call.params.did)
    return service_out(device.did, await call.app[DEVICE_GATEWAY].read_service(device.did))


@routes.put(
    "/devices/{did}/svc",
    seed="AB-08",
    summary="Change a device's service state",
    roles=PLATFORM_OR_VENDOR,
    params=DevicePath,
    body=DeviceServiceIn,
    response=DeviceServiceOut,
    errors=(409, 503),
    description="`op`: configure (mode, remaining_ml, rental_expires_at, low_balance_ml), "
    "top_up (ml), extend (package or days), set_expiry (rental_expires_at), lock, unlock. "
    "The device gets the new state at once when connected, else at its next login. With a "
    "request_id a retried change is applied once (`applied: false` the second time).",
)
async def change_device_service(call: Call) -> DeviceServiceOut:
    body: DeviceServiceIn = call.body
    principal = call.principal
    device = await visible_device(principal, call.params.did)
    check_changeable(device)
    check_service_fields(body)
    actor = f"{principal.role}:{principal.subject}"[:64]
    expires_s = None if body.rental_expires_at is None else int(body.rental_expires_at.timestamp())
    change = ServiceChangeRequest(
        op=body.op, mode=body.mode, remaining_ml=body.remaining_ml,
        low_balance_ml=body.low_balance_ml, rental_expires_at=expires_s, ml=body.ml,
        package=body.package, days=body.days, reason=body.reason, request_id=body.request_id,
    )  # fmt: skip
    gateway = call.app[DEVICE_GATEWAY]
    outcome, state = await gateway.change_service(device.did, change, actor=actor)
    return service_out(device.did, state, applied=outcome.applied)


@routes.get(
    "/devices/{did}/stat",
    seed="AB-09",
    summary="Read a device's runtime status",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceRuntimeOut,
    errors=(503,),
    description="Online since, last seen, when and why it last went offline (from the "
    "gateway, exact to the login and the connection's end), the latest report (signal, state "
    "and fault bits, TDS, temperature, flow) and the life left in each filter stage.",
)
async def read_device_runtime(call: Call) -> DeviceRuntimeOut:
    principal = call.principal
    device = await visible_device(principal, call.params.did)
    status = (await _runtime(call.app, [device.did])).get(device.did, NEVER_SEEN)
    snapshot = await DeviceSnapshot.get_or_none(did=device.did)
    spec = (await filters_of_devices([device.did])).get(device.did)
    lives = []
    if spec is not None and snapshot is not None and snapshot.filters:
        threshold = call.app[SETTINGS].filter_threshold_pct
        lives = filter_life(snapshot.filters, spec.stages, threshold)
    return runtime_out(device.did, status, lives, admin=principal.role in ADMIN_ROLES)


@routes.get(
    "/devices/{did}/statistics",
    seed="AB-10",
    summary="Read a device's statistics (water per day, week, month; dispenses; uptime)",
    roles=ANY_ROLE,
    params=DevicePath,
    response=DeviceStatisticsOut,
    description="The seed gives AB-09 and AB-10 the same path (/stat); statistics are served "
    "at /statistics. Water comes from the usage ledger (UTC days); uptime is the current "
    "connection's (null while offline).",
)
async def read_device_statistics(call: Call) -> DeviceStatisticsOut:
    device = await visible_device(call.principal, call.params.did)
    status = (await _runtime(call.app, [device.did])).get(device.did)
    since_ms = status.since_ms if status is not None and status.online else None
    stats = await device_statistics(
        device.did, now=dt.datetime.now(dt.UTC), online_since_ms=since_ms
    )
    return DeviceStatisticsOut(
        did=device.did,
        water_ml_today=stats.water_ml_today,
        water_ml_7d=stats.water_ml_7d,
        water_ml_30d=stats.water_ml_30d,
        daily=[DailyWaterOut(date=day, water_ml=ml) for day, ml in stats.daily],
        dispense_count=stats.dispense_count,
        uptime_s=stats.uptime_s,
    )


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
        member = await _named_member(principal, body, device.vendor_id)
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
    device = await _owned_device(call, "unbind")
    await unbind(device)


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
    await _publish_logins(call.app, [device], kick="disable")
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
    issued = await reissue_key(device, _derive(call.app))
    await _publish_logins(call.app, [device], kick="revoke")
    log.info("device_key_reissued", did=device.did, key_version=issued.key_version)
    return DeviceKeyOut(did=issued.did, key=issued.key.hex(), key_version=issued.key_version)


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
    device = await _owned_device(call, "list the shares of")
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
    device = await _owned_device(call, "share")
    member = await _named_member(principal, body, device.vendor_id)
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
    total = await qs.count()
    rows = list(
        await qs.order_by(*query.ordering(pk="did")).offset(query.offset).limit(query.limit)
    )
    return Page(await device_outs(call.app, rows, principal, member_uid=member.uid), total)
