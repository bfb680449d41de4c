"""Vendors, AX-01..13: every endpoint's success, validation failure, missing auth, wrong role
and unknown vendor; secrets never answered; deregistration keeps the data."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import PASSWORD, ApiClient, Tenant, md5

SECRETS = ("pwd", "mp_secret", "mch_secret")

# (method, path, a valid body) for every vendor endpoint; {vid} and {sid} are filled in.
CONTRACT = {"contract_no": "C-2018-001", "signed_on": "2018-03-01", "starts_on": "2018-03-01"}
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/vendors", None),
    ("POST", "/vendors", {"user": "new-vendor", "pwd": md5("pw"), "name": "New"}),
    ("GET", "/vendors/{vid}", None),
    ("PUT", "/vendors/{vid}", {"name": "Renamed"}),
    ("PUT", "/vendors/{vid}/pwd", {"pwd": md5("new-pass")}),
    ("PUT", "/vendors/{vid}/mob", {"mobile": "13912345678"}),
    ("PUT", "/vendors/{vid}/mxx", {"mp_appid": "wx123", "mp_secret": "s3cr3t"}),
    ("PUT", "/vendors/{vid}/cfg", {"device_sharing": False}),
    ("GET", "/vendors/{vid}/signing", None),
    ("POST", "/vendors/{vid}/signing", CONTRACT),
    ("PUT", "/vendors/{vid}/signing/{sid}", {"title": "Renewed"}),
    ("DELETE", "/vendors/{vid}/signing/{sid}", None),
    ("DELETE", "/vendors/{vid}", None),
]


async def add_contract(api: ApiClient, vid: str, number: str = "C-1") -> int:
    answer = await api.call("POST", f"/vendors/{vid}/signing", {**CONTRACT, "contract_no": number})
    assert answer.status == 201, answer
    return int(answer.data["id"])


async def test_register_read_and_list(api: ApiClient):
    body = {
        "vid": "DOCH",
        "user": "dochen",
        "pwd": md5(PASSWORD),
        "name": "广东东臣科技实业有限公司",
        "abbv": "东臣科技",
        "contact": "周成华",
        "mobile": "13900000000",
        "email": "marvin.nps@gmail.com",
        "area": "广东省珠海市香洲区",
        "address": "南方软件园A123",
        "mp_appid": "wx-mp",
        "mp_secret": "mp-secret-value",
        "mch_secret": "mch-secret-value",
    }
    answer = await api.call("POST", "/vendors", body)
    assert answer.status == 201 and answer.data == {"vid": "DOCH"}
    read = await api.call("GET", "/vendors/DOCH")
    assert read.status == 200
    vendor = read.data
    assert vendor["user"] == "dochen" and vendor["name"] == body["name"] and vendor["state"] == 2
    assert vendor["mp_secret_set"] and vendor["mch_secret_set"] and vendor["mp_appid"] == "wx-mp"
    for secret in SECRETS:
        assert secret not in vendor
    assert "mp-secret-value" not in str(read.body)
    # Without a vid, a free code is drawn.
    answer = await api.call("POST", "/vendors", {"user": "second", "pwd": md5("x"), "name": "Two"})
    assert answer.status == 201 and len(answer.data["vid"]) == 4
    listed = await api.call("GET", "/vendors", params={"sort": "reg_tms"})
    assert listed.body["total"] == 2
    assert all(not set(SECRETS) & set(v) for v in listed.data)
    # The vendor's admin logs in with what was registered.
    assert (await api.as_(None).login("dochen")).startswith("a.")


async def test_register_refuses_duplicates_and_bad_input(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    answer = await api.call(
        "POST",
        "/vendors",
        {"vid": "AAAA", "user": "other", "pwd": md5("x"), "name": "N"},
        expect=409,
    )
    assert answer.status == 409 and answer.code == "vendor_exists"
    answer = await api.call(
        "POST", "/vendors", {"user": "AAAA-admin", "pwd": md5("x"), "name": "N"}, expect=409
    )
    assert answer.status == 409 and answer.code == "username_taken"
    for bad in (
        {"vid": "aaaa", "user": "x-user", "pwd": md5("x"), "name": "N"},
        {"vid": "TOOLONG", "user": "x-user", "pwd": md5("x"), "name": "N"},
        {"user": "x", "pwd": md5("x"), "name": "N"},
        {"user": "x-user", "pwd": md5("x"), "name": "N" * 129},
        {"user": "x-user", "pwd": md5("x"), "name": "N", "type": -1},
        {"user": "x-user", "pwd": md5("x"), "name": "bad\x00name"},
        {"user": "x-user", "pwd": md5("x")},
    ):
        answer = await api.call("POST", "/vendors", bad, expect=422)
        assert answer.status == 422 and answer.code == "validation_failed", bad


async def test_updates(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    answer = await api.call(
        "PUT", "/vendors/AAAA", {"vid": "AAAA", "name": "A Water", "user": "a-boss"}
    )
    assert answer.status == 201 and answer.data == {"vid": "AAAA"}
    vendor = (await api.call("GET", "/vendors/AAAA")).data
    assert vendor["name"] == "A Water" and vendor["user"] == "a-boss" and vendor["abbv"] == ""
    assert (await api.as_(None).login("a-boss")).startswith("a.")
    # The body's vid must name the path's vendor; nulls and unknown fields are refused.
    assert (
        await api.call("PUT", "/vendors/AAAA", {"vid": "BBBB", "name": "x"}, expect=422)
    ).status == 422
    assert (await api.call("PUT", "/vendors/AAAA", {"name": None}, expect=422)).status == 422
    assert (await api.call("PUT", "/vendors/AAAA", {"pwd": md5("x")}, expect=422)).status == 422
    taken = await api.call("PUT", "/vendors/AAAA", {"user": "bbbb-admin"}, expect=409)
    assert taken.status == 409 and taken.code == "username_taken"

    assert (await api.call("PUT", "/vendors/AAAA/mob", {"mobile": "13800138000"})).status == 201
    assert (await api.call("GET", "/vendors/AAAA")).data["mobile"] == "13800138000"
    assert (await api.call("PUT", "/vendors/AAAA/mob", {"mobile": "138"}, expect=422)).status == 422

    answer = await api.call("PUT", "/vendors/AAAA/mxx", {"mch_gid": "m-1", "mch_secret": "k"})
    assert answer.status == 201
    vendor = (await api.call("GET", "/vendors/AAAA")).data
    assert vendor["mch_gid"] == "m-1" and vendor["mch_secret_set"] and not vendor["mp_secret_set"]
    assert (await api.call("PUT", "/vendors/AAAA/mxx", {"mp_secret": 5}, expect=422)).status == 422

    answer = await api.call("PUT", "/vendors/AAAA/cfg", {"commission_levels": 1})
    assert answer.status == 201
    cfg = (await api.call("GET", "/vendors/AAAA")).data["cfg"]
    assert cfg == {
        "member_registration": True,
        "device_sharing": True,
        "commission_levels": 1,
        "sms_sign": "",
        "shop_public": False,
        "vending_price_fen_per_l": 0,
        "wechat_templates": {},
        "sms_templates": {},
    }
    templates = {"wechat_templates": {"ticket_done": "tpl-done_1"}}
    await api.call("PUT", "/vendors/AAAA/cfg", templates)
    assert (await api.call("GET", "/vendors/AAAA")).data["cfg"]["wechat_templates"] == {
        "ticket_done": "tpl-done_1"
    }
    bad_kind = {"sms_templates": {"no_such_kind": "SMS_1"}}
    await api.call("PUT", "/vendors/AAAA/cfg", bad_kind, expect=422)
    assert (
        await api.call("PUT", "/vendors/AAAA/cfg", {"commission_levels": 4}, expect=422)
    ).status == 422
    assert (await api.call("PUT", "/vendors/AAAA/cfg", {"colour": "red"}, expect=422)).status == 422


async def test_password_change_ends_the_vendors_sessions(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    answer = await api.call("PUT", "/vendors/AAAA/pwd", {"vid": "AAAA", "pwd": md5("brand-new-1")})
    assert answer.status == 201
    assert (await a.vendor.call("GET", "/agents", expect=401)).status == 401
    anonymous = api.as_(None)
    assert (
        await anonymous.call(
            "POST", "/auth/login", {"user": "aaaa-admin", "pwd": md5(PASSWORD)}, expect=401
        )
    ).status == 401
    assert (await anonymous.login("aaaa-admin", "brand-new-1")).startswith("a.")
    assert (
        await api.call("PUT", "/vendors/AAAA/pwd", {"pwd": "plain-text"}, expect=422)
    ).status == 422


async def test_signing_records(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    first = await add_contract(api, "AAAA", "C-1")
    second = await add_contract(api, "AAAA", "C-2")
    await add_contract(api, "BBBB", "C-1")  # numbers are unique per vendor only
    answer = await api.call(
        "POST", "/vendors/AAAA/signing", {**CONTRACT, "contract_no": "C-1"}, expect=409
    )
    assert answer.status == 409 and answer.code == "contract_exists"
    bad = {**CONTRACT, "ends_on": "2018-02-01"}  # before it starts
    answer = await api.call("POST", "/vendors/AAAA/signing", bad, expect=422)
    assert answer.status == 422 and answer.code == "invalid_input"
    answer = await api.call(
        "POST", "/vendors/AAAA/signing", {**CONTRACT, "amount_fen": 1.5}, expect=422
    )
    assert answer.status == 422
    answer = await api.call(
        "POST", "/vendors/AAAA/signing", {**CONTRACT, "signed_on": "yesterday"}, expect=422
    )
    assert answer.status == 422

    listed = await api.call(
        "GET", "/vendors/AAAA/signing", params={"sort": "contract_no", "order": "desc"}
    )
    assert [c["contract_no"] for c in listed.data] == ["C-2", "C-1"] and listed.body["total"] == 2

    answer = await api.call(
        "PUT", f"/vendors/AAAA/signing/{first}", {"amount_fen": 298000, "ends_on": "2019-03-01"}
    )
    assert answer.status == 201 and answer.data["amount_fen"] == 298000
    assert answer.data["ends_on"] == "2019-03-01"
    answer = await api.call("PUT", f"/vendors/AAAA/signing/{first}", {"ends_on": None})
    assert answer.status == 201 and answer.data["ends_on"] is None
    answer = await api.call(
        "PUT", f"/vendors/AAAA/signing/{first}", {"contract_no": "C-2"}, expect=409
    )
    assert answer.status == 409
    # A record of another vendor is not found through this one.
    assert (
        await api.call("PUT", f"/vendors/BBBB/signing/{second}", {"title": "x"}, expect=404)
    ).status == 404
    assert (await api.call("DELETE", f"/vendors/BBBB/signing/{second}", expect=404)).status == 404
    assert (await api.call("DELETE", f"/vendors/AAAA/signing/{second}")).status == 204
    assert (await api.call("DELETE", f"/vendors/AAAA/signing/{second}", expect=404)).status == 404
    assert (await api.call("GET", "/vendors/AAAA/signing")).body["total"] == 1


async def test_deregistration_locks_everyone_out_and_keeps_the_data(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    from aquafleet.models.devices import Device
    from aquafleet.models.registry import register_devices

    a, b = tenants
    devices = await register_devices("AAAA", 3, lambda did, version: b"k" * 32)
    await add_contract(api, "AAAA")
    assert (await api.call("DELETE", "/vendors/AAAA")).status == 204
    # Every login of the vendor's tree is out, sessions included.
    for client in (a.vendor, a.agent, a.dealer):
        assert (await client.call("GET", "/agents", expect=401)).status == 401
    anonymous = api.as_(None)
    for user in ("aaaa-admin", "aaaa-agent", "aaaa-dealer"):
        answer = await anonymous.call(
            "POST", "/auth/login", {"user": user, "pwd": md5(PASSWORD)}, expect=401
        )
        assert answer.status == 401, user
    # The data stays and can be read by the platform; it can no longer change.
    vendor = (await api.call("GET", "/vendors/AAAA")).data
    assert vendor["state"] == 3
    assert await Device.filter(vendor_id="AAAA").count() == len(devices)
    assert (await api.call("GET", "/vendors/AAAA/signing")).body["total"] == 1
    assert (await api.call("GET", "/agents", params={"vid": "AAAA"})).body["total"] == 2
    answer = await api.call("PUT", "/vendors/AAAA", {"name": "Back"}, expect=409)
    assert answer.status == 409 and answer.code == "vendor_deregistered"
    assert (await api.call("POST", "/vendors/AAAA/signing", CONTRACT, expect=409)).status == 409
    # Deregistering again is harmless; the other vendor is untouched.
    assert (await api.call("DELETE", "/vendors/AAAA")).status == 204
    assert (await b.dealer.call("GET", "/agents")).status == 200


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_only_the_platform_admin_reaches_vendor_endpoints(
    api: ApiClient, tenants: tuple[Tenant, Tenant], method: str, path: str, body: Any
):
    a, b = tenants
    sid = await add_contract(api, "AAAA")
    target = path.format(vid="AAAA", sid=sid)
    # No credentials: 401. Any other role, even the vendor itself: 403.
    assert (await api.as_(None).call(method, target, body, expect=401)).status == 401
    for client in (a.vendor, a.agent, a.dealer, b.vendor):
        answer = await client.call(method, target, body, expect=403)
        assert answer.status == 403 and answer.code == "forbidden", (client, answer)
    if "{vid}" in path:
        # An unknown vendor, or a code that cannot exist: 404.
        for vid in ("ZZZZ", "zz"):
            missing = await api.call(method, path.format(vid=vid, sid=sid), body, expect=404)
            assert missing.status == 404, (vid, missing)
    # The platform admin succeeds, with the seed's status: 200 read, 201 written, 204 deleted.
    success = {"GET": 200, "POST": 201, "PUT": 201, "DELETE": 204}[method]
    answer = await api.call(method, target, body, expect=success)
    assert answer.status == success, answer


async def test_disabling_a_vendor_locks_its_tree_out_until_enabled(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    assert (await api.call("PUT", "/vendors/AAAA", {"state": 0})).status == 201
    for client in (a.vendor, a.agent, a.dealer):
        assert (await client.call("GET", "/auth/me", expect=401)).status == 401
    anonymous = api.as_(None)
    answer = await anonymous.call(
        "POST", "/auth/login", {"user": "aaaa-agent", "pwd": md5(PASSWORD)}, expect=401
    )
    assert answer.status == 401 and answer.code == "login_failed"
    assert (await b.vendor.call("GET", "/auth/me")).status == 200
    assert (await api.call("PUT", "/vendors/AAAA", {"state": 3}, expect=422)).status == 422
    assert (await api.call("PUT", "/vendors/AAAA", {"state": 2})).status == 201
    assert (await anonymous.login("aaaa-agent")).startswith("a.")
