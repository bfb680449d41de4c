"""/metrics as Prometheus expects it (issue 18): HELP and TYPE for every family, counters named
`*_total`, current values and maxima as gauges, and histograms of ack latency, metering rounds,
logins, command round trips and HTTP requests fed by what a node really did."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.api.conftest import ApiClient, Tenant
from tests.api.test_commands_api import answer_next, logged_in
from tests.api.test_devices_api import register
from tests.devices import LoginRefused, TestDevice, telemetry


async def scrape(port: int) -> tuple[str, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when the labelled child does not exist yet)."""
    for item in families[family].samples:
        assert isinstance(item, Sample)
        if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
            return float(item.value)
    return 0.0


async def test_every_family_says_what_it_is_and_counters_end_in_total(api_node: Any):
    text, families = await scrape(api_node.http_port)
    lines = text.splitlines()
    for name, family in families.items():
        exposed = f"{name}_total" if family.type == "counter" else name
        assert f"# HELP {exposed} " in text and family.documentation.strip(), name
        assert f"# TYPE {exposed} {family.type}" in lines, name
        assert name.startswith("aquafleet_"), name
    kinds = {name: family.type for name, family in families.items()}
    assert kinds["aquafleet_records_stored"] == "counter"  # exposed as ..._total
    assert kinds["aquafleet_meter_round_records_max"] == "gauge"  # a maximum is no counter
    assert kinds["aquafleet_devices_online"] == kinds["aquafleet_ledger_backlog"] == "gauge"
    for histogram in (
        "ack_latency_seconds", "meter_round_seconds", "login_seconds",
        "command_round_trip_seconds", "http_request_duration_seconds", "event_loop_lag_seconds",
        "ledger_transaction_seconds",
    ):  # fmt: skip
        assert kinds[f"aquafleet_{histogram}"] == "histogram"
    # A counter's samples are all `_total`: nothing a scraper would take for a gauge.
    for family in families.values():
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name


async def test_histograms_follow_what_the_node_did(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, _ = tenants
    issued, stranger = await register(api, a.vid, 2)
    device = await logged_in(api_node, device_factory, issued)
    for rec in range(1, 4):
        await device.send(telemetry(rec, boot=5, total=100 * rec))
    await device.settled()
    impostor = TestDevice(stranger["did"], b"\x00" * 32, api_node.tcp_port)
    with pytest.raises(LoginRefused):
        await impostor.login()
    await impostor.close()
    call = asyncio.create_task(
        a.vendor.call("POST", f"/devices/{issued['did']}/commands",
                      {"op": "reboot", "wait_ms": 5000})
    )  # fmt: skip
    await answer_next(device)
    assert (await call).data["state"] == "succeeded"
    await api.call("GET", "/nothing/here", expect=404)

    _, families = await scrape(api_node.http_port)
    metrics = api_node.metrics
    assert sample(families, "aquafleet_records_stored", "aquafleet_records_stored_total") == 3
    assert sample(families, "aquafleet_devices_online", "aquafleet_devices_online") == 1
    rounds = sample(families, "aquafleet_meter_rounds", "aquafleet_meter_rounds_total")
    assert rounds == metrics.meter_rounds >= 1
    # One observation per metering round, of the round and of its longest ack wait.
    for name in ("aquafleet_meter_round_seconds", "aquafleet_ack_latency_seconds"):
        assert sample(families, name, f"{name}_count") == rounds
        assert 0 < sample(families, name, f"{name}_sum") < 10 * rounds
    login = "aquafleet_login_seconds"
    assert sample(families, login, f"{login}_count", result="ok") == 1
    assert sample(families, login, f"{login}_count", result="failed") == 1
    rtt = "aquafleet_command_round_trip_seconds"
    assert sample(families, rtt, f"{rtt}_count", op="reboot") == 1
    assert sample(families, rtt, f"{rtt}_sum", op="reboot") < 5
    http = "aquafleet_http_request_duration_seconds"
    commands = {"method": "POST", "route": "/api/v1/devices/{did}/commands"}
    assert sample(families, http, f"{http}_count", **commands, status="2xx") == 1
    assert sample(families, http, f"{http}_count", method="GET", route="other", status="4xx") == 1
    # The path itself is never a label: only route templates.
    assert all("/nothing" not in s.labels.get("route", "") for s in families[http].samples)
    await device.close()


async def test_a_blocked_event_loop_shows_in_its_lag(api_node: Any):
    """event_loop_lag_seconds: a callback that holds the loop for 0.4 s makes the node's 0.1 s
    timer run that late, and the tail of the histogram says so."""
    name = "aquafleet_event_loop_lag_seconds"

    async def late_ticks() -> tuple[float, float]:
        _, families = await scrape(api_node.http_port)
        count = sample(families, name, f"{name}_count")
        return count, count - sample(families, name, f"{name}_bucket", le="0.25")

    await asyncio.sleep(0.25)
    ticks, late = await late_ticks()
    assert ticks >= 1  # watched from the start
    time.sleep(0.4)  # noqa: ASYNC251 (what a slow callback does: nothing else runs meanwhile)
    await asyncio.sleep(0.25)
    ticks_after, late_after = await late_ticks()
    assert ticks_after > ticks
    assert late_after >= late + 1
