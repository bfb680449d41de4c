"""The device registry: purifiers, who they belong to, what the vendor and the user say of them.

A device row holds four groups of fields, kept apart because different people write them:
- identity and lifecycle: did, vendor, type, model, state, key version, times;
- vendor configuration (the seed's 厂商配置, AB-03/04): brand, versions, `manufacture`,
  `installation`, `basic` (platform, network, SIM) and the installed location (`lbs`);
- the user profile (用户配置, AB-05/06): a name, a remark, where the device stands;
- ownership: the agent/dealer node it belongs to (scopes what agents see, like members), the
  member it is bound to (AB-11/13) and the members it is shared with (`DeviceShare`, AB-15/16).

Deregistering (AB-14) never deletes the row: the ledger, service changes and tickets refer to
the did. Clearing a device's information (AB-12, factory reset) removes the binding, the shares
and the profile, never the ledger.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any

from tortoise import fields
from tortoise.expressions import F, Q, Subquery
from tortoise.functions import Count
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.ids import is_valid_device_id
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.vendors import Vendor

if TYPE_CHECKING:
    from aquafleet.models.agents import Agent
    from aquafleet.models.members import Member


class DeviceType(IntEnum):
    """The seed's device types (设备类型)."""

    UNKNOWN = 0
    SALE = 1
    TIME_RENTAL = 2
    VOLUME_RENTAL = 3
    VENDING = 4
    TEST = 8


class DeviceState(IntEnum):
    DISABLED = 0  # may not log in
    INACTIVE = 1  # registered, never connected
    ACTIVE = 2  # has reported at least once
    DEREGISTERED = 3  # may not log in; history kept


LOGIN_ALLOWED = frozenset({DeviceState.INACTIVE, DeviceState.ACTIVE})
MAX_SHARES = 10  # members one device is shared with (a family, an office)


class Device(Model):
    did = fields.CharField(primary_key=True, max_length=16)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="devices", on_delete=fields.RESTRICT
    )
    type = fields.IntEnumField(DeviceType, default=DeviceType.UNKNOWN)
    model = fields.CharField(max_length=32, default="")
    key_version = fields.IntField(default=1)
    state = fields.IntEnumField(DeviceState, default=DeviceState.INACTIVE)
    fw_version = fields.CharField(max_length=32, default="")
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True, db_index=True)
    activated_at = fields.DatetimeField(null=True)
    deregistered_at = fields.DatetimeField(null=True)

    # Ownership. Columns added to existing rows need a database default (db_default).
    agent: fields.ForeignKeyNullableRelation[Agent] = fields.ForeignKeyField(
        "models.Agent", related_name="devices", null=True, on_delete=fields.RESTRICT, db_index=True
    )
    owner: fields.ForeignKeyNullableRelation[Member] = fields.ForeignKeyField(
        "models.Member",
        related_name="owned_devices",
        null=True,
        on_delete=fields.RESTRICT,
        db_index=True,
    )
    bound_at = fields.DatetimeField(null=True)

    # Vendor configuration (AB-03/04).
    brand = fields.CharField(max_length=64, default="", db_default="")
    hw_version = fields.CharField(max_length=32, default="", db_default="")
    sw_version = fields.CharField(max_length=32, default="", db_default="")
    manufactured_at = fields.DatetimeField(null=True)  # the seed's manufacture_tms
    product_id = fields.CharField(max_length=20, default="", db_default="")
    qc_id = fields.CharField(max_length=64, default="", db_default="")
    qc_at = fields.DatetimeField(null=True)  # qc_tms
    installer_id = fields.CharField(max_length=64, default="", db_default="")
    installed_at = fields.DatetimeField(null=True)  # install_tms
    platform = fields.CharField(max_length=32, default="", db_default="")
    project = fields.CharField(max_length=64, default="", db_default="")
    net_entry = fields.CharField(max_length=128, default="", db_default="")
    net_type = fields.CharField(max_length=16, default="", db_default="")
    dev_idcd = fields.CharField(max_length=32, default="", db_default="")  # MAC or IMEI
    sim_iccid = fields.CharField(max_length=22, default="", db_default="")
    lbs_lat_e6 = fields.IntField(null=True)  # latitude, millionths of a degree
    lbs_lng_e6 = fields.IntField(null=True)  # longitude, millionths of a degree

    # User profile (AB-05/06).
    profile_name = fields.CharField(max_length=64, default="", db_default="")
    profile_remark = fields.CharField(max_length=255, default="", db_default="")
    profile_location = fields.CharField(max_length=128, default="", db_default="")

    vendor_id: str
    agent_id: int | None
    owner_id: str | None

    class Meta:
        table = "device"


class DeviceShare(Model):
    """A member the device's owner shares it with: they may use it, not unbind or share it."""

    id = fields.IntField(primary_key=True)
    device: fields.ForeignKeyRelation[Device] = fields.ForeignKeyField(
        "models.Device", related_name="shares", on_delete=fields.RESTRICT
    )
    member: fields.ForeignKeyRelation[Member] = fields.ForeignKeyField(
        "models.Member", related_name="device_shares", on_delete=fields.RESTRICT, db_index=True
    )
    created_at = fields.DatetimeField(auto_now_add=True)

    device_id: str
    member_id: str

    class Meta:
        table = "device_share"
        unique_together = (("device", "member"),)


# ----------------------------------------------------------------------------- field groups

# Columns of each group (the API names them; these are the stored names).
VENDOR_CONFIG_COLUMNS = (
    "type", "model", "brand", "hw_version", "sw_version", "fw_version", "manufactured_at",
    "product_id", "qc_id", "qc_at", "installer_id", "installed_at", "platform", "project",
    "net_entry", "net_type", "dev_idcd", "sim_iccid", "lbs_lat_e6", "lbs_lng_e6", "agent_id",
)  # fmt: skip
PROFILE_COLUMNS = ("profile_name", "profile_remark", "profile_location")
PROFILE_BLANK: dict[str, Any] = {name: "" for name in PROFILE_COLUMNS}

# AB-04: which top-level groups of the vendor configuration each caller may change. The
# platform and the vendor own the device's data; agents and dealers install devices (where,
# when, by whom, and which of their nodes holds it); an owner may say where it stands.
ALL_CONFIG_GROUPS = frozenset(
    {"type", "model", "brand", "hw_version", "sw_version", "fw_version", "manufacture_tms",
     "manufacture", "installation", "basic", "lbs", "agent_id"}
)  # fmt: skip
CONFIG_GROUPS_BY_ROLE: Mapping[Role, frozenset[str]] = {
    Role.PLATFORM: ALL_CONFIG_GROUPS,
    Role.VENDOR: ALL_CONFIG_GROUPS,
    Role.AGENT: frozenset({"installation", "lbs", "agent_id"}),
    Role.DEALER: frozenset({"installation", "lbs", "agent_id"}),
    Role.MEMBER: frozenset({"lbs"}),
}


class Relation(StrEnum):
    """How a member stands to a device."""

    OWNER = "owner"
    SHARED = "shared"


# ----------------------------------------------------------------------------- errors


class DeviceDeregistered(Conflict):
    code = "device_deregistered"


class DeviceDisabled(Conflict):
    code = "device_disabled"


class DeviceBound(Conflict):
    code = "device_bound"


class ShareExists(Conflict):
    code = "share_exists"


class ShareLimit(Conflict):
    code = "share_limit"


class SharingDisabled(Conflict):
    code = "sharing_disabled"


# ----------------------------------------------------------------------------- pure rules


def check_changeable(device: Device) -> None:
    """A deregistered device's data is history: nothing of it changes any more."""
    if device.state is DeviceState.DEREGISTERED:
        raise DeviceDeregistered(f"device {device.did} is deregistered")


def check_usable(device: Device) -> None:
    """A device someone may command or bind: neither deregistered nor disabled."""
    check_usable_state(device.did, device.state)


def check_usable_state(did: str, state: DeviceState) -> None:
    """check_usable for a device known by its id and state alone."""
    if state is DeviceState.DEREGISTERED:
        raise DeviceDeregistered(f"device {did} is deregistered")
    if state is DeviceState.DISABLED:
        raise DeviceDisabled(f"device {did} is disabled")


def refused_config_groups(role: Role, groups: Iterable[str]) -> list[str]:
    """The groups of an AB-04 change the caller's role may not change (sorted)."""
    allowed = CONFIG_GROUPS_BY_ROLE.get(role, frozenset())
    return sorted(set(groups) - allowed)


def sharing_allowed(vendor: Vendor) -> bool:
    """The vendor's AX-08 option `device_sharing` (on unless switched off)."""
    return bool((vendor.config or {}).get("device_sharing", True))


# ----------------------------------------------------------------------------- scoping


def of_member(uid: str) -> Q:
    """Devices bound to the member, or shared with them."""
    shared = DeviceShare.filter(member_id=uid).values("device_id")
    return Q(owner_id=uid) | Q(did__in=Subquery(shared))


def visible_devices(principal: Principal) -> QuerySet[Device]:
    """Every device in the caller's subtree; for a member, those bound or shared to them."""
    if principal.role is Role.PLATFORM:
        return Device.all()
    if principal.role is Role.MEMBER:
        return Device.filter(of_member(principal.subject))
    if principal.vendor_code is None:
        return Device.filter(did__in=[])
    qs = Device.filter(vendor_id=principal.vendor_code)
    if principal.role is Role.VENDOR:
        return qs
    if principal.agent_path:  # agents and dealers: devices of their node and the nodes below
        return qs.filter(agent__path__startswith=principal.agent_path)
    return Device.filter(did__in=[])


async def find_visible(principal: Principal, did: str) -> Device | None:
    """The device if it exists in the caller's subtree (an id that cannot exist: None)."""
    if not is_valid_device_id(did):
        return None
    return await visible_devices(principal).filter(did=did).first()


async def relations(devices: Sequence[Device], uid: str) -> dict[str, Relation | None]:
    """How the member stands to each device (owner, shared, neither), in one query."""
    dids = [d.did for d in devices if d.owner_id != uid]
    shared: set[str] = set()
    if dids:
        rows = await DeviceShare.filter(device_id__in=dids, member_id=uid).values_list(
            "device_id", flat=True
        )
        shared = {str(did) for did in rows}
    return {
        d.did: Relation.OWNER
        if d.owner_id == uid
        else (Relation.SHARED if d.did in shared else None)
        for d in devices
    }


async def share_counts(dids: Sequence[str]) -> dict[str, int]:
    """Members each device is shared with, in one query."""
    if not dids:
        return {}
    rows = (
        await DeviceShare.filter(device_id__in=list(dids))
        .annotate(n=Count("id"))
        .group_by("device_id")
        .values_list("device_id", "n")
    )
    return {str(did): int(n) for did, n in rows}


async def bound_device_counts(uids: Sequence[str]) -> dict[str, int]:
    """Devices bound to each member, in one query."""
    if not uids:
        return {}
    rows = (
        await Device.filter(owner_id__in=list(uids))
        .annotate(n=Count("did"))
        .group_by("owner_id")
        .values_list("owner_id", "n")
    )
    return {str(uid): int(n) for uid, n in rows}


# ----------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class ReissuedKey:
    did: str
    key: bytes
    key_version: int


async def reissue_key(device: Device, derive_key: Callable[[str, int], bytes]) -> ReissuedKey:
    """Bump the key version (the old key stops verifying) and derive the new key."""
    check_changeable(device)
    await Device.filter(did=device.did).update(
        key_version=F("key_version") + 1, updated_at=dt.datetime.now(dt.UTC)
    )
    await device.refresh_from_db(fields=["key_version", "updated_at"])
    return ReissuedKey(device.did, derive_key(device.did, device.key_version), device.key_version)


async def deregister_device(device: Device) -> Device:
    """AB-14: no more logins, no more changes; the row and its history stay. Idempotent."""
    if device.state is DeviceState.DEREGISTERED:
        return device
    device.state = DeviceState.DEREGISTERED
    device.deregistered_at = dt.datetime.now(dt.UTC)
    await device.save(update_fields=["state", "deregistered_at", "updated_at"])
    return device


async def update_device(device: Device, changes: Mapping[str, Any]) -> Device:
    """Write the given columns (vendor configuration or profile) of a changeable device."""
    check_changeable(device)
    unknown = set(changes) - set(VENDOR_CONFIG_COLUMNS) - set(PROFILE_COLUMNS)
    if unknown:
        raise InvalidInput(f"not a device setting: {sorted(unknown)[0]}")
    if not changes:
        return device
    device.update_from_dict(dict(changes))
    await device.save(update_fields=[*changes, "updated_at"])
    return device


async def bind(device: Device, member: Member) -> Device:
    """AB-11: the member becomes the owner. Binding again to the same member changes nothing;
    a device bound to someone else answers DeviceBound (its owner unbinds it first)."""
    from aquafleet.models.members import LOGIN_ALLOWED as MEMBER_LOGIN_ALLOWED

    check_usable(device)
    if device.vendor_id != member.vendor_id:
        raise NotFound(f"device {device.did} not found")
    if member.state not in MEMBER_LOGIN_ALLOWED:
        raise Conflict(f"member {member.uid} cannot use devices (disabled or deregistered)")
    now = dt.datetime.now(dt.UTC)
    async with in_transaction("default"):
        taken = await Device.filter(did=device.did, owner_id=None).update(
            owner_id=member.uid, bound_at=now, updated_at=now
        )
        if not taken:
            await device.refresh_from_db(fields=["owner_id", "bound_at"])
            if device.owner_id != member.uid:
                raise DeviceBound(f"device {device.did} is bound to another member")
            return device
        # The owner needs no share of their own device.
        await DeviceShare.filter(device_id=device.did, member_id=member.uid).delete()
    await device.refresh_from_db(fields=["owner_id", "bound_at", "updated_at"])
    return device


async def unbind(device: Device) -> Device:
    """AB-13: the owner lets go; the shares the owner granted end with the binding."""
    async with in_transaction("default"):
        await DeviceShare.filter(device_id=device.did).delete()
        await Device.filter(did=device.did).update(
            owner_id=None, bound_at=None, updated_at=dt.datetime.now(dt.UTC)
        )
    await device.refresh_from_db(fields=["owner_id", "bound_at", "updated_at"])
    return device


async def release_member(uid: str) -> int:
    """A deregistered member lets go of everything: the devices it owned are unbound (the
    shares granted on them end too) and the shares it held end. Returns the devices unbound."""
    now = dt.datetime.now(dt.UTC)
    async with in_transaction("default"):
        owned = list(await Device.filter(owner_id=uid).values_list("did", flat=True))
        if owned:
            await DeviceShare.filter(device_id__in=owned).delete()
            await Device.filter(did__in=owned).update(owner_id=None, bound_at=None, updated_at=now)
        await DeviceShare.filter(member_id=uid).delete()
    return len(owned)


async def clear_info(device: Device) -> Device:
    """AB-12 (恢复出厂): binding, shares and profile go; the ledger and service history stay."""
    check_changeable(device)
    async with in_transaction("default"):
        await DeviceShare.filter(device_id=device.did).delete()
        await Device.filter(did=device.did).update(
            owner_id=None, bound_at=None, updated_at=dt.datetime.now(dt.UTC), **PROFILE_BLANK
        )
    await device.refresh_from_db()
    return device


async def share(device: Device, owner_uid: str, member: Member) -> DeviceShare:
    """AB-15: the owner shares the device with another member of its vendor."""
    from aquafleet.models.members import LOGIN_ALLOWED as MEMBER_LOGIN_ALLOWED

    check_usable(device)
    if device.owner_id != owner_uid:
        raise Conflict(f"only the owner of device {device.did} shares it")
    if member.uid == owner_uid:
        raise InvalidInput("the owner needs no share of their own device")
    if member.vendor_id != device.vendor_id or member.state not in MEMBER_LOGIN_ALLOWED:
        raise NotFound("no such member")
    vendor = await Vendor.get(code=device.vendor_id)
    if not sharing_allowed(vendor):
        raise SharingDisabled(f"vendor {vendor.code} has switched device sharing off")
    async with in_transaction("default"):
        if await DeviceShare.exists(device_id=device.did, member_id=member.uid):
            raise ShareExists(f"device {device.did} is already shared with {member.uid}")
        if await DeviceShare.filter(device_id=device.did).count() >= MAX_SHARES:
            raise ShareLimit(f"a device is shared with at most {MAX_SHARES} members")
        return await DeviceShare.create(device_id=device.did, member_id=member.uid)


async def unshare(device: Device, uid: str) -> None:
    """AB-16: end one share; NotFound when there is none."""
    removed = await DeviceShare.filter(device_id=device.did, member_id=uid).delete()
    if not removed:
        raise NotFound(f"device {device.did} is not shared with {uid}")
