"""The console's field-service and money pages and the device list's live filters in a real
browser (headless Debian chromium) against a whole node: a ticket approved and dispatched from
the queue, the commissions of a paid order, the filters low balance and filter due, and hostile
text (a ticket's detail, a technician's and a member's name) shown as text. The screenshots of
docs/console.md for these pages are taken here."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import time
from pathlib import Path
from typing import Any

import pytest

from aquafleet.models.filters import set_model_filter_spec
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.usage import DeviceSnapshot
from tests.api.conftest import PASSWORD, PLATFORM_USER, ApiClient, Tenant, md5
from tests.api.shop import add_product, make_member
from tests.api.test_commissions_api import COMMIS, RECEIVER, bought_and_done, chain
from tests.api.test_devices_api import register
from tests.console.test_console_browser import TIMEOUT_MS, shoot, sign_in, text_becomes

pytestmark = pytest.mark.browser

HOSTILE_DETAIL = '<img src=x onerror="window.pwned=2">leaking under the sink'
HOSTILE_TECH = "<b>Wang</b><script>window.pwned=3</script>"
HOSTILE_MEMBER = "<script>window.pwned=4</script>"
HOSTILE_DEALER = "<i>Dealer</i><script>window.pwned=6</script>"


async def test_an_operator_dispatches_a_ticket_and_reads_commissions(
    console_api: ApiClient,
    console_tenants: tuple[Tenant, Tenant],
    console_node: Any,
    browser: Any,
) -> None:
    a, _ = console_tenants
    vendor = a.vendor
    quota_low, filter_worn, plain = [
        d["did"] for d in await register(console_api, a.vid, 3, type=3, model="RO-9")
    ]
    await vendor.call("PUT", f"/devices/{quota_low}/prof", {"name": "Kitchen"})
    await vendor.call("PUT", f"/devices/{quota_low}/svc", {
        "op": "configure", "mode": 3, "remaining_ml": 300, "low_balance_ml": 1000,
    })  # fmt: skip
    await vendor.call("PUT", f"/devices/{plain}/svc", {
        "op": "configure", "mode": 3, "remaining_ml": 90_000, "low_balance_ml": 1000,
    })  # fmt: skip
    await set_model_filter_spec(a.vid, "RO-9", [
        {"order": 1, "name": "PP", "timer_mode": 1, "lifetime": 1000, "worklife": 0},
    ])  # fmt: skip
    await DeviceSnapshot.create(
        did=filter_worn, boot=1, rec=1, device_ts=int(time.time()),
        received_at=dt.datetime.now(dt.UTC), filters=[[1, 0, 980, 0]],
    )  # fmt: skip
    technician = await vendor.call("POST", "/technicians", {
        "user": "wang", "pwd": md5(PASSWORD), "name": HOSTILE_TECH, "skills": [4],
    }, expect=201)  # fmt: skip
    tech_id = technician.data["id"]
    opened = await vendor.call("POST", "/tickets", {
        "type": 4, "device_id": quota_low, "detail": HOSTILE_DETAIL, "priority": 1,
    }, expect=201)  # fmt: skip
    tid = opened.data["ticket_id"]
    await make_member(console_node, console_api, a.vid, name=HOSTILE_MEMBER)
    pid = await add_product(vendor, commis=COMMIS)
    _, _, buyer = await chain(console_node, console_api, a)
    body = {"content": [{"product_id": pid, "quantity": 1}], "receiver": RECEIVER}
    oid = str((await buyer.client.call("POST", "/orders", body)).data["order_id"])
    await mark_paid(oid, admin=PLATFORM_USER, reason="test")

    base = console_api.base
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await sign_in(page, base, "aaaa-admin")

    # The device list's live filters.
    await page.click("a[data-nav=devices]")
    await page.wait_for_selector("#device-list tbody tr", timeout=TIMEOUT_MS)
    assert await page.locator("#device-list tbody tr").count() == 3
    await page.select_option("select[name=low_balance]", "true")
    await page.click("#device-filters button[type=submit]")
    await page.wait_for_function(
        "() => document.querySelectorAll('#device-list tbody tr').length === 1",
        timeout=TIMEOUT_MS,
    )
    await page.get_by_text("Kitchen", exact=True).wait_for(timeout=TIMEOUT_MS)
    await page.select_option("select[name=low_balance]", "")
    await page.select_option("select[name=filter_due]", "true")
    await page.click("#device-filters button[type=submit]")
    await page.wait_for_selector(
        f"#device-list a[href='#/devices/{filter_worn}']", timeout=TIMEOUT_MS
    )
    assert await page.locator("#device-list tbody tr").count() == 1
    await shoot(page, "devices-filter-due")

    # The ticket queue: the hostile detail is text; approve, then dispatch to the technician.
    await page.click("a[data-nav=tickets]")
    await page.get_by_text(HOSTILE_DETAIL, exact=True).wait_for(timeout=TIMEOUT_MS)
    await text_becomes(page, "#tickets-open", "1")
    await text_becomes(page, "#tickets-s1", "1")
    await page.click(f"button[data-action=approve][data-ticket='{tid}']")
    await page.fill("dialog input[name=note]", "seen the photo")
    await page.click("dialog button[type=submit]")
    await page.wait_for_selector(
        f"button[data-action=dispatch][data-ticket='{tid}']", timeout=TIMEOUT_MS
    )
    await text_becomes(page, "#tickets-s2", "1")
    await page.click(f"button[data-action=dispatch][data-ticket='{tid}']")
    await page.select_option("dialog select[name=to]", f"id:{tech_id}")
    await page.click("dialog button[type=submit]")
    await page.wait_for_selector("#ticket-status[data-state=succeeded]", timeout=TIMEOUT_MS)
    await page.wait_for_selector(
        f"button[data-action=redispatch][data-ticket='{tid}']", timeout=TIMEOUT_MS
    )
    assert HOSTILE_TECH in (await page.text_content("#ticket-status") or "")
    assert await page.get_by_text(HOSTILE_TECH, exact=True).count() == 1  # the row's cell
    ticket = (await vendor.call("GET", f"/tickets/{tid}")).data
    assert (ticket["status"], ticket["technician_id"]) == (3, tech_id)
    moves = (await vendor.call("GET", f"/tickets/{tid}/moves")).data
    assert [m["event"] for m in moves][-2:] == ["approve", "dispatch"]
    assert moves[-2]["note"] == "seen the photo"
    await shoot(page, "tickets")
    # The ticket's history: its moves with their notes, as text.
    await page.click(f"button[data-moves='{tid}']")
    await page.wait_for_selector("#ticket-moves tbody tr", timeout=TIMEOUT_MS)
    rows = await page.eval_on_selector_all(
        "#ticket-moves tbody tr",
        "rows => rows.map(r => [r.cells[1].textContent, r.cells[3].textContent])",
    )
    assert rows[-2:] == [["created → approved", "seen the photo"], ["approved → dispatched", ""]]
    await page.click("dialog.moves button.secondary")
    await page.wait_for_selector("dialog.moves", state="detached", timeout=TIMEOUT_MS)

    # Commissions: the paid order's three levels, pending, in yuan.
    await page.click("a[data-nav=commissions]")
    await page.wait_for_selector("#commission-list tbody tr", timeout=TIMEOUT_MS)
    assert await page.locator("#commission-list tbody tr").count() == 3
    await text_becomes(page, "#commission-pending", "983.40")  # 625.80 + 268.20 + 89.40
    await text_becomes(page, "#commission-available", "0.00")
    await shoot(page, "commissions")

    await page.click("a[data-nav=members]")
    await page.get_by_text(HOSTILE_MEMBER, exact=True).wait_for(timeout=TIMEOUT_MS)
    assert await page.evaluate("window.pwned") is None
    assert await page.evaluate("document.querySelectorAll('script').length") == 1
    assert await page.evaluate("document.querySelectorAll('#page img, #page b').length") == 0

    # A phone, in Chinese: the queue in one column, its moves still at hand.
    await page.click("button.lang")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{base}/console/#/tickets")
    await text_becomes(page, "a[data-nav=tickets]", "工单")
    await page.wait_for_selector(
        f"button[data-action=redispatch][data-ticket='{tid}']", timeout=TIMEOUT_MS
    )
    await text_becomes(page, f"button[data-action=redispatch][data-ticket='{tid}']", "改派")
    await shoot(page, "tickets-phone-zh")
    assert errors == [], errors
    await context.close()

    # The dealer: the device is not at its node, so neither is the ticket.
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = await context.new_page()
    await sign_in(page, base, "aaaa-dealer")
    await page.click("a[data-nav=tickets]")
    await page.wait_for_selector("#ticket-list p.empty", timeout=TIMEOUT_MS)
    assert await page.get_by_text(HOSTILE_DETAIL).count() == 0
    await context.close()


async def read_text(path: Path) -> str:
    return await asyncio.to_thread(path.read_text)


def refused(status: int) -> str:
    """What chromium logs for an answer the API refused (a 4xx fetch the page expected)."""
    reason = {
        404: "Not Found",
        409: "Conflict",
        422: "Unprocessable Entity",
        429: "Too Many Requests",
    }[status]
    return f"Failed to load resource: the server responded with a status of {status} ({reason})"


# What parseYuan makes of what a person types: fen, or None (refused before anything is sent).
YUAN_INPUTS: dict[str, int | None] = {
    "120.50": 12050, "0.29": 29, "19.99": 1999, "1.1": 110, "0.07": 7, " 8 ": 800,
    "1,200.50": 120050, "1000000000": 10**11, "1000000000.01": None, "1.005": None,
    "-1": None, "1e3": None, ".5": None, "1,20": None, "": None, "12元": None,
}  # fmt: skip

HOSTILE_TICKET = '<img src=x onerror="window.pwned=5">tap drips & <b>leaks</b>'


async def test_a_dealer_opens_a_ticket_for_its_own_device_only(
    console_api: ApiClient,
    console_tenants: tuple[Tenant, Tenant],
    console_node: Any,
    browser: Any,
) -> None:
    a, b = console_tenants
    other = await a.agent.call("POST", "/agents", {
        "name": "Dealer two", "user": "aaaa-dealer2", "pwd": md5(PASSWORD),
    }, expect=201)  # fmt: skip
    (mine,) = [d["did"] for d in await register(console_api, a.vid, 1, agent_id=a.dealer_id)]
    (theirs,) = [d["did"] for d in await register(console_api, a.vid, 1, agent_id=other.data["id"])]
    (foreign,) = [d["did"] for d in await register(console_api, b.vid, 1)]

    base = console_api.base
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await sign_in(page, base, "aaaa-dealer")
    await page.click("a[data-nav=tickets]")
    await page.wait_for_selector("#ticket-list p.empty", timeout=TIMEOUT_MS)

    # Another dealer's device, another vendor's: the API's answer under the form, values kept.
    await page.click("#ticket-new-box summary")
    for did in (theirs, foreign):
        await page.fill("#ticket-new input[name=device_id]", did.lower())  # typed in lower case
        await page.select_option("#ticket-new select[name=type]", "4")
        await page.fill("#ticket-new textarea[name=detail]", "not mine")
        await page.click("#ticket-new button[type=submit]")
        await page.click("dialog button[type=submit]")
        refusal = f"device {did} does not exist or is not in your scope"
        await text_becomes(page, "#ticket-new-error", f"The ticket was not opened: {refusal}")
        assert await page.input_value("#ticket-new textarea[name=detail]") == "not mine"
    await shoot(page, "tickets-new-refused")
    assert (await a.vendor.call("GET", "/tickets")).body["total"] == 0

    # Not a device id: the browser says so, nothing is asked nor sent.
    await page.fill("#ticket-new input[name=device_id]", "AAAA-1")
    await page.click("#ticket-new button[type=submit]")
    field = "#ticket-new input[name=device_id]"
    assert await page.eval_on_selector(field, "e => e.validity.patternMismatch")
    assert await page.locator("dialog").count() == 0

    # Its own device: confirmed, opened, at the top of the queue; the detail shown as text.
    await page.fill("#ticket-new input[name=device_id]", mine)
    await page.select_option("#ticket-new select[name=type]", "5")
    await page.select_option("#ticket-new select[name=priority]", "1")
    await page.fill("#ticket-new textarea[name=detail]", HOSTILE_TICKET)
    await page.click("#ticket-new button[type=submit]")
    assert mine in (await page.text_content("dialog p") or "")
    await page.click("dialog button[type=submit]")
    await page.wait_for_selector("#ticket-status[data-state=succeeded]", timeout=TIMEOUT_MS)
    assert await page.is_hidden("#ticket-new-error")
    tickets = (await a.dealer.call("GET", "/tickets")).data
    assert [(x["device_id"], x["type"], x["priority"], x["detail"]) for x in tickets] == [
        (mine, 5, 1, HOSTILE_TICKET)
    ]
    tid = tickets[0]["ticket_id"]
    await text_becomes(page, "#ticket-status", f"Ticket T{tid} opened")
    await page.wait_for_selector(f"button[data-moves='{tid}']", timeout=TIMEOUT_MS)
    row = page.locator("#ticket-list tbody tr").first
    assert await row.locator("td").nth(1).text_content() == "maintenance"
    assert await row.locator("td").nth(3).text_content() == "urgent"
    assert await row.get_by_text(HOSTILE_TICKET, exact=True).count() == 1
    await text_becomes(page, "#tickets-s1", "1")
    assert await page.input_value("#ticket-new textarea[name=detail]") == ""

    # From the device's page: the form for that device.
    await page.goto(f"{base}/console/#/devices/{mine}")
    await page.click("#device-new-ticket")
    await page.wait_for_selector("#ticket-new-box[open]", timeout=TIMEOUT_MS)
    assert await page.input_value("#ticket-new input[name=device_id]") == mine
    assert await page.evaluate("window.pwned") is None
    assert await page.evaluate("document.querySelectorAll('#page img, #page b').length") == 0
    # The browser logs each refused answer as a failed resource; no script error besides.
    assert errors == [refused(404)] * 2, errors
    await context.close()


async def test_an_agent_downloads_its_commissions_and_withdraws(
    console_api: ApiClient,
    console_tenants: tuple[Tenant, Tenant],
    console_node: Any,
    browser: Any,
) -> None:
    a, _ = console_tenants
    await a.agent.call("PUT", f"/agents/{a.dealer_id}", {"name": HOSTILE_DEALER})
    pid = await add_product(a.vendor, commis={"enabled": True, "config": [10, 5, 3]})
    # A buyer without a referrer under the dealer: the dealer is level 1 (29,800 fen an order),
    # its agent level 2 (14,900 fen); both orders done, so the commissions are available.
    buyer = await make_member(console_node, console_api, a.vid, agent_id=a.dealer_id)
    oids = [await bought_and_done(a, buyer, pid) for _ in range(2)]

    base = console_api.base
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-US", accept_downloads=True
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await sign_in(page, base, "aaaa-agent")

    # The agents tree leads to the agent's commission list: totals, per earner, the rows.
    await page.click("a[data-nav=agents]")
    await page.click(f"a[data-commissions='{a.agent_id}']")
    await text_becomes(page, "#agentc-count", "4")
    await text_becomes(page, "#agentc-kept", "894.00")  # 2 x (298.00 + 149.00)
    assert await page.locator("#agentc-list tbody tr").count() == 4
    earners = await page.eval_on_selector_all(
        "#agentc-earners tbody tr", "rows => rows.map(r => r.cells[0].textContent)"
    )
    assert sorted(earners) == sorted(
        [f"Agent of AAAA agent:{a.agent_id}", f"{HOSTILE_DEALER} agent:{a.dealer_id}"]
    )
    levels = await page.eval_on_selector_all(
        "#agentc-levels tbody tr",
        "rows => rows.map(r => [r.cells[0].textContent, r.cells[4].textContent])",
    )
    assert levels == [["1", "596.00"], ["2", "298.00"]]
    assert await page.evaluate("document.querySelectorAll('#page i').length") == 0
    await shoot(page, "agent-commissions")

    # The CSV: fetched with the token, handed over as a download, every commission a line.
    async with page.expect_download(timeout=TIMEOUT_MS) as info:
        await page.click("#agentc-csv")
    download = await info.value
    assert download.suggested_filename == f"commissions-agent-{a.agent_id}.csv"
    rows = list(csv.DictReader(io.StringIO(await read_text(await download.path()))))
    assert sorted((r["order_id"], r["earner"], int(r["kept"])) for r in rows) == sorted(
        (oid, earner, kept)
        for oid in oids
        for earner, kept in ((f"agent:{a.dealer_id}", 29800), (f"agent:{a.agent_id}", 14900))
    )
    await text_becomes(page, "#agentc-csv-status", f"commissions-agent-{a.agent_id}.csv downloaded")
    # A period without commissions: nothing listed, and the CSV is its header line only.
    await page.fill("#agentc-filters input[name=until]", "2020-01-31")
    await page.click("#agentc-filters button[type=submit]")
    await text_becomes(page, "#agentc-count", "0")
    async with page.expect_download(timeout=TIMEOUT_MS) as info:
        await page.click("#agentc-csv")
    assert len((await read_text(await (await info.value).path())).splitlines()) == 1

    # The commissions page: its dealer's list through the picker.
    await page.click("a[data-nav=commissions]")
    await page.select_option("#agentc-pick", str(a.dealer_id))
    await page.click("#agentc-open button[type=submit]")
    await text_becomes(page, "#agentc-kept", "596.00")
    assert HOSTILE_DEALER in (await page.text_content("#agentc-title") or "")

    # A withdrawal: refused above what is available, below the minimum, a bad amount never
    # sent; then 120.50 yuan goes as 12050 fen and is listed.
    await page.click("a[data-nav=commissions]")
    await text_becomes(page, "#commission-available", "298.00")

    # Yuan typed by a person become fen from the decimal text, never through a float.
    parsed = await page.evaluate(
        """async (inputs) => {
        const src = document.querySelector('script[type=module]').src.replace('app.js', 'ui.js');
        const { parseYuan } = await import(src);
        return inputs.map((x) => parseYuan(x));
    }""",
        list(YUAN_INPUTS),
    )
    assert dict(zip(YUAN_INPUTS, parsed, strict=True)) == YUAN_INPUTS

    async def withdraw(amount: str) -> None:
        await page.fill("#withdraw-amount", amount)
        await page.click("#withdraw-form button[type=submit]")

    await withdraw("298.01")
    await page.click("dialog button[type=submit]")
    over = "298.01 yuan is more than the 298.00 yuan available."
    await text_becomes(page, "#withdraw-error", f"The withdrawal was refused: {over}")
    await withdraw("0.99")
    await page.click("dialog button[type=submit]")
    await text_becomes(
        page, "#withdraw-error", "The withdrawal was refused: withdraw at least 1.00 yuan."
    )
    await withdraw("12.345")
    await text_becomes(page, "#withdraw-error",
        "Give an amount in yuan, e.g. 120 or 120.50 (at most two decimals).")  # fmt: skip
    assert await page.locator("dialog").count() == 0
    await withdraw("120.50")
    await text_becomes(page, "dialog p", "Withdraw 120.50 yuan?")
    await page.click("dialog button.secondary")  # cancelled: nothing sent
    assert (await a.agent.call("GET", "/commission/withdrawals")).body["total"] == 0
    await withdraw("120.50")
    await page.click("dialog button[type=submit]")
    await page.wait_for_selector("#withdraw-status[data-state=succeeded]", timeout=TIMEOUT_MS)
    (made,) = (await a.agent.call("GET", "/commission/withdrawals")).data
    assert (made["amount"], made["earner"], made["state_name"]) == (
        12050,
        f"agent:{a.agent_id}",
        "requested",
    )
    await text_becomes(
        page, "#withdraw-status", f"Withdrawal #{made['id']} of 120.50 yuan requested"
    )
    await text_becomes(page, "#commission-available", "177.50")
    await text_becomes(page, "#commission-payout", "120.50")
    cells = page.locator("#withdrawal-list tbody tr").first.locator("td")
    assert await cells.nth(0).text_content() == str(made["id"])
    assert await cells.nth(2).text_content() == "120.50"
    assert await cells.nth(2).locator("span").get_attribute("title") == "12050 fen"
    assert await cells.nth(3).text_content() == "requested"
    assert await page.is_hidden("#withdraw-error")
    assert await page.input_value("#withdraw-amount") == ""
    await shoot(page, "commissions-withdraw")

    # A phone, in Chinese: the withdrawals as cards; another request within 30 s is refused.
    await page.click("button.lang")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{base}/console/#/commissions")
    await text_becomes(page, "#withdraw-form button[type=submit]", "申请提现")
    await page.wait_for_selector("#withdrawal-list tbody tr", timeout=TIMEOUT_MS)
    assert (
        await page.eval_on_selector("#withdrawal-list thead", "e => getComputedStyle(e).display")
        == "none"
    )
    assert (
        await page.eval_on_selector(
            "#withdrawal-list tbody td", "e => getComputedStyle(e, '::before').content"
        )
        == '"编号"'
    )
    await withdraw("1")
    await page.click("dialog button[type=submit]")
    await page.wait_for_function(
        "() => /^提现被拒绝：两次申请至少间隔 30 秒，请 [0-9]+ 秒后再试。$/"
        ".test(document.querySelector('#withdraw-error')?.textContent)",
        timeout=TIMEOUT_MS,
    )
    assert (await a.agent.call("GET", "/commission/withdrawals")).body["total"] == 1
    await shoot(page, "commissions-phone-zh")
    assert await page.evaluate("window.pwned") is None
    assert errors == [refused(409), refused(422), refused(429)], errors
    await context.close()
