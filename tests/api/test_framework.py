"""The API layer itself: the envelope on every answer, input refusals, limits, the OpenAPI
document and the offline docs page."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from aquafleet.api.errors import ERROR_CODES
from aquafleet.api.routing import MAX_BODY_BYTES, envelope_middleware
from aquafleet.api.schemas import MAX_LIMIT
from tests.api.conftest import ApiClient, Tenant, md5

ROOT = Path(__file__).parents[2]


async def test_unknown_paths_and_methods_answer_in_the_envelope(api: ApiClient):
    answer = await api.call("GET", "/no-such-thing", expect=404)
    assert answer.status == 404 and answer.code == "not_found"
    answer = await api.call("PATCH", "/vendors", expect=405)
    assert answer.status == 405 and answer.code == "method_not_allowed"
    assert "GET" in answer.headers["Allow"]


async def test_unreadable_bodies_are_refused_with_400_or_415(api: ApiClient):
    answer = await api.call(
        "POST",
        "/vendors",
        data="{not json",
        headers={"Content-Type": "application/json"},
        expect=400,
    )
    assert answer.status == 400 and answer.code == "bad_request"
    assert answer.body["message"] == "Problems parsing JSON"
    nan = '{"user": "abc", "pwd": NaN}'
    answer = await api.call(
        "POST", "/vendors", data=nan, headers={"Content-Type": "application/json"}, expect=400
    )
    assert answer.status == 400
    answer = await api.call(
        "POST", "/vendors", data="user=x", headers={"Content-Type": "text/plain"}, expect=415
    )
    assert answer.status == 415 and answer.code == "unsupported_media_type"
    answer = await api.call(
        "POST", "/vendors", data=b"", headers={"Content-Type": "application/json"}, expect=400
    )
    assert answer.status == 400
    # A body where none belongs.
    answer = await api.call("GET", "/vendors", data='{"a": 1}', expect=400)
    assert answer.status == 400 and answer.code == "bad_request"
    # ... but an empty object, as some clients always send, is fine.
    answer = await api.call(
        "GET", "/vendors", data="{}", headers={"Content-Type": "application/json"}
    )
    assert answer.status == 200


async def test_schema_violations_are_422_with_the_fields_named(api: ApiClient):
    answer = await api.call(
        "POST", "/vendors", {"user": "ok-user", "pwd": "short", "name": ""}, expect=422
    )
    assert answer.status == 422 and answer.code == "validation_failed"
    fields = {e["field"] for e in answer.data}
    assert fields == {"pwd", "name"}
    # Unknown fields are refused, never silently ignored.
    body = {"user": "ok-user", "pwd": md5("x"), "name": "N", "colour": "blue"}
    answer = await api.call("POST", "/vendors", body, expect=422)
    assert answer.status == 422 and answer.data == [{"field": "colour", "message": "unknown field"}]
    # Types are strict in bodies: a number where a string belongs is refused.
    answer = await api.call(
        "POST", "/vendors", {"user": "ok-user", "pwd": md5("x"), "name": 5}, expect=422
    )
    assert answer.status == 422 and answer.data[0]["field"] == "name"
    # Not an object at all.
    answer = await api.call("POST", "/vendors", [1, 2], expect=422)
    assert answer.status == 422
    # Formats: mobile numbers and e-mails.
    for field, value in (("mobile", "01234567890"), ("email", "not-an-email")):
        body = {"user": "ok-user", "pwd": md5("x"), "name": "N", field: value}
        answer = await api.call("POST", "/vendors", body, expect=422)
        assert answer.status == 422 and answer.data[0]["field"] == field


async def test_queries_limit_offset_sort_and_filters_are_checked(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    answer = await api.call("GET", "/vendors", params={"limit": str(MAX_LIMIT + 1)}, expect=422)
    assert answer.status == 422 and answer.data[0]["field"] == "limit"
    answer = await api.call("GET", "/vendors", params={"limit": "0"}, expect=422)
    assert answer.status == 422
    answer = await api.call("GET", "/vendors", params={"offset": "-1"}, expect=422)
    assert answer.status == 422
    answer = await api.call("GET", "/vendors", params={"sort": "mp_secret"}, expect=422)
    assert answer.status == 422 and answer.data[0]["field"] == "sort"
    answer = await api.call("GET", "/vendors", params={"order": "sideways"}, expect=422)
    assert answer.status == 422
    answer = await api.call("GET", "/vendors", params={"colour": "blue"}, expect=422)
    assert answer.status == 422 and answer.data == [{"field": "colour", "message": "unknown field"}]
    answer = await api.call("GET", "/vendors?limit=1&limit=2", expect=422)
    assert answer.status == 422 and "more than once" in answer.body["message"]
    # Paging: total counts every match, data holds one page.
    answer = await api.call("GET", "/vendors", params={"limit": "1", "sort": "vid"})
    assert answer.status == 200 and answer.body["total"] == 2
    assert [v["vid"] for v in answer.data] == ["AAAA"]
    answer = await api.call("GET", "/vendors", params={"limit": "1", "offset": "1", "sort": "vid"})
    assert [v["vid"] for v in answer.data] == ["BBBB"]
    answer = await api.call("GET", "/vendors", params={"sort": "vid", "order": "desc"})
    assert [v["vid"] for v in answer.data] == ["BBBB", "AAAA"]
    answer = await api.call("GET", "/vendors", params={"name": "bbb"})
    assert [v["vid"] for v in answer.data] == ["BBBB"] and answer.body["total"] == 1
    # Timestamps: ISO 8601 UTC, to the second.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", answer.data[0]["reg_tms"])


async def test_bodies_over_the_limit_are_refused_with_413(api: ApiClient):
    big = json.dumps({"user": "x" * (MAX_BODY_BYTES + 10)})
    answer = await api.call(
        "POST", "/vendors", data=big, headers={"Content-Type": "application/json"}, expect=413
    )
    assert answer.status == 413 and answer.code == "payload_too_large"

    async def chunks():  # no Content-Length: the limit still holds
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    answer = await api.call(
        "POST", "/vendors", data=chunks(), headers={"Content-Type": "application/json"}, expect=413
    )
    assert answer.status == 413
    # Far over the limit, still the envelope.
    answer = await api.call(
        "POST",
        "/vendors",
        data=io.BytesIO(b"x" * (2 * 1024 * 1024)),
        headers={"Content-Type": "application/json"},
        expect=413,
    )
    assert answer.status == 413 and answer.code == "payload_too_large"


async def test_a_bug_answers_500_without_details():
    """An unexpected exception: 500 internal_error, no stack trace, no SQL, in the envelope."""
    app = web.Application(middlewares=[envelope_middleware])

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("SELECT password_hash FROM admin_account -- boom")

    app.router.add_get("/api/v1/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/api/v1/broken") as response,
        ):
            text = await response.text()
            assert response.status == 500
        body = json.loads(text)
        assert body["code"] == "internal_error" and body["status"] is False
        assert "SELECT" not in text and "Traceback" not in text and "boom" not in text
    finally:
        await runner.cleanup()


async def test_the_openapi_document_covers_every_route(api: ApiClient):
    from aquafleet.api.app import all_routes

    async with api.session.get(f"{api.base}/api/v1/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.")
    operations = {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    for route in all_routes():
        op = operations[(route.method, route.full_path)]
        if route.seed:
            assert op["x-seed-id"] == route.seed and op["summary"].startswith(route.seed)
    seeds = {op.get("x-seed-id") for op in operations.values()}
    assert {f"AX-{n:02d}" for n in range(1, 14)} <= seeds
    # Write-only secrets never appear in an answer's schema.
    vendor_out = document["components"]["schemas"]["VendorOut"]["properties"]
    assert not {"pwd", "mp_secret", "mch_secret"} & set(vendor_out)


async def test_the_docs_page_works_offline(api: ApiClient):
    async with api.session.get(f"{api.base}/api/v1/docs") as response:
        assert response.status == 200 and response.content_type == "text/html"
        page = await response.text()
    # Every asset is served by the node itself: no CDN.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", page)
    assert len(assets) >= 4
    for asset in assets:
        async with api.session.get(f"{api.base}{asset}") as response:
            assert response.status == 200, asset
            assert len(await response.read()) > 100
    async with api.session.get(f"{api.base}/api/v1/docs/static/..%2f..%2fetc%2fpasswd") as r:
        assert r.status == 404
    async with api.session.get(f"{api.base}/api/v1/docs/static/nope.js") as response:
        assert response.status == 404


def test_every_error_code_is_documented():
    doc = (ROOT / "docs" / "api.md").read_text()
    for code, (status, _) in ERROR_CODES.items():
        assert re.search(rf"\| `{code}` \| {status} \|", doc), code


def test_every_documented_error_code_is_one_the_api_lists():
    """The other way round: a code the table documents is in ERROR_CODES, so the OpenAPI
    document's list of codes a client may meet is whole (six were missing)."""
    doc = (ROOT / "docs" / "api.md").read_text()
    documented = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", doc, re.MULTILINE)
    assert len(documented) >= len(ERROR_CODES)
    assert [row for row in documented if row[0] not in ERROR_CODES] == []
    assert [row for row in documented if ERROR_CODES[row[0]][0] != int(row[1])] == []


async def test_health_and_metrics_stay_outside_the_envelope(api: ApiClient, api_node: Any):
    """No token, no /api/v1, no envelope: a load balancer's and Prometheus' own formats."""
    async with api.session.get(f"{api.base}/healthz") as response:
        assert response.status == 200
        health = await response.json()
    assert (health["status"], health["code"]) == (True, "ok") and "total" not in health
    assert set(health["data"]) == {"node", "connections", "online", "reads_paused"}
    assert health["data"]["node"] == api_node.hub.node_id
    async with api.session.get(f"{api.base}/metrics") as response:
        assert response.status == 200 and response.content_type == "text/plain"
        text = await response.text()
    assert "# TYPE aquafleet_records_received_total counter" in text
    assert not text.lstrip().startswith("{")


def test_routes_enforce_the_seeds_roles():
    """使用范围: every AX endpoint is A* (platform only); agents are managed by A levels."""
    from aquafleet.api.app import all_routes
    from aquafleet.models.tenancy import ADMIN_ROLES, PLATFORM_ONLY, Role

    routes = all_routes()
    ax = [r for r in routes if (r.seed or "").startswith("AX-")]
    assert len(ax) == 13 and all(r.roles == PLATFORM_ONLY for r in ax)
    for route in routes:
        if route.path.startswith("/agents"):
            assert route.roles is not None and route.roles <= ADMIN_ROLES
            if route.method != "GET" and route.path != "/agents/{id}":
                assert Role.DEALER not in route.roles, route.path
    public = {r.full_path for r in routes if r.roles is None}
    assert {"/api/v1/auth/login", "/api/v1/auth/refresh"} <= public
    assert not any(p.startswith(("/api/v1/vendors", "/api/v1/agents")) for p in public)


async def test_every_route_refuses_the_roles_it_does_not_list(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    """The roles above are enforced, not only declared: each admin role a route leaves out is
    answered 403 (before its parameters are even read)."""
    from aquafleet.api.app import all_routes
    from aquafleet.models.tenancy import Role

    a, _ = tenants
    clients = {Role.VENDOR: a.vendor, Role.AGENT: a.agent, Role.DEALER: a.dealer}
    checked = 0
    for route in all_routes():
        if route.roles is None:
            continue
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        for role, client in clients.items():
            if role in route.roles:
                continue
            answer = await client.call(route.method, path, {}, expect=403)
            assert answer.code == "forbidden", (route.method, route.path, role, answer)
            checked += 1
    assert checked >= 13 * 3  # at least every platform-only (AX) route, for all three roles
