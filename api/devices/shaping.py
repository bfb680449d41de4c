"""Devices' answers shaped per role (what an admin sees, what a member sees)."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from aquafleet.api.devices.access import invalid_field, runtime_of
from aquafleet.api.devices.schemas import (
    CSV_TYPE,
    SERVICE_OP_FIELDS,
    SERVICE_OP_NEEDS,
    BasicIn,
    BasicOut,
    DeviceConfigIn,
    DeviceKeyOut,
    DeviceOut,
    DeviceProfileOut,
    DeviceRuntimeOut,
    DeviceServiceIn,
    DeviceServiceOut,
    DeviceSessionOut,
    FilterLifeOut,
    InstallationOut,
    LbsOut,
    ManufactureOut,
    RegisterQuery,
)
from aquafleet.gateway.device_status import RuntimeStatus, SessionRecord
from aquafleet.models.devices import Device, Relation, relations, share_counts
from aquafleet.models.filters import StageLife, Timer
from aquafleet.models.service import ServiceMode
from aquafleet.models.tenancy import ADMIN_ROLES, Principal, Role

if TYPE_CHECKING:
    from aquafleet.gateway.service_state import ServiceState


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


def is_online(runtime: dict[str, RuntimeStatus], did: str) -> bool:
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
        runtime = await runtime_of(app, dids)
    counts = await share_counts(dids)
    if member_uid is None and viewer.role is Role.MEMBER:
        member_uid = viewer.subject
    related = await relations(devices, member_uid) if member_uid is not None else {}
    return [
        device_out(
            device,
            viewer,
            online=is_online(runtime, device.did),
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


def utc_from_s(seconds: int | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


def utc_from_ms(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


_SERVICE_MODES = {int(m) for m in ServiceMode}


def service_out(did: str, state: ServiceState, applied: bool | None = None) -> DeviceServiceOut:
    return DeviceServiceOut(
        did=did,
        mode=ServiceMode(state.mode) if state.mode in _SERVICE_MODES else None,
        remaining_ml=state.remaining_ml,
        low_balance_ml=state.low_balance_ml,
        rental_expires_at=utc_from_s(state.rental_expires_at),
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
        raise invalid_field(extra[0], f"does not apply to op {body.op}")
    missing = sorted(SERVICE_OP_NEEDS.get(body.op, frozenset()) - given)
    if missing:
        raise invalid_field(missing[0], f"op {body.op} needs it")


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
        since=utc_from_ms(status.since_ms),
        last_seen=utc_from_ms(status.last_seen_ms),
        offline_at=utc_from_ms(status.offline_at_ms),
        offline_reason=status.offline_reason,
        filters=[filter_life_out(life) for life in lives],
        **{name: getattr(status, name) for name in READINGS},
    )


def session_out(session: SessionRecord, now_ms: int, *, admin: bool) -> DeviceSessionOut:
    return DeviceSessionOut(
        online=session.ended_at_ms is None,
        node=session.node if admin else None,
        since=dt.datetime.fromtimestamp(session.since_ms / 1000, dt.UTC),
        last_seen=utc_from_ms(session.last_seen_ms),
        ended_at=utc_from_ms(session.ended_at_ms),
        reason=session.reason,
        duration_s=session.duration_ms(now_ms) // 1000,
    )
