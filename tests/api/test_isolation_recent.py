"""Tenant, member and node isolation of the endpoints changed most recently (退租, exchanges,
bill moves, renewals, refunds, service changes, withdrawals, commissions, technicians and
tickets, agents), through the real app on SQLite and PostgreSQL.

Every intruder (another vendor's admins, technicians and members, another member of the same
vendor, a sibling node) asks every endpoint about a resource of vendor A's dealer's member;
each answer must be the one an unknown id of the same form gets (never a 2xx, never a field of
the record), and nothing may change: no order, ticket, device, service change, ledger entry,
refund or withdrawal. Bad bodies get 400/413/422 with a documented code, never a 500."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aquafleet.api.errors import ERROR_CODES
from aquafleet.models.devices import Device
from aquafleet.models.money import Refund
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from aquafleet.models.service import ServiceChange
from aquafleet.models.tickets import Ticket
from aquafleet.models.withdrawals import Withdrawal
from tests.api.conftest import PASSWORD, Answer, ApiClient, Tenant, md5
from tests.api.shop import Shopper, add_product, make_member
from tests.api.test_orders_api import order_body
from tests.api.test_ticket_work_api import PARCEL
from tests.api.test_tickets_api import register, technician

ALL_SKILLS = [1, 2, 3, 4, 5, 6]


@dataclass
class Holding:
    """A member of a node with a delivered rental (one device), a fault ticket on it
    dispatched to the node's technician."""

    member: Shopper
    oid: str
    did: str
    tid: str
    tech_id: int
    tech: ApiClient


async def holding(
    api: ApiClient, node: Any, tenant: Tenant, owner: ApiClient, agent_id: int | None, tag: str
) -> Holding:
    pid = await add_product(tenant.vendor, install=False, install_cost=0, name=f"租机{tag}")
    member = await make_member(node, api, tenant.vid, agent_id=agent_id)
    line = {"product_id": pid, "package": "30d", "quantity": 1}
    oid = (await member.client.call("POST", "/orders", order_body(line))).data["order_id"]
    await mark_paid(oid, admin="root", reason="test")
    (did,) = await register(api, tenant.vid, 1)
    await Device.filter(did=did).update(agent_id=agent_id)
    await tenant.vendor.call("POST", f"/orders/{oid}/delivery", {**PARCEL, "devices": [did]})
    tid = (await member.client.call("POST", "/tickets", {"type": 4, "device_id": did})).data[
        "ticket_id"
    ]
    tech_id, tech = await technician(owner, f"{tag}-tech", skills=ALL_SKILLS)
    await tenant.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    await tenant.vendor.call("POST", f"/tickets/{tid}/dispatch", {"technician_id": tech_id})
    return Holding(member, str(oid), did, str(tid), tech_id, tech)


@dataclass
class World:
    a: Tenant
    b: Tenant
    sibling: ApiClient  # another agent of vendor A
    sibling_id: int
    victim: Holding  # a member of A's dealer
    other_a: Holding  # a member of A's sibling agent
    theirs: Holding  # a member of B's dealer
    neighbour: Shopper  # another member of A's dealer, with nothing


async def world(api: ApiClient, node: Any, tenants: tuple[Tenant, Tenant]) -> World:
    a, b = tenants
    body = {"name": "Sibling of AAAA", "user": "aaaa-agent2", "pwd": md5(PASSWORD)}
    sibling_id = (await a.vendor.call("POST", "/agents", body)).data["id"]
    sibling = api.as_(await api.login("aaaa-agent2"))
    victim = await holding(api, node, a, a.dealer, a.dealer_id, "victim")
    other_a = await holding(api, node, a, sibling, sibling_id, "sibling")
    theirs = await holding(api, node, b, b.dealer, b.dealer_id, "theirs")
    neighbour = await make_member(node, api, a.vid, agent_id=a.dealer_id)
    return World(a, b, sibling, sibling_id, victim, other_a, theirs, neighbour)


# ----------------------------------------------------------------------------- the requests

# Unknown ids of the same forms as the real ones: the answer a stranger's id must equal.
UNKNOWN_OID = "20000101AAAA999999999999"
UNKNOWN_TID = "20000101AAAA999999999998"
UNKNOWN_DID = "AAAA999999990000"
UNKNOWN_UID = "AAAA9999999999990000"
UNKNOWN_INT = 99999


@dataclass(frozen=True)
class Ids:
    oid: str
    tid: str
    did: str
    uid: str
    tech: int
    node: int


def requests(ids: Ids, own_tech: int | None = None) -> list[tuple[str, str, Any, Any]]:
    """(method, path, body, query) of every endpoint naming the resource of `ids`."""
    o, t, d, u = ids.oid, ids.tid, ids.did, ids.uid
    tech = own_tech or ids.tech
    return [
        # orders: reads, moves, refunds (AD-03, AD-10..15), delivery
        ("GET", f"/orders/{o}", None, None),
        ("GET", f"/orders/{o}/payment", None, None),
        ("GET", f"/orders/{o}/delivery", None, None),
        ("PUT", f"/orders/{o}/delivery", {"tracking_num": "SF999"}, None),
        ("POST", f"/orders/{o}/status/confirm", None, None),
        ("POST", f"/orders/{o}/status/return", {"reason": "不要了"}, None),
        ("POST", f"/orders/{o}/status/consent", None, None),
        ("POST", f"/orders/{o}/status/refuse", {"reason": "no"}, None),
        ("PUT", f"/orders/{o}/status/refund", None, None),
        ("POST", f"/orders/{o}/status/close", None, None),
        ("DELETE", f"/orders/{o}", None, {"confirm": o}),
        # 退租 and the bill's channels (prepays move the bill)
        ("POST", f"/orders/{o}/rental/end", {"device_id": d}, None),
        ("POST", f"/orders/{o}/prepay/weixin", None, None),
        ("POST", f"/orders/{o}/prepay/alipay", None, None),
        ("POST", f"/orders/{o}/prepay/credit", None, None),
        ("POST", f"/orders/{o}/prepay/debit", None, None),
        ("POST", f"/orders/{o}/prepay/wallet", None, None),
        # renewals and exchanges name the device in the body
        ("POST", "/orders/renewals", {"did": d, "package": "30d"}, None),
        ("POST", "/tickets", {"type": 2, "device_id": d}, None),
        ("POST", "/tickets", {"type": 6, "device_id": d}, None),
        ("POST", "/tickets", {"type": 1, "user_id": u}, None),
        ("GET", "/tickets", None, {"device_id": d}),
        # tickets
        ("GET", f"/tickets/{t}", None, None),
        ("GET", f"/tickets/{t}/moves", None, None),
        ("POST", f"/tickets/{t}/approve", {"check_result": False}, None),
        ("POST", f"/tickets/{t}/dispatch", {"technician_id": tech}, None),
        ("POST", f"/tickets/{t}/dispatch", {"mode": "hierarchy"}, None),
        ("POST", f"/tickets/{t}/start", {}, None),
        ("POST", f"/tickets/{t}/wait", {}, None),
        ("POST", f"/tickets/{t}/complete", {"new_device": d}, None),
        ("POST", f"/tickets/{t}/cancel", {"settled": True}, None),
        ("POST", f"/tickets/{t}/rating", {"rate_value": 1}, None),
        # the device's service (AB-07/08) and its wallet
        ("GET", f"/devices/{d}", None, None),
        ("GET", f"/devices/{d}/svc", None, None),
        ("PUT", f"/devices/{d}/svc", {"op": "top_up", "ml": 1000, "request_id": "x1"}, None),
        ("PUT", f"/devices/{d}/svc", {"op": "lock", "request_id": "x2"}, None),
        ("GET", f"/users/{u}/wallet", None, None),
        ("POST", f"/users/{u}/wallet/topup", {"amount": 1000}, None),
        # commissions and withdrawals
        ("GET", "/commission", None, {"earner": f"member:{u}"}),
        ("GET", "/commission/summary", None, {"earner": f"member:{u}"}),
        ("GET", "/commission/withdrawals", None, {"earner": f"member:{u}"}),
        ("GET", "/commission", None, {"earner": f"agent:{ids.node}"}),
        ("GET", "/commission/summary", None, {"earner": f"agent:{ids.node}"}),
        ("GET", f"/agents/{ids.node}/commissions", None, None),
        # technicians and agents
        ("GET", f"/technicians/{ids.tech}", None, None),
        ("PUT", f"/technicians/{ids.tech}", {"work_state": 0}, None),
        ("GET", "/technicians", None, {"agent_id": ids.node}),
        ("GET", f"/agents/{ids.node}", None, None),
        ("PUT", f"/agents/{ids.node}", {"name": "taken over"}, None),
        ("PUT", f"/agents/{ids.node}/state", {"state": 0}, None),
        ("PUT", f"/agents/{ids.node}/pwd", {"pwd": md5("hijack")}, None),
        ("DELETE", f"/agents/{ids.node}", None, None),
    ]


async def ask(client: ApiClient, method: str, path: str, body: Any, query: Any) -> Answer:
    """The answer, whatever its status (the envelope checked by ApiClient)."""
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    url = f"{client.base}/api/v1{path}"
    async with client.session.request(
        method, url, json=body, params=query, headers=headers
    ) as response:
        raw = await response.read()
        if response.status == 204:
            return Answer(204, None, response.headers)
        assert response.content_type == "application/json", (path, response.status, raw[:200])
        return Answer(response.status, await response.json(), response.headers)


def masked(text: str, ids: Ids) -> str:
    for value in (ids.oid, ids.tid, ids.did, ids.uid):
        text = text.replace(value, "<id>")
    return re.sub(rf"\b({ids.tech}|{ids.node})\b", "<n>", text)


async def state_of(h: Holding) -> Any:
    """What an intruder must not change: the holding's rows, the money and the service."""
    from tortoise import connections

    conn = connections.get("default")
    _, ledger = await conn.execute_query("SELECT COUNT(*) AS n FROM money_entry")
    return (
        await Order.filter(oid=h.oid).values_list(
            "state", "paid_at", "deleted_at", "updated_at", "delivery", "agent_id"
        ),
        await Ticket.filter(ticket_id=h.tid).values_list(
            "state", "technician_id", "check_result", "rate_value", "updated_at"
        ),
        await Ticket.filter(device_id=h.did).count(),
        await Order.filter(member_id=h.member.uid).count(),
        await Device.filter(did=h.did).values_list("owner_id", "agent_id", "state"),
        await ServiceChange.filter(did=h.did).count(),
        await Refund.all().count(),
        await Withdrawal.all().count(),
        ledger,
    )


def ids_of(h: Holding, node: int) -> Ids:
    return Ids(h.oid, h.tid, h.did, h.member.uid, h.tech_id, node)


UNKNOWN = Ids(UNKNOWN_OID, UNKNOWN_TID, UNKNOWN_DID, UNKNOWN_UID, UNKNOWN_INT, UNKNOWN_INT)


async def assert_as_unknown(who: str, client: ApiClient, target: Ids, own_tech: int | None) -> None:
    real = requests(target, own_tech)
    unknown = requests(UNKNOWN, own_tech)
    for (method, path, body, query), (_, upath, ubody, uquery) in zip(real, unknown, strict=True):
        got = await ask(client, method, path, body, query)
        expected = await ask(client, method, upath, ubody, uquery)
        where = (who, method, path, body, query)
        # A device filter narrows a list (docs/api.md): an empty page, as for an unknown id.
        assert got.status >= 400 or got.body["data"] == [], (where, got)
        assert got.status < 500, (where, got)
        assert (got.status, got.code) == (expected.status, expected.code), (where, got, expected)
        assert masked(got.body["message"], target) == masked(expected.body["message"], UNKNOWN), (
            where,
            got,
            expected,
        )
        assert got.body["data"] is None or got.body["data"] == expected.body["data"], (where, got)


async def test_another_tenants_members_or_nodes_ids_answer_as_unknown_ones(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    w = await world(api, api_node, tenants)
    a, b = w.a, w.b
    victim = ids_of(w.victim, a.dealer_id)
    before = await state_of(w.victim)
    intruders = [
        ("vendor B", b.vendor, w.theirs.tech_id),
        ("agent B", b.agent, w.theirs.tech_id),
        ("dealer B", b.dealer, w.theirs.tech_id),
        ("technician B", w.theirs.tech, None),
        ("member B", w.theirs.member.client, None),
        ("member A (same dealer)", w.neighbour.client, None),
        ("member A (sibling node)", w.other_a.member.client, None),
        ("sibling agent A", w.sibling, w.other_a.tech_id),
        ("sibling technician A", w.other_a.tech, None),
    ]
    for who, client, own_tech in intruders:
        await assert_as_unknown(who, client, victim, own_tech)
        assert await state_of(w.victim) == before, who
    # B's resources are as unknown to A's dealer as A's to B's.
    await assert_as_unknown("dealer A", a.dealer, ids_of(w.theirs, b.dealer_id), w.victim.tech_id)


async def test_each_node_sees_its_subtree_and_nothing_of_a_sibling_node(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """The vendor, the agent above the dealer and the dealer see the dealer's member's order,
    ticket, device and node; its technician the ticket dispatched to it; the member its own.
    A sibling agent's member is as unknown to that agent and dealer as another vendor's."""
    w = await world(api, api_node, tenants)
    a, v = w.a, w.victim
    for client in (a.vendor, a.agent, a.dealer):
        assert (await client.call("GET", f"/orders/{v.oid}")).data["order_id"] == v.oid
        assert (await client.call("GET", f"/tickets/{v.tid}")).data["ticket_id"] == v.tid
        assert (await client.call("GET", f"/devices/{v.did}/svc")).data["did"] == v.did
        await client.call("GET", f"/orders/{v.oid}/payment")
        await client.call("GET", f"/agents/{a.dealer_id}/commissions")
        await client.call("GET", f"/technicians/{v.tech_id}")
        await client.call("GET", f"/users/{v.member.uid}/wallet")
    for path in (f"/orders/{v.oid}", f"/tickets/{v.tid}", f"/users/{v.member.uid}/wallet"):
        await v.member.client.call("GET", path)
    assert (await v.tech.call("GET", f"/tickets/{v.tid}")).data["technician_id"] == v.tech_id
    assert [t["ticket_id"] for t in (await v.tech.call("GET", "/tickets")).data] == [v.tid]
    # A dealer sees nothing above it; a node is managed from above, not by itself.
    for path in (f"/agents/{a.agent_id}", f"/agents/{a.agent_id}/commissions"):
        await a.dealer.call("GET", path, expect=404)
    for query in ({"earner": f"agent:{a.agent_id}"}, {"earner": f"member:{v.member.uid}"}):
        await a.dealer.call("GET", "/commission", params=query, expect=404)
    for client, node in ((a.agent, a.agent_id), (a.agent, a.dealer_id)):
        await client.call("GET", f"/agents/{node}/commissions")
    for method, path, body in (
        ("PUT", f"/agents/{a.agent_id}/state", {"state": 0}),
        ("PUT", f"/agents/{a.agent_id}/pwd", {"pwd": md5("self")}),
        ("DELETE", f"/agents/{a.agent_id}", None),
    ):
        answer = await a.agent.call(method, path, body, expect=403)
        assert answer.code == "forbidden", answer
        await a.dealer.call(method, path, body, expect=403)  # dealers manage no node
    await a.agent.call("GET", "/auth/me")  # still in
    theirs = ids_of(w.other_a, w.sibling_id)
    await assert_as_unknown("agent A", a.agent, theirs, v.tech_id)
    await assert_as_unknown("dealer A", a.dealer, theirs, v.tech_id)
    await assert_as_unknown("technician A", v.tech, theirs, None)


# ----------------------------------------------------------------------------- bad input

HUGE = 2**70
LONG = "x" * 5000  # past every text field's bound, within the body limit
WRONG_VALUES: tuple[Any, ...] = (HUGE, -HUGE, 1.5, None, [], {"a": 1}, LONG, True)


def wrong_for(value: Any) -> list[Any]:
    """Values of another type than `value` (or past any bound) for a field holding it."""
    found = [bad for bad in WRONG_VALUES if type(bad) is not type(value)]
    if isinstance(value, int) and not isinstance(value, bool):
        found.append(str(value))  # "5" is not 5
    if isinstance(value, str):
        found.append(LONG)
    return found


async def test_bad_bodies_and_queries_answer_a_documented_4xx_never_a_500(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """Each recent endpoint, called by one entitled to it, with each field of a good body
    of another type, past its bounds or null, a required field missing, an unknown field, a
    body nested too deep or over the limit: 400, 413 or 422 with a code docs/api.md lists,
    and nothing changed."""
    w = await world(api, api_node, tenants)
    a, v = w.a, w.victim
    member, vendor, tech = v.member.client, a.vendor, v.tech
    # (caller, method, path, a good body, its required fields)
    endpoints: list[tuple[ApiClient, str, str, dict[str, Any], set[str]]] = [
        (
            member,
            "POST",
            f"/orders/{v.oid}/rental/end",
            {"device_id": v.did, "reason": "搬家"},
            {"device_id"},
        ),
        (
            member,
            "POST",
            "/orders/renewals",
            {"did": v.did, "package": "30d", "memo": ""},
            {"did", "package"},
        ),
        (member, "POST", "/tickets", {"type": 2, "device_id": v.did, "priority": 2}, {"type"}),
        (member, "POST", f"/orders/{v.oid}/status/return", {"reason": "不要了"}, {"reason"}),
        (member, "POST", f"/users/{v.member.uid}/wallet/topup", {"amount": 1000}, {"amount"}),
        (
            member,
            "POST",
            "/commission",
            {"amount": 100, "request_id": "r1"},
            {"amount", "request_id"},
        ),
        (
            member,
            "POST",
            f"/tickets/{v.tid}/rating",
            {"rate_value": 5, "rate_detail": ""},
            {"rate_value"},
        ),
        (member, "POST", f"/orders/{v.oid}/prepay/wallet", {}, set()),
        (member, "POST", f"/orders/{v.oid}/prepay/weixin", {}, set()),
        (member, "POST", f"/orders/{v.oid}/prepay/alipay", {}, set()),
        (member, "POST", f"/orders/{v.oid}/prepay/credit", {}, set()),
        (
            vendor,
            "POST",
            f"/tickets/{v.tid}/approve",
            {"check_result": True, "note": ""},
            {"check_result"},
        ),
        (vendor, "POST", f"/tickets/{v.tid}/dispatch", {"technician_id": v.tech_id}, set()),
        (tech, "POST", f"/tickets/{v.tid}/start", {"note": ""}, set()),
        (tech, "POST", f"/tickets/{v.tid}/complete", {"note": "", "filters": [1]}, set()),
        (vendor, "POST", f"/tickets/{v.tid}/cancel", {"note": "", "settled": False}, set()),
        (
            vendor,
            "PUT",
            f"/devices/{v.did}/svc",
            {"op": "top_up", "ml": 1000, "request_id": "r"},
            {"op"},
        ),
        (vendor, "PUT", f"/devices/{v.did}/svc", {"op": "extend", "days": 30}, {"op"}),
        (vendor, "PUT", f"/orders/{v.oid}/status/refund", {}, set()),
        (vendor, "POST", f"/orders/{v.oid}/status/refuse", {"reason": "不行"}, {"reason"}),
        (vendor, "PUT", f"/technicians/{v.tech_id}", {"name": "师傅", "skills": [1]}, set()),
        (vendor, "PUT", f"/agents/{a.dealer_id}", {"name": "网点"}, set()),
        (vendor, "PUT", f"/agents/{a.dealer_id}/state", {"state": 2}, {"state"}),
        (vendor, "PUT", f"/agents/{a.dealer_id}/pwd", {"pwd": md5("x")}, {"pwd"}),
        (
            a.agent,
            "POST",
            "/agents",
            {"name": "d2", "user": "d2-user", "pwd": md5("x")},
            {"user", "pwd", "name"},
        ),
        (
            vendor,
            "POST",
            "/technicians",
            {"user": "t2", "pwd": md5("x"), "name": "T2"},
            {"user", "pwd", "name"},
        ),
    ]
    before = await state_of(v)
    for client, method, path, good, required in endpoints:
        bodies: list[Any] = [{**good, "unknown_field": 1}, [], "text", 5, {"n": "x" * 70_000}]
        bodies.append(nested(40))
        bodies.extend({k: f for k, f in good.items() if k != name} for name in required)
        for name, value in good.items():
            bodies.extend({**good, name: bad} for bad in wrong_for(value))
        for body in bodies:
            got = await ask(client, method, path, body, None)
            where = (method, path, str(body)[:120], got)
            assert got.status in (400, 413, 422), where
            assert ERROR_CODES[got.code][0] == got.status, where
    queries = [
        (a.agent, f"/agents/{a.dealer_id}/commissions", {"since": "2026-13-01T00:00:00Z"}),
        (a.agent, f"/agents/{a.dealer_id}/commissions", {"limit": str(HUGE)}),
        (vendor, "/commission", {"earner": "agent:99999999999"}),
        (vendor, "/commission/summary", {"earner": "member:x"}),
        (vendor, "/commission/withdrawals", {"state": "9"}),
        (vendor, "/tickets", {"technician_id": str(HUGE)}),
        (vendor, "/tickets", {"device_id": "../../etc"}),
        (vendor, "/technicians", {"agent_id": str(-HUGE)}),
        (vendor, "/agents", {"parent": "1.5"}),
        (vendor, "/tickets/exchanges/stuck", {"limit": "0"}),
        (vendor, "/tickets/exchanges/stuck", {"hours": str(HUGE)}),
        (vendor, "/orders", {"device": "x" * 5000}),
        (member, "/orders", {"uid": w.theirs.member.uid}),
    ]
    for client, path, query in queries:
        got = await ask(client, "GET", path, None, query)
        assert got.status in (404, 422), (path, query, got)
        assert ERROR_CODES[got.code][0] == got.status, (path, query, got)
    # An idempotency key past its bound is refused before anything is ordered.
    headers = {"Authorization": f"Bearer {member.token}", "Idempotency-Key": "k" * 1000}
    async with member.session.post(
        f"{member.base}/api/v1/orders/renewals",
        json={"did": v.did, "package": "30d"},
        headers=headers,
    ) as response:
        assert response.status == 422, await response.text()
        assert (await response.json())["code"] == "validation_failed"
    # Ids in paths that cannot exist answer as unknown ones (docs/api.md): 404, never a 500.
    for client, method, path in (
        (vendor, "GET", f"/technicians/{HUGE}"),
        (vendor, "PUT", "/technicians/0"),
        (vendor, "GET", f"/agents/{2**31}/commissions"),
        (vendor, "PUT", f"/agents/{-HUGE}/state"),
        (vendor, "GET", f"/tickets/{v.tid.lower()}"),
        (vendor, "POST", f"/tickets/{v.tid}0/complete"),
        (vendor, "GET", f"/orders/{v.oid[:-1]}/payment"),
        (member, "POST", f"/orders/{v.oid}%00/rental/end"),
        (member, "POST", f"/orders/{v.oid}x/prepay/wallet"),
        (vendor, "PUT", f"/devices/{v.did.lower()}/svc"),
    ):
        got = await ask(client, method, path, {"state": 0}, None)
        assert (got.status, got.code) == (404, "not_found"), (method, path, got)
    assert await state_of(v) == before


def nested(depth: int) -> Any:
    body: Any = 1
    for _ in range(depth):
        body = {"a": body}
    return body


async def test_ids_named_in_bodies_and_lists_stay_in_the_callers_scope(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A caller acting on its own resource names another's in the body: answered as an
    unknown id (404); a member the device is shared with uses it and nothing more; no list
    or summary of another tenant or node names the victim's records."""
    w = await world(api, api_node, tenants)
    a, b, v = w.a, w.b, w.victim
    before = await state_of(v)
    mine = w.neighbour
    (spare,) = await register(api, a.vid, 1)
    await Device.filter(did=spare).update(owner_id=mine.uid, agent_id=a.dealer_id)
    for client, method, path, body, field in (
        # A member's own order or request naming another member's device
        (mine.client, "POST", "/orders/renewals", {"did": v.did, "package": "30d"}, "did"),
        (mine.client, "POST", "/tickets", {"type": 2, "device_id": v.did}, "device_id"),
        (w.other_a.member.client, "POST", f"/orders/{w.other_a.oid}/rental/end",
         {"device_id": v.did}, "device_id"),
        # a node's own ticket dispatched to another node's or vendor's technician
        (a.dealer, "POST", f"/tickets/{v.tid}/dispatch", {"technician_id": w.other_a.tech_id},
         "technician_id"),
        (a.vendor, "POST", f"/tickets/{v.tid}/dispatch", {"technician_id": w.theirs.tech_id},
         "technician_id"),
        # tickets naming a member or device out of scope
        (a.dealer, "POST", "/tickets", {"type": 1, "user_id": w.other_a.member.uid}, "user_id"),
        (a.dealer, "POST", "/tickets", {"type": 4, "device_id": w.other_a.did}, "device_id"),
        (a.vendor, "POST", "/tickets", {"type": 4, "device_id": w.theirs.did}, "device_id"),
        # technicians and dealers placed under another node
        (a.dealer, "POST", "/technicians",
         {"user": "t-x", "pwd": md5("x"), "name": "X", "agent_id": w.sibling_id}, "agent_id"),
        (a.vendor, "POST", "/technicians",
         {"user": "t-y", "pwd": md5("x"), "name": "Y", "agent_id": b.agent_id}, "agent_id"),
        (a.vendor, "POST", "/agents",
         {"user": "d-y", "pwd": md5("x"), "name": "Y", "parent": b.agent_id}, "parent"),
    ):  # fmt: skip
        unknown = UNKNOWN_INT if isinstance(body[field], int) else None
        if unknown is None:
            unknown = UNKNOWN_DID if "device" in field or field == "did" else UNKNOWN_UID
        got = await ask(client, method, path, body, None)
        expected = await ask(client, method, path, {**body, field: unknown}, None)
        where = (method, path, body, got, expected)
        assert (got.status, got.code) == (expected.status, expected.code) == (404, "not_found"), (
            where
        )
        assert got.body["message"].replace(str(body[field]), "<id>") == expected.body[
            "message"
        ].replace(str(unknown), "<id>"), where
    assert await state_of(v) == before

    # A member the device is shared with uses it: it ends, renews, exchanges nothing.
    await v.member.client.call("POST", f"/devices/{v.did}/shares", {"uid": mine.uid}, expect=201)
    await mine.client.call("GET", f"/devices/{v.did}/svc")
    for path, body in (
        ("/orders/renewals", {"did": v.did, "package": "30d"}),
        ("/tickets", {"type": 2, "device_id": v.did}),
        ("/tickets", {"type": 3, "device_id": v.did}),
    ):
        got = await ask(mine.client, "POST", path, body, None)
        assert got.status == 409 and got.code in ("device_bound", "conflict"), (path, got)
    for path in (f"/orders/{v.oid}", f"/tickets/{v.tid}", f"/orders/{v.oid}/payment"):
        await mine.client.call("GET", path, expect=404)
    await mine.client.call("POST", f"/orders/{v.oid}/rental/end", {"device_id": v.did}, expect=404)
    assert (await mine.client.call("GET", "/tickets", params={"device_id": v.did})).data == []
    assert (await mine.client.call("GET", "/orders", params={"device": v.did})).data == []
    assert await state_of(v) == before

    # Lists and summaries: nothing of the victim outside its scope.
    secrets = (v.oid, v.tid, v.did, v.member.uid)
    lists = ("/orders", "/tickets", "/tickets/summary", "/tickets/exchanges/stuck",
             "/technicians", "/agents", "/commission", "/commission/withdrawals",
             "/commission/summary", "/devices", "/users")  # fmt: skip
    outsiders = (b.vendor, b.agent, b.dealer, w.theirs.tech, w.sibling, w.other_a.tech)
    for client in outsiders:
        for path in lists:
            got = await ask(client, "GET", path, None, None)
            assert got.status in (200, 403), (path, got)
            text = repr(got.body)
            assert not any(s in text for s in secrets), (path, got)
            assert f"'id': {a.dealer_id}," not in text or path not in ("/agents",), (path, got)
    for client in (w.theirs.member.client, mine.client, w.other_a.member.client):
        for path in ("/orders", "/tickets", "/tickets/summary", "/commission"):
            got = await ask(client, "GET", path, None, None)
            assert not any(s in repr(got.body) for s in (v.oid, v.tid)), (path, got)
    summary = (await b.vendor.call("GET", "/tickets/summary")).data
    assert summary["open"] == 1, summary  # B's own one ticket, not A's


async def test_a_members_exchange_names_no_other_members_rental_end(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    """A member asked 退租 and unbound its device; another member bound it. Its exchange of the
    device is refused (409 rental_ending) without naming the first member's 退租 ticket, which
    it may neither read nor cancel (it answered that ticket's id and status, and told it to
    cancel it)."""
    a, _b = tenants
    v = await holding(api, api_node, a, a.dealer, a.dealer_id, "victim")
    ended = await v.member.client.call("POST", f"/orders/{v.oid}/rental/end", {"device_id": v.did})
    end_tid = ended.data["ticket_id"]
    await v.member.client.call("DELETE", f"/devices/{v.did}/bind")
    later = await make_member(api_node, api, a.vid)
    await later.client.call("POST", f"/devices/{v.did}/bind", {})
    await later.client.call("GET", f"/tickets/{end_tid}", expect=404)
    answer = await later.client.call(
        "POST", "/tickets", {"type": 2, "device_id": v.did}, expect=409
    )
    assert answer.code == "rental_ending" and answer.body["data"] is None, answer
    assert end_tid not in answer.body["message"], answer
    assert not await Ticket.filter(device_id=v.did, type=2).exists()
    # The vendor, who sees the 退租, is still told which one it is.
    answer = await a.vendor.call("POST", "/tickets", {"type": 2, "device_id": v.did}, expect=409)
    assert answer.body["data"]["ticket_id"] == end_tid, answer
