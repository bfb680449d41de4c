"""The fleet's history (GET /fleet/statistics): online devices sampled per vendor and agent
node by the node holding the sampler's lease, water per day from the ledger, each in the
caller's scope, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from aquafleet.gateway.appkeys import FLEET_SAMPLER, TASKS
from aquafleet.models.fleet_history import (
    FleetOnlineSample,
    GroupCount,
    bucket_start,
    count_groups,
    fill_days,
    prune_samples,
    store_sample,
)
from tests.api.conftest import ApiClient, Tenant
from tests.api.test_devices_api import register
from tests.devices import telemetry


def test_samples_are_counted_per_vendor_and_node():
    rows = [("A1", "AAAA", 7), ("A2", "AAAA", 7), ("A3", "AAAA", None), ("B1", "BBBB", None)]
    assert count_groups(rows, {"A1", "A3", "X9"}) == {
        ("AAAA", 7): GroupCount(online=1, devices=2),
        ("AAAA", 0): GroupCount(online=1, devices=1),
        ("BBBB", 0): GroupCount(online=0, devices=1),
    }
    assert bucket_start(3_600 * 10 + 299, 300) == 3_600 * 10
    assert bucket_start(3_600 * 10 + 300, 300) == 3_600 * 10 + 300
    days = fill_days({dt.date(2026, 12, 6): 5, dt.date(2026, 10, 1): 9}, dt.date(2026, 12, 6))
    assert len(days) == 30 and days[0][0] == dt.date(2026, 11, 7) and days[-1][1] == 5
    assert sum(ml for _, ml in days) == 5  # a day outside the 30 is not counted


@pytest.mark.parametrize("bad", [7, 0, 7200])
def test_the_interval_must_divide_an_hour(make_settings: Any, bad: int):
    from aquafleet.gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="fleet_sample_interval_s"):
        make_settings(fleet_sample_interval_s=bad)


async def metered(api: ApiClient, did: str, ml: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = await api.call("GET", f"/devices/{did}/statistics")
        if stats.data["water_ml_today"] >= ml:
            return
        await asyncio.sleep(0.1)  # the ledger writer drains on its own schedule
    raise AssertionError("the ledger never stored the water")


async def test_statistics_count_the_callers_online_devices_and_water(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    # The samples are the test's own: the node's sampler, crossing a 5-minute boundary during
    # the test, would add one of its own.
    sampler = api_node.app[FLEET_SAMPLER]
    await api_node.app[TASKS].stop("fleet-sampler")
    a, b = tenants
    mine = await register(api, a.vid, 3)
    theirs = await register(api, b.vid, 2)
    await a.vendor.call("PUT", f"/devices/{mine[0]['did']}", {"agent_id": a.dealer_id})
    connected = [
        device_factory(d["did"], bytes.fromhex(d["key"]), api_node.tcp_port)
        for d in (mine[0], mine[1], theirs[0])
    ]
    for device in connected:
        await device.login()
    await connected[0].send(telemetry(1, 1, 400))
    await connected[0].send(telemetry(2, 1, 650))
    await connected[2].send(telemetry(1, 1, 90))
    for device in connected:
        await device.settled()
    await metered(api, mine[0]["did"], 650)
    await metered(api, theirs[0]["did"], 90)

    now = int(time.time())
    hour = bucket_start(now, 3600) - 3600  # an hourly sample, in both charts
    recent = hour + 300  # a sample of the last 24 h only (not on the hour)
    await sampler.sample(hour)
    await sampler.sample(hour - 24 * 3600)  # a day before: the 30 day chart only
    await connected[1].close()
    await wait_offline(api, mine[1]["did"])
    await sampler.sample(recent)
    await sampler.sample(recent)  # a second writer of a bucket (a handover) adds nothing

    def series(data: dict[str, Any], key: str) -> list[tuple[str, int, int]]:
        return [(s["at"], s["online"], s["devices"]) for s in data[key]]

    def at(seconds: int) -> str:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    platform = (await api.call("GET", "/fleet/statistics")).data
    assert (at(hour), 3, 5) in series(platform, "online_24h")
    assert (at(recent), 2, 5) in series(platform, "online_24h")
    assert series(platform, "online_30d") == [(at(hour - 24 * 3600), 3, 5), (at(hour), 3, 5)]
    assert at(hour - 24 * 3600) not in [s[0] for s in series(platform, "online_24h")]
    assert platform["water_ml_today"] == 740 and platform["water_ml_30d"] == 740
    assert len(platform["water_daily"]) == 30 and platform["water_daily"][-1]["water_ml"] == 740
    assert platform["sample_interval_s"] == 300

    vendor = (await a.vendor.call("GET", "/fleet/statistics")).data
    assert (at(hour), 2, 3) in series(vendor, "online_24h")
    assert (at(recent), 1, 3) in series(vendor, "online_24h")
    assert vendor["water_ml_today"] == 650
    dealer = (await a.dealer.call("GET", "/fleet/statistics")).data
    assert series(dealer, "online_30d")[-1] == (at(hour), 1, 1)
    assert (at(recent), 1, 1) in series(dealer, "online_24h")
    assert dealer["water_ml_today"] == 650
    agent = (await a.agent.call("GET", "/fleet/statistics")).data
    assert series(agent, "online_30d")[-1] == (at(hour), 1, 1)  # the dealer is below it
    other = (await b.dealer.call("GET", "/fleet/statistics")).data
    assert other["online_24h"] == [] and other["water_ml_30d"] == 0
    only_b = (await api.call("GET", "/fleet/statistics", params={"vid": b.vid})).data
    assert series(only_b, "online_30d")[-1] == (at(hour), 1, 2)
    assert only_b["water_ml_today"] == 90
    await api.as_(None).call("GET", "/fleet/statistics", expect=401)
    # A vendor naming another vendor sees nothing of it: not found.
    await a.vendor.call("GET", "/fleet/statistics", params={"vid": b.vid}, expect=404)


async def wait_offline(api: ApiClient, did: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not (await api.call("GET", f"/devices/{did}/stat")).data["online"]:
            return
        await asyncio.sleep(0.05)  # the presence release is written in the next batch
    raise AssertionError(f"{did} never went offline")


async def test_old_samples_are_pruned(api: ApiClient):
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    kept_fine = now - dt.timedelta(hours=2, minutes=5)
    old_fine = now - dt.timedelta(hours=27, minutes=5)
    old_hourly = now - dt.timedelta(hours=27)
    too_old = now - dt.timedelta(days=32)
    for when in (kept_fine, old_fine, old_hourly, too_old):  # as the sampler writes them
        await store_sample(when, {("AAAA", 0): GroupCount(online=1, devices=1)})
    assert await prune_samples(dt.datetime.now(dt.UTC)) == 2
    left = sorted(await FleetOnlineSample.filter(vendor_id="AAAA").values_list("hourly", flat=True))
    assert left == [False, True]


async def test_one_node_samples_at_a_time_and_the_loop_samples(
    api_node: Any, api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    from aquafleet.gateway.appkeys import KEYSPACE, REDIS, SCRIPTS
    from aquafleet.gateway.fleet_history import FleetSampler

    app = api_node.app
    running = app[FLEET_SAMPLER]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if running.owner:
            break
        await asyncio.sleep(0.05)  # the loop takes the lease within a second of start
    assert running.owner and running.samples >= 1  # a new owner samples at once
    other = FleetSampler(
        client=app[REDIS], scripts=app[SCRIPTS], keyspace=app[KEYSPACE], node_id="other",
        interval_s=300,
    )  # fmt: skip
    assert await other.lease.acquire() is False
    await app[TASKS].stop("fleet-sampler")
    await running.lease.release()  # what the node does when it stops
    assert await other.lease.acquire() is True
    assert other.owner is True
    await other.lease.release()

    # The loop samples the devices of the current bucket, once.
    a, _ = tenants
    await register(api, a.vid, 2)
    sampler = FleetSampler(
        client=app[REDIS], scripts=app[SCRIPTS], keyspace=app[KEYSPACE], node_id="again",
        interval_s=1,
    )  # fmt: skip
    app[TASKS].start("fleet-sampler-test", sampler.run)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if sampler.samples >= 2:
                break
            await asyncio.sleep(0.1)  # one sample per 1 s bucket
    finally:
        await app[TASKS].stop("fleet-sampler-test")
    rows = await FleetOnlineSample.filter(vendor_id=a.vid).values_list("at", "online", "devices")
    assert len(rows) >= 2 and all((o, d) == (0, 2) for _, o, d in rows)
    assert len({at for at, _, _ in rows}) == len(rows)  # one row per bucket
