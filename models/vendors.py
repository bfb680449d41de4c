"""Vendors (brands, the seed's 运营商): the root of every tenant subtree."""

from __future__ import annotations

import datetime as dt
import secrets
import string
from enum import IntEnum
from typing import Any

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aquafleet.models.errors import Conflict, InvalidInput
from aquafleet.models.ids import check_vendor_code
from aquafleet.models.sealed import SecretBox


class VendorState(IntEnum):
    DISABLED = 0
    INACTIVE = 1
    ACTIVE = 2
    DEREGISTERED = 3  # 注销 (AX-13): nobody of it logs in; its devices' history and ledger stay


class Vendor(Model):
    """A brand. `code` is the 4-character prefix of its device, member and order ids."""

    code = fields.CharField(primary_key=True, max_length=4)
    name = fields.CharField(max_length=128)
    state = fields.IntEnumField(VendorState, default=VendorState.ACTIVE)
    next_device_serial = fields.BigIntField(default=1)
    created_at = fields.DatetimeField(auto_now_add=True)
    # The seed's AX-01 fields.
    # Columns added to existing rows need a database default (db_default).
    type = fields.SmallIntField(default=0, db_default=0)
    abbv = fields.CharField(max_length=64, default="", db_default="")
    logo = fields.CharField(max_length=255, default="", db_default="")
    domain = fields.CharField(max_length=128, default="", db_default="")
    contact = fields.CharField(max_length=64, default="", db_default="")
    mobile = fields.CharField(max_length=20, default="", db_default="")
    wechat = fields.CharField(max_length=64, default="", db_default="")
    email = fields.CharField(max_length=128, default="", db_default="")
    area = fields.CharField(max_length=128, default="", db_default="")
    address = fields.CharField(max_length=255, default="", db_default="")
    remark = fields.CharField(max_length=255, default="", db_default="")
    reserved = fields.CharField(max_length=255, default="", db_default="")
    # WeChat official account (mp) and merchant (mch) settings; the secrets are write-only and
    # stored sealed (models/sealed.py: `enc1:` + base64 of nonce, ciphertext and tag).
    mp_gid = fields.CharField(max_length=64, default="", db_default="")
    mp_appid = fields.CharField(max_length=64, default="", db_default="")
    mp_secret = fields.CharField(max_length=512, default="", db_default="")
    mch_gid = fields.CharField(max_length=64, default="", db_default="")
    mch_appid = fields.CharField(max_length=64, default="", db_default="")
    mch_secret = fields.CharField(max_length=512, default="", db_default="")
    # Configuration options (AX-08), validated by the API's VendorConfig schema.
    config: dict[str, Any] | None = fields.JSONField(null=True)
    # Signed requests from the vendor's own servers: the secret is derived from the master
    # secret and this key (never stored); a new key revokes the old one.
    app_key = fields.CharField(max_length=32, null=True, unique=True)
    updated_at = fields.DatetimeField(auto_now=True, null=True)
    deregistered_at = fields.DatetimeField(null=True)

    class Meta:
        table = "vendor"


class VendorContract(Model):
    """A signing (contract) record of a vendor (AX-09..12)."""

    id = fields.IntField(primary_key=True)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="contracts", on_delete=fields.RESTRICT
    )
    contract_no = fields.CharField(max_length=64)
    title = fields.CharField(max_length=128, default="")
    signed_on = fields.DateField()
    starts_on = fields.DateField()
    ends_on = fields.DateField(null=True)
    amount_fen = fields.BigIntField(default=0)
    remark = fields.CharField(max_length=255, default="")
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    vendor_id: str

    class Meta:
        table = "vendor_contract"
        unique_together = (("vendor", "contract_no"),)


# ----------------------------------------------------------------------------- services


class VendorExists(Conflict):
    code = "vendor_exists"


class VendorDeregistered(Conflict):
    code = "vendor_deregistered"


class ContractExists(Conflict):
    code = "contract_exists"


CODE_ALPHABET = string.ascii_uppercase + string.digits
_CODE_TRIES = 50


async def _free_code() -> str:
    """A random vendor code nobody uses yet."""
    for _ in range(_CODE_TRIES):
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(4))
        if not await Vendor.filter(code=code).exists():
            return code
    raise Conflict("no free vendor code found; choose one (vid)")


def check_changeable(vendor: Vendor) -> None:
    if vendor.state is VendorState.DEREGISTERED:
        raise VendorDeregistered(f"vendor {vendor.code} is deregistered")


async def register_vendor(
    profile: dict[str, Any],
    username: str,
    password_md5: str,
    code: str | None = None,
    *,
    box: SecretBox | None = None,
) -> Vendor:
    """A new vendor and its admin account (role vendor), in one transaction. With `box`, the
    profile's secrets are sealed for the vendor once its code is known (models/merchants.py)."""
    from aquafleet.models.accounts import AdminAccount, UsernameTaken, check_username, hash_password
    from aquafleet.models.tenancy import Role

    check_username(username)
    if code is not None:
        check_vendor_code(code)
    password_hash = await hash_password(password_md5)
    async with in_transaction("default"):
        if code is None:
            code = await _free_code()
        elif await Vendor.filter(code=code).exists():
            raise VendorExists(f"vendor {code} already exists")
        if await AdminAccount.filter(username__iexact=username).exists():
            raise UsernameTaken(f"user name {username!r} is taken")
        if box is not None:
            from aquafleet.models.merchants import seal_vendor_secrets

            profile = seal_vendor_secrets(profile, box, code)
        try:
            vendor = await Vendor.create(code=code, **profile)
            await AdminAccount.create(
                username=username,
                password_hash=password_hash,
                role=Role.VENDOR,
                vendor_id=code,
            )
        except IntegrityError:
            raise Conflict("the vendor or its user name was just taken") from None
    return vendor


async def vendor_account(vendor_code: str) -> Any:
    """The vendor's admin account (role vendor), or None."""
    from aquafleet.models.accounts import AdminAccount
    from aquafleet.models.tenancy import Role

    return await AdminAccount.filter(vendor_id=vendor_code, role=Role.VENDOR).order_by("id").first()


async def update_vendor(vendor: Vendor, changes: dict[str, Any]) -> None:
    """Change profile fields; `user` renames the vendor's admin account."""
    from aquafleet.models.accounts import rename_account

    check_changeable(vendor)
    changes = dict(changes)
    username = changes.pop("user", None)
    async with in_transaction("default"):
        if username is not None:
            account = await vendor_account(vendor.code)
            if account is not None:
                await rename_account(account, username)
        if changes:
            vendor.update_from_dict(changes)
            await vendor.save(update_fields=[*changes, "updated_at"])


async def rotate_app_key(vendor: Vendor) -> str:
    """A new app key for signed requests; the old one stops working at once."""
    check_changeable(vendor)
    vendor.app_key = f"{vendor.code}{secrets.token_hex(8)}"
    await vendor.save(update_fields=["app_key", "updated_at"])
    return vendor.app_key


async def deregister_vendor(vendor: Vendor) -> list[tuple[str, str]]:
    """注销: nobody of the vendor logs in any more (its accounts are disabled, its app key
    revoked); devices, their history and the ledger stay. Returns the (role, account id) whose
    sessions must end."""
    from aquafleet.models.accounts import AccountState, AdminAccount

    async with in_transaction("default"):
        accounts = await AdminAccount.filter(vendor_id=vendor.code).values_list("id", "role")
        await AdminAccount.filter(vendor_id=vendor.code).update(state=AccountState.DISABLED)
        if vendor.state is not VendorState.DEREGISTERED:
            vendor.state = VendorState.DEREGISTERED
            vendor.deregistered_at = dt.datetime.now(dt.UTC)
        vendor.app_key = None
        await vendor.save(update_fields=["state", "deregistered_at", "app_key", "updated_at"])
    return [(str(role), str(account_id)) for account_id, role in accounts]


async def create_contract(vendor: Vendor, fields_: dict[str, Any]) -> VendorContract:
    check_changeable(vendor)
    _check_contract_dates(fields_)
    same = VendorContract.filter(vendor_id=vendor.code, contract_no=fields_["contract_no"])
    if await same.exists():
        raise ContractExists(f"contract {fields_['contract_no']} already exists")
    try:
        return await VendorContract.create(vendor_id=vendor.code, **fields_)
    except IntegrityError:
        raise ContractExists(f"contract {fields_['contract_no']} already exists") from None


async def update_contract(contract: VendorContract, changes: dict[str, Any]) -> None:
    merged = {
        "starts_on": contract.starts_on,
        "ends_on": contract.ends_on,
        "signed_on": contract.signed_on,
        **changes,
    }
    _check_contract_dates(merged)
    number = changes.get("contract_no")
    if number is not None and number != contract.contract_no:
        clash = VendorContract.filter(vendor_id=contract.vendor_id, contract_no=number)
        if await clash.exists():
            raise ContractExists(f"contract {number} already exists")
    contract.update_from_dict(changes)
    try:
        await contract.save(update_fields=[*changes, "updated_at"])
    except IntegrityError:
        raise ContractExists(f"contract {number} already exists") from None


def _check_contract_dates(values: dict[str, Any]) -> None:
    ends_on = values.get("ends_on")
    if ends_on is not None and ends_on < values["starts_on"]:
        raise InvalidInput("ends_on must not be before starts_on")
