"""Identifier rules of the seed specification (section 1.2) and their check codes.

Vendor code: 4 characters A-Z/0-9 (the seed's "XXXX").
Device id (DID), 16 characters: vendor code + 8-digit serial (never reused) + 4 hex digits of
CRC-16/MODBUS over the first 12 characters, e.g. DEMO00000001XXXX. The check catches a mistyped
or misread id (QR scans, hand entry) before it reaches the database.
"""

from __future__ import annotations

import re

from aquafleet.models.errors import InvalidInput
from aquafleet.protocol.crc import crc16_modbus

VENDOR_CODE_RE = re.compile(r"^[A-Z0-9]{4}$")
DID_RE = re.compile(r"^[A-Z0-9]{4}[0-9]{8}[0-9A-F]{4}$")
MAX_DEVICE_SERIAL = 99_999_999


def check_vendor_code(code: str) -> str:
    if not VENDOR_CODE_RE.match(code):
        raise InvalidInput(f"vendor code {code!r} must be 4 characters A-Z or 0-9")
    return code


def device_id(vendor_code: str, serial: int) -> str:
    check_vendor_code(vendor_code)
    if not 1 <= serial <= MAX_DEVICE_SERIAL:
        raise InvalidInput(f"device serial {serial} out of range 1..{MAX_DEVICE_SERIAL}")
    body = f"{vendor_code}{serial:08d}"
    return f"{body}{crc16_modbus(body.encode()):04X}"


def is_valid_device_id(did: str) -> bool:
    if not DID_RE.match(did):
        return False
    return f"{crc16_modbus(did[:12].encode()):04X}" == did[12:]


def device_vendor_code(did: str) -> str:
    return did[:4]
