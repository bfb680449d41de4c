"""Logs: one JSON object per line, and no secret ever written."""

from __future__ import annotations

import io
import json
import logging

import pytest

from aquafleet.gateway.logs import configure_logging, get_logger


@pytest.fixture
def json_lines():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logging.getLogger().handlers.clear()


def test_events_are_single_json_lines(json_lines):
    get_logger("aquafleet.test").info("device_logged_in", did="DEMO00000001DA9F", node="n1")
    (line,) = json_lines()
    assert line["event"] == "device_logged_in"
    assert line["did"] == "DEMO00000001DA9F"
    assert line["level"] == "info" and line["timestamp"].endswith("Z")


def test_secret_fields_are_redacted_from_any_logger(json_lines):
    get_logger("aquafleet.test").warning("oops", key="00" * 32, password="hunter2", proof="ab")
    logging.getLogger("some.library").warning("third party", extra={"token": "t0k"})
    ours, theirs = json_lines()
    assert ours["key"] == ours["password"] == ours["proof"] == "[redacted]"
    assert "00" * 32 not in json.dumps(ours) and "hunter2" not in json.dumps(ours)
    assert theirs["event"] == "third party"


def test_multiline_exceptions_stay_on_one_line(json_lines):
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        get_logger("aquafleet.test").exception("failed")
    (line,) = json_lines()
    assert "boom" in line["exception"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "readable"), [(_Terminal(), True), (io.StringIO(), False)])
def test_auto_format_is_readable_on_a_terminal_and_json_elsewhere(stream, readable):
    configure_logging("info", "auto", stream=stream)
    try:
        get_logger("aquafleet.test").info("device_logged_in", did="DEMO00000001DA9F")
    finally:
        logging.getLogger().handlers.clear()
    (line,) = stream.getvalue().splitlines()
    assert line.lstrip().startswith("{") is not readable
    assert "device_logged_in" in line and "DEMO00000001DA9F" in line
    if not readable:
        assert json.loads(line)["event"] == "device_logged_in"
