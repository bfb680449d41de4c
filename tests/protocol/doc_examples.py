"""The worked byte examples of docs/protocol.md, produced by running the real sessions.

`python -m tests.protocol.doc_examples` prints them as annotated Markdown; test_doc_examples.py
checks that every frame printed here appears in the document, so the document cannot drift.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import msgpack

from aquafleet.protocol import AckCode, DesiredState
from aquafleet.protocol.constants import HEADER_SIZE, MAC_SIZE, Flag, FrameType, StateBit
from aquafleet.protocol.crypto import auth_proof, direction_keys, server_proof, session_key
from aquafleet.protocol.frames import Frame
from aquafleet.protocol.message_types import Command, Event, FilterReading, Result, Telemetry
from tests.protocol.helpers import (
    CLIENT_NONCE,
    DEVICE_KEY,
    DID,
    NOW,
    SERVER_NONCE,
    decode_all,
    new_device,
    new_server,
)

KEY_NAMES = {
    FrameType.HELLO: {1: "did", 2: "fw", 3: "cn (client nonce)"},
    FrameType.CHALLENGE: {3: "sn (server nonce)", 4: "server unix time"},
    FrameType.AUTH: {5: "proof = HMAC(K, 'AQ1'|did|cn|sn)"},
    FrameType.AUTH_OK: {
        6: "server proof = HMAC(K, 'SRV'|did|sn|cn)",
        7: "heartbeat s",
        8: "last acked [boot, rec]",
        9: "desired state {1 lock, 2 remaining_ml, 3 rental_expires_at, 4 version}",
    },
    FrameType.TELEMETRY: {
        0: "rec",
        1: "boot",
        2: "ts (device unix time)",
        10: "flow_total_ml",
        11: "tds_in ppm",
        12: "tds_out ppm",
        13: "temperature 0.1 C",
        14: "filters [[index, work_h, power_on_h, reset_count]]",
        16: "cnt_epoch",
        17: "signal (CSQ)",
        18: "state bits",
    },
    FrameType.EVENT: {
        0: "rec",
        1: "boot",
        2: "ts",
        20: "kind",
        21: "cid",
        22: "ml",
        23: "flow_total_ml after",
    },
    FrameType.COMMAND: {30: "cid", 31: "op", 32: "exp (unix s)", 33: "args"},
    FrameType.RESULT: {30: "cid", 34: "rc", 35: "out"},
    FrameType.ACK: {0: "acked seq", 1: "rc", 2: "watermark [boot, rec]"},
}


@dataclass(frozen=True)
class Example:
    title: str
    sender: str
    data: bytes


def exchange() -> list[Example]:
    """A login and a few minutes of traffic with K = 00..1f, cn = 01..08, sn = 11..18."""
    server = new_server()
    device = new_device()
    out: list[Example] = []

    def take(title: str, sender: str) -> bytes:
        data = (device if sender == "device" else server).data_to_send()
        out.append(Example(title, sender, data))
        return data

    device.start()
    server.receive_data(take("HELLO", "device"), NOW)
    device.receive_data(take("CHALLENGE", "server"), NOW)
    server.receive_data(take("AUTH", "device"), NOW)
    assert server.verify_login(DEVICE_KEY)
    desired = DesiredState(
        version=5, locked=False, remaining_ml=5000, rental_expires_at=1_800_000_000
    )
    server.accept_login(now=NOW, last_acked=(7, 41), desired=desired)
    device.receive_data(take("AUTH_OK", "server"), NOW)

    telemetry = Telemetry(
        rec=42,
        boot=7,
        ts=NOW + 60,
        flow_total_ml=12345,
        tds_in_ppm=180,
        tds_out_ppm=8,
        temperature_dc=215,
        filters=(FilterReading(0, 1200, 3000, 1),),
        cnt_epoch=1,
        signal=20,
        state_bits=StateBit.POWER,
    )
    seq = device.send_record(telemetry)
    server.receive_data(take("TELEMETRY", "device"), NOW + 60)
    server.ack(seq, AckCode.STORED, (7, 42))
    device.receive_data(take("ACK of the TELEMETRY", "server"), NOW + 60)

    server.send_command(Command(cid=1001, op=1, exp=NOW + 120, args={1: 250}))
    device.receive_data(take("COMMAND dispense 250 ml", "server"), NOW + 61)
    server.receive_data(take("ACK of the COMMAND (delivered)", "device"), NOW + 61)

    event = Event(rec=43, boot=7, ts=NOW + 75, kind=1, cid=1001, ml=250, flow_total_ml=12595)
    device.send_record(event)
    server.receive_data(take("EVENT dispense_done", "device"), NOW + 75)
    device.send_result(Result(cid=1001, rc=0, out=250))
    server.receive_data(take("RESULT", "device"), NOW + 75)
    return out


def secrets_table() -> dict[str, bytes]:
    ks = session_key(DEVICE_KEY, CLIENT_NONCE, SERVER_NONCE)
    k_ds, k_sd = direction_keys(ks)
    return {
        "K_dev": DEVICE_KEY,
        "cn": CLIENT_NONCE,
        "sn": SERVER_NONCE,
        "AUTH proof": auth_proof(DEVICE_KEY, DID, CLIENT_NONCE, SERVER_NONCE),
        "server proof": server_proof(DEVICE_KEY, DID, SERVER_NONCE, CLIENT_NONCE),
        "Ks": ks,
        "K_ds": k_ds,
        "K_sd": k_sd,
    }


def _flags(flags: int) -> str:
    bits = ((Flag.ACK_REQ, "ACK_REQ"), (Flag.DUP, "DUP"), (Flag.MAC, "MAC"))
    names = [name for bit, name in bits if flags & bit]
    encoding = "CBOR" if flags >> 4 == 1 else "msgpack"
    return f"flags: {' | '.join(names) or 'none'}, encoding {encoding}"


def _hex(data: bytes) -> str:
    return data.hex(" ")


def annotate(data: bytes, sender: str) -> str:
    """One line per field: header, each payload map entry, MAC, CRC.

    `sender` ("device" or "server") names the MAC key: K_ds for a device's frame, else K_sd.
    """
    (frame,) = decode_all(data)
    lines = [
        (data[0:2], "magic"),
        (data[2:3], "version 1"),
        (data[3:4], f"type {FrameType(frame.type).name}"),
        (data[4:5], _flags(frame.flags)),
        (data[5:7], f"seq {frame.seq}"),
        (data[7:9], f"len {len(frame.payload)}"),
    ]
    lines += _payload_lines(frame)
    end = HEADER_SIZE + len(frame.payload)
    if frame.mac is not None:
        key = "K_ds" if sender == "device" else "K_sd"
        note = f"MAC = HMAC({key}, bytes 2 .. end of payload)[:8]"
        lines.append((data[end : end + MAC_SIZE], note))
    lines.append((data[-2:], "CRC-16/MODBUS of bytes 2 .. before the CRC, high byte first"))
    width = 3 * 12
    out = []
    for chunk, note in lines:
        text = _hex(chunk)
        first = True
        while text:
            piece, text = text[:width].rstrip(), text[width:].lstrip()
            out.append(f"{piece:<{width}} {note if first else ''}".rstrip())
            first = False
    return "\n".join(out)


def _payload_lines(frame: Frame) -> list[tuple[bytes, str]]:
    payload = frame.payload
    names = KEY_NAMES.get(FrameType(frame.type), {})
    unpacker = msgpack.Unpacker(io.BytesIO(payload), raw=False, strict_map_key=False)
    size = unpacker.read_map_header()
    lines = [(payload[: unpacker.tell()], f"payload: map of {size}")]
    for _ in range(size):
        start = unpacker.tell()
        key = unpacker.unpack()
        value = unpacker.unpack()
        if isinstance(value, bytes):
            shown = value.hex(" ") if len(value) <= 8 else f"{len(value)} bytes (table above)"
        else:
            shown = repr(value)
        lines.append((payload[start : unpacker.tell()], f"  {key} {names.get(key, '?')}: {shown}"))
    return lines


def markdown() -> str:
    parts = ["Secrets and derived keys (hex):", "", "```"]
    parts += [f"{name:<13} {value.hex()}" for name, value in secrets_table().items()]
    parts += ["```", ""]
    for example in exchange():
        receiver = "server" if example.sender == "device" else "device"
        parts += [
            f"**{example.title}** ({example.sender} -> {receiver}):",
            "",
            "```",
            example.data.hex(),
            "",
            annotate(example.data, example.sender),
            "```",
            "",
        ]
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown())
