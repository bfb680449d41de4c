"""Alipay Open Platform (openapi.alipay.com/gateway.do), sans-IO: the RSA2 signing rules, the
amounts, the answers' envelope, and a vendor's Alipay app (docs/payments.md).

Signing (开放平台 自行实现签名): a request's parameters but `sign` and the empty ones, sorted
by name (ASCII), joined `k1=v1&k2=v2` (raw values, not URL-encoded), signed SHA256WithRSA
(PKCS#1 v1.5, `sign_type=RSA2`) with the app's private key, base64. An answer is a JSON object
`{"<method with _>_response": {...}, "sign": "..."}` whose `sign` covers the exact text of the
`*_response` value as it stands in the body; verified with Alipay's public key (支付宝公钥). An
asynchronous notification (异步通知) is a form whose parameters but `sign` and `sign_type`,
sorted and joined the same way, are signed by Alipay.

Amounts are yuan strings with two decimals ("12.30"), converted from and to integer fen exactly
(never through a float).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes

from aquafleet.models.errors import DomainError
from aquafleet.models.merchants import ALIPAY, MerchantFields
from aquafleet.models.signing import rsa_sign, rsa_verify, sign_content

SIGN_TYPE = "RSA2"
VERSION = "1.0"
CHARSET = "utf-8"
FORMAT = "JSON"
_YUAN = re.compile(r"^(0|[1-9][0-9]{0,12})(?:\.([0-9]{1,2}))?$")


class AlipayError(DomainError):
    code = "alipay_error"


# ----------------------------------------------------------------------------- amounts


def yuan(fen: int) -> str:
    """12345 -> "123.45" (Alipay's total_amount / refund_amount)."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
        raise ValueError(f"not an amount in fen: {fen!r}")
    return f"{fen // 100}.{fen % 100:02d}"


def fen(text: str) -> int:
    """ "123.45" -> 12345, "5" -> 500, "0.1" -> 10; ValueError for anything else."""
    match = _YUAN.match(str(text).strip())
    if match is None:
        raise ValueError(f"not an amount in yuan: {str(text)[:32]!r}")
    cents = (match.group(2) or "").ljust(2, "0")
    return int(match.group(1)) * 100 + int(cents)


# ----------------------------------------------------------------------------- signatures


def rsa2_sign(content: str, private_pem: str) -> str:
    return rsa_sign(
        content,
        private_pem,
        hashes.SHA256(),
        AlipayError("the app's private key is not an RSA key"),
    )


def rsa2_verify(content: str, signature: str, public_pem: str) -> bool:
    return rsa_verify(content, signature, public_pem, hashes.SHA256())


def signed_request(params: Mapping[str, Any], private_pem: str) -> dict[str, str]:
    """The request's parameters as strings (empty ones dropped), `sign` added."""
    form = {k: str(v) for k, v in params.items() if v is not None and str(v) != ""}
    form["sign"] = rsa2_sign(sign_content(form), private_pem)
    return form


def verify_notification(form: Mapping[str, str], public_pem: str) -> bool:
    """An asynchronous notification: signed by Alipay over all but `sign` and `sign_type`."""
    if form.get("sign_type") != SIGN_TYPE:
        return False
    content = sign_content(form, exclude=("sign", "sign_type"))
    return rsa2_verify(content, str(form.get("sign", "")), public_pem)


def response_key(method: str) -> str:
    """alipay.trade.query -> alipay_trade_query_response."""
    return method.replace(".", "_") + "_response"


def open_response(body: str, method: str, public_pem: str) -> dict[str, Any]:
    """The verified `*_response` object of an answer. An answer without a signature (Alipay
    answers so a request it could not authenticate: a wrong app id or signature) is returned
    marked `_unsigned`, to be read as "not done" and never trusted further; AlipayError when
    the body is not an answer or its signature is wrong."""
    try:
        whole = json.loads(body)
    except ValueError:
        raise AlipayError("alipay answered something that is not JSON") from None
    if not isinstance(whole, dict):
        raise AlipayError("alipay answered something that is not an object")
    key = response_key(method)
    value = whole.get(key, whole.get("error_response"))
    if not isinstance(value, dict):
        raise AlipayError(f"alipay's answer has no {key}")
    if "sign" not in whole:
        return {**value, "_unsigned": True}
    if key not in whole or not rsa2_verify(_raw_value(body, key), str(whole["sign"]), public_pem):
        raise AlipayError("alipay's answer does not carry Alipay's signature")
    return dict(value)


def _raw_value(body: str, key: str) -> str:
    """The exact text of `key`'s value in the JSON `body` (what Alipay signed)."""
    decoder = json.JSONDecoder()
    position = 0
    needle = json.dumps(key)
    while True:
        at = body.find(needle, position)
        if at < 0:
            raise AlipayError(f"alipay's answer has no {key}")
        rest = at + len(needle)
        while rest < len(body) and body[rest] in " \t\r\n":
            rest += 1
        if rest < len(body) and body[rest] == ":":
            start = rest + 1
            while start < len(body) and body[start] in " \t\r\n":
                start += 1
            _value, end = decoder.raw_decode(body, start)
            return body[start:end]
        position = rest


# ----------------------------------------------------------------------------- the merchant


@dataclass(frozen=True, slots=True)
class AlipayMerchant:
    """A vendor's Alipay app: its app id (APPID), the merchant's partner id (seller_id, the
    2088... PID), the app's private key and Alipay's public key (the private key hidden)."""

    vendor: str
    app_id: str
    seller_id: str
    public_key: str
    private_key: str = field(repr=False)


ALIPAY_MERCHANT = MerchantFields(
    ALIPAY,
    public_fields=("alipay_app_id", "alipay_seller_id", "alipay_public_key"),
    secret_fields=("alipay_private_key",),
    private_key_field="alipay_private_key",
    public_key_field="alipay_public_key",
    min_bits=2048,
    weak="RSA2 needs an RSA key of 2048 bits or more",
    what="Alipay app",
)


async def alipay_merchant(vendor_code: str, box: Any) -> AlipayMerchant:
    """The vendor's Alipay app, opened; PaymentNotConfigured if anything is missing."""
    values = await ALIPAY_MERCHANT.values(vendor_code, box)
    return AlipayMerchant(
        vendor=vendor_code, app_id=values["alipay_app_id"], seller_id=values["alipay_seller_id"],
        public_key=values["alipay_public_key"], private_key=values["alipay_private_key"],
    )  # fmt: skip
