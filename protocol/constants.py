"""Wire constants of protocol version 1: frame types, flag bits, codes and limits."""

from __future__ import annotations

from enum import IntEnum

MAGIC = b"\x5a\xa5"
VERSION = 1

HEADER_SIZE = 9  # magic 2, version 1, type 1, flags 1, seq 2, len 2
MAC_SIZE = 8
CRC_SIZE = 2
MAX_PAYLOAD = 1024
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + MAC_SIZE + CRC_SIZE  # 1043
MAX_UNPARSED = 2048  # hard cap on bytes a decoder holds while waiting for the rest of a frame
SEQ_MODULO = 0x10000

NONCE_SIZE = 8
PROOF_SIZE = 32
KEY_SIZE = 32
MAX_DID_LEN = 32
MAX_FW_LEN = 32


class FrameType(IntEnum):
    HELLO = 0x01
    CHALLENGE = 0x02
    AUTH = 0x03
    AUTH_OK = 0x04
    AUTH_FAIL = 0x05
    ERROR = 0x06
    PING = 0x10
    PONG = 0x11
    TELEMETRY = 0x20
    EVENT = 0x21
    COMMAND = 0x30
    RESULT = 0x31
    ACK = 0x7F


KNOWN_FRAME_TYPES = frozenset(int(t) for t in FrameType)


class Flag:
    """Bits of the flags byte (bits 4-7 carry the payload encoding)."""

    ACK_REQ = 0x01
    DUP = 0x02
    MAC = 0x04
    ENCODING_SHIFT = 4
    ENCODING_MASK = 0xF0


class Encoding(IntEnum):
    MSGPACK = 0
    CBOR = 1


class ErrorCode(IntEnum):
    """Codes of ERROR and AUTH_FAIL bodies (`{1: code, 2: reason}`), and of ProtocolError."""

    BAD_FRAME = 1  # framing: length over the limit, truncated, bad CRC
    BAD_VERSION = 2
    BAD_PAYLOAD = 3  # undecodable payload or a field of the wrong type or range
    BAD_MAC = 4
    UNEXPECTED_FRAME = 5  # a frame that is not allowed in the current state
    UNKNOWN_TYPE = 6
    BUFFER_OVERFLOW = 7
    UNKNOWN_ENCODING = 8
    # login
    AUTH_UNKNOWN_DEVICE = 20
    AUTH_DISABLED = 21
    AUTH_BAD_PROOF = 22
    AUTH_TIMEOUT = 23
    AUTH_RATE_LIMITED = 24
    AUTH_BAD_SERVER_PROOF = 25  # seen by a device: the server is not who it claims
    # session
    IDLE_TIMEOUT = 30
    REPLACED = 31  # a newer login of the same device took over
    SHUTDOWN = 32  # the gateway is stopping; reconnect later
    OVERLOADED = 33
    INTERNAL = 34


class AckCode(IntEnum):
    """ACK key 1."""

    STORED = 0
    DUPLICATE = 1  # already stored: still acked so the device forgets it
    STALE = 2  # from a boot the server no longer tracks: acked, not stored
    # errors (the device keeps the record and resends later)
    UNAVAILABLE = 16  # storage unavailable: keep the record and resend it later
    REJECTED = 18  # malformed record (valid CRC, invalid fields): refused, do not resend


class ResultCode(IntEnum):
    """RESULT key 34."""

    OK = 0
    FAILED = 1
    REJECTED = 2
    EXPIRED = 3


class EventKind(IntEnum):
    DISPENSE_DONE = 1
    FAULT_SET = 2
    FAULT_CLEAR = 3
    FILTER_REPLACED = 4
    LEAK = 5
    TAMPER = 6


class CommandOp(IntEnum):
    DISPENSE = 1
    LOCK = 2
    UNLOCK = 3
    SET_QUOTA = 4
    SET_EXPIRY = 5
    RESET_FILTER = 6
    TIME_SYNC = 7
    FIRMWARE_NOTICE = 8
    REBOOT = 9
    SET_STATE = 10  # the whole desired state at one version (args: the DesiredKey map)


class StateBit:
    """Bits of TELEMETRY key 18 (device state bitmap)."""

    POWER = 0x01
    PUMPING = 0x02
    LOCKED = 0x04
    HEATING = 0x08
    COOLING = 0x10
    LOW_PRESSURE = 0x20
    WATER_SHORTAGE = 0x40


class Key:
    """Integer map keys of the payloads."""

    REC = 0
    BOOT = 1
    TS = 2
    # HELLO / CHALLENGE / AUTH / AUTH_OK
    DID = 1
    FW = 2
    CLIENT_NONCE = 3
    SERVER_NONCE = 3
    SERVER_TIME = 4
    PROOF = 5
    SERVER_PROOF = 6
    HEARTBEAT = 7
    LAST_ACKED = 8
    DESIRED = 9
    # ERROR / AUTH_FAIL
    CODE = 1
    REASON = 2
    ERROR_SEQ = 3
    # ACK
    ACK_SEQ = 0
    ACK_RC = 1
    ACK_WATERMARK = 2
    # TELEMETRY
    FLOW_TOTAL = 10
    TDS_IN = 11
    TDS_OUT = 12
    TEMPERATURE = 13
    FILTERS = 14
    FAULTS = 15
    CNT_EPOCH = 16
    SIGNAL = 17
    STATE_BITS = 18
    # EVENT
    EVENT_KIND = 20
    EVENT_CID = 21
    EVENT_ML = 22
    EVENT_FLOW_TOTAL = 23
    # COMMAND / RESULT
    CID = 30
    OP = 31
    EXP = 32
    ARGS = 33
    RESULT_RC = 34
    RESULT_OUT = 35


class DesiredKey:
    """Keys of the desired-state map (AUTH_OK key 9, set_* command args)."""

    LOCK = 1
    REMAINING_ML = 2
    RENTAL_EXPIRES_AT = 3
    VERSION = 4


U8 = 0xFF
U16 = 0xFFFF
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
