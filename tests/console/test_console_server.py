"""What the node serves for the console, without a browser: the page and its security
headers, assets under their content hash, the installed package's files, and the live fleet
overview (JSON and server-sent events) in the caller's scope, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aquafleet.api.console import ASSETS_DIR, load_assets
from tests.api.conftest import ApiClient, Tenant
from tests.api.test_devices_api import register
from tests.devices import telemetry

CSP_PARTS = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "frame-ancestors 'none'",
)


async def test_the_page_has_a_strict_policy_and_hashed_assets(api: ApiClient):
    session, base = api.session, api.base
    async with session.get(f"{base}/console", allow_redirects=False) as response:
        assert (response.status, response.headers["Location"]) == (301, "/console/")
    async with session.get(f"{base}/console/") as response:
        page = await response.text()
        csp = response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for part in CSP_PARTS:
        assert part in csp, csp
    assert "unsafe" not in csp
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None  # no inline script at all
    digest = load_assets().digest
    (script,) = re.findall(r'<script type="module" src="([^"]+)"', page)
    assert script == f"/console/static/{digest}/app.js"
    async with session.get(f"{base}{script}") as response:
        assert response.status == 200 and response.content_type == "text/javascript"
        assert "immutable" in response.headers["Cache-Control"]
        assert await response.read() == (ASSETS_DIR / "app.js").read_bytes()
    async with session.get(f"{base}/console/static/{digest}/pages/device.js") as response:
        assert response.status == 200
    # Another release's hash, a path out of the folder, a file that is not an asset: 404.
    for path in (
        f"/console/static/{'0' * 16}/app.js",
        f"/console/static/{digest}/../console.py",
        f"/console/static/{digest}/%2e%2e/console.py",
        f"/console/static/{digest}/nope.js",
    ):
        async with session.get(f"{base}{path}") as response:
            assert response.status == 404, path


def test_a_change_to_any_asset_changes_the_hash(tmp_path: Path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "app.js").write_text("export {};\n")
    (tmp_path / "pages" / "x.js").write_text("export default 1;\n")
    before = load_assets(tmp_path)
    (tmp_path / "pages" / "x.js").write_text("export default 2;\n")
    after = load_assets(tmp_path)
    assert before.digest != after.digest and set(after.files) == {"app.js", "pages/x.js"}


def test_the_package_ships_every_console_file():
    """pyproject's package data names every file an installed aquafleet must serve."""
    import tomllib

    root = Path(__file__).parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["aquafleet.api"]
    folder = root / "api" / "console"
    shipped = {
        p.relative_to(folder).as_posix() for pat in patterns for p in (root / "api").glob(pat)
    }
    assert set(load_assets().files) <= shipped, set(load_assets().files) - shipped


async def test_a_tile_server_is_allowed_for_images_only(node_factory: Any):
    node = await node_factory(console_tile_url="https://tiles.example.com/{z}/{x}/{y}.png")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{node.http_port}/console/") as response,
    ):
        csp = response.headers["Content-Security-Policy"]
        page = await response.text()
    assert "img-src 'self' data: https://tiles.example.com;" in csp
    assert "connect-src 'self';" in csp
    assert 'content="https://tiles.example.com/{z}/{x}/{y}.png"' in page


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """The first `count` overview events of a stream (bounded by the test's timeout)."""
    events: list[dict[str, Any]] = []
    name = None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name == "overview":
            events.append(json.loads(line[6:]))
            if len(events) == count:
                break
    return events


async def test_the_overview_counts_the_callers_devices_live(
    api: ApiClient, tenants: tuple[Tenant, Tenant], api_node: Any, device_factory: Any
):
    a, b = tenants
    mine = await register(api, a.vid, 2, type=2)
    await register(api, b.vid, 3)
    await a.vendor.call("PUT", f"/devices/{mine[0]['did']}", {"agent_id": a.dealer_id})
    device = device_factory(mine[0]["did"], bytes.fromhex(mine[0]["key"]), api_node.tcp_port)
    await device.login()
    await device.send(telemetry(1, 1, 100, fault_bits=0x4))  # a fault: an alarm
    await device.settled()
    await a.vendor.call("POST", f"/devices/{mine[1]['did']}/commands", {"op": "lock"})
    await a.vendor.call(
        "PUT",
        f"/devices/{mine[0]['did']}/svc",
        {"op": "configure", "mode": 2, "rental_expires_at": "2099-01-01T00:00:00Z"},
    )

    answer = await api.call("GET", "/fleet/overview")
    assert {k: answer.data[k] for k in ("devices", "online", "offline")} == {
        "devices": 5, "online": 1, "offline": 4,
    }  # fmt: skip
    answer = await a.vendor.call("GET", "/fleet/overview")
    data = answer.data
    assert (data["devices"], data["online"], data["locked"], data["in_rental"]) == (2, 1, 1, 1)
    assert (data["alarms"], data["records_stored"]) == (1, 1)
    assert data["records_per_s"] is None and data["truncated"] is False
    assert data["at"].endswith("Z")
    dealer = (await a.dealer.call("GET", "/fleet/overview")).data
    assert (dealer["devices"], dealer["online"], dealer["locked"], dealer["alarms"]) == (1, 1, 0, 1)
    other = (await b.dealer.call("GET", "/fleet/overview")).data
    assert (other["devices"], other["online"]) == (0, 0)

    # The stream: the same envelope per event; a disconnect shows in the next ones.
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {a.dealer.token}"}
    url = f"{api.base}/api/v1/fleet/overview"
    async with api.session.get(url, headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        (first,) = await read_events(response, 1)
        assert first["status"] is True and first["data"]["online"] == 1
        await device.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (event,) = await read_events(response, 1)
            assert event["data"]["records_per_s"] is not None
            if event["data"]["online"] == 0:
                break
        else:
            raise AssertionError("the stream never showed the device offline")


async def test_a_stream_whose_client_left_ends_quietly_when_the_node_stops(
    node_factory: Any, capsys: pytest.CaptureFixture[str]
):
    """The node stops while a stream is open and its client is gone: no internal error logged."""
    import asyncio

    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role
    from tests.api.conftest import PASSWORD, PLATFORM_USER, md5

    # A long interval: the stream is waiting for the stop, not for its next event, when it ends.
    node = await node_factory(console_feed_interval_s=60)
    await create_account(PLATFORM_USER, md5(PASSWORD), Role.PLATFORM)
    base = f"http://127.0.0.1:{node.http_port}"
    async with aiohttp.ClientSession() as session:
        token = await ApiClient(session, base).login(PLATFORM_USER)
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}"}
        async with session.get(f"{base}/api/v1/fleet/overview", headers=headers) as response:
            assert response.status == 200
            (first,) = await read_events(response, 1)
            assert first["status"] is True
    # The session is closed: wait until the server has seen every connection go.
    server = node.runner.server
    deadline = time.monotonic() + 10
    while any(connection.transport is not None for connection in server.connections):
        assert time.monotonic() < deadline, "the server never saw the client leave"
        await asyncio.sleep(0.01)
    assert server.connections  # the stream's handler is still running, waiting for the stop

    capsys.readouterr()
    await node.stop()  # aiohttp waits for the stream's handler to return
    logged = capsys.readouterr()
    assert "api_internal_error" not in logged.out + logged.err, logged
    assert "Traceback" not in logged.out + logged.err, logged


async def test_the_stream_needs_a_token_and_an_admin(api: ApiClient):
    url = f"{api.base}/api/v1/fleet/overview"
    async with api.session.get(url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 401 and response.content_type == "application/json"
        assert (await response.json())["code"] == "unauthorized"
    # A stream refused by its weight is not sent: the answer is the JSON envelope.
    refused = {"Accept": "application/json, text/event-stream;q=0"}
    answer = await api.call("GET", "/fleet/overview", headers=refused)
    assert answer.data["devices"] == 0


def test_the_stream_is_in_the_openapi_document():
    from aquafleet.api.app import all_routes
    from aquafleet.api.openapi import build_document

    document = build_document(all_routes(), [])
    operation = document["paths"]["/api/v1/fleet/overview"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {
        "application/json",
        "text/event-stream",
    }
    assert operation["x-roles"] == ["agent", "dealer", "platform", "vendor"]


@pytest.mark.parametrize(
    "bad", ["ftp://x/{z}/{x}/{y}", "https://x/tiles", 'https://x/{z}/{x}/{y}"']
)
def test_a_tile_url_must_be_a_template(make_settings: Any, bad: str):
    from aquafleet.gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="console_tile_url"):
        make_settings(console_tile_url=bad)
