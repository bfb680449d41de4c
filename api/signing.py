"""Signed requests from a vendor's own servers (docs/api-auth.md has the algorithm and a worked
example that a test recomputes).

Headers: X-Aq-Key (the vendor's app key), X-Aq-Timestamp (unix seconds), X-Aq-Nonce (16-64 of
A-Z a-z 0-9 _ -, never reused), X-Aq-Signature (hex HMAC-SHA256 of the string to sign, keyed with
the app secret's text). The string to sign is, joined by "\n":

    AQ1-HMAC-SHA256
    METHOD
    path as sent (percent-encoded, no query)
    canonical query (decoded pairs sorted by key then value, each part RFC 3986-encoded, k=v&...)
    timestamp
    nonce
    hex SHA-256 of the body bytes

The app secret is never stored: it is HMAC-SHA256(master secret, "AQAPI1" | app key), so a new
app key (rotation) invalidates the old secret, and a database dump holds no secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from urllib.parse import quote

ALGORITHM = "AQ1-HMAC-SHA256"
HEADER_KEY = "X-Aq-Key"
HEADER_TIMESTAMP = "X-Aq-Timestamp"
HEADER_NONCE = "X-Aq-Nonce"
HEADER_SIGNATURE = "X-Aq-Signature"
SIGNED_HEADERS = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
APP_KEY_RE = re.compile(r"^[A-Z0-9]{4}[0-9a-f]{16}$")
SIGNATURE_RE = re.compile(r"^[0-9a-fA-F]{64}$")
TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")

_SECRET_LABEL = b"AQAPI1"


def app_secret(master_secret: bytes, app_key: str) -> str:
    """The app secret of `app_key` (64 hex digits), derived, never stored."""
    return hmac.new(master_secret, _SECRET_LABEL + app_key.encode(), hashlib.sha256).hexdigest()


def _encode(part: str) -> str:
    return quote(part, safe="-_.~")


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded (key, value) pairs, sorted by key then value, re-encoded per RFC 3986."""
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(pairs))


def string_to_sign(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    timestamp: str,
    nonce: str,
    body: bytes,
) -> str:
    return "\n".join(
        [
            ALGORITHM,
            method.upper(),
            path,
            canonical_query(query),
            timestamp,
            nonce,
            hashlib.sha256(body).hexdigest(),
        ]
    )


def sign(secret: str, text: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed with the app secret's ASCII text."""
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def signature_matches(secret: str, text: str, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, text), signature.lower())
