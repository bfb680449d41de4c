"""`aquafleet service` as an operator uses it: against a running node's Redis and database."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import MASTER_SECRET, REDIS_URL, TEST_SHARDS
from tests.devices import register_devices
from tests.metering.test_volume_rental import next_state
from tests.platform.test_cli import aquafleet, clean_env


async def test_top_up_from_the_shell_unlocks_an_online_device(
    node_factory, device_factory, tmp_path: Path, migrated_sqlite
):
    database = migrated_sqlite(tmp_path / "svc.sqlite3")
    node = await node_factory(database_url=database)
    (dev,) = await register_devices(node, 1)
    env = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=database,
        redis_url=REDIS_URL, redis_prefix=node.settings.redis_prefix, redis_shards=TEST_SHARDS,
    )  # fmt: skip
    code, out = await aquafleet(
        env, "service", "configure", dev.did, "--mode", "3", "--remaining-ml", "100",
        "--actor", "ops:lee", "--reason", "trial",
    )  # fmt: skip
    assert code == 0, out
    device = device_factory(dev.did, dev.key, node.tcp_port)
    logged_in = await device.login()
    assert logged_in.desired.remaining_ml == 100
    from tests.devices import telemetry

    await device.send(telemetry(1, int(time.time()), 250))
    _, locked = await next_state(device)
    assert locked.locked and locked.remaining_ml == -150

    code, out = await aquafleet(
        env, "service", "top-up", dev.did, "--ml", "1000", "--request-id", "D20261206TEST0001"
    )
    assert code == 0, out
    assert out == f"{dev.did}: topped up 1000 ml; remaining 850 ml, not locked\n"
    _, unlocked = await next_state(device)
    assert not unlocked.locked and unlocked.remaining_ml == 850
    # The same order again (a retry): nothing changes, and the operator is told so.
    code, out = await aquafleet(
        env, "service", "top-up", dev.did, "--ml", "1000", "--request-id", "D20261206TEST0001"
    )
    assert code == 0, out
    assert "already applied (request id D20261206TEST0001): nothing changed" in out
    assert "remaining 850 ml" in out

    code, out = await aquafleet(env, "service", "top-up", "TEST000000999999", "--ml", "5")
    assert code == 1 and "not_found" in out
    code, out = await aquafleet(
        env, "service", "lock", dev.did, "--actor", "ops:lee", "--reason", "unpaid invoice"
    )
    assert code == 0 and f"{dev.did}: locked; remaining 850 ml, locked (manual)" in out, out
    code, out = await aquafleet(env, "service", "show", dev.did)
    assert code == 0, out
    assert "ChangeOutcome" not in out and "ServiceState" not in out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "mode: 3 volume rental" in lines and "remaining: 850 ml" in lines
    locked = next(line for line in lines if line.startswith("locked:"))
    assert locked.startswith("locked: yes: manual (by ops:lee at 20")
    assert locked.endswith("Z: unpaid invoice)")
    code, out = await aquafleet(env, "service", "show", dev.did, "--json")
    (shown,) = json.loads(out)
    assert shown["remaining_ml"] == 850
    assert [(x["kind"], x["by"], x["reason"]) for x in shown["locks"]] == [
        ("manual", "ops:lee", "unpaid invoice")
    ]
    # The history: who did what, and the meter's lock when the quota ran out.
    assert [c["op"] for c in shown["history"]] == ["lock", "topup", "quota_lock", "configure"]
    assert shown["history"][1]["request_id"] == "D20261206TEST0001"
    assert shown["history"][2]["actor"] == "meter"


async def test_billing_plans_from_the_shell_and_why_a_period_billed_nothing(
    tmp_path: Path, migrated_sqlite
):
    env = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET,
        database_url=migrated_sqlite(tmp_path / "billing.sqlite3"),
    )  # fmt: skip
    code, out = await aquafleet(env, "billing", "close-period", "2026-10")
    assert code == 0, out
    assert "devices billed: 0" in " ".join(out.split())
    assert "note: no billing plan exists" in out
    code, out = await aquafleet(env, "billing", "close-period", "2026-13")
    assert code == 2 and "invalid_input" in out

    await aquafleet(env, "vendors", "add", "BILL", "--name", "Billing")
    code, out = await aquafleet(
        env, "devices", "register", "--vendor", "BILL", "--count", "2",
        "--out", str(tmp_path / "devices.csv"),
    )  # fmt: skip
    assert code == 0, out
    code, out = await aquafleet(
        env, "billing", "plans", "add", "--vendor", "BILL", "--name", "Basic",
        "--mode", "postpaid", "--minimum-fen", "1000", "--price-fen", "50", "--json",
    )  # fmt: skip
    assert code == 0, out
    plan = json.loads(out)
    assert plan["mode"] == "postpaid" and plan["price_unit_ml"] == 1000
    code, out = await aquafleet(
        env, "billing", "assign", str(plan["id"]), "--from", str(tmp_path / "devices.csv"),
        "--since", "2026-09-01T00:00:00Z",
    )  # fmt: skip
    assert code == 0 and f"2 of 2 devices billed on plan {plan['id']}" in out, out
    code, out = await aquafleet(env, "billing", "close-period", "2026-09", "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["period_start"] == "2026-09-01T00:00:00Z"
    assert summary["devices"] == 2 and summary["amount_due_fen"] == 2000  # the minimum each
    assert summary["note"].startswith("no water was metered in the period")
    # October was closed before any plan existed: a second run bills it now, and says nothing.
    code, out = await aquafleet(env, "billing", "close-period", "2026-10", "--json")
    assert json.loads(out)["devices"] == 2
