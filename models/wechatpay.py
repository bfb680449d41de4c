"""WeChat Pay API v3's cryptography, sans-IO (pay.weixin.qq.com/doc/v3): request signatures,
answer and notification verification, resource decryption, and the JSAPI payment parameters.

- A request is signed with the merchant's RSA key, SHA256 with PKCS#1 v1.5, over
  `METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`, and sent in
  `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",
  timestamp="..",serial_no=".."`.
- An answer or notification is signed by the platform over `TIMESTAMP\\nNONCE\\nBODY\\n`
  (headers Wechatpay-Timestamp, -Nonce, -Signature, -Serial); we refuse an unknown serial, a
  bad signature and a timestamp more than five minutes away.
- A notification's resource is AEAD_AES_256_GCM with the API v3 key, its nonce and
  associated data.
- The JSAPI parameters the app opens the payment sheet with are signed over
  `APPID\\nTIMESTAMP\\nNONCESTR\\nprepay_id=...\\n`.

(PyPI's `wechatpayv3` does the same with `requests`, which would block the event loop; these
are its primitives, from `cryptography`.)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aquafleet.models import signing
from aquafleet.models.errors import DomainError

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
MAX_CLOCK_SKEW_S = 300
_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')


class WechatPayError(DomainError):
    """WeChat Pay's answer or notification cannot be trusted or understood."""

    code = "wechatpay_error"


class SignatureInvalid(WechatPayError):
    code = "wechatpay_signature_invalid"


def nonce() -> str:
    return secrets.token_hex(16)


def rsa_sign(private_pem: str, message: str) -> str:
    not_rsa = WechatPayError("the merchant key is not an RSA key")
    return signing.rsa_sign(message, private_pem, hashes.SHA256(), not_rsa)


def rsa_verify(public_pem: str, message: str, signature_b64: str) -> bool:
    return signing.rsa_verify(message, signature_b64, public_pem, hashes.SHA256())


def request_message(method: str, path: str, timestamp: int, nonce_str: str, body: str) -> str:
    return f"{method}\n{path}\n{timestamp}\n{nonce_str}\n{body}\n"


def authorization(
    *,
    mch_id: str,
    key_serial: str,
    private_pem: str,
    method: str,
    path: str,
    body: str,
    timestamp: int,
    nonce_str: str,
) -> str:
    """The Authorization header of one request (`path` with its query string)."""
    signature = rsa_sign(private_pem, request_message(method, path, timestamp, nonce_str, body))
    return (
        f'{SCHEMA} mchid="{mch_id}",nonce_str="{nonce_str}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{key_serial}"'
    )


def parse_authorization(header: str) -> dict[str, str]:
    """The parameters of an Authorization header ({} when it is not WeChat Pay's schema)."""
    schema, _, rest = header.partition(" ")
    if schema != SCHEMA:
        return {}
    return dict(_AUTH_PARAM.findall(rest))


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    timestamp: str
    nonce: str
    signature: str
    serial: str

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> SignedHeaders:
        try:
            return cls(
                headers["Wechatpay-Timestamp"],
                headers["Wechatpay-Nonce"],
                headers["Wechatpay-Signature"],
                headers["Wechatpay-Serial"],
            )
        except KeyError as missing:
            raise SignatureInvalid(f"no {missing.args[0]} header") from None


def verify_signed(
    headers: Mapping[str, str], body: str, *, platform_serial: str, platform_pem: str, now: int
) -> None:
    """Refuse an answer or notification not signed by the platform key we know, or stale."""
    signed = SignedHeaders.of(headers)
    if signed.serial != platform_serial:
        raise SignatureInvalid(f"unknown platform serial {signed.serial[:64]!r}")
    try:
        timestamp = int(signed.timestamp)
    except ValueError:
        raise SignatureInvalid("Wechatpay-Timestamp is not a number") from None
    if abs(now - timestamp) > MAX_CLOCK_SKEW_S:
        raise SignatureInvalid(f"stale: signed {now - timestamp} s away from now")
    message = f"{signed.timestamp}\n{signed.nonce}\n{body}\n"
    if not rsa_verify(platform_pem, message, signed.signature):
        raise SignatureInvalid("the platform signature does not verify")


def decrypt_resource(resource: Mapping[str, Any], api_v3_key: str) -> dict[str, Any]:
    """A notification's resource (AEAD_AES_256_GCM), as the JSON object it holds."""
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise WechatPayError(f"unknown resource algorithm {resource.get('algorithm')!r}")
    try:
        plaintext = AESGCM(api_v3_key.encode()).decrypt(
            str(resource["nonce"]).encode(),
            base64.b64decode(str(resource["ciphertext"])),
            str(resource.get("associated_data", "")).encode(),
        )
        decoded = json.loads(plaintext)
    except (InvalidTag, KeyError, binascii.Error, ValueError):
        raise WechatPayError("the resource does not decrypt with the API v3 key") from None
    if not isinstance(decoded, dict):
        raise WechatPayError("the resource is not an object")
    return decoded


def jsapi_parameters(
    *, app_id: str, prepay_id: str, private_pem: str, timestamp: int, nonce_str: str
) -> dict[str, str]:
    """What the app passes to wx.requestPayment / WeixinJSBridge (AD-07's answer)."""
    package = f"prepay_id={prepay_id}"
    message = f"{app_id}\n{timestamp}\n{nonce_str}\n{package}\n"
    return {
        "appId": app_id,
        "timeStamp": str(timestamp),
        "nonceStr": nonce_str,
        "package": package,
        "signType": "RSA",
        "paySign": rsa_sign(private_pem, message),
    }
