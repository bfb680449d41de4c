"""CRC-16/MODBUS (poly 0x8005 reflected, init 0xFFFF, no final xor; check 0x4B37)."""

from __future__ import annotations

from collections.abc import Callable

import crcmod.predefined

CHECK_INPUT = b"123456789"
CHECK_VALUE = 0x4B37

crc16_modbus: Callable[[bytes], int] = crcmod.predefined.mkCrcFun("modbus")


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def crc16_modbus_reference(data: bytes) -> int:
    """Plain-Python CRC-16/MODBUS, the reference a firmware author can port line by line."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


if crc16_modbus(CHECK_INPUT) != CHECK_VALUE:  # pragma: no cover - a broken C extension
    crc16_modbus = crc16_modbus_reference
