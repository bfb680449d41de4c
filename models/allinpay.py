"""Allinpay 通联 收银宝 unified API, sans-IO: the signing rule and the merchant's credentials.

The rule (收银宝 统一下单API, 3.2 安全规范, signtype RSA): every non-empty field except `sign`,
sorted by name (ASCII), joined as `k1=v1&k2=v2`, signed SHA1WithRSA (PKCS#1 v1.5) with the
merchant's RSA private key, base64. Allinpay signs its answers and notifications the same way
with its own key; we verify them with Allinpay's public key (通联公钥). MD5 (the key appended
as `&key=...`) is the API's older alternative; we use RSA so the merchant key never travels.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes

from aquafleet.models import signing
from aquafleet.models.errors import DomainError
from aquafleet.models.merchants import ALLINPAY, MerchantFields
from aquafleet.models.signing import sign_content

SIGN_TYPE = "RSA"
VERSION = "11"


class AllinpayError(DomainError):
    code = "allinpay_error"


def sign_string(fields: Mapping[str, Any]) -> str:
    return sign_content(fields)


def rsa_sign(fields: Mapping[str, Any], private_pem: str) -> str:
    not_rsa = AllinpayError("the merchant key is not an RSA key")
    return signing.rsa_sign(sign_string(fields), private_pem, hashes.SHA1(), not_rsa)


def rsa_verify(fields: Mapping[str, Any], public_pem: str) -> bool:
    """True when `fields["sign"]` is the signature of the other fields by `public_pem`'s key."""
    signature = str(fields.get("sign", ""))
    return signing.rsa_verify(sign_string(fields), signature, public_pem, hashes.SHA1())


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


ALLINPAY_MERCHANT = MerchantFields(
    ALLINPAY,
    public_fields=("allinpay_cusid", "allinpay_appid", "allinpay_public_key"),
    secret_fields=("allinpay_private_key",),
    private_key_field="allinpay_private_key",
    public_key_field="allinpay_public_key",
    min_bits=1024,
    weak="收银宝 needs an RSA key",
    what="Allinpay merchant",
)


async def allinpay_merchant(vendor_code: str, box: Any) -> AllinpayMerchant:
    """The vendor's 收银宝 credentials, opened; PaymentNotConfigured if any is missing."""
    values = await ALLINPAY_MERCHANT.values(vendor_code, box)
    return AllinpayMerchant(
        vendor=vendor_code, cusid=values["allinpay_cusid"], appid=values["allinpay_appid"],
        public_key=values["allinpay_public_key"], private_key=values["allinpay_private_key"],
    )  # fmt: skip
