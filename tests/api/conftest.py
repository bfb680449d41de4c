"""API fixtures: a whole node on SQLite and PostgreSQL, an HTTP client speaking the envelope,
and accounts of every admin role in two vendors (for the cross-tenant tests)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

PLATFORM_USER = "root"
PASSWORD = "secret-pass"


def client_from(address: str) -> aiohttp.ClientSession:
    """A client whose requests come from `address` (any of 127.0.0.0/8 on Linux)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class Answer:
    status: int
    body: Any  # the decoded envelope (None for a 204)
    headers: Any

    @property
    def data(self) -> Any:
        return self.body["data"]

    @property
    def code(self) -> str:
        return str(self.body["code"])

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body!r})"


@dataclass
class ApiClient:
    session: aiohttp.ClientSession
    base: str
    token: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
        data: bytes | str | None = None,
        params: Any = None,
        expect: int | None = None,
    ) -> Answer:
        """One request; asserts a success (2xx) answer unless the test names the status it
        expects (`expect=404`), so a setup call that failed cannot go unnoticed."""
        sent = dict(headers or {})
        chosen = self.token if token == "default" else token
        if chosen:
            sent["Authorization"] = f"Bearer {chosen}"
        async with self.session.request(
            method,
            f"{self.base}/api/v1{path}",
            json=json,
            data=data,
            headers=sent,
            params=params,
        ) as response:
            raw = await response.read()
            if expect is None:
                assert 200 <= response.status < 300, (method, path, response.status, raw[:300])
            else:
                assert response.status == expect, (method, path, response.status, raw[:300])
            if response.status == 204:
                assert raw == b""
                return Answer(204, None, response.headers)
            assert response.content_type == "application/json", raw[:200]
            body = await response.json()
            assert set(body) == {"total", "data", "status", "code", "message"}, body
            assert body["status"] is (response.status < 400), body
            return Answer(response.status, body, response.headers)

    async def login(self, user: str, password: str = PASSWORD) -> str:
        answer = await self.call(
            "POST", "/auth/login", {"user": user, "pwd": md5(password)}, token=None
        )
        assert answer.status == 200, answer
        return str(answer.data["access_token"])

    def as_(self, token: str | None) -> ApiClient:
        return ApiClient(self.session, self.base, token)


@pytest.fixture
async def api_node(database_url: str, node_factory: Any) -> Any:
    # database_url first: fixtures are torn down in reverse, so the node stops (and its ledger
    # writer flushes) before the database is closed and dropped.
    return await node_factory(database_url=database_url)


@pytest.fixture
async def api(api_node: Any) -> AsyncIterator[ApiClient]:
    """A client of the node's API, logged in as the platform admin."""
    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role

    await create_account(PLATFORM_USER, md5(PASSWORD), Role.PLATFORM)
    async with aiohttp.ClientSession() as session:
        client = ApiClient(session, f"http://127.0.0.1:{api_node.http_port}")
        client.token = await client.login(PLATFORM_USER)
        yield client


@dataclass
class Tenant:
    """One vendor with an agent, a dealer under it, and a logged-in client per level."""

    vid: str
    agent_id: int
    dealer_id: int
    vendor: ApiClient
    agent: ApiClient
    dealer: ApiClient


async def make_tenant(api: ApiClient, vid: str) -> Tenant:
    low = vid.lower()
    answer = await api.call(
        "POST",
        "/vendors",
        {"vid": vid, "user": f"{low}-admin", "pwd": md5(PASSWORD), "name": f"Vendor {vid}"},
    )
    assert answer.status == 201, answer
    vendor = api.as_(await api.login(f"{low}-admin"))
    answer = await vendor.call(
        "POST",
        "/agents",
        {"name": f"Agent of {vid}", "user": f"{low}-agent", "pwd": md5(PASSWORD)},
    )
    assert answer.status == 201, answer
    agent_id = answer.data["id"]
    agent = api.as_(await api.login(f"{low}-agent"))
    answer = await agent.call(
        "POST",
        "/agents",
        {"name": f"Dealer of {vid}", "user": f"{low}-dealer", "pwd": md5(PASSWORD)},
    )
    assert answer.status == 201, answer
    dealer_id = answer.data["id"]
    dealer = api.as_(await api.login(f"{low}-dealer"))
    return Tenant(vid, agent_id, dealer_id, vendor, agent, dealer)


@pytest.fixture
async def tenants(api: ApiClient) -> tuple[Tenant, Tenant]:
    """Two vendors, AAAA and BBBB, each with an agent and a dealer."""
    return await make_tenant(api, "AAAA"), await make_tenant(api, "BBBB")
