"""The console's field-service and money pages and the device list's live filters in a real
browser (headless Debian chromium) against a whole node: a ticket approved and dispatched from
the queue, the commissions of a paid order, the filters low balance and filter due, and hostile
text (a ticket's detail, a technician's and a member's name) shown as text. The screenshots of
docs/console.md for these pages are taken here."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from aquafleet.models.filters import set_model_filter_spec
from aquafleet.models.orders import mark_paid
from aquafleet.models.usage import DeviceSnapshot
from tests.api.conftest import PASSWORD, PLATFORM_USER, ApiClient, Tenant, md5
from tests.api.shop import add_product, make_member
from tests.api.test_commissions_api import COMMIS, RECEIVER, chain
from tests.api.test_devices_api import register
from tests.console.test_console_browser import TIMEOUT_MS, shoot, sign_in, text_becomes

pytestmark = pytest.mark.browser

HOSTILE_DETAIL = '<img src=x onerror="window.pwned=2">leaking under the sink'
HOSTILE_TECH = "<b>Wang</b><script>window.pwned=3</script>"
HOSTILE_MEMBER = "<script>window.pwned=4</script>"


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
