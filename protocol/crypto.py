"""Keys, login proofs and MACs (HMAC-SHA256 throughout; "|" in PROTOCOL.md is concatenation)."""

from __future__ import annotations

import hashlib
import hmac

from aquafleet.protocol.constants import KEY_SIZE, MAC_SIZE

_SHA256 = hashlib.sha256


def derive_device_key(master_secret: bytes, did: str, key_version: int) -> bytes:
    """K_dev = HMAC(master, "AQK1" | did | key_version as u32 BE): no key store to read at login."""
    if len(master_secret) < KEY_SIZE:
        raise ValueError("the master secret must be at least 32 bytes")
    message = b"AQK1" + did.encode() + key_version.to_bytes(4, "big")
    return hmac.digest(master_secret, message, _SHA256)


def auth_proof(device_key: bytes, did: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """AUTH key 5: HMAC(K_dev, "AQ1" | did | cn | sn)."""
    return hmac.digest(device_key, b"AQ1" + did.encode() + client_nonce + server_nonce, _SHA256)


def server_proof(device_key: bytes, did: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """AUTH_OK key 6: HMAC(K_dev, "SRV" | did | sn | cn)."""
    return hmac.digest(device_key, b"SRV" + did.encode() + server_nonce + client_nonce, _SHA256)


def session_key(device_key: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """Ks = HMAC(K_dev, "S" | cn | sn)."""
    return hmac.digest(device_key, b"S" + client_nonce + server_nonce, _SHA256)


def direction_keys(session_key_: bytes) -> tuple[bytes, bytes]:
    """Frame MAC keys (device -> server, server -> device): HMAC(Ks, "DS"), HMAC(Ks, "SD").

    One key per direction, so a frame cannot be reflected back to its sender: a device's own
    MACed ACK of a COMMAND, echoed to it, must not pass as the server's ACK of its record.
    """
    return (
        hmac.digest(session_key_, b"DS", _SHA256),
        hmac.digest(session_key_, b"SD", _SHA256),
    )


def proofs_equal(expected: bytes, received: bytes) -> bool:
    return hmac.compare_digest(expected, received)


def mqtt_password(device_key: bytes, did: str, ts: int) -> str:
    """Broker password: "<ts>.<hex HMAC(K_dev, "mqtt" | did | ts as decimal text)>"."""
    digest = hmac.digest(device_key, b"mqtt" + did.encode() + str(ts).encode(), _SHA256)
    return f"{ts}.{digest.hex()}"


def mqtt_tag(device_key: bytes, topic: str, payload: bytes) -> bytes:
    """8-byte tag closing every MQTT payload: HMAC(K_dev, topic | payload)[:8]."""
    return hmac.digest(device_key, topic.encode() + payload, _SHA256)[:MAC_SIZE]
