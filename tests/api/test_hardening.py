"""Defects found by an outside audit (issue 11): each one's regression test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from aquafleet.api.routing import MAX_JSON_DEPTH
from tests.api import test_members_api as member_fixtures
from tests.api.conftest import PASSWORD, ApiClient, Tenant, md5
from tests.api.test_members_api import MemberApp
from tests.fakes.aliyun_sms import FakeAliyunSms

# The node of the member tests (SMS to the Aliyun fake, on a test clock) and its app driver.
clock = member_fixtures.clock
fake_sms = member_fixtures.fake_sms
fake_wx = member_fixtures.fake_wx
api_node = member_fixtures.api_node
members = member_fixtures.members

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
        answer = await api.call("POST", path, data=body, headers=JSON, token=None, expect=400)
        assert answer.status == 400 and answer.code == "bad_request", answer
        assert "JSON" in answer.body["message"]
        logged = capsys.readouterr()
        lines = (logged.out + logged.err).splitlines()
        assert len(lines) == 1 and "api_body_refused" in lines[0], lines
    # One level less is within the limit: the schema, not the parser, refuses it.
    answer = await api.call(
        "POST", path, data=nested(MAX_JSON_DEPTH - 1), headers=JSON, token=None, expect=422
    )
    assert answer.status == 422, answer


async def test_nested_json_behind_a_login_is_refused_the_same(api: ApiClient):
    answer = await api.call(
        "POST", "/vendors", data="[" * 1000 + "]" * 1000, headers=JSON, expect=400
    )
    assert answer.status == 400 and answer.code == "bad_request"


TOO_BIG = 2**63  # 9223372036854775808: past every column


async def test_integers_past_their_column_are_422_not_500(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, _ = await members.register(a.vid, "13800138000")
    for value in (str(TOO_BIG), str(2**31), str(-(2**70))):
        answer = await api.call("GET", "/users", params={"agent_id": value}, expect=422)
        assert answer.status == 422 and answer.data[0]["field"] == "agent_id", answer
    for value in (TOO_BIG, 2**31, 10**40):
        answer = await api.call("PUT", f"/users/{uid}", {"agent_id": value}, expect=422)
        assert answer.status == 422 and answer.data[0]["field"] == "agent_id", answer
        answer = await api.call("GET", "/devices", params={"agent_id": str(value)}, expect=422)
        assert answer.status == 422, answer
    # Within the column, the same inputs are read as before.
    answer = await api.call("GET", "/users", params={"agent_id": str(a.agent_id)})
    assert answer.status == 200, answer
    answer = await api.call("PUT", f"/users/{uid}", {"agent_id": a.agent_id})
    assert answer.status == 201, answer


async def test_integer_fields_refuse_booleans_and_floats(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, _ = await members.register(a.vid, "13800138000")
    for value in (False, True, 2.0, 0.0):
        answer = await a.vendor.call(
            "PUT", f"/agents/{a.dealer_id}/state", {"state": value}, expect=422
        )
        assert answer.status == 422 and answer.data[0]["field"] == "state", (value, answer)
        answer = await api.call("PUT", f"/users/{uid}", {"state": value}, expect=422)
        assert answer.status == 422 and answer.data[0]["field"] == "state", (value, answer)
        answer = await api.call("PUT", f"/users/{uid}", {"type": value}, expect=422)
        assert answer.status == 422 and answer.data[0]["field"] == "type", (value, answer)
    answer = await a.vendor.call("PUT", f"/agents/{a.dealer_id}/state", {"state": 0})
    assert answer.status == 201 and answer.data["state"] == 0, answer
    answer = await api.call("PUT", f"/users/{uid}", {"state": 2, "type": 1})
    assert answer.status == 201 and answer.data["state"] == 2, answer


def test_every_integer_input_is_bounded_within_int64():
    """A route added later gets the same bounds: no integer input is left unbounded."""
    from aquafleet.api.app import all_routes
    from aquafleet.api.schemas import INT64_MAX, INT64_MIN

    for route in all_routes():
        for model in (route.body, route.query, route.params):
            if model is None:
                continue
            for name, prop in model.model_json_schema()["properties"].items():
                for schema in prop.get("anyOf", [prop]):
                    if schema.get("type") == "integer" and "enum" not in schema:
                        where = f"{model.__name__}.{name}"
                        assert INT64_MIN <= schema["minimum"] <= schema["maximum"], where
                        assert schema["maximum"] <= INT64_MAX, where


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/users/login", {"POST"}),
        ("GET", "/users/login", {"POST"}),
        ("DELETE", "/users/code", {"GET"}),
        ("GET", "/users/bind", {"POST"}),
    ],
)
async def test_a_fixed_path_beats_a_parameter_and_answers_405(
    api: ApiClient, method: str, path: str, allow: set[str]
):
    answer = await api.call(method, path, token=None, expect=405)
    assert answer.status == 405 and answer.code == "method_not_allowed", answer
    assert set(answer.headers["Allow"].split(",")) - {"HEAD"} == allow
    # The parameter still matches everything else, and the fixed path its own method.
    answer = await api.call("GET", "/users/AAAA00000001", token=None, expect=401)
    assert answer.status == 401
    answer = await api.call(
        "GET", "/users/login/code", params={"vid": "ZZZZ"}, token=None, expect=422
    )
    assert answer.status == 422


SPOOFING = {
    "right-to-left override": "Bob\u202egnp.exe",
    "zero-width space": "Ali\u200bce",
    "zero-width joiner": "Ali\u200dce",
    "byte order mark": "\ufeffAlice",
    "next line (C1)": "Alice\u0085Bob",
    "line separator": "Alice\u2028Bob",
    "paragraph separator": "Alice\u2029Bob",
    "tag character": "Alice\U000e0041",
    "C0 control": "Alice\x07",
}


@pytest.mark.parametrize("value", SPOOFING.values(), ids=SPOOFING.keys())
async def test_text_fields_refuse_control_and_format_characters(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp, value: str
):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000")
    refused = [
        (a.vendor, "POST", "/agents", {"name": value, "user": "x-agent", "pwd": "0" * 32}, "name"),
        (a.vendor, "PUT", f"/agents/{a.agent_id}", {"address": value}, "address"),
        (api, "PUT", f"/vendors/{a.vid}", {"remark": value}, "remark"),
        (me, "PUT", f"/users/{uid}", {"name": value}, "name"),
        (api, "PUT", f"/users/{uid}", {"remark": value}, "remark"),
        (api, "PUT", f"/vendors/{a.vid}/cfg", {"sms_sign": value}, "sms_sign"),
    ]
    for client, method, path, body, field in refused:
        answer = await client.call(method, path, body, expect=422)
        assert answer.status == 422 and answer.data[0]["field"] == field, (path, answer)
        assert "control or format characters" in answer.data[0]["message"]
    answer = await members.public.call(
        "POST",
        "/users",
        {"mobile": "13900139000", "code": "123456", "name": value, "vid": a.vid},
        expect=422,
    )
    assert answer.status == 422 and answer.data[0]["field"] == "name", answer


async def test_text_is_stored_in_nfc(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000")
    decomposed = "Jose\u0301 \u5f20\u4e09 \U0001f600"  # e + combining acute; CJK; emoji: fine
    answer = await me.call("PUT", f"/users/{uid}", {"name": decomposed})
    assert answer.status == 201, answer
    answer = await me.call("GET", f"/users/{uid}")
    assert answer.data["name"] == "Jos\u00e9 \u5f20\u4e09 \U0001f600"
    # The length bound counts what is stored: 64 composed characters fit, 65 do not.
    answer = await me.call("PUT", f"/users/{uid}", {"name": "e\u0301" * 64})
    assert answer.status == 201, answer
    answer = await me.call("PUT", f"/users/{uid}", {"name": "e\u0301" * 65}, expect=422)
    assert answer.status == 422, answer


def test_the_schema_pattern_agrees_with_the_validator():
    """Every BMP character the documented pattern refuses, the validator refuses too."""
    import re
    import unicodedata

    from aquafleet.api.schemas import REFUSED_TEXT_CATEGORIES, TEXT_PATTERN

    pattern = re.compile(TEXT_PATTERN)
    for code in range(0x10000):
        char = chr(code)
        refused = unicodedata.category(char) in REFUSED_TEXT_CATEGORIES
        if unicodedata.category(char) != "Cs":
            assert (pattern.fullmatch(char) is None) == refused, hex(code)


@pytest.mark.parametrize(
    "accept",
    ["application/xml", "text/html", "text/plain, application/xml;q=0.9", "application/json;q=0"],
)
async def test_a_client_that_accepts_no_json_gets_406_in_the_envelope(api: ApiClient, accept: str):
    answer = await api.call("GET", "/vendors", headers={"Accept": accept}, expect=406)
    assert answer.status == 406 and answer.code == "not_acceptable", answer
    answer = await api.call(
        "POST",
        "/auth/login",
        {"user": "root", "pwd": "0" * 32},
        headers={"Accept": accept},
        expect=406,
    )
    assert answer.status == 406, answer


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "*/*",
        "application/json",
        "application/*",
        "application/json; charset=utf-8",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # a browser
        "application/xml, application/json;q=0.1",
    ],
)
async def test_json_anywhere_in_accept_keeps_working(api: ApiClient, accept: str | None):
    headers = {} if accept is None else {"Accept": accept}
    answer = await api.call("GET", "/vendors", headers=headers)
    assert answer.status == 200, answer


async def test_csv_answers_still_accept_text_csv(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, _ = tenants
    async with api.session.post(
        f"{api.base}/api/v1/devices",
        json={"vid": a.vid, "count": 1},
        headers={"Authorization": f"Bearer {api.token}", "Accept": "text/csv"},
    ) as response:
        assert response.status == 201 and response.content_type == "text/csv"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nothing-here", 404), ("GET", "/api", 404), ("POST", "/healthz", 405)],
)
async def test_paths_outside_the_api_answer_in_the_envelope(
    api: ApiClient, method: str, path: str, status: int
):
    async with api.session.request(method, f"{api.base}{path}") as response:
        assert response.status == status and response.content_type == "application/json"
        body = await response.json()
    assert set(body) == {"total", "data", "status", "code", "message"}
    assert body["status"] is False and body["code"] in ("not_found", "method_not_allowed")


async def test_the_front_door_leads_to_the_console(api: ApiClient):
    async with api.session.get(f"{api.base}/", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/console/"
    async with api.session.get(f"{api.base}/") as followed:
        assert followed.status == 200 and followed.content_type == "text/html"
        assert "script-src 'self'" in followed.headers["Content-Security-Policy"]


METRICS_TOKEN = "m" * 40


async def test_metrics_need_the_token_when_one_is_configured(database_url: str, node_factory: Any):
    node = await node_factory(database_url=database_url, metrics_token=METRICS_TOKEN)
    url = f"http://127.0.0.1:{node.http_port}/metrics"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer " + "x" * 40}, {"Authorization": "Basic x"}):
            async with session.get(url, headers=headers) as response:
                assert response.status == 401  # loopback is no excuse once a token is set
                body = await response.json()
                assert body["code"] == "unauthorized" and "aquafleet_" not in str(body)
        headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        async with session.get(url, headers=headers) as response:
            assert response.status == 200 and "aquafleet_connections " in await response.text()


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [(("127.0.0.1", 5000), True), (("::1", 5000, 0, 0), True), (("10.1.2.3", 5000), False)],
)
def test_without_a_token_metrics_answer_loopback_clients_only(peer: Any, allowed: bool):
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from aquafleet.api.errors import Forbidden
    from aquafleet.api.routing import check_metrics_access

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        peer if name == "peername" else default
    )
    request = make_mocked_request("GET", "/metrics", transport=transport)
    assert request.remote == peer[0]
    if allowed:
        check_metrics_access(request, None)
    else:
        with pytest.raises(Forbidden):
            check_metrics_access(request, None)


def test_a_short_metrics_token_is_refused_at_start():
    from aquafleet.gateway.config_sources import load_settings
    from aquafleet.gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="metrics_token"):
        load_settings(metrics_token="short")


def client_from(address: str) -> aiohttp.ClientSession:
    """A client whose requests come from `address` (any of 127.0.0.0/8 on Linux)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def admin_login(api: ApiClient, user: str, password: str, *, expect: int = 200) -> Any:
    body = {"user": user, "pwd": md5(password)}
    return await api.call("POST", "/auth/login", body, token=None, expect=expect)


async def test_wrong_passwords_from_one_address_do_not_lock_the_admin_out(
    database_url: str, node_factory: Any
):
    """The audit: 10 wrong passwords locked any admin out for 15 minutes, everywhere."""
    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role

    node = await node_factory(database_url=database_url)  # the default limits
    await create_account("target", md5(PASSWORD), Role.PLATFORM)
    base = f"http://127.0.0.1:{node.http_port}"
    async with client_from("127.0.0.2") as attacker_session, client_from("127.0.0.3") as own:
        attacker = ApiClient(attacker_session, base)
        statuses = [
            (
                await admin_login(attacker, "target", f"guess-{n}", expect=401 if n < 5 else 429)
            ).status
            for n in range(10)
        ]
        assert statuses == [401] * 5 + [429] * 5
        assert (await admin_login(attacker, "target", PASSWORD, expect=429)).status == 429
        answer = await admin_login(ApiClient(own, base), "target", PASSWORD)
        assert answer.status == 200, answer
        # ... and the owner's success does not clear the attacker's wait.
        assert (await admin_login(attacker, "target", "guess-11", expect=429)).status == 429


async def test_the_wait_doubles_with_each_wrong_password(database_url: str, node_factory: Any):
    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role

    node = await node_factory(database_url=database_url, admin_login_free_attempts=2)
    await create_account("slow", md5(PASSWORD), Role.PLATFORM)
    async with client_from("127.0.0.4") as session:
        api = ApiClient(session, f"http://127.0.0.1:{node.http_port}")
        assert (await admin_login(api, "slow", "one", expect=401)).status == 401
        assert (await admin_login(api, "slow", "two", expect=401)).status == 401
        for wait_s in (1, 2, 4):
            refused = await admin_login(api, "slow", PASSWORD, expect=429)
            assert refused.status == 429 and int(refused.headers["Retry-After"]) == wait_s
            await asyncio.sleep(wait_s + 0.05)
            if wait_s < 4:
                assert (await admin_login(api, "slow", "wrong", expect=401)).status == 401
        # The right password after the wait logs in and clears the count: back to no wait.
        assert (await admin_login(api, "slow", PASSWORD)).status == 200
        assert (await admin_login(api, "slow", "wrong", expect=401)).status == 401
        assert (await admin_login(api, "slow", "wrong", expect=401)).status == 401


def same_answer(answer: Any) -> tuple[int, str, str]:
    return answer.status, answer.code, answer.body["message"]


async def test_an_anonymous_password_reset_does_not_tell_who_exists(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp
):
    from aquafleet.models.members import Member, MemberState, member_uid

    a, _ = tenants
    active, _ = await members.register(a.vid, "13800138000")
    disabled, _ = await members.register(a.vid, "13800138001")
    await Member.filter(uid=disabled).update(state=MemberState.DISABLED)
    pending, _ = await members.register(a.vid, "13800138002")
    await members.code(f"/users/{pending}/rst/code", "13800138002")  # a live code, not ours
    unknown = member_uid(a.vid, 999)  # well formed, check digits right, no such member
    other_vendor = member_uid("ZZZZ", 1)
    body = {"pwd": md5("new"), "code": "000000"}
    answers = {
        uid: same_answer(await members.public.call("PUT", f"/users/{uid}/rst", body, expect=422))
        for uid in (active, disabled, pending, unknown, other_vendor)
    }
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values()))[:2] == (422, "sms_code_invalid")
    # With a login, the caller's own view applies: an admin learns what it may see.
    answer = await api.call("PUT", f"/users/{unknown}/rst", body, expect=404)
    assert answer.status == 404


async def test_an_anonymous_reset_code_request_does_not_tell_whose_number_it_is(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp, fake_sms: FakeAliyunSms
):
    """AA-07A answered 404 for a uid and number that are not a member's and 200 for those that
    are: with sequential uids, anyone could find the uid of a number (or the number of a uid,
    one guess at a time). Without a token every pair is answered as a sent code; only the
    member's own number gets one. The provider refusing that number is not told either."""
    from aquafleet.models.members import Member, MemberState, member_uid

    a, b = tenants
    active, _ = await members.register(a.vid, "13800138000")
    disabled, _ = await members.register(a.vid, "13800138001")
    await Member.filter(uid=disabled).update(state=MemberState.DISABLED)
    in_other_vendor, _ = await members.register(b.vid, "13800138002")
    unknown = member_uid(a.vid, 999)
    members.clock.now += 61  # past each number's one-code-a-minute limit
    sent_before = len(fake_sms.sent)
    pairs = [  # each number once: a number's requests count against its limit
        (active, "13900139000"),  # a member, a number not its own
        (disabled, "13800138001"),  # a disabled member, its own number
        (in_other_vendor, "13900139001"),  # another vendor's member, a number not its own
        (unknown, "13800138002"),  # no such member (the number is another vendor's member's)
        (active, "13800138000"),  # the member's own: the only code sent
    ]
    answers = {
        pair: same_answer_of_200(
            await members.public.call(
                "GET", f"/users/{pair[0]}/rst/code", params={"mobile": pair[1]}
            )
        )
        for pair in pairs
    }
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values()))[0] == 200
    sent = fake_sms.sent[sent_before:]
    assert [s.mobile for s in sent] == ["13800138000"]
    # The SMS provider refusing the member's number: still the same answer, nothing sent.
    members.clock.now += 61
    fake_sms.scripted.append(
        (200, json.dumps({"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "no", "RequestId": "R"}))
    )
    refused = await members.public.call(
        "GET", f"/users/{active}/rst/code", params={"mobile": "13800138000"}
    )
    assert same_answer_of_200(refused) == next(iter(answers.values()))
    assert len(fake_sms.sent) == sent_before + 1
    # With a login, the caller's own view applies: an admin learns what it may see.
    answer = await a.vendor.call(
        "GET", f"/users/{unknown}/rst/code", params={"mobile": "13800138003"}, expect=404
    )
    assert answer.status == 404


def same_answer_of_200(answer: Any) -> tuple[int, str]:
    return answer.status, json.dumps(answer.body, sort_keys=True)


async def test_registration_does_not_tell_whether_a_referrer_exists(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    from aquafleet.models.members import member_uid

    a, b = tenants
    referrer, _ = await members.register(a.vid, "13800138000")
    in_other_vendor, _ = await members.register(b.vid, "13800138001")
    rids = (referrer, member_uid(a.vid, 999), in_other_vendor, None)
    answers = set()
    for rid in rids:  # no code sent to this number
        body = {"mobile": "13900139000", "code": "000000", "name": "N", "vid": a.vid, "rid": rid}
        answers.add(same_answer(await members.public.call("POST", "/users", body, expect=422)))
    assert len(answers) == 1, answers
    assert next(iter(answers))[0] == 422
    await members.code("/users/code", "13900139000", vid=a.vid)  # a live code, not this one
    kinds = set()
    for rid in rids:
        body = {"mobile": "13900139000", "code": "000000", "name": "N", "vid": a.vid, "rid": rid}
        kinds.add(same_answer(await members.public.call("POST", "/users", body, expect=422))[:2])
    assert kinds == {(422, "sms_code_wrong")}, kinds
    # With the right code the referrer is checked: an unknown one is refused...
    code = await members.code("/users/code", "13900139000", vid=a.vid)
    body = {"mobile": "13900139000", "code": code, "name": "N", "vid": a.vid}
    answer = await members.public.call(
        "POST", "/users", {**body, "rid": member_uid(a.vid, 999)}, expect=422
    )
    assert answer.status == 422 and answer.code == "invalid_input"
    # ... and a known one accepted (the refusal used up that code: a new one).
    body["code"] = await members.code("/users/code", "13900139000", vid=a.vid)
    answer = await members.public.call("POST", "/users", {**body, "rid": referrer})
    assert answer.status == 201, answer


@pytest.mark.parametrize("path", ["/mqtt/auth", "/mqtt/acl", "/mqtt/superuser"])
async def test_the_broker_endpoints_deny_deeply_nested_json(
    api: ApiClient, path: str, capsys: pytest.CaptureFixture[str]
):
    capsys.readouterr()
    async with api.session.post(f"{api.base}{path}", data="[" * 4000, headers=JSON) as response:
        assert response.status == 200
        assert (await response.json())["result"] == "deny"
    logged = capsys.readouterr()
    assert "Traceback" not in logged.out + logged.err
