"""An exchange left half done longer than the live store keeps its markers (a week), on SQLite
and PostgreSQL with a real Redis: the ticket's row recorded the hand-over, so a late retry or
cancel is refused (409 handover_expired) instead of handing the quota over twice or giving
back nothing, the operator settles by hand and cancels with `settled`; and operators list the
exchanges stuck after their hand-over, a vendor its own (REST and `aquafleet tickets
stuck-exchanges`)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from aquafleet.gateway.appkeys import DEVICE_GATEWAY, SERVICE_STORE
from aquafleet.models.devices import Device
from aquafleet.models.handover import MARKER_TTL_S
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.ticket_work import cancel, complete
from aquafleet.models.tickets import OPEN_STATES, Ticket, TicketState
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import make_member
from tests.api.test_ticket_work_api import (
    CancelFailsHalfWay,
    Work,
    exchange_failed_after_the_hand_over,
    exchange_ticket,
    member_device_that_poured_300_of_1000_ml,
)
from tests.api.test_tickets_api import held_device, register
from tests.conftest import MASTER_SECRET
from tests.platform.test_cli import aquafleet, clean_env

LUA = Path(__file__).parents[2] / "gateway" / "lua" / "service.lua"


async def markers_expire(api_node: Any, tid: str, *dids: str) -> None:
    """A week and more passes: the exchange's markers are gone from Redis, the row says when
    the hand-over was recorded (eight days ago)."""
    store = api_node.app[SERVICE_STORE]
    keys = [
        store.keyspace.service_request(did, rid) for did in dids for rid in (tid, f"{tid}:lock")
    ]
    await store.client.delete(*keys)
    aged = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
    await Ticket.filter(ticket_id=tid).update(handed_over_at=aged)


def test_the_marker_ttl_is_the_one_service_lua_sets() -> None:
    assert f"'EX', {MARKER_TTL_S})" in LUA.read_text()


async def test_a_completion_retried_after_the_markers_expired_moves_nothing(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The hand-over of 700 ml to `first` is on the row; its markers expired. A retry with
    `first` is refused (a second hand-over would configure `first` with the 0 the old device
    holds now: the 700 lost), one with another device too; nothing moves."""
    a, _ = tenants
    tid, old, first, second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    ticket = await Ticket.get(ticket_id=tid)
    assert ticket.handed_over_to == first and ticket.handed_over_at is not None
    shown = (await a.vendor.call("GET", f"/tickets/{tid}")).data  # the operator sees it too
    assert shown["handed_over_to"] == first and shown["handed_over_tms"] is not None
    gateway = api_node.app[DEVICE_GATEWAY]
    await markers_expire(api_node, tid, old, first)

    for new_device, code in ((first, "handover_expired"), (second, "handed_over_elsewhere")):
        refused = await a.vendor.call(
            "POST", f"/tickets/{tid}/complete", {"new_device": new_device}, expect=409
        )
        assert refused.code == code
    message = (
        await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": first}, expect=409)
    ).body["message"]
    assert first in message and old in message and "settled=true" in message
    assert (await gateway.read_service(first)).remaining_ml == 700
    assert (await gateway.read_service(old)).remaining_ml == 0
    assert (await gateway.read_service(second)).mode is None
    assert (await Device.get(did=first)).owner_id is None
    assert (await Ticket.get(ticket_id=tid)).state in OPEN_STATES


async def test_a_cancel_after_the_markers_expired_is_refused_until_settled_by_hand(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """A cancel whose hand-over markers expired would find "nothing handed over" and leave the
    700 ml on the unbound `first`: it is refused, moving nothing. The operator gives the old
    device its quota back and empties `first` by hand, then cancels with `settled`: closed,
    devices untouched, the move says so."""
    a, _ = tenants
    tid, old, first, _second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    await markers_expire(api_node, tid, old, first)

    refused = await a.vendor.call("POST", f"/tickets/{tid}/cancel", {}, expect=409)
    assert refused.code == "handover_expired"
    assert (await gateway.read_service(first)).remaining_ml == 700
    assert (await gateway.read_service(old)).remaining_ml == 0
    assert (await Ticket.get(ticket_id=tid)).state in OPEN_STATES

    by_hand = [(old, 700), (first, 0)]
    for did, ml in by_hand:
        change = ServiceChangeRequest(op="configure", mode=3, remaining_ml=ml, reason="settled")
        await gateway.change_service(did, change, actor="operator")
    done = await a.vendor.call("POST", f"/tickets/{tid}/cancel", {"settled": True})
    assert done.data["status"] == 7
    assert (await gateway.read_service(old)).remaining_ml == 700
    assert (await gateway.read_service(first)).remaining_ml == 0
    moves = (await a.vendor.call("GET", f"/tickets/{tid}/moves")).data
    assert f"hand-over to {first} settled by hand" in moves[-1]["note"]


async def test_a_cancel_failed_half_way_and_retried_after_the_markers_expired_is_refused(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The cancel took the 700 ml off `first` and failed before crediting the old device; a
    week later its retry must not answer "nothing handed over" and close the ticket with the
    700 ml on neither device: refused, the row still open, to be settled by hand."""
    a, _ = tenants
    tid, old, first, _second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    gateway = api_node.app[DEVICE_GATEWAY]
    vendor = Principal(Role.VENDOR, "canceller", vendor_code=a.vid)
    failing = CancelFailsHalfWay(gateway, api_node.app[SERVICE_STORE])
    with pytest.raises(RuntimeError, match="injected"):
        await cancel(await Ticket.get(ticket_id=tid), vendor, failing)
    assert (await gateway.read_service(first)).remaining_ml == 0  # taken back, not credited
    await markers_expire(api_node, tid, old)  # the recipient's take-back marker may live on

    refused = await a.vendor.call("POST", f"/tickets/{tid}/cancel", {}, expect=409)
    assert refused.code == "handover_expired"
    assert (await Ticket.get(ticket_id=tid)).state in OPEN_STATES
    assert (await gateway.read_service(old)).remaining_ml == 0


async def test_a_hand_back_keeps_the_hand_over_markers_ttl(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """A cancel's first step rewrites the hand-over's marker without renewing its life, so it
    never outlives the recipient's configure marker that the take-back reads (a configure
    marker gone while the hand-over's lives would read as "never configured": given back
    twice)."""
    a, _ = tenants
    tid, old, first, _second = await exchange_failed_after_the_hand_over(
        api, api_node, a, device_factory
    )
    store = api_node.app[SERVICE_STORE]
    marker = store.keyspace.service_request(old, tid)
    assert 0 < await store.client.ttl(marker) <= MARKER_TTL_S
    await store.client.expire(marker, 600)
    begun = await store.hand_back(old, request_id=tid, phase="begin")
    assert begun.received_by == first
    assert 0 < await store.client.ttl(marker) <= 600


async def test_a_retry_within_the_markers_life_after_a_failure_before_the_hand_over_completes(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], device_factory: Any
):
    """The row recorded the hand-over, the live store never did it (the completion failed in
    between): within the markers' life the retry is no refusal, it hands the 700 ml over once."""
    a, _ = tenants
    shopper, old = await member_device_that_poured_300_of_1000_ml(api, api_node, a, device_factory)
    gateway = api_node.app[DEVICE_GATEWAY]
    (new,) = await register(api, a.vid, 1)
    tid = await exchange_ticket(api, a.vendor, shopper, old)

    class FailsBeforeTheHandOver(Work):
        async def hand_over(self, *args: Any, **options: Any) -> Any:
            raise RuntimeError("injected failure before the hand-over")

    vendor = Principal(Role.VENDOR, "exchanger", vendor_code=a.vid)
    with pytest.raises(RuntimeError, match="injected"):
        await complete(
            await Ticket.get(ticket_id=tid), vendor, FailsBeforeTheHandOver(gateway),
            new_device=new,
        )  # fmt: skip
    assert (await Ticket.get(ticket_id=tid)).handed_over_to == new
    assert (await gateway.read_service(old)).remaining_ml == 700

    done = await a.vendor.call("POST", f"/tickets/{tid}/complete", {"new_device": new})
    assert done.data["status"] == 6
    assert (await gateway.read_service(new)).remaining_ml == 700
    assert (await gateway.read_service(old)).remaining_ml == 0


async def stuck_exchange(api: ApiClient, api_node: Any, tenant: Tenant, hours: int) -> str:
    """An exchange ticket of `tenant` whose hand-over the row recorded `hours` ago."""
    shopper = await make_member(api_node, api, tenant.vid)
    old = await held_device(api, shopper, tenant.vid)
    (new,) = await register(api, tenant.vid, 1)
    opened = await shopper.client.call(
        "POST", "/tickets", {"type": 2, "device_id": old, "detail": "换机"}, expect=201
    )
    tid = str(opened.data["ticket_id"])
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    await Ticket.filter(ticket_id=tid).update(handed_over_to=new, handed_over_at=at)
    return tid


async def test_operators_list_the_exchanges_stuck_after_their_hand_over(
    api: ApiClient,
    api_node: Any,
    tenants: tuple[Tenant, Tenant],
    database_url: str,
    tmp_path: Path,
):
    """Handed over 30 h and 9 days ago and still open: listed for 24 h, oldest first, the
    older flagged as past its markers; one handed over 2 h ago, one done and one cancelled
    are not; a vendor sees its own, the platform every vendor's, in REST and in the shell."""
    a, b = tenants
    late = await stuck_exchange(api, api_node, a, 30)
    oldest = await stuck_exchange(api, api_node, a, 9 * 24)
    fresh = await stuck_exchange(api, api_node, a, 2)
    finished = await stuck_exchange(api, api_node, a, 48)
    await Ticket.filter(ticket_id=finished).update(state=TicketState.DONE)
    dropped = await stuck_exchange(api, api_node, a, 48)
    await Ticket.filter(ticket_id=dropped).update(state=TicketState.CANCELLED)
    theirs = await stuck_exchange(api, api_node, b, 30)

    found = await a.vendor.call("GET", "/tickets/exchanges/stuck", params={"hours": 24})
    assert [t["ticket_id"] for t in found.data] == [oldest, late]
    assert found.body["total"] == 2
    assert [t["markers_expired"] for t in found.data] == [True, False]
    assert found.data[1]["handed_over_to"] == (await Ticket.get(ticket_id=late)).handed_over_to
    assert [t["ticket_id"] for t in (await b.vendor.call(
        "GET", "/tickets/exchanges/stuck", params={"hours": 24})).data] == [theirs]  # fmt: skip
    everyone = await api.call("GET", "/tickets/exchanges/stuck", params={"hours": 1})
    assert {t["ticket_id"] for t in everyone.data} == {oldest, late, fresh, theirs}
    await a.vendor.call("GET", "/tickets/exchanges/stuck", params={"hours": -1}, expect=422)

    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET,
                    database_url=database_url)  # fmt: skip
    code, out = await aquafleet(
        env, "tickets", "stuck-exchanges", "--vid", a.vid, "--check", "--json"
    )
    assert code == 1, out
    listed = json.loads(out)
    assert [t["ticket_id"] for t in listed] == [oldest, late]
    assert [t["markers_expired"] for t in listed] == [True, False]
    code, out = await aquafleet(env, "tickets", "stuck-exchanges", "--vid", b.vid)
    assert code == 0 and theirs in out and late not in out, out
    code, out = await aquafleet(env, "tickets", "stuck-exchanges", "--hours", "1000", "--check")
    assert code == 0 and "no exchange stuck" in out, out
