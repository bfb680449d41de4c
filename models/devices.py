"""The device registry: purifiers, their vendor, type and the version of their key."""

from __future__ import annotations

from enum import IntEnum

from tortoise import fields
from tortoise.models import Model

from models.vendors import Vendor


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

    vendor_id: str

    class Meta:
        table = "device"
