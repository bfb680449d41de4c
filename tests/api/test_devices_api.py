"""Devices API (AB-01..16) through a real node on SQLite and PostgreSQL: registration and
keys, roles per the seed, tenancy, binding and sharing, configuration and profile, service
state, runtime status, deregistration and key re-issue against devices logged in over TCP."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
from dataclasses import dataclass
from typing import Any

import pytest

from aquafleet.api.devices import usable_device, visible_device
from aquafleet.api.errors import ConflictError, NotFoundError
from aquafleet.api.tokens import TOKENS
from aquafleet.models.devices import Device, DeviceShare, DeviceState
from aquafleet.models.ids import device_id, is_valid_device_id
from aquafleet.models.members import Member, MemberState, member_uid
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.usage import RecordKind, UsageRecord, UsageRow, store_ledger_batch
from aquafleet.protocol import ErrorCode, FilterReading
from aquafleet.protocol.crypto import derive_device_key
from tests.api.conftest import ApiClient, Tenant
from tests.conftest import MASTER_SECRET
from tests.devices import LoginRefused, telemetry

MASTER = bytes.fromhex(MASTER_SECRET)
_serials = itertools.count(1)


@dataclass
class Person:
    uid: str
    client: ApiClient
    mobile: str


async def make_member(node: Any, api: ApiClient, vid: str, **fields: Any) -> Person:
    """A member of `vid` with a session (the login endpoints have their own tests)."""
    serial = next(_serials)
    uid = member_uid(vid, serial)
    mobile = f"139{serial:08d}"
    values = {"name": f"Member {serial}", "mobile": mobile, "state": MemberState.ACTIVE}
    await Member.create(uid=uid, vendor_id=vid, **{**values, **fields})
    principal = Principal(Role.MEMBER, uid, vendor_code=vid)
    pair = await node.app[TOKENS].issue(principal)
    return Person(uid, api.as_(pair["access_token"]), mobile)


async def register(api: ApiClient, vid: str, count: int = 1, **extra: Any) -> list[dict[str, Any]]:
    answer = await api.call("POST", "/devices", {"vid": vid, "count": count, **extra})
    assert answer.status == 201, answer
    return list(answer.data)


async def one_device(api: ApiClient, vid: str, **extra: Any) -> str:
    return str((await register(api, vid, **extra))[0]["did"])


# ----------------------------------------------------------------------------- registration


async def test_a_batch_answers_each_key_once_and_the_devices_log_in_at_once(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, _ = tenants
    issued = await register(
        api, a.vid, 3, type=3, model="RO-75", brand="Aqua", hw_version="2.1",
        manufacture_tms="2018-01-02T03:04:05Z",
    )  # fmt: skip
    assert [d["key_version"] for d in issued] == [1, 1, 1]
    dids = [d["did"] for d in issued]
    assert all(is_valid_device_id(did) and did.startswith(a.vid) for did in dids)
    assert [int(did[4:12]) for did in dids] == [1, 2, 3]  # serials, never reused
    for device in issued:
        assert bytes.fromhex(device["key"]) == derive_device_key(MASTER, device["did"], 1)
    # No answer shows a key again.
    read = await api.call("GET", f"/devices/{dids[0]}")
    assert read.status == 200, read
    assert "key" not in read.data and read.data["key_version"] == 1
    assert (read.data["type"], read.data["model"], read.data["brand"]) == (3, "RO-75", "Aqua")
    assert read.data["manufacture_tms"] == "2018-01-02T03:04:05Z"
    assert read.data["state"] == 1 and read.data["online"] is False
    # The next batch continues the serials.
    more = await register(api, a.vid, 1)
    assert int(more[0]["did"][4:12]) == 4
    # The gateway knows them at once: the first device logs in with its key.
    device = device_factory(dids[0], bytes.fromhex(issued[0]["key"]), api_node.tcp_port)
    await device.login()
    listed = await api.call("GET", "/devices", params={"vid": a.vid, "online": "true"})
    assert [d["did"] for d in listed.data] == [dids[0]], listed


async def test_the_factory_gets_its_keys_as_csv(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, _ = tenants
    for how in ({"headers": {"Accept": "text/csv"}}, {"params": {"format": "csv"}}):
        async with api.session.post(
            f"{api.base}/api/v1/devices",
            json={"vid": a.vid, "count": 2},
            headers={"Authorization": f"Bearer {api.token}", **how.get("headers", {})},
            params=how.get("params"),
        ) as response:
            assert response.status == 201
            assert response.content_type == "text/csv"
            assert response.headers["Cache-Control"] == "no-store"
            lines = (await response.text()).splitlines()
    assert lines[0] == "did,key,key_version"
    did, key, version = lines[1].split(",")
    assert bytes.fromhex(key) == derive_device_key(MASTER, did, 1) and version == "1"


async def test_registration_refuses_bad_input_clearly(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    invalid = [
        {"count": 0},
        {"count": 1001},  # the stated limit
        {"count": "5"},  # strict types
        {"count": 1, "device_ids": ["AAAA00000001XXXX"]},  # ids are allocated, never given
        {"count": 1, "type": 5},
        {"count": 1, "manufacture_tms": "2018-01-02T03:04:05"},  # no time zone
    ]
    cases = [({"vid": a.vid, **body}, 422, "validation_failed") for body in invalid] + [
        ({"vid": "ZZZZ", "count": 1}, 404, "not_found"),
        ({"vid": a.vid, "count": 1, "agent_id": b.agent_id}, 404, "not_found"),
    ]
    for body, status, code in cases:
        answer = await api.call("POST", "/devices", body, expect=status)
        assert (answer.status, answer.code) == (status, code), (body, answer)
    unknown = await api.call(
        "POST", "/devices", {"vid": a.vid, "count": 1, "device_ids": []}, expect=422
    )
    assert unknown.data == [{"field": "device_ids", "message": "unknown field"}]
    assert await Device.filter(vendor_id=a.vid).count() == 0


# ----------------------------------------------------------------------------- roles, tenancy


async def test_roles_follow_the_seed(api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any):
    a, _ = tenants
    did = await one_device(api, a.vid)
    owner = await make_member(api_node, api, a.vid)
    assert (await owner.client.call("POST", f"/devices/{did}/bind", {})).status == 201
    share = {"uid": (await make_member(api_node, api, a.vid)).uid}
    forbidden = [
        # (method, path, body, the callers the seed's 使用范围 leaves out)
        ("GET", "/devices", None, [owner.client]),  # A
        ("POST", "/devices", {"vid": a.vid, "count": 1}, [a.vendor, a.agent, owner.client]),
        ("PUT", f"/devices/{did}/prof", {"name": "x"}, [a.agent, a.dealer, owner.client]),
        ("PUT", f"/devices/{did}/svc", {"op": "lock"}, [a.agent, a.dealer, owner.client]),
        ("DELETE", f"/devices/{did}/infos", None, [a.agent, a.dealer, owner.client]),
        ("DELETE", f"/devices/{did}/bind", None, [a.agent, a.dealer]),  # A#+C
        ("DELETE", f"/devices/{did}", None, [a.vendor, a.agent, owner.client]),  # A*
        ("POST", f"/devices/{did}/key", None, [a.vendor, a.dealer, owner.client]),
        ("POST", f"/devices/{did}/shares", share, [api, a.vendor, a.dealer]),  # C
    ]
    for method, path, body, callers in forbidden:
        for caller in callers:
            answer = await caller.call(method, path, body, expect=403)
            assert (answer.status, answer.code) == (403, "forbidden"), (method, path, answer)
    allowed_reads = [f"/devices/{did}", f"/devices/{did}/prof", f"/devices/{did}/svc"]
    for caller in (api, a.vendor, owner.client):  # A+C (agents: see the subtree test)
        for path in allowed_reads:
            answer = await caller.call("GET", path)
            assert answer.status == 200, (path, answer)
    anonymous = await api.as_(None).call("GET", f"/devices/{did}", expect=401)
    assert (anonymous.status, anonymous.code) == (401, "unauthorized")


async def test_another_tenants_device_answers_404_everywhere(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, b = tenants
    did = await one_device(api, a.vid)
    missing = device_id(a.vid, 99_999_999)  # the right shape and check, never registered
    stranger = await make_member(api_node, api, b.vid)
    neighbour = await make_member(api_node, api, a.vid)  # same vendor, neither bound nor shared
    other = (await make_member(api_node, api, b.vid)).uid
    calls = [
        ("GET", "/devices/{}", None),
        ("PUT", "/devices/{}", {"brand": "x"}),
        ("GET", "/devices/{}/prof", None),
        ("PUT", "/devices/{}/prof", {"name": "x"}),
        ("GET", "/devices/{}/svc", None),
        ("PUT", "/devices/{}/svc", {"op": "lock"}),
        ("GET", "/devices/{}/stat", None),
        ("GET", "/devices/{}/statistics", None),
        ("GET", "/devices/{}/sessions", None),
        ("POST", "/devices/{}/bind", {"uid": other}),
        ("DELETE", "/devices/{}/infos", None),
        ("DELETE", "/devices/{}/bind", None),
        ("GET", "/devices/{}/shares", None),
        ("DELETE", f"/devices/{{}}/shares/{other}", None),
        ("DELETE", "/devices/{}", None),
        ("POST", "/devices/{}/key", None),
    ]
    from aquafleet.api.app import all_routes

    roles_of = {(r.method, re.sub(r"\{[^}]+\}", "{}", r.path)): r.roles for r in all_routes()}
    callers = [
        (Role.VENDOR, b.vendor), (Role.AGENT, b.agent), (Role.DEALER, b.dealer),
        (Role.MEMBER, stranger.client), (Role.MEMBER, neighbour.client),
    ]  # fmt: skip
    for method, template, body in calls:
        roles = roles_of[(method, re.sub(r"/shares/.+$", "/shares/{}", template))]
        assert roles is not None
        for role, caller in callers:
            # A role the route does not allow is refused first (403), for any id; any other
            # caller is told the device does not exist (404), never that it is someone else's.
            status, code = (404, "not_found") if role in roles else (403, "forbidden")
            for target in (did, missing, "NOT-A-DEVICE"):
                if (method, template, role) == ("POST", "/devices/{}/bind", Role.MEMBER):
                    # A member binding someone else is refused for any well-formed id.
                    well_formed = target != "NOT-A-DEVICE"
                    status, code = (403, "forbidden") if well_formed else (404, "not_found")
                answer = await caller.call(method, template.format(target), body, expect=status)
                assert answer.code == code, (method, template, target, answer)
    for member in (stranger, neighbour):
        bodyless = await member.client.call(
            "POST", f"/devices/{did}/shares", {"uid": other}, expect=404
        )
        assert bodyless.status == 404, bodyless
    # The platform sees every vendor's device, and unknown ids are 404 for it too.
    assert (await api.call("GET", f"/devices/{did}")).status == 200
    assert (await api.call("GET", f"/devices/{missing}", expect=404)).status == 404
    # Lists leave other tenants' devices out.
    listed = await b.vendor.call("GET", "/devices")
    assert listed.status == 200 and listed.data == [] and listed.body["total"] == 0
    await b.vendor.call("GET", "/devices", params={"vid": a.vid}, expect=404)


async def test_agents_and_dealers_see_the_devices_of_their_nodes(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    at_vendor, at_agent, at_dealer = [d["did"] for d in await register(api, a.vid, 3)]
    moved = await a.vendor.call("PUT", f"/devices/{at_agent}", {"agent_id": a.agent_id})
    assert moved.status == 201 and moved.data["agent_id"] == a.agent_id, moved
    # An agent hands a device to its dealer; a dealer may not give it back to the vendor.
    assert (
        await a.agent.call("PUT", f"/devices/{at_dealer}", {"agent_id": a.dealer_id}, expect=404)
    ).status == 404
    await a.vendor.call("PUT", f"/devices/{at_dealer}", {"agent_id": a.agent_id})
    handed = await a.agent.call("PUT", f"/devices/{at_dealer}", {"agent_id": a.dealer_id})
    assert handed.status == 201, handed
    back = await a.dealer.call("PUT", f"/devices/{at_dealer}", {"agent_id": None}, expect=403)
    assert (back.status, back.code) == (403, "forbidden")

    async def dids(client: ApiClient, **params: Any) -> set[str]:
        answer = await client.call("GET", "/devices", params=params)
        assert answer.status == 200, answer
        return {d["did"] for d in answer.data}

    assert await dids(a.vendor) == {at_vendor, at_agent, at_dealer}
    assert await dids(a.agent) == {at_agent, at_dealer}
    assert await dids(a.dealer) == {at_dealer}
    assert await dids(a.vendor, agent_id=str(a.dealer_id)) == {at_dealer}
    assert (await a.dealer.call("GET", f"/devices/{at_agent}", expect=404)).status == 404
    assert (await a.agent.call("GET", f"/devices/{at_vendor}", expect=404)).status == 404
    # A node that still holds devices cannot be deleted.
    gone = await a.agent.call("DELETE", f"/agents/{a.dealer_id}", expect=409)
    assert (gone.status, gone.code) == (409, "agent_in_use"), gone


# ----------------------------------------------------------------------------- lists


async def test_list_filters_sorting_and_pages(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, b = tenants
    sale = [d["did"] for d in await register(api, a.vid, 3, type=1, model="S1")]
    rental = [d["did"] for d in await register(api, a.vid, 2, type=3, model="R2")]
    other = [d["did"] for d in await register(api, b.vid, 1)]
    owner = await make_member(api_node, api, a.vid)
    assert (await owner.client.call("POST", f"/devices/{rental[0]}/bind", {})).status == 201
    await Device.filter(did=sale[0]).update(state=DeviceState.ACTIVE)

    async def page(client: ApiClient = api, **params: Any) -> tuple[list[str], int]:
        answer = await client.call("GET", "/devices", params=params)
        assert answer.status == 200, answer
        return [d["did"] for d in answer.data], answer.body["total"]

    assert await page() == (sale + rental + other, 6)
    assert await page(vid=a.vid, type="3") == (rental, 2)
    assert await page(vid=a.vid, model="S1", state="2") == ([sale[0]], 1)
    assert await page(uid=owner.uid) == ([rental[0]], 1)
    assert await page(vid=a.vid, bound="false") == (sale + rental[1:], 4)
    assert await page(vid=a.vid, limit="2", offset="1") == (sale[1:], 5)
    assert await page(vid=a.vid, sort="type", order="desc", limit="3") == (
        [rental[1], rental[0], sale[2]], 5,
    )  # fmt: skip
    assert await page(a.vendor, online="true") == ([], 0)
    assert await page(a.vendor, online="false", limit="1") == ([sale[0]], 5)
    for params in ({"sort": "key"}, {"limit": "101"}, {"state": "9"}, {"online": "maybe"},
                   {"colour": "red"}, {"uid": "nope"}):  # fmt: skip
        answer = await api.call("GET", "/devices", params=params, expect=422)
        assert (answer.status, answer.code) == (422, "validation_failed"), (params, answer)
    unknown_node = await a.vendor.call("GET", "/devices", params={"agent_id": "999999"}, expect=404)
    assert unknown_node.status == 404


# ----------------------------------------------------------------------------- bind and share


async def test_binding_by_qr_code_and_its_rules(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, b = tenants
    did, second = [d["did"] for d in await register(api, a.vid, 2)]
    alice = await make_member(api_node, api, a.vid)
    bob = await make_member(api_node, api, a.vid)
    carol = await make_member(api_node, api, b.vid)
    bound = await alice.client.call("POST", f"/devices/{did}/bind", {})
    assert bound.status == 201, bound
    assert bound.data["uid"] == alice.uid and bound.data["bound_tms"].endswith("Z")
    again = await alice.client.call("POST", f"/devices/{did}/bind", {"uid": alice.uid})
    assert again.status == 201 and again.data["bound_tms"] == bound.data["bound_tms"]
    taken = await bob.client.call("POST", f"/devices/{did}/bind", {}, expect=409)
    assert (taken.status, taken.code) == (409, "device_bound"), taken
    # Another vendor's member scanning this code: no such device for them.
    assert (await carol.client.call("POST", f"/devices/{did}/bind", {}, expect=404)).status == 404
    # A member binds to themself only (sharing has its own endpoint).
    other = await bob.client.call("POST", f"/devices/{second}/bind", {"uid": alice.uid}, expect=403)
    assert (other.status, other.code) == (403, "forbidden")
    # Admins bind for a member they see, by uid or mobile; exactly one of them.
    both = await a.vendor.call(
        "POST", f"/devices/{second}/bind", {"uid": bob.uid, "mobile": bob.mobile}, expect=422
    )
    assert (both.status, both.code) == (422, "validation_failed")
    assert (await a.vendor.call("POST", f"/devices/{second}/bind", {}, expect=422)).status == 422
    foreign = await api.call("POST", f"/devices/{second}/bind", {"uid": carol.uid}, expect=404)
    assert foreign.status == 404, foreign  # carol is no member of the device's vendor
    by_mobile = await a.vendor.call("POST", f"/devices/{second}/bind", {"mobile": bob.mobile})
    assert by_mobile.status == 201 and by_mobile.data["uid"] == bob.uid
    # The member's count and list (AA-03 `devices`, GET /users/{uid}/devices).
    me = await alice.client.call("GET", f"/users/{alice.uid}")
    assert me.data["devices"] == 1, me
    listed = await a.vendor.call("GET", "/users")
    assert {m["uid"]: m["devices"] for m in listed.data} == {alice.uid: 1, bob.uid: 1}
    mine = await alice.client.call("GET", f"/users/{alice.uid}/devices")
    assert [(d["did"], d["relation"]) for d in mine.data] == [(did, "owner")], mine
    assert mine.data[0]["key_version"] is None and mine.data[0]["agent_id"] is None
    assert (await bob.client.call("GET", f"/users/{alice.uid}/devices", expect=404)).status == 404
    # A dealer may not unbind (A#+C); the owner may; the vendor may.
    assert (await a.dealer.call("DELETE", f"/devices/{did}/bind", expect=403)).status == 403
    assert (await alice.client.call("DELETE", f"/devices/{did}/bind")).status == 204
    assert (
        await alice.client.call("GET", f"/devices/{did}", expect=404)
    ).status == 404  # no longer hers
    assert (await a.vendor.call("DELETE", f"/devices/{second}/bind")).status == 204
    assert (await a.vendor.call("DELETE", f"/devices/{second}/bind")).status == 204  # again
    assert (await bob.client.call("POST", f"/devices/{did}/bind", {})).status == 201


async def test_sharing_lets_a_member_use_but_not_unbind_or_share(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, b = tenants
    did = await one_device(api, a.vid)
    owner = await make_member(api_node, api, a.vid)
    guest = await make_member(api_node, api, a.vid)
    third = await make_member(api_node, api, a.vid)
    stranger = await make_member(api_node, api, b.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    shared = await owner.client.call("POST", f"/devices/{did}/shares", {"mobile": guest.mobile})
    assert shared.status == 201, shared
    assert (shared.data["uid"], shared.data["name"]) == (
        guest.uid,
        "Member " + guest.uid[4:16].lstrip("0"),
    )
    dupe = await owner.client.call("POST", f"/devices/{did}/shares", {"uid": guest.uid}, expect=409)
    assert (dupe.status, dupe.code) == (409, "share_exists")
    self_share = await owner.client.call(
        "POST", f"/devices/{did}/shares", {"uid": owner.uid}, expect=422
    )
    assert (self_share.status, self_share.code) == (422, "invalid_input")
    elsewhere = await owner.client.call(
        "POST", f"/devices/{did}/shares", {"uid": stranger.uid}, expect=404
    )
    assert elsewhere.status == 404  # another vendor's member
    # The guest uses the device: reads it, and `usable_device` lets it command it.
    read = await guest.client.call("GET", f"/devices/{did}")
    assert read.status == 200 and read.data["relation"] == "shared" and read.data["shares"] is None
    principal = Principal(Role.MEMBER, guest.uid, vendor_code=a.vid)
    assert (await usable_device(principal, did)).did == did
    # ... but may not unbind, share, list the shares or configure it.
    for method, path, body in [
        ("DELETE", f"/devices/{did}/bind", None),
        ("POST", f"/devices/{did}/shares", {"uid": third.uid}),
        ("GET", f"/devices/{did}/shares", None),
        ("PUT", f"/devices/{did}", {"lbs": {"lat_e6": 1, "lng_e6": 2}}),
        ("DELETE", f"/devices/{did}/shares/{third.uid}", None),
    ]:
        answer = await guest.client.call(method, path, body, expect=403)
        assert (answer.status, answer.code) == (403, "forbidden"), (method, path, answer)
    owners_view = await owner.client.call("GET", f"/devices/{did}")
    assert owners_view.data["relation"] == "owner" and owners_view.data["shares"] == 1
    listed = await a.agent.call("GET", f"/devices/{did}/shares", expect=404)
    assert listed.status == 404  # not in the agent's subtree
    listed = await a.vendor.call("GET", f"/devices/{did}/shares")
    assert [s["uid"] for s in listed.data] == [guest.uid]
    # The guest leaves; the owner shares again, then removes it; a missing share is 404.
    assert (await guest.client.call("DELETE", f"/devices/{did}/shares/{guest.uid}")).status == 204
    assert (await guest.client.call("GET", f"/devices/{did}", expect=404)).status == 404
    await owner.client.call("POST", f"/devices/{did}/shares", {"uid": guest.uid})
    assert (await owner.client.call("DELETE", f"/devices/{did}/shares/{guest.uid}")).status == 204
    gone = await owner.client.call("DELETE", f"/devices/{did}/shares/{guest.uid}", expect=404)
    assert (gone.status, gone.code) == (404, "not_found")
    # Unbinding ends the shares the owner granted.
    await owner.client.call("POST", f"/devices/{did}/shares", {"uid": guest.uid})
    await owner.client.call("DELETE", f"/devices/{did}/bind")
    assert not await DeviceShare.exists(device_id=did)
    assert (await guest.client.call("GET", f"/devices/{did}", expect=404)).status == 404


async def test_sharing_limits_and_the_vendors_switch(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, _ = tenants
    did = await one_device(api, a.vid)
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    from aquafleet.models.devices import MAX_SHARES

    for _ in range(MAX_SHARES):
        guest = await make_member(api_node, api, a.vid)
        answer = await owner.client.call("POST", f"/devices/{did}/shares", {"uid": guest.uid})
        assert answer.status == 201, answer
    extra = await make_member(api_node, api, a.vid)
    full = await owner.client.call("POST", f"/devices/{did}/shares", {"uid": extra.uid}, expect=409)
    assert (full.status, full.code) == (409, "share_limit")
    off = await api.call("PUT", f"/vendors/{a.vid}/cfg", {"device_sharing": False})
    assert off.status == 201, off
    await owner.client.call("DELETE", f"/devices/{did}/shares/{guest.uid}")
    refused = await owner.client.call(
        "POST", f"/devices/{did}/shares", {"uid": extra.uid}, expect=409
    )
    assert (refused.status, refused.code) == (409, "sharing_disabled")


# ----------------------------------------------------------------------------- configuration


async def test_vendor_configuration_by_role(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, _ = tenants
    did = await one_device(api, a.vid)
    full = {
        "type": 2, "model": "RO-400", "brand": "Aqua", "hw_version": "1.2", "sw_version": "3.4",
        "fw_version": "5.6", "manufacture_tms": "2018-01-02T03:04:05Z",
        "manufacture": {"product_id": "AAAA0000000000010000", "qc_id": "qc-7",
                        "qc_tms": "2018-01-03T00:00:00+08:00"},
        "installation": {"installer_id": "inst-1", "install_tms": "2018-02-01T08:00:00Z"},
        "basic": {"platform": "ESP8266", "project": "P1", "net_entry": "gw.example.cn",
                  "net_type": "WIFI", "dev_idcd": "5C:CF:7F:00:00:01", "sim_iccid": ""},
        "lbs": {"lat_e6": 22_270_978, "lng_e6": 113_576_677},
    }  # fmt: skip
    changed = await a.vendor.call("PUT", f"/devices/{did}", full)
    assert changed.status == 201, changed
    data = changed.data
    assert (data["type"], data["model"], data["fw_version"]) == (2, "RO-400", "5.6")
    assert data["manufacture"] == {
        "product_id": "AAAA0000000000010000", "qc_id": "qc-7", "qc_tms": "2018-01-02T16:00:00Z",
    }  # fmt: skip
    assert data["basic"]["dev_idcd"] == "5C:CF:7F:00:00:01"
    assert data["lbs"] == {"lat_e6": 22_270_978, "lng_e6": 113_576_677}
    # Only what is given changes.
    partial = await a.vendor.call("PUT", f"/devices/{did}", {"installation": {"installer_id": "x"}})
    assert partial.data["installation"] == {
        "installer_id": "x",
        "install_tms": "2018-02-01T08:00:00Z",
    }
    assert partial.data["brand"] == "Aqua"
    # Agents and dealers: installation, lbs, agent_id; the owner: lbs; no one else anything.
    await a.vendor.call("PUT", f"/devices/{did}", {"agent_id": a.dealer_id})
    assert (await a.dealer.call("PUT", f"/devices/{did}", {"lbs": None})).data["lbs"] is None
    refused = await a.dealer.call(
        "PUT", f"/devices/{did}", {"brand": "Other", "basic": {}}, expect=403
    )
    assert (refused.status, refused.code) == (403, "forbidden")
    assert "basic, brand" in refused.body["message"]
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    moved = await owner.client.call("PUT", f"/devices/{did}", {"lbs": {"lat_e6": 1, "lng_e6": -2}})
    assert moved.status == 201 and moved.data["lbs"] == {"lat_e6": 1, "lng_e6": -2}
    assert (
        await owner.client.call("PUT", f"/devices/{did}", {"installation": {}}, expect=403)
    ).status == 403
    for bad in ({"lbs": {"lat_e6": 90_000_001, "lng_e6": 0}}, {"lbs": {"lat_e6": 1}},
                {"brand": None}, {"brand": 5}, {"type": 7}, {"colour": "red"},
                {"manufacture": {"qc_tms": "yesterday"}}, {"model": "x" * 33}):  # fmt: skip
        answer = await a.vendor.call("PUT", f"/devices/{did}", bad, expect=422)
        assert (answer.status, answer.code) == (422, "validation_failed"), (bad, answer)


async def test_the_user_profile(api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any):
    a, _ = tenants
    did = await one_device(api, a.vid)
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    empty = await owner.client.call("GET", f"/devices/{did}/prof")
    assert empty.data == {"did": did, "name": "", "remark": "", "location": ""}
    changed = await a.vendor.call(
        "PUT", f"/devices/{did}/prof", {"name": "厨房净水机", "location": "kitchen"}
    )
    assert changed.status == 201, changed
    assert changed.data == {"did": did, "name": "厨房净水机", "remark": "", "location": "kitchen"}
    remark = await api.call("PUT", f"/devices/{did}/prof", {"remark": "office"})
    assert remark.data["name"] == "厨房净水机" and remark.data["remark"] == "office"
    assert (await owner.client.call("GET", f"/devices/{did}")).data["name"] == "厨房净水机"
    for bad in ({"name": "x" * 65}, {"name": None}, {"name": "a\x00b"}, {"owner": "me"}):
        answer = await a.vendor.call("PUT", f"/devices/{did}/prof", bad, expect=422)
        assert (answer.status, answer.code) == (422, "validation_failed"), (bad, answer)


# ----------------------------------------------------------------------------- service state


async def test_service_state_through_the_metering_services(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, _ = tenants
    did = await one_device(api, a.vid)
    fresh = await a.vendor.call("GET", f"/devices/{did}/svc")
    assert fresh.status == 200, fresh
    assert (fresh.data["mode"], fresh.data["locked"]) == (None, False)

    async def change(body: dict[str, Any], client: ApiClient = a.vendor) -> dict[str, Any]:
        answer = await client.call("PUT", f"/devices/{did}/svc", body)
        assert answer.status == 201, (body, answer)
        return dict(answer.data)

    state = await change({"op": "configure", "mode": 3, "remaining_ml": 1000})
    assert (state["mode"], state["remaining_ml"], state["applied"]) == (3, 1000, True)
    first = await change({"op": "top_up", "ml": 500, "request_id": "order-1"})
    retry = await change({"op": "top_up", "ml": 500, "request_id": "order-1"})
    assert (first["remaining_ml"], first["applied"]) == (1500, True)
    assert (retry["remaining_ml"], retry["applied"]) == (1500, False)  # applied once
    locked = await change({"op": "lock", "reason": "unpaid"}, api)
    assert locked["locked"] is True and locked["lock_reasons"] == ["manual"]
    assert (await change({"op": "unlock"}))["locked"] is False
    rental = await change(
        {"op": "configure", "mode": 2, "rental_expires_at": "2030-01-01T00:00:00Z"}
    )
    assert rental["rental_expires_at"] == "2030-01-01T00:00:00Z"
    extended = await change({"op": "extend", "package": "30d"})
    assert extended["rental_expires_at"] == "2030-01-31T00:00:00Z"
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    seen = await owner.client.call("GET", f"/devices/{did}/svc")
    assert seen.data["mode"] == 2 and seen.data["applied"] is None
    for bad in ({"op": "top_up"}, {"op": "lock", "ml": 5}, {"op": "top_up", "ml": 0},
                {"op": "top_up", "ml": 1.5}, {"op": "extend", "package": "7d"},
                {"op": "configure"}, {"op": "refund"},
                {"op": "set_expiry", "rental_expires_at": 5}):  # fmt: skip
        answer = await a.vendor.call("PUT", f"/devices/{did}/svc", bad, expect=422)
        assert (answer.status, answer.code) == (422, "validation_failed"), (bad, answer)
    # A rule of the metering services: remaining_ml belongs to volume rental only.
    wrong = await a.vendor.call(
        "PUT", f"/devices/{did}/svc", {"op": "configure", "mode": 1, "remaining_ml": 5}, expect=422
    )
    assert (wrong.status, wrong.code) == (422, "invalid_input"), wrong


async def test_a_service_request_id_again_is_a_retry_and_another_change_under_it_is_refused(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """The same change under a request_id again is answered as applied before (applied once);
    another change under it (another op, ml, days, mode) is 409 idempotency_key_reused and
    changes nothing: answered as a retry, the caller would believe its new change applied."""
    from aquafleet.models.service import ServiceChange

    a, _ = tenants
    did = await one_device(api, a.vid)

    async def put(body: dict[str, Any], expect: int = 201) -> Any:
        return await a.vendor.call("PUT", f"/devices/{did}/svc", body, expect=expect)

    async def refused(body: dict[str, Any], differs: str) -> dict[str, Any]:
        answer = await put(body, expect=409)
        assert answer.code == "idempotency_key_reused", (body, answer)
        assert differs in answer.body["message"], (body, answer)
        return dict(answer.body["data"])

    await put({"op": "configure", "mode": 3, "remaining_ml": 1000})
    topped = {"op": "top_up", "ml": 500, "request_id": "pay-1"}
    first, again = (await put(topped)).data, (await put(topped)).data
    assert (first["remaining_ml"], first["applied"]) == (1500, True)
    assert (again["remaining_ml"], again["applied"]) == (1500, False)  # applied once
    for other, differs in (
        ({**topped, "ml": 900}, "ml 500, not 900"),
        ({"op": "extend", "days": 30, "request_id": "pay-1"}, "op top_up, not extend"),
        (
            {
                "op": "set_expiry",
                "rental_expires_at": "2030-01-01T00:00:00Z",
                "request_id": "pay-1",
            },
            "op top_up, not set_expiry",
        ),
    ):
        assert await refused(other, differs) == {"op": "top_up", "ml": 500}
    state = (await a.vendor.call("GET", f"/devices/{did}/svc")).data
    assert (state["remaining_ml"], state["rental_expires_at"]) == (1500, None)  # none applied
    assert await ServiceChange.filter(did=did, request_id="pay-1").count() == 1

    # A rental extended by 30 days: the same as a package is the same change; 60 days is not.
    await put({"op": "configure", "mode": 2, "rental_expires_at": "2030-01-01T00:00:00Z"})
    extended = (await put({"op": "extend", "days": 30, "request_id": "renew-1"})).data
    retried = (await put({"op": "extend", "package": "30d", "request_id": "renew-1"})).data
    assert (extended["applied"], retried["applied"]) == (True, False)
    assert retried["rental_expires_at"] == "2030-01-31T00:00:00Z"
    assert await refused(
        {"op": "extend", "days": 60, "request_id": "renew-1"}, "days 30, not 60"
    ) == {"op": "extend", "days": 30}  # fmt: skip
    # A configure under an id: another mode is another change (the device stays a rental).
    setup = {"op": "configure", "mode": 2, "rental_expires_at": "2031-01-01T00:00:00Z"}
    await put({**setup, "request_id": "setup-1"})
    assert (await put({**setup, "request_id": "setup-1"})).data["applied"] is False
    await refused({"op": "configure", "mode": 1, "request_id": "setup-1"}, "mode 2, not 1")
    state = (await a.vendor.call("GET", f"/devices/{did}/svc")).data
    assert (state["mode"], state["rental_expires_at"]) == (2, "2031-01-01T00:00:00Z")


# ----------------------------------------------------------------------------- keys, lifecycle


async def test_a_reissued_key_revokes_the_old_one_at_once(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, _ = tenants
    (issued,) = await register(api, a.vid)
    did, old_key = issued["did"], bytes.fromhex(issued["key"])
    connected = device_factory(did, old_key, api_node.tcp_port)
    await connected.login()
    answer = await api.call("POST", f"/devices/{did}/key")
    assert answer.status == 201, answer
    assert answer.data["key_version"] == 2
    new_key = bytes.fromhex(answer.data["key"])
    assert new_key == derive_device_key(MASTER, did, 2) != old_key
    await connected.closed_by_server()  # disconnected at once, wherever it was
    with pytest.raises(LoginRefused) as refused:
        await device_factory(did, old_key, api_node.tcp_port).login()
    assert refused.value.code == ErrorCode.AUTH_BAD_PROOF
    await device_factory(did, new_key, api_node.tcp_port).login()
    read = await api.call("GET", f"/devices/{did}")
    assert read.data["key_version"] == 2 and "key" not in read.data


async def test_deregistering_disconnects_the_device_and_keeps_its_history(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, _ = tenants
    (issued,) = await register(api, a.vid)
    did, key = issued["did"], bytes.fromhex(issued["key"])
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    connected = device_factory(did, key, api_node.tcp_port)
    await connected.login()
    await connected.send(telemetry(1, 1, 100))
    await connected.settled()
    assert (await api.call("DELETE", f"/devices/{did}")).status == 204
    await connected.closed_by_server()
    with pytest.raises(LoginRefused) as refused:
        await device_factory(did, key, api_node.tcp_port).login()
    assert refused.value.code == ErrorCode.AUTH_DISABLED
    read = await api.call("GET", f"/devices/{did}")
    assert read.status == 200 and read.data["state"] == 3
    assert read.data["deregistered_tms"].endswith("Z") and read.data["uid"] == owner.uid
    for client, method, path, body in [
        (a.vendor, "PUT", f"/devices/{did}", {"brand": "x"}),
        (a.vendor, "PUT", f"/devices/{did}/prof", {"name": "x"}),
        (a.vendor, "PUT", f"/devices/{did}/svc", {"op": "lock"}),
        (api, "POST", f"/devices/{did}/key", None),
        (a.vendor, "DELETE", f"/devices/{did}/infos", None),
    ]:
        answer = await client.call(method, path, body, expect=409)
        assert (answer.status, answer.code) == (409, "device_deregistered"), (path, answer)
    rebind = await owner.client.call("POST", f"/devices/{did}/bind", {}, expect=409)
    assert (rebind.status, rebind.code) == (409, "device_deregistered")
    with pytest.raises(ConflictError) as conflict:
        await usable_device(Principal(Role.PLATFORM, "1"), did)
    assert conflict.value.code == "device_deregistered"
    assert (await api.call("DELETE", f"/devices/{did}")).status == 204  # again: the same
    # The ledger stays (the writer stores what was acked before the deregistration).
    assert await wait_for_ledger(did, 1)


async def wait_for_ledger(did: str, records: int, timeout_s: float = 10.0) -> bool:
    """True once the ledger writer stored `records` records of the device."""
    for _ in range(int(timeout_s * 20)):
        if await UsageRecord.filter(did=did).count() >= records:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_clearing_a_device_keeps_its_ledger(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, _ = tenants
    did = await one_device(api, a.vid, brand="Aqua")
    owner = await make_member(api_node, api, a.vid)
    guest = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    await owner.client.call("POST", f"/devices/{did}/shares", {"uid": guest.uid})
    await a.vendor.call("PUT", f"/devices/{did}/prof", {"name": "mine", "remark": "r"})
    now = dt.datetime.now(dt.UTC)
    await UsageRecord.bulk_create(
        [
            UsageRecord(did=did, boot=1, rec=rec, kind=RecordKind.TELEMETRY, device_ts=0,
                        received_at=now, delta_ml=250, flow_total_ml=250 * rec)
            for rec in (1, 2, 3)
        ]
    )  # fmt: skip
    await a.vendor.call("PUT", f"/devices/{did}/svc", {"op": "lock"})
    assert (await a.vendor.call("DELETE", f"/devices/{did}/infos")).status == 204
    read = await a.vendor.call("GET", f"/devices/{did}")
    assert (read.data["uid"], read.data["shares"], read.data["name"]) == (None, 0, "")
    assert read.data["brand"] == "Aqua"  # the vendor configuration stays
    profile = await a.vendor.call("GET", f"/devices/{did}/prof")
    assert profile.data == {"did": did, "name": "", "remark": "", "location": ""}
    assert await UsageRecord.filter(did=did).count() == 3  # the ledger stays
    assert (await a.vendor.call("GET", f"/devices/{did}/svc")).data["locked"] is True
    for member in (owner, guest):
        assert (await member.client.call("GET", f"/devices/{did}", expect=404)).status == 404
    assert (await guest.client.call("POST", f"/devices/{did}/bind", {})).status == 201


async def test_usable_and_visible_device_for_other_modules(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, b = tenants
    did, other = [d["did"] for d in await register(api, a.vid, 2)]
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    platform = Principal(Role.PLATFORM, "1")
    vendor = Principal(Role.VENDOR, "2", vendor_code=a.vid)
    member = Principal(Role.MEMBER, owner.uid, vendor_code=a.vid)
    foreign = Principal(Role.VENDOR, "5", vendor_code=b.vid)
    for principal in (platform, vendor, member):
        assert (await usable_device(principal, did)).did == did
    for principal, target in ((foreign, did), (member, other), (vendor, "AAAA")):
        with pytest.raises(NotFoundError):
            await usable_device(principal, target)
        with pytest.raises(NotFoundError):
            await visible_device(principal, target)
    await Device.filter(did=did).update(state=DeviceState.DISABLED)
    with pytest.raises(ConflictError) as disabled:
        await usable_device(member, did)
    assert (disabled.value.status, disabled.value.code) == (409, "device_disabled")
    assert (await visible_device(member, did)).did == did  # reads still work


# ----------------------------------------------------------------------------- runtime, statistics


async def test_runtime_status_and_filter_life(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    from aquafleet.models.filters import set_model_filter_spec

    a, _ = tenants
    (issued,) = await register(api, a.vid, model="RO-1")
    did = issued["did"]
    await set_model_filter_spec(a.vid, "RO-1", [
        {"order": 1, "name": "PP", "timer_mode": 1, "lifetime": 1000, "worklife": 0},
    ])  # fmt: skip
    offline = await a.vendor.call("GET", f"/devices/{did}/stat")
    assert offline.status == 200, offline
    assert (offline.data["online"], offline.data["since"], offline.data["filters"]) == (
        False, None, [],
    )  # fmt: skip
    device = device_factory(did, bytes.fromhex(issued["key"]), api_node.tcp_port)
    await device.login()
    await device.send(
        telemetry(
            1,
            1,
            100,
            tds_in_ppm=300,
            tds_out_ppm=12,
            signal=25,
            filters=(FilterReading(1, 10, 950, 0),),
        )
    )
    await device.settled()
    assert await wait_for_ledger(did, 1)
    status = await a.vendor.call("GET", f"/devices/{did}/stat")
    data = status.data
    assert data["online"] is True and data["since"].endswith("Z")
    assert data["node"] == api_node.hub.node_id
    assert (data["tds_in_ppm"], data["tds_out_ppm"], data["signal"]) == (300, 12, 25)
    assert data["filters"] == [{
        "order": 1, "name": "PP", "timer": "power_on", "life_h": 1000, "used_h": 950,
        "remaining_h": 50, "remaining_pct": 5, "reset_count": 0, "below_threshold": True,
    }]  # fmt: skip
    stats = await a.vendor.call("GET", f"/devices/{did}/statistics")
    assert stats.data["uptime_s"] >= 0  # online: the current connection's
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    mine = await owner.client.call("GET", f"/devices/{did}/stat")
    assert mine.data["online"] is True and mine.data["node"] is None  # admins only


async def test_presence_history_newest_first_paged_and_scoped(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, b = tenants
    (issued,) = await register(api, a.vid)
    did, key = issued["did"], bytes.fromhex(issued["key"])
    empty = await a.vendor.call("GET", f"/devices/{did}/sessions")
    assert (empty.status, empty.body["total"], empty.data) == (200, 0, [])
    first = device_factory(did, key, api_node.tcp_port)
    await first.login()
    await first.close()
    for _ in range(20):  # the node writes the release in its next batch
        if not (await a.vendor.call("GET", f"/devices/{did}/stat")).data["online"]:
            break
        await asyncio.sleep(0.1)
    await device_factory(did, key, api_node.tcp_port).login()
    await device_factory(did, key, api_node.tcp_port).login()  # replaces the second

    answer = await a.vendor.call("GET", f"/devices/{did}/sessions")
    assert answer.status == 200 and answer.body["total"] == 3, answer
    current, replaced, closed = answer.data
    assert (current["online"], current["ended_at"], current["reason"]) == (True, None, None)
    assert current["since"] == (await a.vendor.call("GET", f"/devices/{did}/stat")).data["since"]
    assert current["node"] == api_node.hub.node_id and current["duration_s"] >= 0
    assert (replaced["online"], replaced["reason"]) == (False, "replaced")
    assert replaced["ended_at"] == current["since"]  # at the login that replaced it
    assert (closed["online"], closed["reason"]) == (False, "closed_by_device")
    # (timestamps in whole seconds)
    assert closed["since"] <= closed["ended_at"] <= replaced["since"] <= current["since"]
    for session in (replaced, closed):
        assert session["since"].endswith("Z") and session["last_seen"].endswith("Z")
        assert session["duration_s"] >= 0
    # Paged: a window of the same list, with the same total.
    for offset, expected in [(0, [current]), (1, [replaced]), (2, [closed]), (3, [])]:
        page = await a.vendor.call("GET", f"/devices/{did}/sessions?limit=1&offset={offset}")
        assert (page.body["total"], page.data) == (3, expected), offset
    page = await a.vendor.call("GET", f"/devices/{did}/sessions?limit=2&offset=1")
    assert page.data == [replaced, closed]
    for bad in ("limit=0", "limit=101", "offset=-1"):
        await a.vendor.call("GET", f"/devices/{did}/sessions?{bad}", expect=422)
    # Another vendor's, agent's or dealer's caller: no such device. The owner: without nodes.
    for caller in (b.vendor, b.agent, b.dealer):
        refused = await caller.call("GET", f"/devices/{did}/sessions", expect=404)
        assert refused.code == "not_found"
    owner = await make_member(api_node, api, a.vid)
    await owner.client.call("GET", f"/devices/{did}/sessions", expect=404)
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    mine = await owner.client.call("GET", f"/devices/{did}/sessions")
    assert [s["node"] for s in mine.data] == [None] * 3
    assert [s["reason"] for s in mine.data] == [None, "replaced", "closed_by_device"]


async def test_statistics(api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any):
    a, _ = tenants
    did = await one_device(api, a.vid)
    now = dt.datetime.now(dt.UTC)
    await store_ledger_batch(  # as the ledger writer stores them (rollups included)
        [
            UsageRow(did, 1, rec, int(RecordKind.TELEMETRY), 0, 0,
                     now - dt.timedelta(days=days), ml, None, None)
            for rec, (days, ml) in enumerate([(0, 300), (3, 200), (20, 100), (40, 50)], 1)
        ],
        [],
        [],
    )  # fmt: skip
    answer = await a.vendor.call("GET", f"/devices/{did}/statistics")
    assert answer.status == 200, answer
    data = answer.data
    assert (data["water_ml_today"], data["water_ml_7d"], data["water_ml_30d"]) == (300, 500, 600)
    assert len(data["daily"]) == 30 and sum(d["water_ml"] for d in data["daily"]) == 600
    assert data["daily"][-1] == {"date": now.date().isoformat(), "water_ml": 300}
    assert (data["dispense_count"], data["uptime_s"]) == (0, None)  # offline: no uptime
    owner = await make_member(api_node, api, a.vid)
    assert (await owner.client.call("GET", f"/devices/{did}/statistics", expect=404)).status == 404
    await owner.client.call("POST", f"/devices/{did}/bind", {})
    assert (await owner.client.call("GET", f"/devices/{did}/statistics")).data == data


async def test_a_deregistered_member_lets_go_of_its_devices_and_shares(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any
):
    a, _ = tenants
    owned, borrowed = await one_device(api, a.vid), await one_device(api, a.vid)
    leaving = await make_member(api_node, api, a.vid)
    guest = await make_member(api_node, api, a.vid)
    lender = await make_member(api_node, api, a.vid)
    await leaving.client.call("POST", f"/devices/{owned}/bind", {})
    await leaving.client.call("POST", f"/devices/{owned}/shares", {"uid": guest.uid})
    await lender.client.call("POST", f"/devices/{borrowed}/bind", {})
    await lender.client.call("POST", f"/devices/{borrowed}/shares", {"uid": leaving.uid})

    assert (await api.call("DELETE", f"/users/{leaving.uid}")).status == 204
    device = await Device.get(did=owned)
    assert (device.owner_id, device.bound_at) == (None, None)  # the next user can bind it
    assert not await DeviceShare.exists(device_id=owned)  # the guest's share ended with it
    assert not await DeviceShare.exists(member_id=leaving.uid)
    assert (await Device.get(did=borrowed)).owner_id == lender.uid  # the lender's stays
    rebound = await guest.client.call("POST", f"/devices/{owned}/bind", {})
    assert rebound.status == 201, rebound
