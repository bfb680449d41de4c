"""A Redis Cluster master is killed (kill -9) while devices pour: its replica takes over, the
devices resend what was not acked, and the ledger holds every millilitre once.

The promise under test (docs/deploy.md, "What an ack promises"): with `redis_ack_replicas=1`
a metering round is acked only once a replica holds it (WAIT once per round and master), and
the ledger writer commits only entries a replica holds. So nothing acked, and nothing written
to the database, vanishes with the dead master. The price: while a master has no replica (the
promoted one, until the dead node rejoins), its slots' rounds are not acked; devices wait and
resend."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from aquafleet.gateway.appkeys import KEYSPACE
from aquafleet.models.usage import UsageRecord, metered_ml_by_device
from tests.devices import TestDevice, register_devices
from tests.gateway.test_exactly_once import PouringDevice
from tests.redis_cluster import redis_cluster, redis_server_missing

POUR_AFTER_S = 3.0
KILL_AFTER_S = 2.0
FAILOVER_TIMEOUT_S = 60.0  # a bound on waiting, not a figure: a loaded machine is slow


@pytest.fixture
def own_cluster(tmp_path: Path) -> Any:
    """A cluster of this test's own: it loses a master."""
    missing = redis_server_missing()
    if missing is not None:
        pytest.skip(f"no Redis Cluster: {missing}")
    with redis_cluster(tmp_path / "redis-cluster") as cluster:
        yield cluster


@pytest.mark.slow
async def test_a_master_killed_while_devices_pour_loses_nothing_and_doubles_nothing(
    own_cluster: Any, make_settings: Any, device_factory: Any
) -> None:
    from tests.conftest import run_node

    settings = make_settings(
        redis_url=own_cluster.url, redis_ack_replicas=1, redis_ack_timeout_ms=500,
        ledger_claim_idle_s=5,
    )  # fmt: skip
    async with run_node(settings) as node:
        registered = await register_devices(node, 12)
        keyspace = node.app[KEYSPACE]
        devices = [PouringDevice(r.did, r.key) for r in registered]
        victim = own_cluster.master_of(keyspace.meter(devices[0].did))
        on_victim = [d for d in devices if own_cluster.master_of(keyspace.meter(d.did)) == victim]
        made: list[TestDevice] = []
        ports = {"current": node.tcp_port}
        pour_until = time.monotonic() + 60  # until the failover is over (stop_pouring_at)
        runs = [asyncio.create_task(d.run(ports, pour_until, made)) for d in devices]
        try:
            await asyncio.sleep(KILL_AFTER_S)
            before = {d.did: d.rec for d in on_victim}
            own_cluster.kill(victim)
            # The replica is promoted once the others judge the master failed (node timeout).
            await asyncio.to_thread(
                own_cluster.wait_failover, victim, time.monotonic() + FAILOVER_TIMEOUT_S
            )
            # Its slots' new master has no replica: rounds there wait (unacked) until the
            # killed node, restarted as a supervisor would, rejoins as its replica.
            successor = own_cluster.master_of(keyspace.meter(devices[0].did))
            own_cluster.restart(victim)
            deadline = time.monotonic() + FAILOVER_TIMEOUT_S
            while own_cluster.replicas_of(successor) < 1:
                assert time.monotonic() < deadline, "the restarted node never rejoined"
                await asyncio.sleep(0.2)
            for d in devices:  # pour on a while after it, then drain
                d.stop_pouring_at = time.monotonic() + POUR_AFTER_S
            await asyncio.wait_for(asyncio.gather(*runs), 90)
        finally:
            for run in runs:
                run.cancel()
            for device in made:
                await device.close()
        # The devices on the dead master's slots poured on after the failover.
        assert all(d.rec > before[d.did] for d in on_victim)
        assert all(d.reconnects >= 1 for d in on_victim)

        dids = [d.did for d in devices]
        expected = {d.did: d.total_ml for d in devices}
        deadline = time.monotonic() + 30
        metered: dict[str, int] = {}
        while time.monotonic() < deadline:
            metered = await metered_ml_by_device(dids)
            if metered == expected:
                break
            await asyncio.sleep(0.3)
        assert metered == expected  # 0 ml lost, 0 ml doubled
        for d in devices:
            assert await UsageRecord.filter(did=d.did).count() == d.rec  # each record once
