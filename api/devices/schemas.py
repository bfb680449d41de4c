"""Devices' request and response models, path and query parameters (docs/api-devices.md)."""

from __future__ import annotations

import datetime as dt
from typing import ClassVar, Literal, get_args

from pydantic import AwareDatetime, Field
from pydantic.json_schema import SkipJsonSchema

from aquafleet.api.members import UID_PATTERN
from aquafleet.api.schemas import (
    MAX_LIMIT,
    MAX_OFFSET,
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
from aquafleet.models.devices import DeviceState, DeviceType, Relation
from aquafleet.models.ids import device_id
from aquafleet.models.service import MAX_TOP_UP_ML, RENT_PACKAGES, ServiceMode

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
    low_balance: bool = Field(
        UNSET,
        description="true: metered against a quota with at most `low_balance_ml` left, or a "
        "time rental paid until at most `low_balance_days` from now (expired included); "
        f"false: neither. At most {MAX_ONLINE_SCAN} devices may match the other filters",
    )
    low_balance_ml: int = Field(
        UNSET,
        ge=0,
        le=2**31 - 1,
        description="low_balance's quota threshold (default: each device's own low-balance "
        "threshold, else 0: nothing left)",
    )
    low_balance_days: int = Field(
        UNSET,
        ge=0,
        le=365,
        description="low_balance's rental threshold in days (default: rental_reminder_days)",
    )
    filter_due: bool = Field(
        UNSET,
        description="true: a filter stage, by the device's latest report and its filter "
        "spec, has life left below `filter_due_pct` or none; false: not. At most "
        f"{MAX_ONLINE_SCAN} devices may match the other filters",
    )
    filter_due_pct: int = Field(
        UNSET, ge=0, le=100, description="filter_due's threshold (default: filter_threshold_pct)"
    )


class DeviceRecordsQuery(Query):
    limit: int = Field(20, ge=1, le=MAX_LIMIT, description=f"records to return (1..{MAX_LIMIT})")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="records to skip")


class DeviceSessionsQuery(Query):
    limit: int = Field(20, ge=1, le=MAX_LIMIT, description=f"sessions to return (1..{MAX_LIMIT})")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="sessions to skip")


class DeviceSessionOut(ResponseModel):
    """One connection of the device, from its login to its end (docs/devices-status.md)."""

    online: bool = Field(description="the current connection, still running")
    node: str | None = Field(description="admins only: the gateway node that held it")
    since: UtcDateTime = Field(description="its login")
    last_seen: UtcDateTime | None = Field(description="the last frame heard (every few seconds)")
    ended_at: UtcDateTime | None = Field(description="when it ended (null while online)")
    reason: str | None = Field(
        description="why it ended (null while online): idle_timeout, closed_by_device, "
        "replaced, disabled, key_revoked, shutdown, protocol_error, gateway_error, node_lost"
    )
    duration_s: int = Field(description="from its login to its end, or to now while online")


class DeviceRecordOut(ResponseModel):
    """One record of the usage ledger, as the device sent it and the platform metered it."""

    boot: int = Field(description="the device's boot counter")
    rec: int = Field(description="the record's number within that boot")
    kind: Literal["telemetry", "event"]
    event_kind: int | None = Field(description="events: the event's kind (protocol EventKind)")
    device_tms: UtcDateTime | None = Field(
        description="the device's clock when it made the record (null: not a plausible time)"
    )
    received_tms: UtcDateTime = Field(description="when the platform metered it")
    delta_ml: int = Field(description="water this record added to the device's total")
    flow_total_ml: int | None = Field(description="the flow counter's reading, if it had one")
    cnt_epoch: int | None = Field(description="the flow counter's epoch")


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
        description="a retried change with the same id is applied once (e.g. an order id); "
        "another change under an id the device used answers 409 idempotency_key_reused",
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
