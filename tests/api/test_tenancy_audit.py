"""Tenant isolation, roles and bad input: defects found by the session 13 audit, each one's
regression test (two vendors, every role, through the real app)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import make_member
from tests.api.test_tickets_api import held_device, register


async def test_a_ticket_names_only_a_member_of_its_vendor_and_the_callers_scope(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    mine = await make_member(api_node, api, a.vid)  # the vendor's own, under no agent
    theirs = await make_member(api_node, api, b.vid)
    did = await held_device(api, mine, a.vid, agent_id=a.agent_id)
    (spare,) = await register(api, a.vid, 1)
    # Another vendor's member: unknown here, whoever asks, with a device or without.
    for body in (
        {"type": 2, "device_id": did, "user_id": theirs.uid},
        {"type": 1, "device_id": spare, "user_id": theirs.uid},
    ):
        for admin in (a.vendor, api):
            answer = await admin.call("POST", "/tickets", body, expect=404)
            assert answer.code == "not_found" and theirs.uid in answer.body["message"]
    # ... so it never sees (nor cancels) a ticket of this vendor.
    assert (await theirs.client.call("GET", "/tickets")).data == []

    # An agent names members of its subtree, or the owner of its device.
    await a.agent.call("POST", "/tickets", {"type": 1, "user_id": mine.uid}, expect=404)
    await a.agent.call("POST", "/tickets", {"type": 4, "device_id": did, "user_id": mine.uid})
    served = await make_member(api_node, api, a.vid, agent_id=a.agent_id)
    opened = await a.agent.call("POST", "/tickets", {"type": 1, "user_id": served.uid})
    assert opened.data["user_id"] == served.uid and opened.data["device_id"] is None
    # The ticket belongs to its member's node: the agent that opened it sees it.
    tid = opened.data["ticket_id"]
    assert (await a.agent.call("GET", f"/tickets/{tid}")).data["ticket_id"] == tid
    assert tid in [t["ticket_id"] for t in (await a.agent.call("GET", "/tickets")).data]
    await a.dealer.call("GET", f"/tickets/{tid}", expect=404)
    await b.agent.call("GET", f"/tickets/{tid}", expect=404)
