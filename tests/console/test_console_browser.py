"""The operator console in a real browser (headless Debian chromium) against a whole node with
devices connected over TCP: sign-in, live online counts, a device page (its presence history
after a reconnect), a lock that reaches the device, the water chart, a dealer's scope, and a
device name that is markup shown as text. The screenshots of docs/console.md are taken here."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import pytest

from aquafleet.gateway.appkeys import FLEET_SAMPLER, TASKS
from aquafleet.models.fleet_history import bucket_start
from aquafleet.protocol import CommandOp
from tests.api.conftest import PASSWORD, PLATFORM_USER, ApiClient, Tenant
from tests.api.test_commands_api import answer_next
from tests.api.test_devices_api import register
from tests.console.conftest import SCREENSHOTS
from tests.devices import telemetry

pytestmark = pytest.mark.browser

HOSTILE_NAME = "<script>window.pwned=1</script>"
TIMEOUT_MS = 10_000


async def sign_in(page: Any, base: str, user: str) -> None:
    await page.goto(f"{base}/")  # the front door leads to the console
    await page.fill("#login-user", user)
    await page.fill("#login-password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#logout", timeout=TIMEOUT_MS)


async def text_becomes(page: Any, selector: str, expected: str) -> None:
    await page.wait_for_function(
        "([s, v]) => document.querySelector(s)?.textContent.trim() === v",
        arg=[selector, expected],
        timeout=TIMEOUT_MS,
    )


async def water_metered(api: ApiClient, did: str) -> int:
    """Wait (bounded) until the ledger writer has stored the device's water of today."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = await api.call("GET", f"/devices/{did}/statistics")
        if stats.data["water_ml_today"] > 0:
            return int(stats.data["water_ml_today"])
        await asyncio.sleep(0.1)  # the ledger writer drains on its own schedule
    raise AssertionError("the ledger never stored the water")


async def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_an_operator_watches_the_fleet_and_locks_a_device(
    console_api: ApiClient,
    console_tenants: tuple[Tenant, Tenant],
    console_node: Any,
    device_factory: Any,
    browser: Any,
) -> None:
    # The server's online samples are the test's own (below): a sampler of the node's crossing
    # a 5-minute boundary during the test would add one of these devices (a flake seen in CI).
    sampler = console_node.app[FLEET_SAMPLER]
    await console_node.app[TASKS].stop("fleet-sampler")
    a, _ = console_tenants
    first, second = await register(console_api, a.vid, 2, type=3, model="RO-75")
    await console_api.call("PUT", f"/devices/{first['did']}/prof", {"name": HOSTILE_NAME})
    await console_api.call("PUT", f"/devices/{second['did']}/prof", {"name": "Lobby purifier"})
    positions = {first["did"]: (22_543_100, 114_057_900), second["did"]: (22_547_000, 114_085_900)}
    for did, (lat, lng) in positions.items():
        await console_api.call("PUT", f"/devices/{did}", {"lbs": {"lat_e6": lat, "lng_e6": lng}})
    base = console_api.base
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    await page.goto(f"{base}/console/")
    await shoot(page, "login")
    await sign_in(page, base, PLATFORM_USER)
    await text_becomes(page, "#count-devices", "2")
    await text_becomes(page, "#count-online", "0")

    devices = [
        device_factory(d["did"], bytes.fromhex(d["key"]), console_node.tcp_port)
        for d in (first, second)
    ]
    await devices[0].login()
    await text_becomes(page, "#count-online", "1")
    await devices[1].login()
    await text_becomes(page, "#count-online", "2")
    await devices[0].close()
    await text_becomes(page, "#count-online", "1")
    await text_becomes(page, "#count-offline", "1")

    # Water for the chart: the flow counter's readings, 750 ml in all.
    lobby = devices[1]
    await lobby.send(telemetry(1, 1, 500))
    await lobby.send(telemetry(2, 1, 750))
    await lobby.settled()
    assert await water_metered(console_api, second["did"]) == 750
    # The server's online samples (the sampler would take them every 5 minutes): one on the
    # hour (both charts), one since.
    hour = bucket_start(int(time.time()), 3600) - 3600
    await sampler.sample(hour)
    await sampler.sample(hour + 1800)
    await page.reload()
    await page.wait_for_selector(
        "#water-chart svg[data-points='30']", state="attached", timeout=TIMEOUT_MS
    )
    await text_becomes(page, "#water-today", "750")
    await page.wait_for_selector(
        "#online-30d-chart svg[data-points='1']", state="attached", timeout=TIMEOUT_MS
    )
    await page.wait_for_selector(  # the two samples and the live count now
        "#online-chart svg[data-points='3']", state="attached", timeout=TIMEOUT_MS
    )
    await text_becomes(page, "#count-online", "1")
    await page.wait_for_function(
        "() => /^[0-9.,]+$/.test(document.querySelector('#count-records_per_s').textContent)",
        timeout=TIMEOUT_MS,
    )  # the second event of the stream brings a rate
    await shoot(page, "overview")

    # The list shows the hostile name as text: no script ran, none was added.
    await page.click("a[data-nav=devices]")
    cell = page.get_by_text(HOSTILE_NAME, exact=True)
    await cell.wait_for(timeout=TIMEOUT_MS)
    assert await page.evaluate("window.pwned") is None
    assert await page.evaluate("document.querySelectorAll('script').length") == 1
    await shoot(page, "devices")

    await page.click("a[data-nav=map]")
    await page.wait_for_selector("#device-map .marker", timeout=TIMEOUT_MS)
    assert await page.locator("#device-map .marker").count() == 2
    await shoot(page, "map")

    # The lobby purifier drops its link and comes back: a second session.
    await lobby.close()
    deadline = time.monotonic() + 10
    while (await console_api.call("GET", f"/devices/{second['did']}/stat")).data["online"]:
        assert time.monotonic() < deadline, "the device never went offline"
        await asyncio.sleep(0.1)  # the node releases it in its next batch
    lobby = device_factory(second["did"], bytes.fromhex(second["key"]), console_node.tcp_port)
    await lobby.login()

    # The device page: the water chart draws 30 days, one of them with the 750 ml.
    await page.goto(f"{base}/console/#/devices/{second['did']}")
    await text_becomes(page, "#device-name", "Lobby purifier")
    await page.wait_for_selector(
        "#device-water svg[data-points='30']", state="attached", timeout=TIMEOUT_MS
    )
    heights = await page.eval_on_selector_all(
        "#device-water rect.bar", "bars => bars.map(b => Number(b.getAttribute('height')))"
    )
    assert len(heights) == 30 and heights[-1] > 0 and heights[:-1] == [0] * 29
    # The ledger's latest records: the two readings, newest first.
    await page.wait_for_selector("#record-log tbody tr", timeout=TIMEOUT_MS)
    records = await page.eval_on_selector_all(
        "#record-log tbody tr", "rows => rows.map(r => r.cells[0].textContent)"
    )
    assert records == ["1/2", "1/1"]
    # The presence history: the current session first, then the one the device closed.
    await page.wait_for_selector("#session-log tbody tr:nth-child(2)", timeout=TIMEOUT_MS)
    sessions = await page.eval_on_selector_all(
        "#session-log tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert len(sessions) == 2, sessions
    (since, ended, _, why, _, node), (_, _, _, earlier_why, _, earlier_node) = sessions
    assert (ended, why, node) == ("Online", "—", console_node.hub.node_id), sessions[0]
    assert since.endswith(" UTC")
    assert (earlier_why, earlier_node) == ("closed by the device", console_node.hub.node_id)
    assert await page.locator("#session-log [data-reason=closed_by_device]").count() == 1

    # Lock, confirmed; the device receives the locked state and answers; the page follows.
    await page.click("button[data-action=lock]")
    await page.fill("dialog input[name=reason]", "unpaid bill")
    await page.click("dialog button[type=submit]")
    push = await answer_next(lobby)
    assert push.op == CommandOp.SET_STATE and push.args[1] == 1  # locked
    await page.wait_for_selector("#action-status[data-state=succeeded]", timeout=TIMEOUT_MS)
    await page.wait_for_function(
        "() => document.querySelector('#svc-reasons').textContent.includes('locked by a person')",
        timeout=TIMEOUT_MS,
    )
    await page.wait_for_selector("#command-log .cmd.succeeded", timeout=TIMEOUT_MS)
    await shoot(page, "device")

    # The other resource pages draw without an error.
    for nav, box in (("members", "#member-list"), ("products", "#product-list"),
                     ("orders", "#order-list"), ("agents", "ul.tree")):  # fmt: skip
        await page.click(f"a[data-nav={nav}]")
        await page.wait_for_selector(box, state="attached", timeout=TIMEOUT_MS)
    await page.wait_for_selector(f"li[data-agent='{a.dealer_id}']", timeout=TIMEOUT_MS)
    await shoot(page, "agents")
    assert errors == [], errors
    # An access token the server no longer knows (expired): the console refreshes and goes on.
    stale = "a.expired.token"
    await page.evaluate(
        """(stale) => {
            const s = JSON.parse(sessionStorage.getItem('aq.session'));
            s.access = stale;
            sessionStorage.setItem('aq.session', JSON.stringify(s));
        }""",
        stale,
    )
    await page.click("a[data-nav=devices]")
    await page.get_by_text("Lobby purifier", exact=True).wait_for(timeout=TIMEOUT_MS)
    stored = await page.evaluate("() => JSON.parse(sessionStorage.getItem('aq.session')).access")
    assert stored != stale and stored.startswith("a.")
    assert set(errors) <= {"Failed to load resource: the server responded with a status of 401 "
                           "(Unauthorized)"}, errors  # fmt: skip
    errors.clear()

    # A phone screen, in Chinese.
    await page.click("button.lang")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{base}/console/#/")
    await text_becomes(page, "a[data-nav=overview]", "总览")
    await text_becomes(page, "#count-online", "1")
    await shoot(page, "overview-phone-zh")

    await page.click("#logout")
    await page.wait_for_selector("#login-user", timeout=TIMEOUT_MS)
    assert await page.evaluate("sessionStorage.getItem('aq.session')") is None
    assert errors == [], errors
    await context.close()


async def test_a_dealer_sees_its_own_devices_only(
    console_api: ApiClient, console_tenants: tuple[Tenant, Tenant], browser: Any
) -> None:
    a, b = console_tenants
    (mine,) = await register(console_api, a.vid, 1)
    (theirs,) = await register(console_api, b.vid, 1)
    await a.vendor.call("PUT", f"/devices/{mine['did']}", {"agent_id": a.dealer_id})
    await console_api.call("PUT", f"/devices/{theirs['did']}/prof", {"name": "Not yours"})
    base = console_api.base
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = await context.new_page()
    await sign_in(page, base, "aaaa-dealer")
    await text_becomes(page, "#count-devices", "1")
    await page.click("a[data-nav=devices]")
    await page.wait_for_selector(f"#device-list a[href='#/devices/{mine['did']}']")
    assert await page.locator("#device-list tbody tr").count() == 1
    assert await page.get_by_text(theirs["did"]).count() == 0

    await page.goto(f"{base}/console/#/devices/{theirs['did']}")
    await page.wait_for_selector("p.error", timeout=TIMEOUT_MS)
    assert "not found" in (await page.text_content("p.error") or "")
    assert await page.get_by_text("Not yours").count() == 0
    await page.click("a[data-nav=agents]")
    await page.wait_for_selector(f"li[data-agent='{a.dealer_id}']", timeout=TIMEOUT_MS)
    await shoot(page, "agents-dealer")
    await context.close()


TILE_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cff01f0005000201a5d5f6c60000000049454e44ae426082"
)  # a 1x1 PNG


async def test_the_map_draws_tiles_of_the_configured_tile_server(
    node_factory: Any, browser: Any
) -> None:
    """With console_tile_url set, the map asks that server for the tiles under its markers
    (the page's policy lets images, and only images, come from there)."""
    from aiohttp import web

    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role
    from tests.api.conftest import md5

    asked: list[str] = []
    first_tile = asyncio.Event()

    async def tile(request: web.Request) -> web.Response:
        asked.append(request.path)
        first_tile.set()
        return web.Response(body=TILE_PNG, content_type="image/png")

    tiles = web.Application()
    tiles.router.add_get("/{z}/{x}/{y}.png", tile)
    runner = web.AppRunner(tiles, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        node = await node_factory(console_tile_url=f"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png")
        await create_account(PLATFORM_USER, md5(PASSWORD), Role.PLATFORM)
        async with aiohttp.ClientSession() as session:
            api = ApiClient(session, f"http://127.0.0.1:{node.http_port}")
            api.token = await api.login(PLATFORM_USER)
            await api.call(
                "POST",
                "/vendors",
                {"vid": "MAPS", "user": "maps", "pwd": md5(PASSWORD), "name": "Maps"},
            )
            (issued,) = await register(api, "MAPS", 1)
            await api.call(
                "PUT",
                f"/devices/{issued['did']}",
                {"lbs": {"lat_e6": 39_908_700, "lng_e6": 116_397_500}},
            )
            page = await (await browser.new_context(locale="en-US")).new_page()
            await sign_in(page, api.base, PLATFORM_USER)
            await page.click("a[data-nav=map]")
            await page.wait_for_selector(
                "#device-map .marker", state="attached", timeout=TIMEOUT_MS
            )
            assert await page.locator("#device-map image").count() >= 4
            await asyncio.wait_for(first_tile.wait(), 10)  # the browser fetches on its own
    finally:
        await runner.cleanup()
    assert asked and all(re.fullmatch(r"/18/\d+/\d+\.png", path) for path in asked), asked
