"""MemberApp endpoints (AA-01..10, member login, SMS codes) through a real node on SQLite and
PostgreSQL, with Aliyun SMS and WeChat as local fakes and a controlled clock for codes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aquafleet.api.members import MEMBERS
from aquafleet.models.members import Member, MemberState, member_uid
from aquafleet.models.vendors import Vendor
from tests.api.conftest import ApiClient, Tenant, client_from, md5
from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.wechat import FakeWechat, FakeWechatUser

APPID, APPSECRET = "wx0123456789abcdef", "wx-secret"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake_sms(clock: Clock) -> AsyncIterator[FakeAliyunSms]:
    async with FakeAliyunSms(clock=clock) as fake:
        yield fake


@pytest.fixture
async def fake_wx(clock: Clock) -> AsyncIterator[FakeWechat]:
    async with FakeWechat(apps={APPID: APPSECRET}, clock=clock) as fake:
        yield fake


@pytest.fixture
async def api_node(
    database_url: str, node_factory: Any, fake_sms: FakeAliyunSms, fake_wx: FakeWechat, clock: Clock
) -> Any:
    """The node of tests/api/conftest.py, sending SMS to the Aliyun fake, on our clock."""
    node = await node_factory(
        database_url=database_url,
        sms_provider="aliyun",
        sms_endpoint=fake_sms.url,
        sms_access_key_id="LTAIfake0001",
        sms_access_key_secret="fake-secret",
        sms_sign_name="净水云",
        sms_template_code="SMS_100001",
        wechat_api_url=fake_wx.url,
    )
    codes = node.app[MEMBERS].codes
    codes.clock = clock
    codes.sender.clock = clock
    return node


class MemberApp:
    """Drives the member endpoints the way an app does."""

    def __init__(self, api: ApiClient, sms: FakeAliyunSms, clock: Clock) -> None:
        self.public = api.as_(None)
        self.sms = sms
        self.clock = clock

    async def code(self, path: str, mobile: str, **params: str) -> str:
        self.clock.now += 61  # past the one-code-a-minute limit
        answer = await self.public.call("GET", path, params={"mobile": mobile, **params})
        assert answer.status == 200, answer
        return self.sms.codes_sent_to(mobile)[-1]

    async def register(
        self, vid: str, mobile: str, *, pwd: str | None = "pw", **extra: Any
    ) -> tuple[str, ApiClient]:
        code = await self.code("/users/code", mobile, vid=vid)
        body = {"mobile": mobile, "code": code, "name": "John", "vid": vid, **extra}
        if pwd is not None:
            body["pwd"] = md5(pwd)
        answer = await self.public.call("POST", "/users", body)
        assert answer.status == 201, answer
        assert answer.data["created"] is True and answer.data["role"] == "member"
        return answer.data["uid"], self.public.as_(answer.data["access_token"])


@pytest.fixture
def members(api: ApiClient, fake_sms: FakeAliyunSms, clock: Clock) -> MemberApp:
    return MemberApp(api, fake_sms, clock)


# ----------------------------------------------------------------------------- registration


async def test_register_with_a_code_then_read_yourself(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_sms: FakeAliyunSms
):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000", email="j@x.cn", area="珠海")
    assert uid == member_uid(a.vid, 1)
    assert fake_sms.sent[-1].text.startswith("您的验证码为")
    answer = await me.call("GET", f"/users/{uid}")
    assert answer.status == 200, answer
    data = answer.data
    assert (data["uid"], data["mobile"], data["email"], data["area"]) == (
        uid,
        "13800138000",
        "j@x.cn",
        "珠海",
    )
    assert data["state"] == 1 and data["has_password"] is True
    # Admin-only fields are null for the member (seed note 1).
    assert data["vid"] is None and data["rid"] is None and data["remark"] is None
    assert data["reg_tms"].endswith("Z")


async def test_registration_refuses_wrong_used_and_expired_codes(
    tenants: tuple[Tenant, Tenant], members: MemberApp, clock: Clock
):
    a, _ = tenants
    code = await members.code("/users/code", "13800138000", vid=a.vid)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    body = {"mobile": "13800138000", "code": wrong, "name": "J", "vid": a.vid}
    answer = await members.public.call("POST", "/users", body, expect=422)
    assert (answer.status, answer.code) == (422, "sms_code_wrong")
    clock.now += 301
    answer = await members.public.call("POST", "/users", {**body, "code": code}, expect=422)
    assert (answer.status, answer.code) == (422, "sms_code_expired")
    code = await members.code("/users/code", "13800138000", vid=a.vid)
    assert (await members.public.call("POST", "/users", {**body, "code": code})).status == 201
    answer = await members.public.call(
        "POST", "/users", {**body, "mobile": "13900139000", "code": code}, expect=422
    )
    assert answer.code == "sms_code_expired"  # a code is bound to its number


async def test_five_wrong_codes_void_the_code(tenants: tuple[Tenant, Tenant], members: MemberApp):
    a, _ = tenants
    code = await members.code("/users/code", "13800138000", vid=a.vid)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    body = {"mobile": "13800138000", "code": wrong, "name": "J", "vid": a.vid}
    codes = [(await members.public.call("POST", "/users", body, expect=422)).code for _ in range(5)]
    assert codes == ["sms_code_wrong"] * 4 + ["sms_code_expired"]
    answer = await members.public.call("POST", "/users", {**body, "code": code}, expect=422)
    assert answer.code == "sms_code_expired"


async def test_code_requests_are_rate_limited_per_number(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    await members.code("/users/code", "13800138000", vid=a.vid)
    answer = await members.public.call(
        "GET", "/users/code", params={"vid": a.vid, "mobile": "13800138000"}, expect=429
    )
    assert (answer.status, answer.code) == (429, "rate_limited")
    assert 1 <= int(answer.headers["Retry-After"]) <= 60


@pytest.mark.parametrize(
    "params",
    [
        {"vid": "AAAA", "mobile": "1380013800"},
        {"vid": "AAAA", "mobile": "23800138000"},
        {"vid": "aaaa", "mobile": "13800138000"},
        {"vid": "AAAA"},
        {"vid": "AAAA", "mobile": "13800138000", "extra": "1"},
    ],
)
async def test_code_requests_validate_their_query(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_sms: FakeAliyunSms, params: Any
):
    answer = await members.public.call("GET", "/users/code", params=params, expect=422)
    assert (answer.status, answer.code) == (422, "validation_failed")
    assert fake_sms.sent == []


async def test_a_registered_number_or_unknown_vendor_gets_no_code(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    await members.register(a.vid, "13800138000")
    members.clock.now += 61
    answer = await members.public.call(
        "GET", "/users/code", params={"vid": a.vid, "mobile": "13800138000"}, expect=409
    )
    assert (answer.status, answer.code) == (409, "mobile_taken")
    answer = await members.public.call(
        "GET", "/users/code", params={"vid": "ZZZZ", "mobile": "13800138001"}, expect=404
    )
    assert answer.status == 404


async def test_a_failing_sms_provider_answers_503_without_details(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_sms: FakeAliyunSms
):
    a, _ = tenants
    fake_sms.balance = 0
    answer = await members.public.call(
        "GET", "/users/code", params={"vid": a.vid, "mobile": "13800138000"}, expect=503
    )
    assert (answer.status, answer.code) == (503, "sms_unavailable")
    assert "AMOUNT" not in answer.body["message"]


async def test_registration_body_validation(tenants: tuple[Tenant, Tenant], members: MemberApp):
    a, _ = tenants
    base = {"mobile": "13800138000", "code": "123456", "name": "J", "vid": a.vid}
    for bad in (
        {**base, "code": "12345"},
        {**base, "name": ""},
        {**base, "pwd": "plain-text"},
        {**base, "email": "not-an-email"},
        {**base, "bonus": 100},
        {**base, "mobile": 13800138000},
    ):
        answer = await members.public.call("POST", "/users", bad, expect=422)
        assert (answer.status, answer.code) == (422, "validation_failed"), bad
    answer = await members.public.call(
        "POST",
        "/users",
        data=b'{"mobile": ',
        headers={"Content-Type": "application/json"},
        expect=400,
    )
    assert (answer.status, answer.code) == (400, "bad_request")


# ----------------------------------------------------------------------------- login


async def test_login_with_password_and_with_code(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, b = tenants
    uid, _ = await members.register(a.vid, "13800138000", pwd="pw")
    ok = await members.public.call(
        "POST", "/users/login", {"vid": a.vid, "mobile": "13800138000", "pwd": md5("pw")}
    )
    assert ok.status == 200 and ok.data["uid"] == uid, ok
    wrong = await members.public.call(
        "POST", "/users/login", {"vid": a.vid, "mobile": "13800138000", "pwd": md5("x")}, expect=401
    )
    assert (wrong.status, wrong.code) == (401, "login_failed")
    other_vendor = await members.public.call(
        "POST",
        "/users/login",
        {"vid": b.vid, "mobile": "13800138000", "pwd": md5("pw")},
        expect=401,
    )
    assert other_vendor.status == 401
    code = await members.code("/users/login/code", "13800138000", vid=a.vid)
    by_code = await members.public.call(
        "POST", "/users/login", {"vid": a.vid, "mobile": "13800138000", "code": code}
    )
    assert by_code.status == 200 and by_code.data["uid"] == uid
    reused = await members.public.call(
        "POST", "/users/login", {"vid": a.vid, "mobile": "13800138000", "code": code}, expect=401
    )
    assert reused.status == 401
    me = members.public.as_(by_code.data["access_token"])
    assert (await me.call("GET", f"/users/{uid}")).data["state"] == 2  # active after login
    refreshed = await members.public.call(
        "POST", "/auth/refresh", {"refresh_token": by_code.data["refresh_token"]}
    )
    assert refreshed.status == 200 and refreshed.data["role"] == "member"


async def test_login_needs_exactly_one_of_password_and_code(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    for body in (
        {"vid": a.vid, "mobile": "13800138000"},
        {"vid": a.vid, "mobile": "13800138000", "pwd": md5("x"), "code": "123456"},
    ):
        answer = await members.public.call("POST", "/users/login", body, expect=422)
        assert (answer.status, answer.code) == (422, "validation_failed")


async def test_an_unknown_number_gets_the_same_answer_to_a_login_code_request(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_sms: FakeAliyunSms
):
    a, _ = tenants
    await members.register(a.vid, "13800138000")
    members.clock.now += 61  # past the one-code-a-minute limit
    sent_before = len(fake_sms.sent)
    known = await members.public.call(
        "GET", "/users/login/code", params={"vid": a.vid, "mobile": "13800138000"}
    )
    assert len(fake_sms.sent) == sent_before + 1  # the member's code went out
    answer = await members.public.call(
        "GET", "/users/login/code", params={"vid": a.vid, "mobile": "13700137000"}
    )
    assert (answer.status, answer.body) == (known.status, known.body)  # nothing tells them apart
    assert len(fake_sms.sent) == sent_before + 1  # and nothing was sent to the unknown number
    again = await members.public.call(
        "GET", "/users/login/code", params={"vid": a.vid, "mobile": "13700137000"}, expect=429
    )
    assert again.status == 429  # limited like a real request
    known_again = await members.public.call(
        "GET", "/users/login/code", params={"vid": a.vid, "mobile": "13800138000"}, expect=429
    )
    assert (again.status, again.body) == (known_again.status, known_again.body)


@pytest.mark.parametrize(
    "failure",
    [
        "balance",  # the account cannot pay: 503 sms_unavailable was answered
        "isv.MOBILE_NUMBER_ILLEGAL",  # the number is refused: 422 sms_mobile_rejected
        "isv.BUSINESS_LIMIT_CONTROL",  # the provider throttles: 429 sms_throttled
    ],
)
async def test_a_failing_sms_provider_does_not_tell_a_member_from_an_unknown_number(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_sms: FakeAliyunSms, failure: str
):
    """While the SMS provider failed, a login code request for a member's number answered 503
    (or 422, 429) and one for an unknown number 200: anyone could tell who is registered. Both
    answer the same now; the failure is logged, and the limits still count and refuse both."""
    a, _ = tenants
    await members.register(a.vid, "13800138000")
    members.clock.now += 61  # past the one-code-a-minute limit
    sent_before = len(fake_sms.sent)
    if failure == "balance":
        fake_sms.balance = 0
    else:
        body = json.dumps({"Code": failure, "Message": "refused", "RequestId": "R1"})
        fake_sms.scripted.append((200, body))
    known = await members.public.call(
        "GET", "/users/login/code", params={"vid": a.vid, "mobile": "13800138000"}, expect=200
    )
    unknown = await members.public.call(
        "GET", "/users/login/code", params={"vid": a.vid, "mobile": "13700137000"}, expect=200
    )
    assert len(fake_sms.sent) == sent_before  # nothing went out
    assert (known.status, known.body) == (unknown.status, unknown.body)
    # The limits stay: one code request a minute per number, refused alike.
    again = [
        await members.public.call(
            "GET", "/users/login/code", params={"vid": a.vid, "mobile": mobile}, expect=429
        )
        for mobile in ("13800138000", "13700137000")
    ]
    assert again[0].body == again[1].body and again[0].code == "rate_limited"


async def test_a_wrong_login_code_answers_the_same_for_an_unknown_number(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_sms: FakeAliyunSms
):
    """The code request tells no one who is registered; the login with a wrong code must not
    tell it either (it said "wrong code; 4 tries left" only where a code had been sent)."""
    a, _ = tenants
    await members.register(a.vid, "13800138000")
    code = await members.code("/users/login/code", "13800138000", vid=a.vid)
    await members.public.call(
        "GET", "/users/login/code", params={"vid": a.vid, "mobile": "13700137000"}
    )
    wrong = "000000" if code != "000000" else "111111"
    answers = [
        await members.public.call(
            "POST", "/users/login", {"vid": a.vid, "mobile": mobile, "code": wrong}, expect=401
        )
        for mobile in ("13800138000", "13700137000")
    ]
    known, unknown = ((x.status, x.code, x.body["message"]) for x in answers)
    assert known == unknown and known[:2] == (401, "login_failed"), answers
    assert "tries" not in known[2]


async def test_wrong_passwords_from_one_address_do_not_lock_the_member_out(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    """The audit's lock-out, for members: guesses from one address wait longer each time, the
    right password from another address logs in at once."""
    a, _ = tenants
    await members.register(a.vid, "13800138000", pwd="pw")
    body = {"vid": a.vid, "mobile": "13800138000", "pwd": md5("wrong")}
    base = members.public.base
    async with client_from("127.0.0.5") as attacker_session, client_from("127.0.0.6") as own:
        attacker = ApiClient(attacker_session, base)
        statuses = [
            (await attacker.call("POST", "/users/login", body, token=None, expect=expected)).status
            for expected in [401] * 5 + [429] * 3
        ]
        assert statuses == [401] * 5 + [429] * 3
        right = {**body, "pwd": md5("pw")}
        refused = await attacker.call("POST", "/users/login", right, token=None, expect=429)
        assert int(refused.headers["Retry-After"]) >= 1  # even the right password waits there
        owner = await ApiClient(own, base).call("POST", "/users/login", right, token=None)
        assert owner.status == 200 and owner.data["uid"]


# ----------------------------------------------------------------------------- roles, tenancy


async def test_the_list_is_scoped_to_each_admins_subtree(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, b = tenants
    in_vendor, _ = await members.register(a.vid, "13800138000")
    under_dealer, _ = await members.register(a.vid, "13800138001")
    other, _ = await members.register(b.vid, "13800138002")
    assert (
        await a.vendor.call("PUT", f"/users/{under_dealer}", {"agent_id": a.dealer_id})
    ).status == 201

    async def uids(client: ApiClient, **params: Any) -> set[str]:
        answer = await client.call("GET", "/users", params=params)
        assert answer.status == 200, answer
        assert answer.body["total"] == len(answer.data)
        return {m["uid"] for m in answer.data}

    assert await uids(api) == {in_vendor, under_dealer, other}
    assert await uids(api, vid=b.vid) == {other}
    assert await uids(a.vendor) == {in_vendor, under_dealer}
    assert await uids(a.agent) == {under_dealer}  # the dealer is below the agent
    assert await uids(a.dealer) == {under_dealer}
    assert await uids(b.agent) == set()
    # A vendor cannot widen its scope: another vendor is not found.
    await b.vendor.call("GET", "/users", params={"vid": a.vid}, expect=404)
    listed = (await a.vendor.call("GET", "/users")).data
    assert {m["vid"] for m in listed} == {a.vid}
    agent_view = (await a.agent.call("GET", "/users")).data[0]
    assert agent_view["agent_id"] == a.dealer_id and agent_view["vid"] == a.vid


async def test_members_and_unauthenticated_callers_cannot_list(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    _, me = await members.register(a.vid, "13800138000")
    assert (await me.call("GET", "/users", expect=403)).status == 403
    assert (await members.public.call("GET", "/users", expect=401)).status == 401
    bad_token = members.public.as_("a." + "0" * 32 + "." + "x" * 43)
    assert (await bad_token.call("GET", "/users", expect=401)).status == 401


async def test_list_queries_validate_sort_and_limits(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    for n in range(3):
        await members.register(a.vid, f"1380013800{n}")
    page = await api.call("GET", "/users", params={"limit": 2, "sort": "uid", "order": "desc"})
    assert page.body["total"] == 3 and [m["uid"] for m in page.data] == [
        member_uid(a.vid, 3),
        member_uid(a.vid, 2),
    ]
    for params in ({"limit": 1000}, {"sort": "password_hash"}, {"state": 9}, {"offset": -1}):
        answer = await api.call("GET", "/users", params=params, expect=422)
        assert (answer.status, answer.code) == (422, "validation_failed"), params


async def test_another_tenants_member_answers_404_everywhere(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, b = tenants
    uid, me = await members.register(a.vid, "13800138000")
    _, stranger = await members.register(b.vid, "13900139000")
    calls = [
        ("GET", f"/users/{uid}", None, None),
        ("PUT", f"/users/{uid}", {"name": "x"}, None),
        ("PUT", f"/users/{uid}/pwd", {"new_pwd": md5("n")}, None),
        ("GET", f"/users/{uid}/mob/code", None, {"mobile": "13700137000"}),
        ("PUT", f"/users/{uid}/mob", {"mobile": "13700137000", "code": "123456"}, None),
        ("DELETE", f"/users/{uid}/bind", None, None),
    ]
    for client in (b.vendor, stranger):
        for method, path, body, params in calls:
            answer = await client.call(method, path, body, params=params, expect=404)
            assert (answer.status, answer.code) == (404, "not_found"), (method, path, answer)
    assert (await b.agent.call("GET", f"/users/{uid}", expect=404)).status == 404
    assert (
        await a.dealer.call("GET", f"/users/{uid}", expect=404)
    ).status == 404  # not under the dealer
    assert (await a.vendor.call("GET", f"/users/{uid}")).status == 200
    assert (await me.call("GET", "/users/" + member_uid(a.vid, 99), expect=404)).status == 404
    assert (await a.vendor.call("GET", "/users/not-a-uid", expect=404)).status == 404


async def test_roles_per_the_seed(tenants: tuple[Tenant, Tenant], members: MemberApp):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000")
    # A#+C: agents and dealers may not change members.
    for client in (a.agent, a.dealer):
        answer = await client.call("PUT", f"/users/{uid}", {"name": "x"}, expect=403)
        assert (answer.status, answer.code) == (403, "forbidden")
    # A*: only the platform deregisters.
    for client in (a.vendor, a.agent, me):
        assert (await client.call("DELETE", f"/users/{uid}", expect=403)).status == 403


async def test_profile_updates_by_member_and_admin(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000")
    referrer, _ = await members.register(a.vid, "13800138001")
    answer = await me.call("PUT", f"/users/{uid}", {"name": "Jane", "address": "南方软件园A123"})
    assert answer.status == 201 and answer.data["name"] == "Jane"
    for admin_field in ({"vip": True}, {"remark": "x"}, {"mobile": "13700137000"}, {"state": 0}):
        answer = await me.call("PUT", f"/users/{uid}", admin_field, expect=403)
        assert (answer.status, answer.code) == (403, "forbidden"), admin_field
    assert (await me.call("PUT", f"/users/{uid}", {"rid": referrer})).status == 201
    assert (
        await me.call("PUT", f"/users/{uid}", {"rid": ""}, expect=403)
    ).status == 403  # set once
    answer = await a.vendor.call("PUT", f"/users/{uid}", {"vip": True, "remark": "VIP since 2018"})
    assert answer.data["vip"] is True and answer.data["remark"] == "VIP since 2018"
    answer = await a.vendor.call("PUT", f"/users/{uid}", {"vid": "BBBB"}, expect=422)
    assert answer.status == 422
    answer = await a.vendor.call("PUT", f"/users/{uid}", {"uid": referrer, "name": "x"}, expect=422)
    assert answer.status == 422
    answer = await a.vendor.call("PUT", f"/users/{uid}", {"mobile": "13800138001"}, expect=409)
    assert (answer.status, answer.code) == (409, "mobile_taken")
    answer = await a.vendor.call("PUT", f"/users/{uid}", {"state": 3}, expect=422)
    assert answer.status == 422


async def test_disabling_a_member_ends_its_sessions(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000", pwd="pw")
    assert (await a.vendor.call("PUT", f"/users/{uid}", {"state": 0})).status == 201
    assert (await me.call("GET", f"/users/{uid}", expect=401)).status == 401
    login = await members.public.call(
        "POST",
        "/users/login",
        {"vid": a.vid, "mobile": "13800138000", "pwd": md5("pw")},
        expect=401,
    )
    assert login.status == 401


# ----------------------------------------------------------------------------- pwd, mobile, reset


async def test_password_change(tenants: tuple[Tenant, Tenant], members: MemberApp):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000", pwd="old")
    answer = await me.call(
        "PUT", f"/users/{uid}/pwd", {"old_pwd": md5("bad"), "new_pwd": md5("n")}, expect=401
    )
    assert (answer.status, answer.code) == (401, "wrong_password")
    answer = await me.call("PUT", f"/users/{uid}/pwd", {"new_pwd": md5("n")}, expect=401)
    assert answer.status == 401  # a member must give the old password
    answer = await me.call("PUT", f"/users/{uid}/pwd", {"old_pwd": md5("old"), "new_pwd": md5("n")})
    assert answer.status == 201
    assert (await me.call("GET", f"/users/{uid}", expect=401)).status == 401  # sessions ended
    answer = await a.vendor.call("PUT", f"/users/{uid}/pwd", {"new_pwd": md5("by-admin")})
    assert answer.status == 201
    login = await members.public.call(
        "POST", "/users/login", {"vid": a.vid, "mobile": "13800138000", "pwd": md5("by-admin")}
    )
    assert login.status == 200


async def test_wrong_old_passwords_wait_like_login_guesses(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    """A stolen member token must not be a fast oracle for the member's password (as for
    admins at PUT /auth/pwd): wrong old passwords from one address wait longer each time."""
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000", pwd="old")
    wrong = {"old_pwd": md5("bad"), "new_pwd": md5("n")}
    statuses = [
        (await me.call("PUT", f"/users/{uid}/pwd", wrong, expect=expected)).status
        for expected in [401] * 5 + [429] * 2
    ]
    assert statuses == [401] * 5 + [429] * 2
    right = {"old_pwd": md5("old"), "new_pwd": md5("n")}
    refused = await me.call("PUT", f"/users/{uid}/pwd", right, expect=429)
    assert int(refused.headers["Retry-After"]) >= 1  # even the right one waits
    assert (await me.call("GET", f"/users/{uid}")).status == 200  # nothing changed


async def test_mobile_change_with_a_code_sent_to_the_new_number(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000")
    await members.register(a.vid, "13800138001")
    members.clock.now += 61
    taken = await me.call(
        "GET", f"/users/{uid}/mob/code", params={"mobile": "13800138001"}, expect=409
    )
    assert (taken.status, taken.code) == (409, "mobile_taken")
    code = await me_code(members, me, f"/users/{uid}/mob/code", "13900139000")
    answer = await me.call("PUT", f"/users/{uid}/mob", {"mobile": "13900139000", "code": code})
    assert answer.status == 201, answer
    assert (await me.call("GET", f"/users/{uid}")).data["mobile"] == "13900139000"
    # A registration code for the number is no mobile-change code.
    reg_code = await members.code("/users/code", "13700137000", vid=a.vid)
    answer = await me.call(
        "PUT", f"/users/{uid}/mob", {"mobile": "13700137000", "code": reg_code}, expect=422
    )
    assert (answer.status, answer.code) == (422, "sms_code_expired")


async def me_code(members: MemberApp, client: ApiClient, path: str, mobile: str) -> str:
    members.clock.now += 61
    answer = await client.call("GET", path, params={"mobile": mobile})
    assert answer.status == 200, answer
    return members.sms.codes_sent_to(mobile)[-1]


async def test_password_reset_is_public_and_needs_the_members_own_number(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000", pwd="forgotten")
    members.clock.now += 61
    wrong_number = await members.public.call(
        "GET", f"/users/{uid}/rst/code", params={"mobile": "13900139000"}
    )
    # Answered as a sent code (test_hardening: no member's number is revealed), and none sent.
    assert wrong_number.status == 200, wrong_number
    assert members.sms.codes_sent_to("13900139000") == []
    members.clock.now += 61  # the number's own code interval
    code = await members.code(f"/users/{uid}/rst/code", "13800138000")
    answer = await members.public.call(
        "PUT", f"/users/{uid}/rst", {"pwd": md5("new"), "code": code}
    )
    assert answer.status == 201, answer
    assert (await me.call("GET", f"/users/{uid}", expect=401)).status == 401  # sessions ended
    login = await members.public.call(
        "POST", "/users/login", {"vid": a.vid, "mobile": "13800138000", "pwd": md5("new")}
    )
    assert login.status == 200
    again = await members.public.call(
        "PUT", f"/users/{uid}/rst", {"pwd": md5("x"), "code": code}, expect=422
    )
    # Anonymous: one answer for every failure (test_hardening: no member is revealed).
    assert (again.status, again.code) == (422, "sms_code_invalid")


async def test_anonymous_reset_code_probes_count_against_the_code_limits(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    """A refused uid and number pair cost nothing, so pairs could be tried at full speed (uids
    are sequential) to find a number's uid; now it counts like a code sent to that number."""
    a, _ = tenants
    uid, _ = await members.register(a.vid, "13800138000")
    members.clock.now += 61
    unknown = member_uid(a.vid, 999)
    first = await members.public.call(
        "GET", f"/users/{unknown}/rst/code", params={"mobile": "13800138000"}
    )
    assert first.status == 200, first  # answered as a sent code, and none sent
    assert len(members.sms.codes_sent_to("13800138000")) == 1  # the registration's only
    second = await members.public.call(
        "GET", f"/users/{uid}/rst/code", params={"mobile": "13800138000"}, expect=429
    )
    assert second.status == 429 and int(second.headers["Retry-After"]) >= 1
    # Two requests from this address counted so far (the registration code, the first probe;
    # the refused second one is not): the per-IP cap of 30 an hour leaves 28 more.
    expected = [200] * 28 + [429] * 2
    statuses = [
        (
            await members.public.call(
                "GET", f"/users/{unknown}/rst/code", params={"mobile": f"139{n:08d}"}, expect=e
            )
        ).status
        for n, e in enumerate(expected)
    ]
    assert statuses == expected


# ----------------------------------------------------------------------------- WeChat


async def _give_vendor_wechat(vid: str) -> None:
    await Vendor.filter(code=vid).update(mp_appid=APPID, mp_secret=APPSECRET)


async def test_wechat_sign_in_registers_then_finds_the_member(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_wx: FakeWechat
):
    a, _ = tenants
    await _give_vendor_wechat(a.vid)
    alice = FakeWechatUser("alice", nickname="爱丽丝", sex=2)
    first = await members.public.call(
        "POST", "/users/bind", {"vid": a.vid, "code": fake_wx.issue_code(APPID, alice)}
    )
    assert first.status == 200 and first.data["created"] is True, first
    uid = first.data["uid"]
    again = await members.public.call(
        "POST", "/users/bind", {"vid": a.vid, "code": fake_wx.issue_code(APPID, alice)}
    )
    assert again.data["uid"] == uid and again.data["created"] is False
    me = members.public.as_(again.data["access_token"])
    data = (await me.call("GET", f"/users/{uid}")).data
    assert data["mobile"] is None and data["name"] == "爱丽丝"
    assert data["weixin"]["OpenID"] == fake_wx.openid(APPID, alice)
    assert data["weixin"]["sex"] == 2
    # Its only way in is WeChat: unbinding is refused.
    answer = await me.call("DELETE", f"/users/{uid}/bind", expect=409)
    assert (answer.status, answer.code) == (409, "last_login_method")
    # The vendor sees the WeChat identifiers; an agent sees the binding without them.
    vendor_view = await a.vendor.call("GET", f"/users/{uid}")
    assert vendor_view.data["weixin"]["OpenID"] == fake_wx.openid(APPID, alice)
    assert (await a.vendor.call("PUT", f"/users/{uid}", {"agent_id": a.agent_id})).status == 201
    agent_view = await a.agent.call("GET", f"/users/{uid}")
    assert agent_view.data["weixin"]["nick"] == "爱丽丝"
    assert agent_view.data["weixin"]["OpenID"] is None
    assert agent_view.data["weixin"]["UnionID"] is None


async def test_a_member_binds_and_unbinds_wechat(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_wx: FakeWechat
):
    a, _ = tenants
    await _give_vendor_wechat(a.vid)
    uid, me = await members.register(a.vid, "13800138000")
    bob = FakeWechatUser("bob")
    answer = await me.call(
        "POST", "/users/bind", {"vid": a.vid, "code": fake_wx.issue_code(APPID, bob)}
    )
    assert answer.status == 200 and answer.data["uid"] == uid and not answer.data["created"]
    # Bob's WeChat now signs in as this member.
    signed_in = await members.public.call(
        "POST", "/users/bind", {"vid": a.vid, "code": fake_wx.issue_code(APPID, bob)}
    )
    assert signed_in.data["uid"] == uid
    _, other = await members.register(a.vid, "13800138001")
    taken = await other.call(
        "POST", "/users/bind", {"vid": a.vid, "code": fake_wx.issue_code(APPID, bob)}, expect=409
    )
    assert (taken.status, taken.code) == (409, "wechat_bound_elsewhere")
    assert (await me.call("DELETE", f"/users/{uid}/bind")).status == 204
    assert (await me.call("GET", f"/users/{uid}")).data["weixin"] is None


async def test_wechat_failures(
    tenants: tuple[Tenant, Tenant], members: MemberApp, fake_wx: FakeWechat
):
    a, b = tenants
    await _give_vendor_wechat(a.vid)
    answer = await members.public.call(
        "POST", "/users/bind", {"vid": a.vid, "code": "bogus"}, expect=422
    )
    assert (answer.status, answer.code) == (422, "wechat_code_invalid")
    # A vendor without WeChat settings: 503, and no secret or errcode in the message.
    code = fake_wx.issue_code(APPID, FakeWechatUser("carol"))
    answer = await members.public.call(
        "POST", "/users/bind", {"vid": b.vid, "code": code}, expect=503
    )
    assert (answer.status, answer.code) == (503, "wechat_unavailable")
    answer = await members.public.call(
        "POST", "/users/bind", {"vid": a.vid, "code": "a b"}, expect=422
    )
    assert answer.status == 422


# ----------------------------------------------------------------------------- deregistration


async def test_deregistration_anonymises_and_blocks_but_keeps_the_member(
    api: ApiClient, tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, me = await members.register(a.vid, "13800138000", pwd="pw", email="j@x.cn")
    await Member.filter(uid=uid).update(bonus=500)
    assert (await api.call("DELETE", f"/users/{uid}")).status == 204
    assert (await api.call("DELETE", f"/users/{uid}")).status == 204  # idempotent
    assert (await me.call("GET", f"/users/{uid}", expect=401)).status == 401
    kept = (await a.vendor.call("GET", f"/users/{uid}")).data
    assert kept["state"] == MemberState.DEREGISTERED
    assert (kept["mobile"], kept["email"], kept["name"], kept["bonus"]) == (None, "", "", 500)
    login = await members.public.call(
        "POST",
        "/users/login",
        {"vid": a.vid, "mobile": "13800138000", "pwd": md5("pw")},
        expect=401,
    )
    assert login.status == 401
    changed = await a.vendor.call("PUT", f"/users/{uid}", {"name": "back"}, expect=409)
    assert (changed.status, changed.code) == (409, "member_deregistered")
    # The number may register again, as a new member.
    new_uid, _ = await members.register(a.vid, "13800138000")
    assert new_uid != uid


async def test_reset_with_a_token_follows_the_seeds_roles(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, _ = tenants
    uid, _ = await members.register(a.vid, "13800138000")
    answer = await a.agent.call(
        "GET", f"/users/{uid}/rst/code", params={"mobile": "13800138000"}, expect=403
    )
    assert (answer.status, answer.code) == (403, "forbidden")
    _, stranger = await members.register(a.vid, "13900139000")
    answer = await stranger.call(
        "GET", f"/users/{uid}/rst/code", params={"mobile": "13800138000"}, expect=404
    )
    assert answer.status == 404


async def test_a_referrer_from_another_vendor_is_refused(
    tenants: tuple[Tenant, Tenant], members: MemberApp
):
    a, b = tenants
    outsider, _ = await members.register(b.vid, "13900139000")
    code = await members.code("/users/code", "13800138000", vid=a.vid)
    body = {"mobile": "13800138000", "code": code, "name": "J", "vid": a.vid, "rid": outsider}
    answer = await members.public.call("POST", "/users", body, expect=422)
    assert (answer.status, answer.code) == (422, "invalid_input")
