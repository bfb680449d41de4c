"""Products (商品, seed AC-01..07): what a vendor sells or rents, at which prices, with which
filters, and how its sale pays commission.

Money is integer fen everywhere (`price`, `orig_price`, `freight`, `install_cost`,
`maintain_cost`, `rent.deposit`, each rent package's `value`): the seed's examples
(`"price": 2980`) look like yuan, aquafleet reads every amount as fen (2980 is 29.80 yuan).

Product id (PID), per the seed (section 1.2, "XXXX0123456789ABCDEF"): the vendor's 4-character
code + a 12-digit serial of that vendor (never reused) + 4 hex digits of CRC-16/MODBUS over the
first 16 characters, 20 characters in all, e.g. ACME000000000001XXXX.

A product any order references is never removed: deleting it (AC-07) retires it (state 2), so
the orders' lines keep pointing at it. Orders keep their own snapshot of the product as bought.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from enum import IntEnum, IntFlag
from typing import Any

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.errors import InvalidInput, NotFound
from aquafleet.models.filters import parse_filter_spec
from aquafleet.models.ids import check_vendor_code
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.vendors import Vendor, VendorState
from aquafleet.protocol.crc import crc16_modbus

PID_RE = re.compile(r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$")
MAX_PRODUCT_SERIAL = 999_999_999_999
MAX_FEN = 10**11  # a billion yuan: anything above is a typo
MAX_PACKAGES = 16
MAX_PACKAGE_DAYS = 3660
MAX_PACKAGE_ML = 10**9  # the service's largest top-up (models/service.py)
MAX_COMMISSION_LEVELS = 3
MAX_TRIAL_DAYS = 365
PACKAGE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


class ProductState(IntEnum):
    """The seed's `state` (its example: 0) has no list; aquafleet's."""

    DRAFT = 0  # being prepared: admins only
    PUBLISHED = 1  # on sale: members see it and order it
    RETIRED = 2  # withdrawn: kept for the orders that reference it; nobody orders it


class ProductType(IntEnum):
    """The seed's 商品类型."""

    BUY = 1  # 购买
    RESERVE = 2  # 预约


class Billing(IntFlag):
    """The seed's 计费方案 bits (0 保留 is refused: a product is billed somehow)."""

    SALE = 1  # 销售: the device is sold
    TIME_RENTAL = 2  # 计时: rented by days (packages buy days)
    VOLUME_RENTAL = 4  # 计量: rented by volume (packages buy ml)
    VENDING = 8  # 贩卖: pay per dispense (no order; models/vending.py)


ALL_BILLING = int(Billing.SALE | Billing.TIME_RENTAL | Billing.VOLUME_RENTAL | Billing.VENDING)
RENTAL_BILLING = Billing.TIME_RENTAL | Billing.VOLUME_RENTAL


class Product(Model):
    """One product of a vendor: the rent, commission and specification parts are JSON as the
    seed nests them, validated by `check_product`."""

    pid = fields.CharField(primary_key=True, max_length=20)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="products", on_delete=fields.RESTRICT
    )
    state = fields.IntEnumField(ProductState, default=ProductState.DRAFT)
    type = fields.IntEnumField(ProductType, default=ProductType.BUY)
    billing = fields.SmallIntField(description="计费方案 bits: 1 sale, 2 time, 4 volume, 8 vending")
    name = fields.CharField(max_length=64)
    desc = fields.CharField(max_length=500, default="")
    tags = fields.CharField(max_length=255, default="")
    sequence = fields.IntField(default=0)
    bonus = fields.BooleanField(default=False)
    price_fen = fields.BigIntField(default=0)
    orig_price_fen = fields.BigIntField(default=0)
    freight_fen = fields.BigIntField(default=0)
    install = fields.BooleanField(default=False)
    maintain = fields.BooleanField(default=False)
    install_cost_fen = fields.BigIntField(default=0)
    maintain_cost_fen = fields.BigIntField(default=0)
    resource: dict[str, Any] = fields.JSONField(default=dict)
    notify_url = fields.CharField(max_length=255, default="")
    deposit_fen = fields.BigIntField(default=0)
    rent_packages: list[dict[str, Any]] = fields.JSONField(default=list)
    trial_days = fields.SmallIntField(
        default=0, description="free days every new time rental of it starts with (FAQ 5)"
    )
    commis_enabled = fields.BooleanField(default=False)
    commis_config: list[int] = fields.JSONField(default=list)
    commis_renewal = fields.BooleanField(default=True)  # renewals (order type 3) earn too
    specification: dict[str, Any] = fields.JSONField(default=dict)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    retired_at = fields.DatetimeField(null=True)

    vendor_id: str

    class Meta:
        table = "product"
        indexes = (("vendor_id", "state", "sequence"),)


class ShopSerial(Model):
    """The last serial issued to a vendor for one kind of id (products, orders), never reused,
    the row is named vendor code:kind, e.g. ACME:order."""

    name = fields.CharField(primary_key=True, max_length=32)
    last_serial = fields.BigIntField()

    class Meta:
        table = "shop_serial"


# ----------------------------------------------------------------------------- ids


def product_id(vendor_code: str, serial: int) -> str:
    check_vendor_code(vendor_code)
    if not 1 <= serial <= MAX_PRODUCT_SERIAL:
        raise InvalidInput(f"product serial {serial} out of range 1..{MAX_PRODUCT_SERIAL}")
    body = f"{vendor_code}{serial:012d}"
    return f"{body}{crc16_modbus(body.encode()):04X}"


def is_valid_product_id(pid: str) -> bool:
    if not PID_RE.match(pid):
        return False
    return f"{crc16_modbus(pid[:16].encode()):04X}" == pid[16:]


_NEXT_SERIAL = (
    "INSERT INTO shop_serial (name, last_serial) VALUES ({p1}, 1) "
    "ON CONFLICT (name) DO UPDATE SET last_serial = shop_serial.last_serial + 1 "
    "RETURNING last_serial"
)


async def next_serial(conn: BaseDBAsyncClient, vendor_code: str, kind: str) -> int:
    """Take the vendor's next serial of `kind` inside the caller's transaction (the upsert
    locks the counter row until it commits, so two creators never share a serial)."""
    from aquafleet.models.db import dialect

    sql = _NEXT_SERIAL.format(p1="$1" if dialect() == "postgres" else "?")
    rows = await conn.execute_query_dict(sql, [f"{vendor_code}:{kind}"])
    return int(rows[0]["last_serial"])


# ----------------------------------------------------------------------------- rules


def _fen(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_FEN:
        raise InvalidInput(f"{name} must be an integer amount of fen from 0 to {MAX_FEN}")
    return value


def check_packages(billing: int, packages: Sequence[Mapping[str, Any]]) -> None:
    """Rent packages: unique keys; each buys days (time rental) or ml (volume rental), never
    both, and only a kind of rental the product's billing offers."""
    if len(packages) > MAX_PACKAGES:
        raise InvalidInput(f"rent.config holds at most {MAX_PACKAGES} packages")
    keys: set[str] = set()
    for index, package in enumerate(packages):
        where = f"rent.config[{index}]"
        key = package.get("key")
        if not isinstance(key, str) or not PACKAGE_KEY_RE.match(key):
            raise InvalidInput(f"{where}.key must be 1..16 letters, digits, _ or -")
        if key in keys:
            raise InvalidInput(f"{where}.key {key!r} is used twice")
        keys.add(key)
        _fen(f"{where}.value", package.get("value"))
        days, ml = package.get("days"), package.get("ml")
        if (days is None) == (ml is None):
            raise InvalidInput(f"{where} buys either days (time rental) or ml (volume rental)")
        if days is not None:
            if not billing & Billing.TIME_RENTAL:
                raise InvalidInput(f"{where} buys days but the product is not a time rental (2)")
            if type(days) is not int or not 1 <= days <= MAX_PACKAGE_DAYS:
                raise InvalidInput(f"{where}.days must be 1..{MAX_PACKAGE_DAYS}")
        if ml is not None:
            if not billing & Billing.VOLUME_RENTAL:
                raise InvalidInput(f"{where} buys ml but the product is not a volume rental (4)")
            if type(ml) is not int or not 1 <= ml <= MAX_PACKAGE_ML:
                raise InvalidInput(f"{where}.ml must be 1..{MAX_PACKAGE_ML}")
    for bit, what, unit in (
        (Billing.TIME_RENTAL, "time rental", "days"),
        (Billing.VOLUME_RENTAL, "volume rental", "ml"),
    ):
        if billing & bit and not any(p.get(unit) is not None for p in packages):
            raise InvalidInput(f"a {what} product needs a rent package buying {unit}")


def check_commission(config: Sequence[int]) -> None:
    """`commis.config`: percent of the order's goods and rent amount paid to each referral
    level (level 1 = the buyer's referrer), at most 3 levels, together at most 100."""
    if len(config) > MAX_COMMISSION_LEVELS:
        raise InvalidInput(f"commis.config has at most {MAX_COMMISSION_LEVELS} levels")
    for level, percent in enumerate(config, start=1):
        if type(percent) is not int or not 0 <= percent <= 100:
            raise InvalidInput(f"commis.config level {level} must be a percent 0..100")
    if sum(config) > 100:
        raise InvalidInput("commis.config pays more than 100 percent in all")


def check_specification(spec: Mapping[str, Any]) -> None:
    """Filters as models/filters.py reads them (unique `order`, lives in hours); a product
    without filters (a dispenser, say) has none."""
    filters = spec.get("filters") or []
    if filters:
        parse_filter_spec(filters)


def check_product(values: Mapping[str, Any]) -> None:
    """The rules across fields of a whole product (after a create or a change)."""
    billing = values["billing"]
    if type(billing) is not int or not 1 <= billing <= ALL_BILLING:
        raise InvalidInput(f"billing must be a sum of 1, 2, 4, 8 (1..{ALL_BILLING})")
    for name in (
        "price_fen", "orig_price_fen", "freight_fen", "install_cost_fen", "maintain_cost_fen",
        "deposit_fen",
    ):  # fmt: skip
        _fen(name.removesuffix("_fen"), values[name])
    if values["deposit_fen"] and not billing & RENTAL_BILLING:
        raise InvalidInput("rent.deposit applies to rental products (billing 2 or 4) only")
    if values["install_cost_fen"] and not values["install"]:
        raise InvalidInput("install_cost needs install service (install: true)")
    if values["maintain_cost_fen"] and not values["maintain"]:
        raise InvalidInput("maintain_cost needs maintenance service (maintain: true)")
    check_packages(billing, values["rent_packages"])
    trial = values.get("trial_days", 0)
    if type(trial) is not int or not 0 <= trial <= MAX_TRIAL_DAYS:
        raise InvalidInput(f"rent.trial_days must be 0..{MAX_TRIAL_DAYS}")
    if trial and not billing & Billing.TIME_RENTAL:
        raise InvalidInput("rent.trial_days applies to time-rental products (billing 2) only")
    check_commission(values["commis_config"])
    check_specification(values["specification"])


def _values(product: Product) -> dict[str, Any]:
    return {name: getattr(product, name) for name in product._meta.db_fields}


# ----------------------------------------------------------------------------- scoping


async def shop_vendor(vendor_code: str) -> Vendor:
    """A vendor whose shop is open (not disabled or deregistered); NotFound otherwise."""
    vendor = await Vendor.get_or_none(code=vendor_code)
    if vendor is None or vendor.state in (VendorState.DISABLED, VendorState.DEREGISTERED):
        raise NotFound(f"vendor {vendor_code} not found")
    return vendor


def anonymous_browsing(vendor: Vendor) -> bool:
    """The vendor's AX-08 option `shop_public` (off unless switched on): people who have not
    logged in may list and read its published products (seed FAQ 7)."""
    return bool((vendor.config or {}).get("shop_public", False))


def visible_products(
    principal: Principal | None, vendor_code: str | None = None
) -> QuerySet[Product]:
    """The products a caller may see: the platform every one, an admin its vendor's (agents and
    dealers sell their vendor's products), a member and an anonymous visitor (of `vendor_code`)
    the published ones."""
    if principal is None:
        if vendor_code is None:
            return Product.filter(pid__in=[])
        return Product.filter(vendor_id=vendor_code, state=ProductState.PUBLISHED)
    if principal.role is Role.PLATFORM:
        return Product.all()
    if principal.vendor_code is None:
        return Product.filter(pid__in=[])
    qs = Product.filter(vendor_id=principal.vendor_code)
    if principal.role is Role.MEMBER:
        return qs.filter(state=ProductState.PUBLISHED)
    return qs


async def find_product(
    principal: Principal | None, pid: str, vendor_code: str | None = None
) -> Product:
    """The product if the caller may see it; NotFound (as for an unknown id) otherwise."""
    product = None
    if is_valid_product_id(pid):
        product = await visible_products(principal, vendor_code).filter(pid=pid).first()
    if product is None:
        raise NotFound(f"product {pid} not found")
    return product


def may_change(principal: Principal, product: Product) -> bool:
    """A# : the platform, or the product's own vendor."""
    return principal.role is Role.PLATFORM or (
        principal.role is Role.VENDOR and principal.vendor_code == product.vendor_id
    )


# ----------------------------------------------------------------------------- services


async def create_product(vendor_code: str, values: Mapping[str, Any]) -> Product:
    """AC-02: a product with the vendor's next id; `values` are column values."""
    await shop_vendor(vendor_code)
    defaults = {
        name: field.default() if callable(field.default) else field.default
        for name, field in Product._meta.fields_map.items()
        if name in Product._meta.db_fields
    }
    merged = {**defaults, **values}
    check_product(merged)
    async with in_transaction("default") as conn:
        serial = await next_serial(conn, vendor_code, "product")
        product = await Product.create(
            pid=product_id(vendor_code, serial), vendor_id=vendor_code, **values
        )
    return product


async def update_product(product: Product, changes: Mapping[str, Any]) -> Product:
    """AC-04/AC-06: change the given columns; the whole product must still hold together.
    Orders are not touched: they keep the snapshot they were bought with."""
    if not changes:
        return product
    merged = {**_values(product), **changes}
    check_product(merged)
    state = changes.get("state")
    updates = dict(changes)
    if state is not None and state != product.state:
        updates["retired_at"] = dt.datetime.now(dt.UTC) if state == ProductState.RETIRED else None
    product.update_from_dict(updates)
    await product.save(update_fields=[*updates, "updated_at"])
    return product


async def is_referenced(pid: str) -> bool:
    """Whether any order has a line of this product."""
    from aquafleet.models.orders import OrderLine

    return await OrderLine.exists(product_id=pid)


async def delete_product(product: Product) -> bool:
    """AC-07: remove the product, or retire it when an order references it (orders point at
    it for ever). Returns True when the row was removed."""
    async with in_transaction("default"):
        if await is_referenced(product.pid):
            if product.state != ProductState.RETIRED:
                await update_product(product, {"state": ProductState.RETIRED})
            return False
        await product.delete()
    return True


def snapshot(product: Product) -> dict[str, Any]:
    """The product as an order keeps it (the API's answer shape, amounts in fen)."""
    return {
        "product_id": product.pid,
        "type": int(product.type),
        "billing": product.billing,
        "name": product.name,
        "desc": product.desc,
        "price": product.price_fen,
        "orig_price": product.orig_price_fen,
        "freight": product.freight_fen,
        "install": product.install,
        "install_cost": product.install_cost_fen,
        "maintain": product.maintain,
        "maintain_cost": product.maintain_cost_fen,
        "rent": {
            "deposit": product.deposit_fen,
            "config": list(product.rent_packages),
            "trial_days": product.trial_days,
        },
        "commis": {
            "enabled": product.commis_enabled,
            "config": list(product.commis_config),
            "renewal": product.commis_renewal,
        },
        "specification": dict(product.specification),
        "updated_at": product.updated_at.astimezone(dt.UTC).isoformat(),
    }
