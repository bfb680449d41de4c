"""Admin login, tokens (access, rotating refresh, logout, revocation), rate limits, and the
caller's own password."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.api.conftest import PASSWORD, PLATFORM_USER, ApiClient, Tenant, md5


async def login(api: ApiClient, user: str, password: str = PASSWORD, *, expect: int = 200) -> Any:
    body = {"user": user, "pwd": md5(password)}
    return await api.call("POST", "/auth/login", body, token=None, expect=expect)


async def test_login_answers_tokens_and_who_logged_in(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    answer = await login(api, "aaaa-dealer")
    assert answer.status == 200
    data = answer.data
    assert data["token_type"] == "Bearer" and data["expires_in"] == 900
    assert data["role"] == "dealer" and data["vid"] == "AAAA" and data["agent_id"] == a.dealer_id
    me = await api.as_(data["access_token"]).call("GET", "/auth/me")
    assert (
        me.data["user"] == "aaaa-dealer"
        and me.data["agent_path"] == f"/{a.agent_id}/{a.dealer_id}/"
    )
    # User names are case-insensitive; the MD5 may be upper case.
    answer = await api.call(
        "POST", "/auth/login", {"user": "AAAA-Dealer", "pwd": md5(PASSWORD).upper()}, token=None
    )
    assert answer.status == 200


async def test_wrong_password_and_unknown_user_look_the_same(api: ApiClient):
    wrong = await login(api, PLATFORM_USER, "not-it", expect=401)
    unknown = await login(api, "nobody-here", expect=401)
    assert wrong.status == unknown.status == 401
    assert wrong.code == unknown.code == "login_failed"
    assert wrong.body["message"] == unknown.body["message"]
    # Malformed inputs are validation failures, not login failures.
    answer = await api.call(
        "POST", "/auth/login", {"user": PLATFORM_USER, "pwd": PASSWORD}, token=None, expect=422
    )
    assert answer.status == 422 and answer.data[0]["field"] == "pwd"
    answer = await api.call("POST", "/auth/login", {"user": PLATFORM_USER}, token=None, expect=422)
    assert answer.status == 422


async def test_endpoints_need_a_valid_token(api: ApiClient):
    anonymous = api.as_(None)
    answer = await anonymous.call("GET", "/auth/me", expect=401)
    assert answer.status == 401 and answer.code == "unauthorized"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    for token in ("garbage", "a.00000000000000000000000000000000." + "x" * 43, ""):
        answer = await api.as_(token).call("GET", "/vendors", expect=401)
        assert answer.status == 401, token
    answer = await anonymous.call(
        "GET", "/vendors", headers={"Authorization": "Basic cm9vdDp4"}, expect=401
    )
    assert answer.status == 401
    # A refresh token is not an access token.
    tokens = (await login(api, PLATFORM_USER)).data
    assert (
        await api.as_(tokens["refresh_token"]).call("GET", "/auth/me", expect=401)
    ).status == 401


async def test_refresh_rotates_and_a_reused_refresh_token_ends_the_session(api: ApiClient):
    first = (await login(api, PLATFORM_USER)).data
    answer = await api.call(
        "POST", "/auth/refresh", {"refresh_token": first["refresh_token"]}, token=None
    )
    assert answer.status == 200
    second = answer.data
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    # The old access token is replaced too.
    assert (await api.as_(first["access_token"]).call("GET", "/auth/me", expect=401)).status == 401
    assert (await api.as_(second["access_token"]).call("GET", "/auth/me")).status == 200
    # Someone replays the first refresh token: the whole session ends, for both holders.
    replay = await api.call(
        "POST", "/auth/refresh", {"refresh_token": first["refresh_token"]}, token=None, expect=401
    )
    assert replay.status == 401
    assert (await api.as_(second["access_token"]).call("GET", "/auth/me", expect=401)).status == 401
    again = await api.call(
        "POST", "/auth/refresh", {"refresh_token": second["refresh_token"]}, token=None, expect=401
    )
    assert again.status == 401
    bad = await api.call(
        "POST", "/auth/refresh", {"refresh_token": "nonsense"}, token=None, expect=401
    )
    assert bad.status == 401 and bad.code == "unauthorized"


async def test_logout_revokes_access_and_refresh(api: ApiClient):
    tokens = (await login(api, PLATFORM_USER)).data
    session = api.as_(tokens["access_token"])
    assert (await session.call("POST", "/auth/logout")).status == 200
    assert (await session.call("GET", "/auth/me", expect=401)).status == 401
    answer = await api.call(
        "POST", "/auth/refresh", {"refresh_token": tokens["refresh_token"]}, token=None, expect=401
    )
    assert answer.status == 401
    # The fixture's own session is untouched.
    assert (await api.call("GET", "/auth/me")).status == 200
    assert (await api.as_(None).call("POST", "/auth/logout", expect=401)).status == 401


async def test_expired_access_tokens_are_refused(api: ApiClient, api_node: Any, redis_client: Any):
    from aquafleet.api.tokens import TOKEN_RE

    tokens = (await login(api, PLATFORM_USER)).data
    sid = TOKEN_RE.match(tokens["access_token"]).group(2)
    key = f"{api_node.settings.redis_prefix}:api:sess:{sid}"
    await redis_client.hset(key, "at_exp", 1)
    answer = await api.as_(tokens["access_token"]).call("GET", "/auth/me", expect=401)
    assert answer.status == 401 and "expired" in answer.body["message"]
    # The refresh token still works and gives a fresh access token.
    answer = await api.call(
        "POST", "/auth/refresh", {"refresh_token": tokens["refresh_token"]}, token=None
    )
    assert answer.status == 200
    assert (await api.as_(answer.data["access_token"]).call("GET", "/auth/me")).status == 200


async def test_changing_the_own_password_ends_every_session(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    other_session = (await login(api, "aaaa-agent")).data
    wrong = await a.agent.call(
        "PUT", "/auth/pwd", {"old_pwd": md5("nope"), "new_pwd": md5("new-pass-1")}, expect=401
    )
    assert wrong.status == 401 and wrong.code == "login_failed"
    invalid = await a.agent.call(
        "PUT", "/auth/pwd", {"old_pwd": md5(PASSWORD), "new_pwd": "plain"}, expect=422
    )
    assert invalid.status == 422
    answer = await a.agent.call(
        "PUT", "/auth/pwd", {"old_pwd": md5(PASSWORD), "new_pwd": md5("new-pass-1")}
    )
    assert answer.status == 201
    assert (await a.agent.call("GET", "/auth/me", expect=401)).status == 401
    assert (
        await api.as_(other_session["access_token"]).call("GET", "/auth/me", expect=401)
    ).status == 401
    answer = await api.call(
        "POST",
        "/auth/refresh",
        {"refresh_token": other_session["refresh_token"]},
        token=None,
        expect=401,
    )
    assert answer.status == 401
    assert (await login(api, "aaaa-agent", expect=401)).status == 401
    assert (await login(api, "aaaa-agent", "new-pass-1")).status == 200


async def test_a_disabled_account_cannot_refresh_or_log_in(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    from aquafleet.models.accounts import AccountState, AdminAccount

    tokens = (await login(api, "bbbb-admin")).data
    await AdminAccount.filter(username="bbbb-admin").update(state=AccountState.DISABLED)
    answer = await api.call(
        "POST", "/auth/refresh", {"refresh_token": tokens["refresh_token"]}, token=None, expect=401
    )
    assert answer.status == 401
    answer = await login(api, "bbbb-admin", expect=401)
    assert answer.status == 401 and answer.code == "login_failed"


async def test_logins_are_throttled_per_ip_and_per_account_and_ip(
    database_url: str, node_factory: Any
):
    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role

    node = await node_factory(
        database_url=database_url, admin_login_free_attempts=3, admin_login_per_ip=6
    )
    await create_account("limited", md5(PASSWORD), Role.PLATFORM)
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, f"http://127.0.0.1:{node.http_port}")
        for _ in range(3):
            assert (await login(api, "limited", "wrong", expect=401)).status == 401
        refused = await login(api, "limited", expect=429)  # from this address, the right one waits
        assert refused.status == 429 and refused.code == "rate_limited"
        assert int(refused.headers["Retry-After"]) == 1
        # Another account from the same address still may, until the address's limit.
        assert (await login(api, "someone-else", "x", expect=401)).status == 401
        assert (await login(api, "someone-else", "x", expect=401)).status == 401
        refused = await login(api, "someone-else", "x", expect=429)
        assert refused.status == 429  # the 7th attempt from this IP


async def test_guessing_the_old_password_is_rate_limited(database_url: str, node_factory: Any):
    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role

    node = await node_factory(database_url=database_url, admin_login_free_attempts=2)
    await create_account("guessed", md5(PASSWORD), Role.PLATFORM)
    async with aiohttp.ClientSession() as session:
        api = ApiClient(session, f"http://127.0.0.1:{node.http_port}")
        api.token = await api.login("guessed")
        for guess in ("one", "two"):
            answer = await api.call(
                "PUT", "/auth/pwd", {"old_pwd": md5(guess), "new_pwd": md5("n-1")}, expect=401
            )
            assert answer.status == 401
        right = {"old_pwd": md5(PASSWORD), "new_pwd": md5("new-pass-1")}
        answer = await api.call("PUT", "/auth/pwd", right, expect=429)
        assert answer.status == 429 and answer.code == "rate_limited"


@pytest.mark.production_hashing
async def test_stored_passwords_are_argon2id_at_production_cost(db: str):
    """The other tests hash cheaply; this one pins what production stores and verifies."""
    from aquafleet.models.accounts import AdminAccount, create_account, login_admin
    from aquafleet.models.tenancy import Role

    await create_account("pinned", md5(PASSWORD), Role.PLATFORM)
    stored = (await AdminAccount.get(username="pinned")).password_hash
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), stored
    _, principal = await login_admin("pinned", md5(PASSWORD))
    assert str(principal.role) == "platform"
    # An unknown name is verified against a dummy hash of the same cost (same answer time).
    from aquafleet.models import accounts

    assert accounts._DUMMY_HASH.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
