"""Secrets at rest (DESIGN.md, "Commerce"): third parties' credentials are stored encrypted
with AES-256-GCM under a key derived from the master secret, never in the clear.

A sealed value is `enc1:` + URL-safe base64 of (12-byte nonce + ciphertext + tag); its
purpose (the vendor and the field it belongs to, e.g. `vendor.AQUA.mp_secret`) is the
associated data, so a value copied into another field or another vendor's row does not open.
A stored value without the prefix is a row written before sealing existed: it opens as itself
and is sealed at the next start (`seal_legacy_secrets`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aquafleet.models.errors import Unavailable

PREFIX = "enc1:"
NONCE_SIZE = 12
_KEY_LABEL = b"aquafleet secrets at rest v1"


class SecretUnreadable(Unavailable):
    """A sealed value does not open: another master secret sealed it, or it was altered."""

    code = "secret_unreadable"


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


class SecretBox:
    """Seals and opens secrets with the key derived from the master secret."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_master(cls, master_secret: bytes) -> SecretBox:
        return cls(hmac.digest(master_secret, _KEY_LABEL, hashlib.sha256))

    def __repr__(self) -> str:  # never the key
        return "SecretBox()"

    def seal(self, plaintext: str, purpose: str) -> str:
        """The stored form of `plaintext`; an empty secret stays empty (none was given)."""
        if not plaintext:
            return ""
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, purpose: str) -> str:
        """The secret a stored value holds (a legacy unsealed value answers as itself)."""
        if not is_sealed(stored):
            return stored
        try:
            raw = base64.urlsafe_b64decode(stored.removeprefix(PREFIX))
            return self._aead.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], purpose.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
            raise SecretUnreadable(
                f"the stored {purpose} does not open with this master secret"
            ) from None
