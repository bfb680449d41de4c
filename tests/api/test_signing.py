"""Signed requests from a vendor's servers: the documented example, and the live checks
(stale, replayed, tampered, revoked, wrong role, other tenant)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from aquafleet.api.signing import app_secret, sign, string_to_sign
from tests.api.conftest import ApiClient, Tenant, md5

DOC = (Path(__file__).parents[2] / "docs" / "api-auth.md").read_text()


def doc_inline(name: str) -> str:
    match = re.search(rf"<!-- example:{name} -->`([^`]+)`", DOC)
    assert match, name
    return match.group(1)


def doc_block(name: str) -> str:
    match = re.search(rf"<!-- {name} -->\n```\n(.*?)\n```", DOC, re.S)
    assert match, name
    return match.group(1)


def parse_request(block: str) -> tuple[str, str, str, dict[str, str], bytes]:
    head, _, body = block.partition("\n\n")
    lines = head.split("\n")
    method, target = lines[0].split(" ")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    url = urlsplit(target)
    return method, url.path, url.query, headers, body.encode()


def test_the_documented_examples_recompute():
    master = bytes.fromhex(doc_inline("master"))
    key = doc_inline("app-key")
    secret = app_secret(master, key)
    assert secret == doc_inline("app-secret")
    for example in ("example1", "example2"):
        method, path, query, headers, body = parse_request(doc_block(f"{example}:request"))
        assert headers["X-Aq-Key"] == key
        text = string_to_sign(
            method,
            path,
            parse_qsl(query, keep_blank_values=True),
            headers["X-Aq-Timestamp"],
            headers["X-Aq-Nonce"],
            body,
        )
        assert text == doc_block(f"{example}:string-to-sign")
        expected = doc_block(f"{example}:signature").removeprefix("X-Aq-Signature: ")
        assert sign(secret, text) == expected
        # The independent recipe in the doc, too.
        assert hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest() == expected


def signed_headers(
    key: str,
    secret: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(8)
    text = string_to_sign(method, path, parse_qsl(query, keep_blank_values=True), ts, nonce, body)
    return {
        "X-Aq-Key": key,
        "X-Aq-Timestamp": ts,
        "X-Aq-Nonce": nonce,
        "X-Aq-Signature": sign(secret, text),
    }


async def issue_key(api: ApiClient, vid: str) -> tuple[str, str]:
    answer = await api.call("POST", f"/vendors/{vid}/app-key")
    assert answer.status == 201, answer
    return answer.data["app_key"], answer.data["app_secret"]


async def test_signed_requests_act_as_the_vendor(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, b = tenants
    key, secret = await issue_key(api, a.vid)
    unsigned = api.as_(None)

    async def signed(
        method: str, path: str, query: str = "", body: bytes = b"", expect: int | None = None
    ):
        headers = signed_headers(key, secret, method, f"/api/v1{path}", query, body)
        if body:
            headers["Content-Type"] = "application/json"
        target = f"{path}?{query}" if query else path
        answer = await unsigned.call(
            method, target, data=body or None, headers=headers, expect=expect
        )
        return answer, headers

    answer, _ = await signed("GET", "/agents", "level=1&order=desc")
    assert answer.status == 200 and [n["id"] for n in answer.data] == [a.agent_id]
    body = f'{{"name":"珠海代理","user":"zh-agent","pwd":"{md5("pw-12345")}"}}'.encode()
    answer, _ = await signed("POST", "/agents", body=body)
    assert answer.status == 201 and answer.data["vid"] == a.vid
    # Another tenant's node: 404, as for a bearer token.
    answer, _ = await signed("GET", f"/agents/{b.agent_id}", expect=404)
    assert answer.status == 404 and answer.code == "not_found"
    # The vendor role may not call platform-only endpoints.
    answer, _ = await signed("GET", "/vendors", expect=403)
    assert answer.status == 403 and answer.code == "forbidden"
    # ... nor replace its own key.
    answer, _ = await signed("POST", f"/vendors/{a.vid}/app-key", expect=403)
    assert answer.status == 403


async def test_replayed_stale_tampered_and_revoked_requests_are_refused(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    key, secret = await issue_key(api, a.vid)
    unsigned = api.as_(None)
    headers = signed_headers(key, secret, "GET", "/api/v1/agents")
    assert (await unsigned.call("GET", "/agents", headers=headers)).status == 200
    replay = await unsigned.call("GET", "/agents", headers=headers, expect=401)
    assert replay.status == 401 and replay.code == "signature_invalid"
    assert "nonce" in replay.body["message"]

    stale = signed_headers(key, secret, "GET", "/api/v1/agents", timestamp=int(time.time()) - 301)
    answer = await unsigned.call("GET", "/agents", headers=stale, expect=401)
    assert answer.status == 401 and "timestamp" in answer.body["message"]
    future = signed_headers(key, secret, "GET", "/api/v1/agents", timestamp=int(time.time()) + 301)
    assert (await unsigned.call("GET", "/agents", headers=future, expect=401)).status == 401

    # Signed for one query, sent with another.
    tampered = signed_headers(key, secret, "GET", "/api/v1/agents", "level=1")
    answer = await unsigned.call("GET", "/agents?level=2", headers=tampered, expect=401)
    assert answer.status == 401 and "signature" in answer.body["message"]
    # Signed for one body, sent with another.
    body = f'{{"name":"x","user":"tamper-1","pwd":"{md5("pw-12345")}"}}'.encode()
    tampered = signed_headers(key, secret, "POST", "/api/v1/agents", body=body)
    tampered["Content-Type"] = "application/json"
    answer = await unsigned.call(
        "POST", "/agents", data=body.replace(b"tamper-1", b"tamper-2"), headers=tampered, expect=401
    )
    assert answer.status == 401
    # A wrong secret.
    wrong = signed_headers(key, "0" * 64, "GET", "/api/v1/agents")
    assert (await unsigned.call("GET", "/agents", headers=wrong, expect=401)).status == 401
    # A header missing, or malformed.
    partial = signed_headers(key, secret, "GET", "/api/v1/agents")
    del partial["X-Aq-Nonce"]
    assert (
        await unsigned.call("GET", "/agents", headers=partial, expect=401)
    ).code == "signature_invalid"
    short_nonce = signed_headers(key, secret, "GET", "/api/v1/agents", nonce="abc")
    assert (await unsigned.call("GET", "/agents", headers=short_nonce, expect=401)).status == 401

    # A new key revokes the old one.
    new_key, new_secret = await issue_key(api, a.vid)
    old = signed_headers(key, secret, "GET", "/api/v1/agents")
    assert (await unsigned.call("GET", "/agents", headers=old, expect=401)).status == 401
    new = signed_headers(new_key, new_secret, "GET", "/api/v1/agents")
    assert (await unsigned.call("GET", "/agents", headers=new)).status == 200

    # Deregistering the vendor stops its key.
    assert (await api.call("DELETE", f"/vendors/{a.vid}")).status == 204
    after = signed_headers(new_key, new_secret, "GET", "/api/v1/agents")
    assert (await unsigned.call("GET", "/agents", headers=after, expect=401)).status == 401


async def test_a_vendor_admin_issues_its_own_key_but_not_anothers(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    own = await a.vendor.call("POST", f"/vendors/{a.vid}/app-key")
    assert own.status == 201 and own.data["app_key"].startswith(a.vid)
    other = await a.vendor.call("POST", f"/vendors/{b.vid}/app-key", expect=404)
    assert other.status == 404
    assert (await a.agent.call("POST", f"/vendors/{a.vid}/app-key", expect=403)).status == 403
    assert (await api.as_(None).call("POST", f"/vendors/{a.vid}/app-key", expect=401)).status == 401
