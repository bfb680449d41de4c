"""Time rental end to end: expiry locks within a second, reminders, grace and the dismantle
ticket, renewal by a package, and one scheduler owner among several nodes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aquafleet.gateway.appkeys import RENTAL_SCHEDULER, SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.service import RENT_PACKAGES, ServiceChange, ServiceMode
from aquafleet.models.tickets import Ticket, TicketType
from tests.devices import register_devices
from tests.metering.test_volume_rental import ACTOR, eventually, next_state


async def rental_device(node: Any, device_factory: Any, expires_at: int):
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    await service.configure(
        store, dev.did, ServiceMode.TIME_RENTAL, rental_expires_at=expires_at, actor=ACTOR
    )
    return dev, store, device_factory(dev.did, dev.key, node.tcp_port)


async def test_expiry_locks_an_online_device_within_a_second(node_factory, device_factory):
    node = await node_factory()
    expires_at = int(time.time()) + 2
    dev, store, device = await rental_device(node, device_factory, expires_at)
    logged_in = await device.login()
    assert logged_in.desired.rental_expires_at == expires_at and not logged_in.desired.locked

    _, desired = await next_state(device, timeout=6.0)
    locked_at = time.time()
    assert desired.locked and desired.rental_expires_at == expires_at
    assert expires_at <= locked_at < expires_at + 1.0
    assert (await store.read(dev.did)).lock_reasons == ["rental_expired"]
    assert node.metrics.rental_locks == 1


async def test_an_expired_rental_renewed_by_a_package_unlocks(node_factory, device_factory):
    node = await node_factory()
    dev, store, device = await rental_device(node, device_factory, int(time.time()) - 10)
    logged_in = await device.login()
    assert logged_in.desired.locked  # expired before it was even set: locked at once

    before = int(time.time())
    outcome = await service.extend_rental(
        store, dev.did, package="30d", actor=ACTOR, reason="order D20261129TEST0003"
    )
    assert not outcome.locked
    # Counted from now, not from the lapsed expiry.
    assert before + RENT_PACKAGES["30d"] * 86_400 <= outcome.rental_expires_at
    assert outcome.rental_expires_at <= int(time.time()) + RENT_PACKAGES["30d"] * 86_400
    _, desired = await next_state(device)
    assert not desired.locked and desired.rental_expires_at == outcome.rental_expires_at

    again = await service.extend_rental(store, dev.did, days=10, actor=ACTOR)
    assert again.rental_expires_at == outcome.rental_expires_at + 10 * 86_400  # from the expiry


async def test_reminder_then_dismantle_ticket_once_after_the_grace(node_factory, device_factory):
    node = await node_factory(rental_reminder_days=1, rental_grace_days=0)
    expires_at = int(time.time()) + 2
    dev, _store, _device = await rental_device(node, device_factory, expires_at)

    reminders = await eventually(
        lambda: ServiceChange.filter(did=dev.did, op="rental_reminder").all()
    )
    assert [r.rental_expires_at for r in reminders] == [expires_at]

    tickets = await eventually(
        lambda: Ticket.filter(device_id=dev.did, type=TicketType.DISMANTLE).all(), timeout=8.0
    )
    assert len(tickets) == 1
    scheduler = node.app[RENTAL_SCHEDULER]
    await scheduler.tick(time.time())  # a repeated pass opens nothing more
    await full_passes(node, 1)  # nor does the node's own next pass
    assert await Ticket.filter(device_id=dev.did, type=TicketType.DISMANTLE).count() == 1
    assert await ServiceChange.filter(did=dev.did, op="rental_reminder").count() == 1


async def test_a_renewal_within_the_grace_opens_no_ticket(node_factory, device_factory):
    node = await node_factory(rental_grace_days=0)
    scheduler = node.app[RENTAL_SCHEDULER]
    scheduler.grace_s = 2  # the grace ends 2 s after the expiry (the setting counts days)
    expires_at = int(time.time()) + 1
    dev, store, _device = await rental_device(node, device_factory, expires_at)
    await eventually(lambda: _locked(store, dev.did))
    await service.extend_rental(store, dev.did, package="90d", actor=ACTOR)
    # The grace of the old expiry ends; then a whole pass of the scheduler begins after that.
    await asyncio.sleep(max(0.0, expires_at + scheduler.grace_s - time.time()))
    await full_passes(node, 1)
    assert node.metrics.rental_dismantle_tickets == 0
    assert await Ticket.filter(device_id=dev.did).count() == 0


async def full_passes(node: Any, count: int, timeout: float = 10.0) -> None:
    """Wait until the node's rental scheduler has made `count` whole passes that began after
    this call (the pass running now, if any, is not counted)."""
    target = node.metrics.rental_passes + count + 1
    async with asyncio.timeout(timeout):
        while node.metrics.rental_passes < target:  # noqa: ASYNC110  # a counter is polled
            await asyncio.sleep(0.05)


async def _locked(store: Any, did: str) -> bool:
    return (await store.read(did)).locked


async def test_two_nodes_run_one_scheduler_and_hand_it_over(node_factory, device_factory):
    first = await node_factory()
    second = await node_factory()
    schedulers = [first.app[RENTAL_SCHEDULER], second.app[RENTAL_SCHEDULER]]
    await eventually(lambda: _one_owner(schedulers))
    owner = first if schedulers[0].owner else second
    other = second if owner is first else first

    dev, store, device = await rental_device(other, device_factory, int(time.time()) + 3)
    await device.login()  # connected to the node that does not run the scheduler
    await owner.stop()  # the owner goes away: the other takes the lease over
    await eventually(lambda: _owner(other), timeout=8.0)
    _, desired = await next_state(device, timeout=8.0)
    assert desired.locked
    state = await store.read(dev.did)
    assert state.lock_reasons == ["rental_expired"]
    assert other.metrics.rental_locks == 1


async def _one_owner(schedulers: list[Any]) -> bool:
    return sum(s.owner for s in schedulers) == 1


async def _owner(node: Any) -> bool:
    return node.app[RENTAL_SCHEDULER].owner


async def test_two_serve_processes_lock_an_expiry_once_and_survive_the_owner_dying(
    tmp_path, redis_prefix, redis_client, migrated_sqlite
):
    """Real `aquafleet serve` processes: one holds the scheduler; SIGKILL it and the other
    takes over within the lease time and locks the device (connected to it) once."""
    import csv
    import os
    import sys

    from tests.conftest import MASTER_SECRET, REDIS_URL, TEST_SHARDS
    from tests.devices import TestDevice
    from tests.processes import serve_processes, start_serve

    settings = {
        "redis_url": REDIS_URL, "redis_prefix": redis_prefix, "redis_shards": TEST_SHARDS,
        "master_secret": MASTER_SECRET, "data_dir": tmp_path / "data",
        "database_url": migrated_sqlite(tmp_path / "aquafleet.sqlite3"),
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    env.update({f"AQUAFLEET_{k.upper()}": str(v) for k, v in settings.items()})

    async def cli(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aquafleet.cli", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, out.decode()
        return out.decode()

    await cli("vendors", "add", "RENT", "--name", "Rentals")
    await cli("devices", "register", "--vendor", "RENT", "--count", "1",
              "--out", str(tmp_path / "devices.csv"))  # fmt: skip
    with (tmp_path / "devices.csv").open() as handle:
        row = next(csv.DictReader(handle))
    async with serve_processes() as nodes:
        a = await start_serve(tmp_path, settings, name="rent-a")
        nodes.append(a)
        b = await start_serve(tmp_path, settings, name="rent-b")
        nodes.append(b)
        owner_key = f"{redis_prefix}:rental:owner"
        owner = (await redis_client.get(owner_key)).decode()
        holder, other = (a, b) if owner == "rent-a" else (b, a)
        # Far enough ahead that the CLI process and the login (seconds each on a loaded
        # machine) happen before it: the device must see the rental running, then locked.
        expires_at = int(time.time()) + 12
        await cli("service", "configure", row["did"], "--mode", "2",
                  "--expires-at", str(expires_at))  # fmt: skip
        device = TestDevice(row["did"], bytes.fromhex(row["key"]), other.tcp_port)
        try:
            logged_in = await device.login()
            assert not logged_in.desired.locked
            assert time.time() < expires_at, "the setup took longer than the rental"
            holder.kill()  # no lease release: the other process waits out the lease (5 s)
            _, desired = await next_state(device, timeout=20.0)
            assert desired.locked and desired.rental_expires_at == expires_at
            assert (await redis_client.get(owner_key)).decode() == other.env["AQUAFLEET_NODE_ID"]
            assert (await other.metrics())["rental_locks_total"] == 1
        finally:
            await device.close()
