"""A list's filter naming a vendor, node, member, technician or earner the caller cannot
see answers 404, as a record of another tenant does (docs/api.md, "Roles and tenants"): never an
empty page, and never the caller's own records under the name it gave."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import make_member
from tests.api.test_tickets_api import technician


async def test_a_summary_naming_another_vendor_is_404_not_the_callers_own(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    member = await make_member(api_node, api, a.vid)
    for client in (a.vendor, a.agent, a.dealer, member.client):
        answer = await client.call("GET", "/commission/summary", params={"vid": b.vid}, expect=404)
        assert answer.code == "not_found" and b.vid in answer.body["message"], answer
        own = await client.call("GET", "/commission/summary", params={"vid": a.vid})
        assert own.data["vid"] == a.vid
    # Another vendor's earner is not one of this vendor's.
    other = f"agent:{b.agent_id}"
    answer = await a.vendor.call("GET", "/commission/summary", params={"earner": other}, expect=404)
    assert other in answer.body["message"]
    mine = f"agent:{a.agent_id}"
    assert (await a.vendor.call("GET", "/commission/summary", params={"earner": mine})).data[
        "earner"
    ] == mine
    # The platform sees every vendor that exists, and no other.
    assert (await api.call("GET", "/commission/summary", params={"vid": b.vid})).data[
        "vid"
    ] == b.vid
    await api.call("GET", "/commission/summary", params={"vid": "ZZZZ"}, expect=404)
    # An earner id past the id column's range is no earner (PostgreSQL: not a 500).
    for path in ("/commission/summary", "/commission", "/commission/withdrawals"):
        await api.call("GET", path, params={"earner": "agent:9999999999"}, expect=404)


async def test_every_list_filter_naming_what_the_caller_cannot_see_is_404(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    theirs = await make_member(api_node, api, b.vid)
    their_tech, _ = await technician(b.vendor, "their-tech", skills=[1])
    above = await make_member(api_node, api, a.vid, agent_id=a.agent_id)  # not the dealer's
    above_tech, _ = await technician(a.agent, "above-tech", skills=[1])
    hidden_from_a = (
        ("/technicians", "agent_id", b.agent_id),
        ("/devices", "vid", b.vid),
        ("/devices", "uid", theirs.uid),
        ("/devices", "agent_id", b.agent_id),
        ("/orders", "vid", b.vid),
        ("/orders", "uid", theirs.uid),
        ("/users", "vid", b.vid),
        ("/users", "agent_id", b.agent_id),
        ("/agents", "vid", b.vid),
        ("/agents", "parent", b.agent_id),
        ("/tickets", "user_id", theirs.uid),
        ("/tickets", "technician_id", their_tech),
        ("/commission", "vid", b.vid),
        ("/commission", "earner", f"agent:{b.agent_id}"),
        ("/commission", "earner", f"member:{theirs.uid}"),
        ("/commission/withdrawals", "vid", b.vid),
        ("/commission/withdrawals", "earner", f"agent:{b.agent_id}"),
        ("/fleet/statistics", "vid", b.vid),
        ("/products", "vid", b.vid),
    )
    hidden_from_dealer = (
        ("/technicians", "agent_id", a.agent_id),
        ("/devices", "uid", above.uid),
        ("/orders", "uid", above.uid),
        ("/users", "agent_id", a.agent_id),
        ("/agents", "parent", a.agent_id),
        ("/tickets", "user_id", above.uid),
        ("/tickets", "technician_id", above_tech),
        ("/commission", "earner", f"agent:{a.agent_id}"),
        ("/commission/withdrawals", "earner", f"agent:{a.agent_id}"),
    )
    answered = []
    for client, cases in (
        (a.vendor, hidden_from_a),
        (a.agent, hidden_from_a),
        (a.dealer, hidden_from_a + hidden_from_dealer),
    ):
        for path, name, value in cases:
            try:
                answer = await client.call("GET", path, params={name: str(value)}, expect=404)
            except AssertionError as failed:
                answered.append(failed.args)
                continue
            if answer.code != "not_found" or str(value) not in answer.body["message"]:
                answered.append((path, name, answer.body))
    assert answered == []
    # What the caller does see still filters.
    for path, name, value in (
        ("/technicians", "agent_id", a.agent_id),
        ("/devices", "uid", above.uid),
        ("/orders", "uid", above.uid),
        ("/agents", "parent", a.agent_id),
        ("/tickets", "technician_id", above_tech),
        ("/commission", "earner", f"agent:{a.dealer_id}"),
        ("/fleet/statistics", "vid", a.vid),
        ("/products", "vid", a.vid),
    ):
        await a.vendor.call("GET", path, params={name: str(value)}, expect=200)
    # ... and a member filters only by itself.
    await theirs.client.call("GET", "/orders", params={"uid": theirs.uid}, expect=200)
    await theirs.client.call("GET", "/orders", params={"uid": above.uid}, expect=404)
