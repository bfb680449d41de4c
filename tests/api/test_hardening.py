"""Defects found by an outside audit (issue 11): each one's regression test."""

from __future__ import annotations

import pytest

from api.routing import MAX_JSON_DEPTH
from tests.api.conftest import ApiClient

JSON = {"Content-Type": "application/json"}


def nested(levels: int) -> str:
    """A login body whose `user` is `levels` arrays deep."""
    return '{"user": ' + "[" * levels + "]" * levels + ', "pwd": "x"}'


@pytest.mark.parametrize("path", ["/auth/login", "/users", "/auth/refresh"])
async def test_deeply_nested_json_is_a_400_and_one_log_line(
    api: ApiClient, path: str, capsys: pytest.CaptureFixture[str]
):
    for body in ("[" * 1000 + "]" * 1000, "[" * 2048, nested(MAX_JSON_DEPTH)):
        capsys.readouterr()
        answer = await api.call("POST", path, data=body, headers=JSON, token=None)
        assert answer.status == 400 and answer.code == "bad_request", answer
        assert "JSON" in answer.body["message"]
        logged = capsys.readouterr()
        lines = (logged.out + logged.err).splitlines()
        assert len(lines) == 1 and "api_body_refused" in lines[0], lines
    # One level less is within the limit: the schema, not the parser, refuses it.
    answer = await api.call("POST", path, data=nested(MAX_JSON_DEPTH - 1), headers=JSON, token=None)
    assert answer.status == 422, answer


async def test_nested_json_behind_a_login_is_refused_the_same(api: ApiClient):
    answer = await api.call("POST", "/vendors", data="[" * 1000 + "]" * 1000, headers=JSON)
    assert answer.status == 400 and answer.code == "bad_request"
