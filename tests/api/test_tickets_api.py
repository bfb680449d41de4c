"""Tickets (AE-01..03) through a real node on SQLite and PostgreSQL: technicians, the lifecycle
with every move recorded, dispatch by hierarchy and by distance (real coordinates, Redis
GEOSEARCH), ratings, the summary, and tenancy (a technician of one vendor never sees another's
tickets)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from aquafleet.models.devices import Device
from aquafleet.models.tickets import Ticket
from tests.api.conftest import PASSWORD, ApiClient, Tenant, md5
from tests.api.shop import Shopper, make_member

# Real places (millionths of a degree): the device in Zhuhai's Xiangzhou district; technicians
# in Gongbei (Zhuhai, ~6 km), Jinwan (Zhuhai, ~24 km) and Guangzhou (~105 km).
XIANGZHOU = (22_271_000, 113_576_700)
GONGBEI = (22_222_600, 113_547_600)
JINWAN = (22_145_600, 113_364_000)
GUANGZHOU = (23_129_100, 113_264_400)
EARTH_RADIUS_M = 6_372_797.560856  # the radius Redis GEO uses


def haversine_m(a: tuple[int, int], b: tuple[int, int]) -> float:
    lat1, lng1, lat2, lng2 = (math.radians(v / 1e6) for v in (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


async def register(api: ApiClient, vid: str, count: int) -> list[str]:
    answer = await api.call("POST", "/devices", {"vid": vid, "count": count})
    return [d["did"] for d in answer.data]


async def held_device(
    api: ApiClient, shopper: Shopper, vid: str, *, agent_id: int | None = None
) -> str:
    """A device of `vid` bound to the member, installed in Xiangzhou, on node `agent_id`."""
    (did,) = await register(api, vid, 1)
    await Device.filter(did=did).update(
        owner_id=shopper.uid, agent_id=agent_id, lbs_lat_e6=XIANGZHOU[0], lbs_lng_e6=XIANGZHOU[1]
    )
    return did


async def technician(
    creator: ApiClient, user: str, *, skills: list[int], **fields: Any
) -> tuple[int, ApiClient]:
    """A technician (created by `creator`) and a client logged in as it."""
    body = {"user": user, "pwd": md5(PASSWORD), "name": user.title(), "skills": skills, **fields}
    answer = await creator.call("POST", "/technicians", body, expect=201)
    client = creator.as_(await creator.login(user))
    return int(answer.data["id"]), client


async def at(client: ApiClient, place: tuple[int, int], state: int = 1) -> None:
    await client.call(
        "PUT", "/technicians/me", {"work_state": state, "lat_e6": place[0], "lng_e6": place[1]}
    )


async def test_member_fault_ticket_through_the_whole_workflow(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    tech_id, tech = await technician(a.vendor, "aaaa-tech", skills=[4, 5], mobile="13900000001")

    appoint = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    opened = await shopper.client.call(
        "POST",
        "/tickets",
        {"type": 4, "device_id": did, "detail": "制水故障", "appoint_tms": appoint},
        expect=201,
    )
    ticket = opened.data
    tid = ticket["ticket_id"]
    assert (ticket["status"], ticket["type"], ticket["user_id"], ticket["device_id"]) == (
        1, 4, shopper.uid, did
    )  # fmt: skip
    assert ticket["appoint_tms"] == appoint
    assert ticket["approval"] == {"check_result": None, "check_tms": None, "check_usr": None}
    assert (ticket["lat_e6"], ticket["lng_e6"]) == XIANGZHOU  # the device's place

    # Nobody outside the ticket's scope sees it; the technician not yet either.
    for outsider in (b.vendor, b.agent, tech):
        await outsider.call("GET", f"/tickets/{tid}", expect=404)
        assert (await outsider.call("GET", "/tickets")).data == []
    # A member may not dispatch or approve; a technician may not approve.
    await shopper.client.call("POST", f"/tickets/{tid}/approve", {"check_result": True}, expect=403)
    await tech.call("POST", f"/tickets/{tid}/approve", {"check_result": True}, expect=403)
    # Moves out of order answer 409 naming the state.
    early = await a.vendor.call(
        "POST", f"/tickets/{tid}/dispatch", {"technician_id": tech_id}, expect=409
    )
    assert "created" in early.body["message"]

    approved = await a.vendor.call(
        "POST", f"/tickets/{tid}/approve", {"check_result": True, "note": "ok"}
    )
    approval = approved.data["approval"]
    assert approval["check_result"] is True and approval["check_tms"].endswith("Z")
    assert approval["check_usr"].startswith("vendor:")
    # The member can no longer cancel what was approved.
    await shopper.client.call("POST", f"/tickets/{tid}/cancel", {}, expect=409)
    # Another vendor's technician id is unknown here.
    other_id, _ = await technician(b.vendor, "bbbb-tech", skills=[4])
    await a.vendor.call("POST", f"/tickets/{tid}/dispatch", {"technician_id": other_id}, expect=404)
    dispatched = await a.vendor.call(
        "POST", f"/tickets/{tid}/dispatch", {"technician_id": tech_id, "note": "nearest"}
    )
    assert dispatched.data["mode"] == "explicit"
    assert dispatched.data["ticket"]["technician_id"] == tech_id

    # Now the technician sees it, and only it.
    listed = await tech.call("GET", "/tickets")
    assert [t["ticket_id"] for t in listed.data] == [tid]
    await tech.call("POST", f"/tickets/{tid}/complete", {}, expect=409)  # not started
    await tech.call("POST", f"/tickets/{tid}/start", {"note": "on my way"})
    await tech.call("POST", f"/tickets/{tid}/wait", {"note": "waiting for a part"})
    await tech.call("POST", f"/tickets/{tid}/start", {"note": "part arrived"})
    await shopper.client.call("POST", f"/tickets/{tid}/rating", {"rate_value": 5}, expect=409)
    done = await tech.call("POST", f"/tickets/{tid}/complete", {"note": "pump replaced"})
    assert done.data["status"] == 6 and done.data["complete_tms"] is not None
    await tech.call("POST", f"/tickets/{tid}/cancel", {}, expect=403)
    await a.vendor.call("POST", f"/tickets/{tid}/cancel", {}, expect=409)

    # Rated once, by its member only, 1..5.
    await shopper.client.call("POST", f"/tickets/{tid}/rating", {"rate_value": 6}, expect=422)
    stranger = await make_member(api_node, api, a.vid)
    await stranger.client.call("POST", f"/tickets/{tid}/rating", {"rate_value": 1}, expect=404)
    rated = await shopper.client.call(
        "POST", f"/tickets/{tid}/rating", {"rate_value": 4, "rate_detail": "准时"}
    )
    assert rated.data["ratings"]["rate_value"] == 4
    assert rated.data["ratings"]["rate_detail"] == "准时"
    again = await shopper.client.call(
        "POST", f"/tickets/{tid}/rating", {"rate_value": 1}, expect=409
    )
    assert "already" in again.body["message"]
    assert (await shopper.client.call("GET", f"/tickets/{tid}")).data["ratings"]["rate_value"] == 4

    moves = (await a.vendor.call("GET", f"/tickets/{tid}/moves")).data
    assert [(m["event"], m["from_status"], m["to_status"]) for m in moves] == [
        ("approve", 1, 2), ("dispatch", 2, 3), ("start", 3, 4), ("wait", 4, 5),
        ("start", 5, 4), ("complete", 4, 6),
    ]  # fmt: skip
    assert moves[0]["actor_role"] == "vendor" and moves[0]["note"] == "ok"
    assert moves[1]["technician_id"] == tech_id
    assert moves[2]["actor_role"] == "technician" and moves[2]["note"] == "on my way"
    assert all(m["tms"].endswith("Z") for m in moves)
    await b.vendor.call("GET", f"/tickets/{tid}/moves", expect=404)


async def test_who_opens_which_tickets(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    (loose,) = await register(api, a.vid, 1)
    (foreign,) = await register(api, b.vid, 1)
    # Members: exchange, return and fault for a device they hold.
    await shopper.client.call("POST", "/tickets", {"type": 5, "device_id": did}, expect=403)
    await shopper.client.call("POST", "/tickets", {"type": 4, "device_id": loose}, expect=404)
    await shopper.client.call("POST", "/tickets", {"type": 4, "device_id": foreign}, expect=404)
    # Admins: any type, devices of their scope only.
    await b.vendor.call("POST", "/tickets", {"type": 1, "device_id": did}, expect=404)
    await a.agent.call("POST", "/tickets", {"type": 1, "device_id": did}, expect=404)  # vendor's
    install = await a.vendor.call("POST", "/tickets", {"type": 1, "device_id": did}, expect=201)
    assert install.data["user_id"] == shopper.uid  # the device's owner by default
    # A member cancels its own ticket while nobody approved it.
    own = await shopper.client.call("POST", "/tickets", {"type": 2, "device_id": did}, expect=201)
    cancelled = await shopper.client.call(
        "POST", f"/tickets/{own.data['ticket_id']}/cancel", {"note": "changed my mind"}
    )
    assert cancelled.data["status"] == 7
    # A refused approval cancels with check_result false.
    refused = await a.vendor.call(
        "POST", f"/tickets/{install.data['ticket_id']}/approve", {"check_result": False}
    )
    assert refused.data["status"] == 7 and refused.data["approval"]["check_result"] is False


async def test_dispatch_by_hierarchy_prefers_the_nearest_node_team(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid, agent_id=a.dealer_id)
    vendor_tech, vendor_client = await technician(a.vendor, "v-team", skills=[4], is_default=True)
    agent_tech, agent_client = await technician(a.agent, "a-team", skills=[4], is_default=True)
    dealer_tech, dealer_client = await technician(
        a.dealer, "d-team", skills=[1], is_default=True
    )  # no fault skill
    for client in (vendor_client, agent_client, dealer_client):
        await client.call("PUT", "/technicians/me", {"work_state": 1})

    async def approved_fault() -> str:
        answer = await a.vendor.call("POST", "/tickets", {"type": 4, "device_id": did}, expect=201)
        tid = answer.data["ticket_id"]
        await a.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
        return str(tid)

    # The dealer's team lacks the skill: the agent's team takes it.
    first = await approved_fault()
    chosen = await a.dealer.call("POST", f"/tickets/{first}/dispatch", {"mode": "hierarchy"})
    assert (chosen.data["mode"], chosen.data["technician_id"]) == ("hierarchy", agent_tech)
    # The agent's technician goes off: the vendor's team is next.
    await agent_client.call("PUT", "/technicians/me", {"work_state": 0})
    second = await approved_fault()
    chosen = await a.vendor.call("POST", f"/tickets/{second}/dispatch", {"mode": "hierarchy"})
    assert chosen.data["technician_id"] == vendor_tech
    # Nobody available: 409 no_technician, the ticket stays approved.
    await vendor_client.call("PUT", "/technicians/me", {"work_state": 2})
    third = await approved_fault()
    none = await a.vendor.call(
        "POST", f"/tickets/{third}/dispatch", {"mode": "hierarchy"}, expect=409
    )
    assert none.code == "no_technician"
    assert (await a.vendor.call("GET", f"/tickets/{third}")).data["status"] == 2
    # The dealer's team takes an install ticket.
    install = await a.vendor.call("POST", "/tickets", {"type": 1, "device_id": did}, expect=201)
    tid = install.data["ticket_id"]
    await a.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    chosen = await a.vendor.call("POST", f"/tickets/{tid}/dispatch", {"mode": "hierarchy"})
    assert chosen.data["technician_id"] == dealer_tech
    # The dealer sees its subtree's tickets, the agent too.
    dealer_view = {t["ticket_id"] for t in (await a.dealer.call("GET", "/tickets")).data}
    assert {first, second, third, tid} <= dealer_view


async def test_dispatch_by_distance_takes_the_nearest_available_skilled_technician(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    gongbei, gongbei_client = await technician(a.vendor, "gongbei", skills=[5])
    jinwan, jinwan_client = await technician(a.vendor, "jinwan", skills=[4, 5])
    _canton, canton_client = await technician(a.vendor, "canton", skills=[4, 5])
    _other, other_client = await technician(b.vendor, "other-vendor", skills=[4, 5])
    await at(gongbei_client, GONGBEI)
    await at(jinwan_client, JINWAN)
    await at(canton_client, GUANGZHOU)
    await at(other_client, XIANGZHOU)  # right there, but another vendor's

    answer = await a.vendor.call("POST", "/tickets", {"type": 5, "device_id": did}, expect=201)
    tid = answer.data["ticket_id"]
    await a.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    chosen = await a.vendor.call("POST", f"/tickets/{tid}/dispatch", {"mode": "distance"})
    assert chosen.data["technician_id"] == gongbei
    assert abs(chosen.data["distance_m"] - haversine_m(XIANGZHOU, GONGBEI)) < 5
    assert 5_000 < chosen.data["distance_m"] < 8_000

    # A fault ticket: Gongbei lacks the skill, so Jinwan (Guangzhou is beyond 50 km).
    fault = await a.vendor.call("POST", "/tickets", {"type": 4, "device_id": did}, expect=201)
    fid = fault.data["ticket_id"]
    await a.vendor.call("POST", f"/tickets/{fid}/approve", {"check_result": True})
    chosen = await a.vendor.call("POST", f"/tickets/{fid}/dispatch", {"mode": "distance"})
    assert chosen.data["technician_id"] == jinwan
    assert abs(chosen.data["distance_m"] - haversine_m(XIANGZHOU, JINWAN)) < 5
    # Jinwan goes home: nobody within the radius has the skill and works.
    await at(jinwan_client, JINWAN, state=0)
    await a.vendor.call("POST", f"/tickets/{fid}/start", {})
    await a.vendor.call("POST", f"/tickets/{fid}/cancel", {"note": "test"})
    again = await a.vendor.call("POST", "/tickets", {"type": 4, "device_id": did}, expect=201)
    gid = again.data["ticket_id"]
    await a.vendor.call("POST", f"/tickets/{gid}/approve", {"check_result": True})
    none = await a.vendor.call("POST", f"/tickets/{gid}/dispatch", {"mode": "distance"}, expect=409)
    assert none.code == "no_technician"
    # A ticket with a place given (the member's address) is searched around that place.
    near_canton = await a.vendor.call(
        "POST",
        "/tickets",
        {"type": 4, "device_id": did, "lat_e6": 23_100_000, "lng_e6": 113_300_000},
        expect=201,
    )
    cid = near_canton.data["ticket_id"]
    await a.vendor.call("POST", f"/tickets/{cid}/approve", {"check_result": True})
    chosen = await a.vendor.call("POST", f"/tickets/{cid}/dispatch", {"mode": "distance"})
    assert chosen.data["technician_id"] == _canton


async def test_technicians_are_scoped_and_see_only_their_tickets(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    one_id, one = await technician(a.vendor, "tech-one", skills=[4])
    two_id, two = await technician(a.vendor, "tech-two", skills=[4])
    dealer_tech, _ = await technician(a.dealer, "tech-dealer", skills=[4])
    b_id, b_tech = await technician(b.vendor, "tech-b", skills=[4])

    body = {"user": "nowhere", "pwd": md5(PASSWORD), "name": "N", "vid": "ZZZZ"}
    await api.call("POST", "/technicians", body, expect=404)  # no such vendor
    await api.call(
        "POST", "/technicians", {**body, "vid": b.vid, "agent_id": a.agent_id}, expect=404
    )
    ids = {t["id"] for t in (await a.vendor.call("GET", "/technicians")).data}
    assert ids == {one_id, two_id, dealer_tech}
    assert {t["id"] for t in (await a.dealer.call("GET", "/technicians")).data} == {dealer_tech}
    await a.dealer.call("GET", f"/technicians/{one_id}", expect=404)
    await b.vendor.call("GET", f"/technicians/{one_id}", expect=404)
    await b.vendor.call("PUT", f"/technicians/{one_id}", {"skills": [1]}, expect=404)
    # Technicians reach nothing but their tickets and themselves.
    for path in ("/technicians", "/devices", "/orders", f"/technicians/{one_id}"):
        await one.call("GET", path, expect=403)
    me = (await one.call("GET", "/auth/me")).data
    assert (me["role"], me["vid"]) == ("technician", a.vid)
    assert (await one.call("GET", "/technicians/me")).data["id"] == one_id
    await one.call("PUT", "/technicians/me", {"lat_e6": 1}, expect=422)

    opened = await a.vendor.call("POST", "/tickets", {"type": 4, "device_id": did}, expect=201)
    tid = opened.data["ticket_id"]
    await a.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    await a.vendor.call("POST", f"/tickets/{tid}/dispatch", {"technician_id": one_id})
    await two.call("POST", f"/tickets/{tid}/start", {}, expect=404)
    await b_tech.call("GET", f"/tickets/{tid}", expect=404)
    # Re-dispatched to two: one loses it.
    await a.vendor.call("POST", f"/tickets/{tid}/dispatch", {"technician_id": two_id})
    await one.call("GET", f"/tickets/{tid}", expect=404)
    assert (await two.call("GET", f"/tickets/{tid}")).data["technician_id"] == two_id
    summary = (await one.call("GET", "/tickets/summary")).data
    assert summary["open"] == 0
    assert (await two.call("GET", "/tickets/summary")).data["by_status"] == {"3": 1}
    assert (await b_tech.call("GET", "/tickets")).body["total"] == 0
    del b_id


async def test_summary_counts_states_types_and_overdue(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    tids = []
    for kind in (4, 4, 5, 1):
        answer = await a.vendor.call("POST", "/tickets", {"type": kind, "device_id": did})
        tids.append(answer.data["ticket_id"])
    await a.vendor.call("POST", f"/tickets/{tids[3]}/cancel", {})
    now = dt.datetime.now(dt.UTC)
    # One fault opened 25 h ago (fault SLA 24 h); one maintenance with a passed appointment.
    await Ticket.filter(ticket_id=tids[0]).update(created_at=now - dt.timedelta(hours=25))
    await Ticket.filter(ticket_id=tids[2]).update(appoint_at=now - dt.timedelta(minutes=1))
    summary = (await a.vendor.call("GET", "/tickets/summary")).data
    assert summary["by_status"] == {"1": 3, "7": 1}
    assert summary["by_type"] == {"1": 1, "4": 2, "5": 1}
    assert (summary["open"], summary["overdue"]) == (3, 2)
    assert summary["overdue_by_type"] == {"4": 1, "5": 1}
    assert summary["sla_hours"]["4"] == 24
    member_view = (await shopper.client.call("GET", "/tickets/summary")).data
    assert member_view["open"] == 3
    other = (await b.vendor.call("GET", "/tickets/summary")).data
    assert (other["open"], other["by_type"]) == (0, {})
