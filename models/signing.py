"""RSA signatures as the payment channels use them, sans-IO: the text a form's fields sign
(Alipay and Allinpay both: the non-empty fields but the signature's own, sorted by name,
joined `k1=v1&k2=v2`), and PKCS#1 v1.5 signing and verifying with a PEM key, base64."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key


def sign_content(fields: Mapping[str, Any], *, exclude: Iterable[str] = ("sign",)) -> str:
    """The text signed: the non-empty fields but `exclude`, sorted by name, `k=v&...`."""
    skipped = set(exclude)
    return "&".join(
        f"{k}={fields[k]}"
        for k in sorted(fields)
        if k not in skipped and fields[k] is not None and str(fields[k]) != ""
    )


def rsa_sign(
    content: str, private_pem: str, algorithm: hashes.HashAlgorithm, not_rsa: Exception
) -> str:
    """`content` signed with the PEM private key, base64; `not_rsa` raised for another key."""
    key = load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise not_rsa
    return base64.b64encode(key.sign(content.encode(), padding.PKCS1v15(), algorithm)).decode()


def rsa_verify(
    content: str, signature_b64: str, public_pem: str, algorithm: hashes.HashAlgorithm
) -> bool:
    """True when `signature_b64` is `content` signed by the PEM public key's holder; False
    for anything else (another key, a malformed key or signature)."""
    try:
        key = load_pem_public_key(public_pem.encode())
        signature = base64.b64decode(str(signature_b64), validate=True)
    except (ValueError, TypeError):
        return False
    if not isinstance(key, rsa.RSAPublicKey) or not signature:
        return False
    try:
        key.verify(signature, content.encode(), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        return False
    return True
