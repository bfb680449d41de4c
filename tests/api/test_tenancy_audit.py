"""Tenant isolation, roles and bad input: defects found by the session 13 audit, each one's
regression test (two vendors, every role, through the real app)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aquafleet.models.devices import Device
from aquafleet.models.tickets import Ticket
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.api.test_ticket_work_api import work_through
from tests.api.test_tickets_api import held_device, register, technician


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


async def test_an_exchange_takes_its_replacement_from_the_completers_node(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A dealer (or its technician) sees only the devices of its node: completing an exchange
    it may not name another node's stock (the device would be bound to its member and moved
    into its subtree), as it may not ship one with an order."""
    a, _b = tenants
    shopper = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    old = await held_device(api, shopper, a.vid, agent_id=a.dealer_id)
    warehouse, agents_stock, dealers_stock = await register(api, a.vid, 3)
    await Device.filter(did=agents_stock).update(agent_id=a.agent_id)
    await Device.filter(did=dealers_stock).update(agent_id=a.dealer_id)
    tech_id, tech = await technician(a.dealer, "dealer-swapper", skills=[2])
    opened = await shopper.client.call("POST", "/tickets", {"type": 2, "device_id": old})
    tid = opened.data["ticket_id"]
    await work_through(a.dealer, tech, tech_id, tid)
    for completer in (tech, a.dealer):
        for stock in (warehouse, agents_stock):
            await a.dealer.call("GET", f"/devices/{stock}", expect=404)  # not the dealer's
            answer = await completer.call(
                "POST", f"/tickets/{tid}/complete", {"new_device": stock}, expect=404
            )
            assert answer.code == "not_found" and stock in answer.body["message"]
    for stock, node in ((warehouse, None), (agents_stock, a.agent_id)):
        device = await Device.get(did=stock)
        assert (device.owner_id, device.agent_id) == (None, node)
    assert (await a.dealer.call("GET", f"/tickets/{tid}")).data["handed_over_to"] is None
    # The dealer's own stock will do; so does any of the vendor's for the vendor.
    done = await tech.call("POST", f"/tickets/{tid}/complete", {"new_device": dealers_stock})
    assert (done.data["status"], done.data["new_device_id"]) == (6, dealers_stock)
    assert (await Device.get(did=dealers_stock)).owner_id == shopper.uid


async def test_a_technician_reads_no_products(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The catalogue is A+C (and visitors): a technician's token gets no admin's view of it
    (drafts and withdrawn products), nor a visitor's."""
    a, _b = tenants
    draft = await add_product(a.vendor, state=0, name="下季新品")
    _tech_id, tech = await technician(a.vendor, "catalogue-reader", skills=[1])
    for path in ("/products", f"/products/{draft}", f"/products/{draft}/prof"):
        for params in (None, {"vid": a.vid}):
            answer = await tech.call("GET", path, params=params, expect=403)
            assert answer.code == "forbidden" and "technician" in answer.body["message"]
    # Admins still read the draft, a member of the vendor does not.
    assert (await a.agent.call("GET", f"/products/{draft}")).data["name"] == "下季新品"
    shopper = await make_member(api_node, api, a.vid)
    await shopper.client.call("GET", f"/products/{draft}", expect=404)


# A time zone moves these past the years a datetime (and a database column) holds: their UTC
# time is in year 10000 or year 0.
PAST_THE_CALENDAR = ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00")


async def test_times_whose_utc_leaves_the_calendar_are_422_not_500(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    for value in PAST_THE_CALENDAR:
        for client, path, name in (
            (api, "/commission", "since"),
            (api, "/commission", "until"),
            (a.vendor, f"/agents/{a.agent_id}/commissions", "since"),
            (api, "/orders", "since"),
            (a.vendor, "/orders", "until"),
        ):
            answer = await client.call("GET", path, params={name: value}, expect=422)
            assert answer.data[0]["field"] == name, answer
        body = {"type": 4, "device_id": did, "appoint_tms": value}
        answer = await a.vendor.call("POST", "/tickets", body, expect=422)
        assert answer.data[0]["field"] == "appoint_tms", answer
    # The calendar's own ends, in UTC, are still times.
    for value in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"):
        await api.call("GET", "/orders", params={"since": value})
        await api.call("GET", "/commission", params={"until": value})


async def test_the_stuck_exchanges_list_follows_its_order_parameter(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """`order` is one of the list's documented parameters: desc lists the newest first."""
    a, _b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    (new,) = await register(api, a.vid, 1)
    now = dt.datetime.now(dt.UTC)
    opened = []
    for hours in (50, 30, 70):
        answer = await a.vendor.call("POST", "/tickets", {"type": 2, "device_id": did})
        tid = answer.data["ticket_id"]
        await Ticket.filter(ticket_id=tid).update(
            handed_over_to=new, handed_over_at=now - dt.timedelta(hours=hours)
        )
        opened.append(tid)
    fifty, thirty, seventy = opened

    async def listed(**params: str) -> list[str]:
        found = await a.vendor.call("GET", "/tickets/exchanges/stuck", params=params)
        return [t["ticket_id"] for t in found.data]

    assert await listed() == [seventy, fifty, thirty]  # oldest first by default
    assert await listed(order="asc") == [seventy, fifty, thirty]
    assert await listed(order="desc") == [thirty, fifty, seventy]
    assert await listed(order="desc", limit="1", offset="1") == [fifty]


async def test_disabling_or_deregistering_a_vendor_ends_its_members_sessions(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """Its whole tree is logged out: members too, not only its admins (an access token used
    to keep working for its lifetime, ordering and commanding devices)."""
    a, b = tenants
    mine = await make_member(api_node, api, a.vid)
    also_mine = await make_member(api_node, api, a.vid)
    theirs = await make_member(api_node, api, b.vid)
    for member in (mine, also_mine, theirs):
        await member.client.call("GET", "/auth/me")
    await api.call("PUT", f"/vendors/{a.vid}", {"state": 0})
    for member in (mine, also_mine):
        answer = await member.client.call("GET", "/auth/me", expect=401)
        assert answer.code == "unauthorized", answer
    await theirs.client.call("GET", "/auth/me")  # another vendor's members stay in

    await api.call("DELETE", f"/vendors/{b.vid}")
    await theirs.client.call("GET", f"/users/{theirs.uid}", expect=401)
