"""The agent tree: who creates what, who sees what, disabling, deleting without orphans."""

from __future__ import annotations

from typing import Any

import pytest

from aquafleet.api.tokens import TOKENS
from aquafleet.models.members import Member
from aquafleet.models.tenancy import Principal, Role
from tests.api.conftest import PASSWORD, ApiClient, Tenant, md5


def node(name: str, user: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "user": user, "pwd": md5(PASSWORD), **extra}


async def test_each_level_creates_the_next(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, b = tenants
    # A vendor adds an agent; the platform names the vendor.
    answer = await a.vendor.call(
        "POST", "/agents", node("东区代理", "east-agent", mobile="13900000001")
    )
    assert answer.status == 201 and answer.data["level"] == 1 and answer.data["parent"] is None
    east = answer.data["id"]
    assert answer.data["path"] == f"/{east}/" and answer.data["user"] == "east-agent"
    answer = await api.call("POST", "/agents", node("West", "west-agent", vid="BBBB"))
    assert answer.status == 201 and answer.data["vid"] == "BBBB"
    answer = await api.call("POST", "/agents", node("Nowhere", "no-vid"), expect=422)
    assert answer.status == 422 and answer.data[0]["field"] == "vid"
    # A vendor may add a dealer under one of its agents; not under another vendor's.
    answer = await a.vendor.call("POST", "/agents", node("D1", "east-d1", parent=east))
    assert answer.status == 201 and answer.data["level"] == 2
    assert answer.data["path"] == f"/{east}/{answer.data['id']}/"
    answer = await a.vendor.call(
        "POST", "/agents", node("D2", "east-d2", parent=b.agent_id), expect=404
    )
    assert answer.status == 404
    # An agent adds dealers under itself only.
    answer = await a.agent.call("POST", "/agents", node("D3", "a-d3"))
    assert answer.status == 201 and answer.data["parent"] == a.agent_id
    answer = await a.agent.call("POST", "/agents", node("D4", "a-d4", parent=east), expect=422)
    assert answer.status == 422
    answer = await a.agent.call("POST", "/agents", node("D4", "a-d4", vid="BBBB"), expect=422)
    assert answer.status == 422
    # Dealers have no sub-agents; dealers create nothing.
    answer = await a.vendor.call(
        "POST", "/agents", node("D5", "a-d5", parent=a.dealer_id), expect=422
    )
    assert answer.status == 422 and answer.code == "invalid_input"
    assert (await a.dealer.call("POST", "/agents", node("D6", "a-d6"), expect=403)).status == 403
    # User names are unique across every admin account.
    answer = await a.agent.call("POST", "/agents", node("D7", "BBBB-ADMIN"), expect=409)
    assert answer.status == 409 and answer.code == "username_taken"
    for bad in (
        {"name": "x", "user": "ok-user", "pwd": "plain"},
        {"name": "", "user": "ok-user", "pwd": md5("x")},
        {"name": "x", "user": "ok-user", "pwd": md5("x"), "mobile": "12345"},
        {"name": "x", "user": "ok-user", "pwd": md5("x"), "level": 1},
    ):
        assert (await a.vendor.call("POST", "/agents", bad, expect=422)).status == 422, bad
    # New nodes log in with their own credentials.
    assert (await api.as_(None).login("east-d1")).startswith("a.")


async def test_each_level_sees_only_its_subtree(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, b = tenants
    second = await a.agent.call("POST", "/agents", node("D2", "aaaa-dealer-2"))
    assert second.status == 201

    async def ids(client: ApiClient, **params: str) -> list[int]:
        answer = await client.call("GET", "/agents", params=params or None)
        assert answer.status == 200
        assert answer.body["total"] == len(answer.data)
        return [n["id"] for n in answer.data]

    d2 = second.data["id"]
    assert await ids(api) == [a.agent_id, a.dealer_id, b.agent_id, b.dealer_id, d2]
    assert await ids(api, vid="BBBB") == [b.agent_id, b.dealer_id]
    assert await ids(a.vendor) == [a.agent_id, a.dealer_id, d2]
    await a.vendor.call("GET", "/agents", params={"vid": "BBBB"}, expect=404)
    assert await ids(a.vendor, level="2", sort="id", order="desc") == [d2, a.dealer_id]
    assert await ids(a.vendor, parent=str(a.agent_id)) == [a.dealer_id, d2]
    assert await ids(a.agent) == [a.agent_id, a.dealer_id, d2]
    assert await ids(a.dealer) == [a.dealer_id]
    assert await ids(a.vendor, name="dealer of") == [a.dealer_id]
    # Reading one node: in the subtree 200, elsewhere 404 (never 403).
    assert (await a.dealer.call("GET", f"/agents/{a.dealer_id}")).status == 200
    for client, other in (
        (a.dealer, a.agent_id),
        (a.dealer, d2),
        (a.agent, b.agent_id),
        (a.vendor, b.dealer_id),
        (b.vendor, a.agent_id),
    ):
        answer = await client.call("GET", f"/agents/{other}", expect=404)
        assert answer.status == 404 and answer.code == "not_found"
        assert "Dealer" not in str(answer.body) and "Agent of" not in str(answer.body)
    assert (await api.call("GET", "/agents/999999", expect=404)).status == 404
    assert (await api.call("GET", "/agents/0", expect=404)).status == 404
    assert (await api.call("GET", "/agents/abc", expect=404)).status == 404


AGENT_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/agents/{id}", None),
    ("PUT", "/agents/{id}", {"contact": "x"}),
    ("PUT", "/agents/{id}/state", {"state": 0}),
    ("PUT", "/agents/{id}/pwd", {"pwd": md5("other-pass")}),
    ("DELETE", "/agents/{id}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), AGENT_ENDPOINTS)
async def test_another_tenants_nodes_are_not_found(
    api: ApiClient, tenants: tuple[Tenant, Tenant], method: str, path: str, body: Any
):
    a, b = tenants
    for client in (a.vendor, a.agent):
        for other in (b.agent_id, b.dealer_id):
            answer = await client.call(method, path.format(id=other), body, expect=404)
            assert answer.status == 404 and answer.code == "not_found", (client, answer)
    # Without credentials: 401; nothing changed on the other side.
    assert (
        await api.as_(None).call(method, path.format(id=b.dealer_id), body, expect=401)
    ).status == 401
    assert (await b.dealer.call("GET", "/auth/me")).status == 200


async def test_nodes_are_managed_from_above(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, _ = tenants
    own = f"/agents/{a.agent_id}"
    for method, suffix, body in (
        ("PUT", "/state", {"state": 0}),
        ("PUT", "/pwd", {"pwd": md5("x")}),
        ("DELETE", "", None),
    ):
        answer = await a.agent.call(method, own + suffix, body, expect=403)
        assert answer.status == 403 and answer.code == "forbidden"
        # Dealers may not manage at all.
        answer = await a.dealer.call(method, f"/agents/{a.dealer_id}{suffix}", body, expect=403)
        assert answer.status == 403
    # A node may change its own profile; its managers may too.
    answer = await a.dealer.call(
        "PUT", f"/agents/{a.dealer_id}", {"contact": "王五", "mobile": "13700000000"}
    )
    assert answer.status == 201 and answer.data["contact"] == "王五"
    answer = await a.agent.call("PUT", f"/agents/{a.dealer_id}", {"user": "renamed-dealer"})
    assert answer.status == 201 and answer.data["user"] == "renamed-dealer"
    assert (await api.as_(None).login("renamed-dealer")).startswith("a.")
    assert (await a.agent.call("PUT", own, {"name": None}, expect=422)).status == 422
    assert (await a.agent.call("PUT", own, {"level": 2}, expect=422)).status == 422
    answer = await a.agent.call("PUT", own, {"user": "bbbb-agent"}, expect=409)
    assert answer.status == 409 and answer.code == "username_taken"
    # Password reset from above.
    answer = await a.agent.call("PUT", f"/agents/{a.dealer_id}/pwd", {"pwd": md5("dealer-new-1")})
    assert answer.status == 201
    assert (await a.dealer.call("GET", "/auth/me", expect=401)).status == 401
    assert (await api.as_(None).login("renamed-dealer", "dealer-new-1")).startswith("a.")


async def test_disabling_a_node_locks_its_subtree_out_until_enabled(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    answer = await a.vendor.call("PUT", f"/agents/{a.agent_id}/state", {"state": 0})
    assert answer.status == 201 and answer.data["state"] == 0
    for client in (a.agent, a.dealer):
        assert (await client.call("GET", "/auth/me", expect=401)).status == 401
    anonymous = api.as_(None)
    for user in ("aaaa-agent", "aaaa-dealer"):
        answer = await anonymous.call(
            "POST", "/auth/login", {"user": user, "pwd": md5(PASSWORD)}, expect=401
        )
        assert answer.status == 401 and answer.code == "login_failed"
    # The dealer cannot be enabled under a disabled agent; adding under it is refused too.
    answer = await a.vendor.call("PUT", f"/agents/{a.dealer_id}/state", {"state": 2}, expect=409)
    assert answer.status == 409 and answer.code == "parent_disabled"
    answer = await a.vendor.call(
        "POST", "/agents", node("D", "under-disabled", parent=a.agent_id), expect=409
    )
    assert answer.status == 409 and answer.code == "parent_disabled"
    assert (
        await a.vendor.call("PUT", f"/agents/{a.agent_id}/state", {"state": 1}, expect=422)
    ).status == 422
    # Other tenants are untouched; enabling lets both back in.
    assert (await b.agent.call("GET", "/auth/me")).status == 200
    assert (await a.vendor.call("PUT", f"/agents/{a.agent_id}/state", {"state": 2})).status == 201
    assert (await anonymous.login("aaaa-dealer")).startswith("a.")


async def test_members_of_a_disabled_node_keep_their_sessions(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """docs/api-auth.md: a node's members are the vendor's customers; disabling the node
    ends the node's logins, not their use of the app."""
    a, _ = tenants
    await Member.create(
        uid="AAAA0000000000000002", vendor_id="AAAA", agent_id=a.dealer_id, name="M", state=1
    )
    pair = await api_node.app[TOKENS].issue(
        Principal(Role.MEMBER, "AAAA0000000000000002", vendor_code="AAAA")
    )
    member = api.as_(pair["access_token"])
    assert (await a.vendor.call("PUT", f"/agents/{a.agent_id}/state", {"state": 0})).status == 201
    assert (await a.dealer.call("GET", "/auth/me", expect=401)).status == 401
    me = await member.call("GET", "/auth/me")
    assert me.status == 200 and me.data["subject"] == "AAAA0000000000000002"
    renewed = await api.as_(None).call(
        "POST", "/auth/refresh", {"refresh_token": pair["refresh_token"]}
    )
    assert renewed.status in (200, 201) and renewed.data["access_token"]


async def test_deleting_never_orphans_anything(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, _ = tenants
    answer = await a.vendor.call("DELETE", f"/agents/{a.agent_id}", expect=409)
    assert answer.status == 409 and answer.code == "agent_has_children"
    # A member belonging to the dealer keeps it.
    await Member.create(uid="AAAA0000000000000001", vendor_id="AAAA", agent_id=a.dealer_id)
    answer = await a.agent.call("DELETE", f"/agents/{a.dealer_id}", expect=409)
    assert answer.status == 409 and answer.code == "agent_in_use"
    assert (await a.dealer.call("GET", "/auth/me")).status == 200
    await Member.filter(uid="AAAA0000000000000001").delete()
    # Now the dealer goes, with its login; then the agent.
    assert (await a.agent.call("DELETE", f"/agents/{a.dealer_id}")).status == 204
    assert (await a.dealer.call("GET", "/auth/me", expect=401)).status == 401
    answer = await api.as_(None).call(
        "POST", "/auth/login", {"user": "aaaa-dealer", "pwd": md5(PASSWORD)}, expect=401
    )
    assert answer.status == 401
    assert (await a.agent.call("GET", f"/agents/{a.dealer_id}", expect=404)).status == 404
    assert (await a.vendor.call("DELETE", f"/agents/{a.agent_id}")).status == 204
    assert (await a.vendor.call("GET", "/agents")).body["total"] == 0
    # The user names are free again.
    answer = await a.vendor.call("POST", "/agents", node("Again", "aaaa-agent"))
    assert answer.status == 201
