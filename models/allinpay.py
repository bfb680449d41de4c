"""Allinpay 通联 收银宝 unified API, sans-IO: the signing rule and the merchant's credentials.

The rule (收银宝 统一下单API, 3.2 安全规范, signtype RSA): every non-empty field except `sign`,
sorted by name (ASCII), joined as `k1=v1&k2=v2`, signed SHA1WithRSA (PKCS#1 v1.5) with the
merchant's RSA private key, base64. Allinpay signs its answers and notifications the same way
with its own key; we verify them with Allinpay's public key (通联公钥). MD5 (the key appended
as `&key=...`) is the API's older alternative; we use RSA so the merchant key never travels.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from aquafleet.models.errors import DomainError, InvalidInput
from aquafleet.models.merchants import (
    ALLINPAY,
    PaymentNotConfigured,
    merchant_secrets,
    set_merchant_fields,
)

SIGN_TYPE = "RSA"
VERSION = "11"
SECRET_FIELDS = ("allinpay_private_key",)
PUBLIC_FIELDS = ("allinpay_cusid", "allinpay_appid", "allinpay_public_key")


class AllinpayError(DomainError):
    code = "allinpay_error"


def sign_string(fields: Mapping[str, Any]) -> str:
    return "&".join(
        f"{k}={fields[k]}" for k in sorted(fields) if k != "sign" and fields[k] not in (None, "")
    )


def rsa_sign(fields: Mapping[str, Any], private_pem: str) -> str:
    key = load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise AllinpayError("the merchant key is not an RSA key")
    signature = key.sign(sign_string(fields).encode(), padding.PKCS1v15(), hashes.SHA1())
    return base64.b64encode(signature).decode()


def rsa_verify(fields: Mapping[str, Any], public_pem: str) -> bool:
    """True when `fields["sign"]` is the signature of the other fields by `public_pem`'s key."""
    try:
        key = load_pem_public_key(public_pem.encode())
        signature = base64.b64decode(str(fields.get("sign", "")), validate=True)
    except (ValueError, TypeError):
        return False
    if not isinstance(key, rsa.RSAPublicKey) or not signature:
        return False
    try:
        key.verify(signature, sign_string(fields).encode(), padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        return False
    return True


def signed(fields: Mapping[str, Any], private_pem: str) -> dict[str, str]:
    """The form to post: the non-empty fields as strings, `signtype` and `sign` added."""
    form = {k: str(v) for k, v in fields.items() if v not in (None, "")}
    form["signtype"] = SIGN_TYPE
    form["sign"] = rsa_sign(form, private_pem)
    return form


def random_str() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class AllinpayMerchant:
    """A vendor's 收银宝 merchant: 商户号 (cusid), 应用ID (appid), our RSA key, Allinpay's
    public key (secrets hidden from repr)."""

    vendor: str
    cusid: str
    appid: str
    public_key: str
    private_key: str = field(repr=False)


def check_fields(given: Mapping[str, Any]) -> None:
    """Refuse malformed credentials (the messages never repeat a secret)."""
    if given.get("allinpay_private_key"):
        try:
            key = load_pem_private_key(str(given["allinpay_private_key"]).encode(), password=None)
        except (ValueError, TypeError):
            raise InvalidInput("allinpay_private_key: not an unencrypted PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 1024:
            raise InvalidInput("allinpay_private_key: 收银宝 needs an RSA key")
    if given.get("allinpay_public_key"):
        try:
            public = load_pem_public_key(str(given["allinpay_public_key"]).encode())
        except (ValueError, TypeError):
            raise InvalidInput("allinpay_public_key: not a PEM public key") from None
        if not isinstance(public, rsa.RSAPublicKey):
            raise InvalidInput("allinpay_public_key: not an RSA public key")


async def set_allinpay_merchant(vendor_code: str, given: dict[str, Any], box: Any) -> None:
    check_fields(given)
    await set_merchant_fields(
        vendor_code, ALLINPAY, given, box, secret_fields=SECRET_FIELDS, public_fields=PUBLIC_FIELDS
    )


async def allinpay_merchant(vendor_code: str, box: Any) -> AllinpayMerchant:
    """The vendor's 收银宝 credentials, opened; PaymentNotConfigured if any is missing."""
    public, secret = await merchant_secrets(vendor_code, ALLINPAY, box)
    values = {
        **{name: str(public.get(name, "")) for name in PUBLIC_FIELDS},
        **{name: secret.get(name, "") for name in SECRET_FIELDS},
    }
    missing = sorted(name for name, value in values.items() if not value)
    if missing:
        raise PaymentNotConfigured(
            f"vendor {vendor_code} has no Allinpay merchant set up ({', '.join(missing)})"
        )
    return AllinpayMerchant(
        vendor=vendor_code, cusid=values["allinpay_cusid"], appid=values["allinpay_appid"],
        public_key=values["allinpay_public_key"], private_key=values["allinpay_private_key"],
    )  # fmt: skip
