"""A vendor's merchant credentials at its payment channels (WeChat Pay API v3, a card
acquirer), set through AX-07 and stored sealed (models/sealed.py): never answered, never logged.

WeChat Pay needs: the merchant id (`mch_gid`) and app id (`mch_appid`, else `mp_appid`) from
the vendor's AX-07 fields, and here: the API v3 key (32 characters, decrypts notifications),
the merchant's RSA private key and its certificate serial (sign our requests), and the
platform's public key and its serial or public-key id (verify WeChat Pay's answers and
notifications). The secrets are one sealed JSON object per (vendor, channel); the serials and
the public key are not secret and stay readable.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model

from aquafleet.models.errors import Conflict, InvalidInput
from aquafleet.models.sealed import SecretBox, SecretUnreadable, is_sealed

WEIXIN = "weixin"
ALLINPAY = "allinpay"
ALIPAY = "alipay"
MERCHANT_CHANNELS = frozenset({WEIXIN, ALLINPAY, ALIPAY})

# The vendor's own write-only columns (AX-02, AX-07), sealed in place.
VENDOR_SECRET_FIELDS = ("mp_secret", "mch_secret")
# AX-07's merchant fields kept here: secret ones sealed, public ones readable.
WECHAT_SECRET_FIELDS = ("mch_apiv3_key", "mch_private_key")
WECHAT_PUBLIC_FIELDS = ("mch_cert_serial", "wxpay_serial", "wxpay_public_key")
API_V3_KEY_LENGTH = 32
SECRETS_SET = "secrets_set"  # the names of the secrets given, kept readable in `public`


class PaymentNotConfigured(Conflict):
    code = "payment_not_configured"


class PaymentMerchant(Model):
    """A vendor's credentials at one payment channel: public parameters and sealed secrets."""

    id = fields.IntField(primary_key=True)
    vendor: fields.ForeignKeyRelation[Any] = fields.ForeignKeyField(
        "models.Vendor", related_name="merchants", on_delete=fields.RESTRICT
    )
    channel = fields.CharField(max_length=16)
    public: dict[str, Any] = fields.JSONField(default=dict)
    sealed = fields.TextField(default="")
    updated_at = fields.DatetimeField()

    vendor_id: str

    class Meta:
        table = "pay_merchant"
        unique_together = (("vendor", "channel"),)


def vendor_purpose(vendor_code: str, name: str) -> str:
    """A vendor's own secret is sealed for its field AND its vendor: a value copied into
    another vendor's row (by whoever can write the database) does not open there."""
    return f"vendor.{vendor_code}.{name}"


def merchant_purpose(vendor_code: str, channel: str) -> str:
    return f"merchant.{vendor_code}.{channel}"


def legacy_vendor_purpose(name: str) -> str:
    """What a vendor's secret was sealed for before it was bound to its vendor (session 14):
    opened still (a node of the older version may write one during a rolling upgrade), and
    sealed again under `vendor_purpose` at every start (`seal_legacy_secrets`)."""
    return f"vendor.{name}"


def seal_vendor_secrets(
    changes: dict[str, Any], box: SecretBox, vendor_code: str
) -> dict[str, Any]:
    """`changes` with the vendor's own secrets (mp_secret, mch_secret) sealed."""
    sealed = dict(changes)
    for name in VENDOR_SECRET_FIELDS:
        if sealed.get(name):
            sealed[name] = box.seal(sealed[name], vendor_purpose(vendor_code, name))
    return sealed


def open_vendor_secret(vendor: Any, name: str, box: SecretBox) -> str:
    stored = str(getattr(vendor, name))
    try:
        return box.open(stored, vendor_purpose(vendor.code, name))
    except SecretUnreadable:
        return box.open(stored, legacy_vendor_purpose(name))  # raises as the first did


async def seal_legacy_secrets(box: SecretBox) -> int:
    """The data migration of vendors' secrets stored in the clear (before sealing) or sealed
    before they were bound to their vendor: seal each one for its vendor, in place, once (a
    value another node sealed meanwhile is left alone). Answers how many were sealed."""
    from aquafleet.models.vendors import Vendor

    count = 0
    for name in VENDOR_SECRET_FIELDS:
        rows = await Vendor.exclude(**{name: ""}).values_list("code", name)
        for code, stored in rows:
            stored = str(stored)
            if is_sealed(stored):
                try:
                    box.open(stored, vendor_purpose(code, name))
                    continue  # sealed for its vendor already
                except SecretUnreadable:
                    pass
                try:
                    plaintext = box.open(stored, legacy_vendor_purpose(name))
                except SecretUnreadable:
                    continue  # another master secret's, or altered: left for its error
            else:
                plaintext = stored
            count += await Vendor.filter(code=code, **{name: stored}).update(
                **{name: box.seal(plaintext, vendor_purpose(code, name))}
            )
    return count


# ----------------------------------------------------------------------------- validation


def check_key_fields(
    given: Mapping[str, Any], private_field: str, public_field: str, *, min_bits: int, weak: str
) -> None:
    """Refuse a malformed private or public RSA key among `given` credentials (`weak`: why a
    private key too short is refused; the messages never repeat a secret)."""
    if given.get(private_field):
        try:
            key = load_pem_private_key(str(given[private_field]).encode(), password=None)
        except (ValueError, TypeError):
            raise InvalidInput(f"{private_field}: not an unencrypted PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < min_bits:
            raise InvalidInput(f"{private_field}: {weak}")
    if given.get(public_field):
        try:
            public = load_pem_public_key(str(given[public_field]).encode())
        except (ValueError, TypeError):
            raise InvalidInput(f"{public_field}: not a PEM public key") from None
        if not isinstance(public, rsa.RSAPublicKey):
            raise InvalidInput(f"{public_field}: not an RSA public key")


def check_wechat_fields(given: dict[str, Any]) -> None:
    """Refuse malformed credentials (the messages never repeat a secret)."""
    key = given.get("mch_apiv3_key")
    if key and len(key.encode()) != API_V3_KEY_LENGTH:
        raise InvalidInput(f"mch_apiv3_key: the API v3 key is {API_V3_KEY_LENGTH} characters")
    check_key_fields(
        given, "mch_private_key", "wxpay_public_key", min_bits=2048,
        weak="WeChat Pay needs an RSA key of 2048 bits or more",
    )  # fmt: skip


# ----------------------------------------------------------------------------- services


async def _merchant(vendor_code: str, channel: str) -> PaymentMerchant | None:
    return await PaymentMerchant.get_or_none(vendor_id=vendor_code, channel=channel)


def _open_secrets(merchant: PaymentMerchant | None, box: SecretBox) -> dict[str, str]:
    if merchant is None or not merchant.sealed:
        return {}
    opened = box.open(merchant.sealed, merchant_purpose(merchant.vendor_id, merchant.channel))
    loaded: dict[str, str] = json.loads(opened)
    return loaded


async def set_merchant_fields(
    vendor_code: str,
    channel: str,
    given: dict[str, Any],
    box: SecretBox,
    *,
    secret_fields: tuple[str, ...],
    public_fields: tuple[str, ...],
) -> None:
    """Change the given fields of a vendor's merchant at `channel` (an empty string clears
    one); secrets are sealed together, public fields kept readable."""
    secret_changes = {k: v for k, v in given.items() if k in secret_fields and v is not None}
    public_changes = {k: v for k, v in given.items() if k in public_fields and v is not None}
    if not secret_changes and not public_changes:
        return
    now = dt.datetime.now(dt.UTC)
    merchant = await _merchant(vendor_code, channel)
    if merchant is None:
        try:
            merchant = await PaymentMerchant.create(
                vendor_id=vendor_code, channel=channel, public={}, sealed="", updated_at=now
            )
        except IntegrityError:
            merchant = await PaymentMerchant.get(vendor_id=vendor_code, channel=channel)
    secrets = {k: v for k, v in {**_open_secrets(merchant, box), **secret_changes}.items() if v}
    public = {k: v for k, v in {**merchant.public, **public_changes}.items() if v}
    public[SECRETS_SET] = sorted(secrets)
    merchant.public = public
    merchant.sealed = (
        box.seal(json.dumps(secrets), merchant_purpose(vendor_code, channel)) if secrets else ""
    )
    merchant.updated_at = now
    await merchant.save(update_fields=["public", "sealed", "updated_at"])


async def set_wechat_merchant(vendor_code: str, given: dict[str, Any], box: SecretBox) -> None:
    check_wechat_fields(given)
    await set_merchant_fields(
        vendor_code, WEIXIN, given, box,
        secret_fields=WECHAT_SECRET_FIELDS, public_fields=WECHAT_PUBLIC_FIELDS,
    )  # fmt: skip


async def merchant_flags(vendor_codes: list[str]) -> dict[str, dict[str, Any]]:
    """What AX-01/AX-03 may show of each vendor's WeChat Pay merchant: which secrets are set
    (`<name>_set`) and the serials; never a secret, and nothing needs opening."""
    rows = {
        m.vendor_id: m
        for m in await PaymentMerchant.filter(vendor_id__in=vendor_codes, channel=WEIXIN)
    }
    flags: dict[str, dict[str, Any]] = {}
    for code in vendor_codes:
        merchant = rows.get(code)
        public = merchant.public if merchant else {}
        given = set(public.get(SECRETS_SET, []))
        flags[code] = {
            "mch_apiv3_key_set": "mch_apiv3_key" in given,
            "mch_private_key_set": "mch_private_key" in given,
            "wxpay_public_key_set": bool(public.get("wxpay_public_key")),
            "mch_cert_serial": str(public.get("mch_cert_serial", "")),
            "wxpay_serial": str(public.get("wxpay_serial", "")),
        }
    return flags


@dataclass(frozen=True, slots=True)
class WechatPayMerchant:
    """Everything the WeChat Pay client needs for one vendor (secrets hidden from repr)."""

    vendor: str
    mch_id: str
    app_id: str
    key_serial: str
    platform_serial: str
    platform_public_key: str
    api_v3_key: str = field(repr=False)
    private_key: str = field(repr=False)


async def wechat_merchant(vendor: Any, box: SecretBox) -> WechatPayMerchant:
    """The vendor's WeChat Pay credentials, opened; PaymentNotConfigured if any is missing."""
    merchant = await _merchant(vendor.code, WEIXIN)
    secrets = _open_secrets(merchant, box)
    public = merchant.public if merchant else {}
    values = {
        "mch_gid": vendor.mch_gid,
        "mch_appid": vendor.mch_appid or vendor.mp_appid,
        "mch_cert_serial": public.get("mch_cert_serial", ""),
        "wxpay_serial": public.get("wxpay_serial", ""),
        "wxpay_public_key": public.get("wxpay_public_key", ""),
        "mch_apiv3_key": secrets.get("mch_apiv3_key", ""),
        "mch_private_key": secrets.get("mch_private_key", ""),
    }
    missing = sorted(name for name, value in values.items() if not value)
    if missing:
        raise PaymentNotConfigured(
            f"vendor {vendor.code} has no WeChat Pay merchant set up (AX-07: {', '.join(missing)})"
        )
    return WechatPayMerchant(
        vendor=vendor.code, mch_id=values["mch_gid"], app_id=values["mch_appid"],
        key_serial=values["mch_cert_serial"], platform_serial=values["wxpay_serial"],
        platform_public_key=values["wxpay_public_key"], api_v3_key=values["mch_apiv3_key"],
        private_key=values["mch_private_key"],
    )  # fmt: skip


async def merchant_secrets(
    vendor_code: str, channel: str, box: SecretBox
) -> tuple[dict[str, Any], dict[str, str]]:
    """A vendor's merchant at `channel`: its public fields and its secrets, opened."""
    merchant = await _merchant(vendor_code, channel)
    return (dict(merchant.public) if merchant else {}), _open_secrets(merchant, box)


async def merchant_values(
    vendor_code: str,
    channel: str,
    box: SecretBox,
    public_fields: Iterable[str],
    secret_fields: Iterable[str],
    *,
    what: str,
) -> dict[str, str]:
    """The vendor's credentials at `channel` by field, opened; PaymentNotConfigured naming
    `what` and the fields missing if any is."""
    public, secret = await merchant_secrets(vendor_code, channel, box)
    values = {
        **{name: str(public.get(name, "")) for name in public_fields},
        **{name: secret.get(name, "") for name in secret_fields},
    }
    missing = sorted(name for name, value in values.items() if not value)
    if missing:
        raise PaymentNotConfigured(
            f"vendor {vendor_code} has no {what} set up ({', '.join(missing)})"
        )
    return values


@dataclass(frozen=True, slots=True)
class MerchantFields:
    """A channel's merchant credentials as declared: the readable fields, the sealed ones, and
    the RSA key pair among them that is checked before anything is stored."""

    channel: str
    public_fields: tuple[str, ...]
    secret_fields: tuple[str, ...]
    private_key_field: str
    public_key_field: str
    min_bits: int
    weak: str  # why a private key too short is refused
    what: str  # the credentials' name in PaymentNotConfigured

    def check(self, given: Mapping[str, Any]) -> None:
        """Refuse malformed credentials (the messages never repeat a secret)."""
        check_key_fields(
            given, self.private_key_field, self.public_key_field,
            min_bits=self.min_bits, weak=self.weak,
        )  # fmt: skip

    async def store(self, vendor_code: str, given: dict[str, Any], box: SecretBox) -> None:
        """Check, then change the given fields of the vendor's merchant (empty clears one)."""
        self.check(given)
        await set_merchant_fields(
            vendor_code, self.channel, given, box,
            secret_fields=self.secret_fields, public_fields=self.public_fields,
        )  # fmt: skip

    async def values(self, vendor_code: str, box: SecretBox) -> dict[str, str]:
        """The vendor's credentials by field, opened; PaymentNotConfigured if any is missing."""
        return await merchant_values(
            vendor_code, self.channel, box, self.public_fields, self.secret_fields, what=self.what
        )


async def configured_channels(vendor_code: str) -> list[str]:
    """The channels the vendor has a merchant row at (set up or partly), oldest first."""
    rows = await PaymentMerchant.filter(vendor_id=vendor_code).order_by("id")
    return [row.channel for row in rows]
