"""The console's language is each person's own: two logins sharing one browser (a tablet in the
field) each keep the language they chose, in headless Debian chromium against a whole node."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.console.test_console_browser import TIMEOUT_MS, sign_in, text_becomes

pytestmark = pytest.mark.browser

DEALER_USER = "aaaa-dealer"


async def sign_out(page: Any) -> None:
    await page.click("#logout")
    await page.wait_for_selector("#login-user", timeout=TIMEOUT_MS)


async def test_each_login_keeps_its_own_language_in_a_shared_browser(
    console_api: ApiClient, console_tenants: tuple[Tenant, Tenant], browser: Any
) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    # The platform admin signs in (the browser's language: English) and switches to Chinese.
    await sign_in(page, console_api.base, PLATFORM_USER)
    await text_becomes(page, "a[data-nav=overview]", "Overview")
    await page.click("button.lang")
    await text_becomes(page, "a[data-nav=overview]", "总览")
    assert await page.evaluate("document.documentElement.lang") == "zh-CN"
    await sign_out(page)

    # The dealer signs in on the same browser: the sign-in page kept the last choice, and the
    # dealer, who never chose, starts from it; it switches to English for itself.
    await sign_in(page, console_api.base, DEALER_USER)
    await text_becomes(page, "a[data-nav=overview]", "总览")
    await page.click("button.lang")
    await text_becomes(page, "a[data-nav=overview]", "Overview")
    await sign_out(page)

    # Each comes back to its own language, whatever the other chose last.
    await sign_in(page, console_api.base, PLATFORM_USER)
    await text_becomes(page, "a[data-nav=overview]", "总览")
    await page.reload()  # and it survives a reload of the page
    await text_becomes(page, "a[data-nav=overview]", "总览")
    await sign_out(page)
    await sign_in(page, console_api.base, DEALER_USER)
    await text_becomes(page, "a[data-nav=overview]", "Overview")
    assert await page.evaluate("document.documentElement.lang") == "en"

    # localStorage holds languages only, never a token.
    stored = await page.evaluate("() => Object.entries(localStorage)")
    assert {key for key, _ in stored} == {
        "aq.lang",
        f"aq.lang.{PLATFORM_USER}",
        f"aq.lang.{DEALER_USER}",
    }, stored
    assert {value for _, value in stored} <= {"zh", "en"}
    assert errors == [], errors
    await context.close()
