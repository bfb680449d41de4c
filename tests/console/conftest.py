"""Console fixtures: a node with a fast live feed, its platform admin, two tenants, and a
headless Debian chromium driven by Playwright (skipped, saying why, where it is absent)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import (  # noqa: F401  (fixtures used here too)
    PLATFORM_USER,
    ApiClient,
    Tenant,
    api,
    api_node,
    make_tenant,
    md5,
    tenants,
)

SCREENSHOTS = Path(__file__).parents[2] / "docs" / "console"
NO_CHROMIUM = (
    "chromium is not installed: `apt-get install -y chromium` (.ci/run installs it, so CI "
    "never skips these)"
)


@pytest.fixture
async def console_node(node_factory: Any) -> Any:
    """A whole node (SQLite) whose live overview sends counts every 0.2 s."""
    return await node_factory(console_feed_interval_s=0.2)


@pytest.fixture
async def console_api(console_node: Any) -> AsyncIterator[ApiClient]:
    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role
    from tests.api.conftest import PASSWORD

    await create_account(PLATFORM_USER, md5(PASSWORD), Role.PLATFORM)
    async with aiohttp.ClientSession() as session:
        client = ApiClient(session, f"http://127.0.0.1:{console_node.http_port}")
        client.token = await client.login(PLATFORM_USER)
        yield client


@pytest.fixture
async def console_tenants(console_api: ApiClient) -> tuple[Tenant, Tenant]:
    return await make_tenant(console_api, "AAAA"), await make_tenant(console_api, "BBBB")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """One headless chromium for the test (Debian's binary, never a downloaded one)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip(NO_CHROMIUM)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path)
        try:
            yield launched
        finally:
            await launched.close()
