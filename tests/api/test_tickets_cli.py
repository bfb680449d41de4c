"""`aquafleet tickets` from a shell, against the database a running node serves (SQLite and
PostgreSQL): the queue per vendor with the overdue flagged by `ticket_sla`, `--check` for a
cron job's alert, one ticket with its moves, and the counts AE-02 gives."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from aquafleet.models.tickets import Ticket
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import make_member
from tests.api.test_tickets_api import held_device
from tests.conftest import MASTER_SECRET
from tests.platform.test_cli import aquafleet, clean_env


async def test_the_ticket_queue_from_the_shell(
    api: ApiClient,
    api_node: Any,
    tenants: tuple[Tenant, Tenant],
    database_url: str,
    tmp_path: Path,
) -> None:
    a, b = tenants
    shopper = await make_member(api_node, api, a.vid)
    did = await held_device(api, shopper, a.vid)
    fault = (
        await a.vendor.call("POST", "/tickets", {"type": 4, "device_id": did, "detail": "漏水"})
    ).data["ticket_id"]
    upkeep = (await a.vendor.call("POST", "/tickets", {"type": 5, "device_id": did})).data[
        "ticket_id"
    ]
    await a.vendor.call("POST", f"/tickets/{upkeep}/approve", {"check_result": True, "note": "ok"})
    other_shopper = await make_member(api_node, api, b.vid)
    other_did = await held_device(api, other_shopper, b.vid)
    theirs = (await b.vendor.call("POST", "/tickets", {"type": 4, "device_id": other_did})).data[
        "ticket_id"
    ]
    env = clean_env(
        data_dir=tmp_path / "data",
        master_secret=MASTER_SECRET,
        database_url=database_url,
        ticket_sla="fault=24",
    )

    # Nothing is late yet: --check passes; a vendor sees its own tickets only.
    code, out = await aquafleet(env, "tickets", "list", "--vid", a.vid, "--json")
    assert code == 0, out
    listed = json.loads(out)
    assert [t["ticket_id"] for t in listed] == [upkeep, fault]
    assert [t["status"] for t in listed] == ["approved", "created"]
    assert not any(t["overdue"] for t in listed)
    code, out = await aquafleet(env, "tickets", "list", "--overdue", "--check")
    assert (code, out.strip()) == (0, "no tickets"), out

    # The fault opened 25 h ago is past its 24 h SLA: flagged, and --check exits 1.
    now = dt.datetime.now(dt.UTC)
    await Ticket.filter(ticket_id=fault).update(created_at=now - dt.timedelta(hours=25))
    code, out = await aquafleet(env, "tickets", "list", "--overdue", "--check")
    assert code == 1, out
    assert fault in out and "OVERDUE" in out
    assert upkeep not in out and theirs not in out
    code, out = await aquafleet(env, "tickets", "list", "--type", "fault", "--json")
    assert code == 0, out
    assert {t["ticket_id"]: t["overdue"] for t in json.loads(out)} == {fault: True, theirs: False}
    code, out = await aquafleet(env, "tickets", "list", "--status", "nonsense")
    assert code == 2 and "not a ticket state" in out

    # One ticket with its moves, who made them and the note.
    code, out = await aquafleet(env, "tickets", "show", upkeep)
    assert code == 0, out
    assert "approve: created -> approved" in out and ": ok" in out
    code, out = await aquafleet(env, "tickets", "show", "T-NOT-THERE")
    assert code == 1 and "not found" in out

    # The counts, as AE-02 gives them to the vendor.
    code, out = await aquafleet(env, "tickets", "summary", "--vid", a.vid, "--json")
    assert code == 0, out
    counts = json.loads(out)
    api_counts = (await a.vendor.call("GET", "/tickets/summary")).data
    assert (counts["open"], counts["overdue"]) == (api_counts["open"], 1) == (2, 1)
    assert counts["by_status"] == {"created": 1, "approved": 1}
    assert counts["overdue_by_type"] == {"fault": 1}
    code, out = await aquafleet(env, "tickets", "summary")
    assert code == 0 and "all vendors: 3 open, 1 overdue" in out, out
