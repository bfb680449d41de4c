"""CRC-16/MODBUS: the check value, the two implementations, the byte order on the wire."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aquafleet.protocol.crc import CHECK_INPUT, CHECK_VALUE, crc16_modbus, crc16_modbus_reference
from aquafleet.protocol.frames import encode_frame
from tests.protocol.helpers import crc16_bitwise


def test_check_value_of_both_implementations() -> None:
    assert CHECK_INPUT == b"123456789"
    assert CHECK_VALUE == 0x4B37
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc16_modbus_reference(b"123456789") == 0x4B37
    assert crc16_bitwise(b"123456789") == 0x4B37


def test_empty_input_is_the_init_value() -> None:
    # No final xor: the CRC of nothing is the initial value 0xFFFF.
    assert crc16_modbus(b"") == crc16_modbus_reference(b"") == 0xFFFF


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1100))
def test_implementations_agree(data: bytes) -> None:
    expected = crc16_bitwise(data)
    assert crc16_modbus(data) == expected
    assert crc16_modbus_reference(data) == expected


def test_crc_is_sent_big_endian_unlike_modbus() -> None:
    frame = encode_frame(0x10, 0, b"\x80")
    crc = crc16_bitwise(frame[2:-2])
    assert crc == 0x3690
    assert frame[-2:] == b"\x36\x90"  # high byte first; Modbus RTU would send 90 36


def test_crc_covers_version_to_mac() -> None:
    frame = encode_frame(0x21, 5, b"\x80", mac_key=b"k" * 32)
    assert int.from_bytes(frame[-2:], "big") == crc16_bitwise(frame[2:-2])
    # The Modbus receiver trick (CRC over data + CRC == 0) needs the CRC low byte first;
    # on this wire it is high byte first, so a receiver must compare, not check for zero.
    assert crc16_bitwise(frame[2:-2] + frame[-2:][::-1]) == 0
    assert crc16_bitwise(frame[2:]) != 0
