"""docs/protocol.md shows the bytes the code really sends."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from aquafleet.protocol.constants import (
    AckCode,
    CommandOp,
    ErrorCode,
    EventKind,
    FrameType,
    ResultCode,
)
from aquafleet.protocol.session import DEVICE_ACCEPTS, MAC_REQUIRED, SERVER_ACCEPTS, SessionState
from tests.protocol.doc_examples import annotate, exchange, secrets_table
from tests.protocol.helpers import K_DS, K_SD, SESSION_KEY, decode_all

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_example_frame_is_in_the_doc() -> None:
    text = doc_text()
    examples = exchange()
    assert [e.title.split()[0] for e in examples] == [
        "HELLO",
        "CHALLENGE",
        "AUTH",
        "AUTH_OK",
        "TELEMETRY",
        "ACK",
        "COMMAND",
        "ACK",
        "EVENT",
        "RESULT",
    ]
    for example in examples:
        assert example.data.hex() in text, example.title
        assert annotate(example.data, example.sender) in text, example.title


def test_secrets_table_is_in_the_doc() -> None:
    text = doc_text()
    table = secrets_table()
    for name, value in table.items():
        assert re.search(rf"^{re.escape(name)}\s+{value.hex()}$", text, re.MULTILINE), name
    assert (table["Ks"], table["K_ds"], table["K_sd"]) == (SESSION_KEY, K_DS, K_SD)


def test_the_key_schedule_is_stated() -> None:
    text = doc_text()
    assert 'K_ds = HMAC-SHA256(Ks, "DS")' in text
    assert 'K_sd = HMAC-SHA256(Ks, "SD")' in text
    assert "`44 53`" in text and "`53 44`" in text  # the exact HMAC messages, as bytes


def test_the_hand_checked_mac_is_the_real_one() -> None:
    """Section 11 checks the MAC of the ACK of the TELEMETRY with openssl: same bytes, same key."""
    text = doc_text()
    (example,) = [e for e in exchange() if e.title == "ACK of the TELEMETRY"]
    (frame,) = decode_all(example.data)
    assert frame.mac is not None
    assert f"printf '{frame.signed.hex()}'" in text
    assert f"hexkey:{K_SD.hex()}" in text
    digest = hmac.new(K_SD, frame.signed, hashlib.sha256).hexdigest()
    assert digest[:16] == frame.mac.hex()
    assert f"SHA2-256(stdin)= {digest}" in text
    wrong = hmac.new(K_DS, frame.signed, hashlib.sha256).digest()[:8]
    assert f"give `{wrong.hex(' ')}`" in text


def test_the_smallest_example_and_check_value() -> None:
    text = doc_text()
    assert "5a a5 01 10 00 00 00 00 01 80 36 90" in text
    assert "0x4B37" in text


def test_every_code_is_documented() -> None:
    text = doc_text()
    for code in ErrorCode:
        assert f"| {code.value} | {code.name} |" in text
    for ack in AckCode:
        assert f"| {ack.value} | {ack.name.lower()} |" in text
    for op in CommandOp:
        assert f"| {op.value} | {op.name.lower()} |" in text
    for kind in EventKind:
        assert f"{kind.value} {kind.name.lower()}" in text
    for rc in ResultCode:
        assert f"{rc.value} {rc.name.lower()}" in text


def mac_table() -> list[tuple[list[str], str, str, str]]:
    """Rows of the MAC table in section 3: (frame names, direction, MAC rule, key)."""
    section = doc_text().split("## 3. MAC", 1)[1].split("\n## 4.", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[2] in ("required", "never", "not sent"):
            names = [name.strip() for name in cells[0].split(",")]
            rows.append((names, cells[1], cells[2], cells[3]))
    return rows


# The key each direction MACs with, as the document names it.
DIRECTION_KEY = {"device -> server": "K_ds", "server -> device": "K_sd"}


def test_the_mac_table_matches_the_code() -> None:
    rows = mac_table()
    required = {name for names, _dir, rule, _key in rows if rule == "required" for name in names}
    assert required == {FrameType(t).name for t in MAC_REQUIRED}
    listed = [name for names, _dir, _rule, _key in rows for name in names]
    assert sorted(set(listed)) == sorted(t.name for t in FrameType)
    assert listed.count("ACK") == 2  # one row per direction
    # each required row names a frame its receiver takes (online, or awaiting AUTH_OK), and the
    # key of its direction; rows without a MAC name no key
    for names, direction, rule, key in rows:
        accepts = SERVER_ACCEPTS if direction == "device -> server" else DEVICE_ACCEPTS
        taken = accepts[SessionState.ONLINE] | accepts.get(SessionState.AUTH_SENT, frozenset())
        if rule == "required":
            assert direction in DIRECTION_KEY
            assert {FrameType[name] for name in names} <= taken, names
            assert key == DIRECTION_KEY[direction], names
        else:
            assert key == "-", names


def test_every_example_mac_uses_the_senders_key() -> None:
    for example in exchange():
        (frame,) = decode_all(example.data)
        if frame.mac is None:
            continue
        key = K_DS if example.sender == "device" else K_SD
        assert frame.mac == hmac.new(key, frame.signed, hashlib.sha256).digest()[:8], example.title
