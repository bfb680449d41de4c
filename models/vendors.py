"""Vendors (brands, the seed's 运营商): the root of every tenant subtree."""

from __future__ import annotations

from enum import IntEnum

from tortoise import fields
from tortoise.models import Model


class VendorState(IntEnum):
    DISABLED = 0
    INACTIVE = 1
    ACTIVE = 2


class Vendor(Model):
    """A brand. `code` is the 4-character prefix of its device, member and order ids."""

    code = fields.CharField(primary_key=True, max_length=4)
    name = fields.CharField(max_length=128)
    state = fields.IntEnumField(VendorState, default=VendorState.ACTIVE)
    next_device_serial = fields.BigIntField(default=1)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "vendor"
