"""`aquafleet service` as an operator uses it: against a running node's Redis and database."""

from __future__ import annotations

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

    code, out = await aquafleet(env, "service", "top-up", dev.did, "--ml", "1000")
    assert code == 0, out
    _, unlocked = await next_state(device)
    assert not unlocked.locked and unlocked.remaining_ml == 850

    code, out = await aquafleet(env, "service", "top-up", "TEST000000999999", "--ml", "5")
    assert code == 1 and "not_found" in out
    code, out = await aquafleet(env, "service", "show", dev.did)
    assert code == 0 and "remaining_ml=850" in out


async def test_billing_close_period_from_the_shell(tmp_path: Path, migrated_sqlite):
    import json

    env = clean_env(
        data_dir=tmp_path / "data", master_secret=MASTER_SECRET,
        database_url=migrated_sqlite(tmp_path / "billing.sqlite3"),
    )  # fmt: skip
    code, out = await aquafleet(env, "billing", "close-period", "2026-10")
    assert code == 0, out
    summary = json.loads(out[out.index("{") :])
    assert summary["period_start"].startswith("2026-10-01")
    code, out = await aquafleet(env, "billing", "close-period", "2026-13")
    assert code == 2 and "invalid_input" in out
