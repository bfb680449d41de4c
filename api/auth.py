"""Authentication: bearer tokens for consoles and apps, signed requests for vendors' servers,
admin login (throttled per IP, and per account and IP), refresh, logout (docs/api-auth.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import Field

from aquafleet.api.errors import ApiError, Unauthorized
from aquafleet.api.routing import PUBLIC, Call, RouteTable
from aquafleet.api.schemas import PasswordMd5, RequestModel, ResponseModel
from aquafleet.api.signing import (
    APP_KEY_RE,
    NONCE_RE,
    SIGNATURE_RE,
    SIGNED_HEADERS,
    TIMESTAMP_RE,
    app_secret,
    signature_matches,
    string_to_sign,
)
from aquafleet.api.tokens import TOKENS, TokenRejected, TokenService
from aquafleet.gateway.appkeys import REDIS, SETTINGS
from aquafleet.gateway.config import Settings
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import redis_errors
from aquafleet.models import ratelimit
from aquafleet.models.accounts import (
    AdminAccount,
    LoginRefused,
    login_admin,
    set_password,
    verify_password,
)
from aquafleet.models.tenancy import ADMIN_ROLES, ANY_ROLE, TECHNICIAN_ONLY, Principal, Role
from aquafleet.models.vendors import Vendor, VendorState

# Technicians log in as admins do; these endpoints are theirs too.
ACCOUNT_ROLES = ADMIN_ROLES | TECHNICIAN_ONLY

log = get_logger("aquafleet.api.auth")

SIGNED_SUBJECT_PREFIX = "app:"


class SignatureInvalid(Unauthorized):
    code = "signature_invalid"


@dataclass
class ApiAuthenticator:
    """Bearer tokens (Authorization: Bearer ...) or a vendor's signed request (X-Aq-*)."""

    tokens: TokenService
    redis: aioredis.Redis
    settings: Settings
    master_secret: bytes

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("use Authorization: Bearer <access token>")
            try:
                return await self.tokens.authenticate(token.strip())
            except TokenRejected as exc:
                raise Unauthorized(str(exc)) from None
        if any(name in request.headers for name in SIGNED_HEADERS):
            return await self.verify_signed(request, body)
        raise Unauthorized()

    async def verify_signed(self, request: web.Request, body: bytes) -> Principal:
        values = [request.headers.get(name, "") for name in SIGNED_HEADERS]
        key, timestamp, nonce, signature = values
        if not all(values):
            raise SignatureInvalid(f"a signed request needs all of {', '.join(SIGNED_HEADERS)}")
        if not (
            APP_KEY_RE.match(key)
            and TIMESTAMP_RE.match(timestamp)
            and NONCE_RE.match(nonce)
            and SIGNATURE_RE.match(signature)
        ):
            raise SignatureInvalid("malformed signature headers (see docs/api-auth.md)")
        window = self.settings.api_signature_window_s
        if abs(time.time() - int(timestamp)) > window:
            raise SignatureInvalid(f"the timestamp is more than {window} s away from ours")
        vendor = await Vendor.get_or_none(app_key=key)
        if vendor is None or vendor.state not in (VendorState.ACTIVE, VendorState.INACTIVE):
            raise SignatureInvalid("unknown or revoked app key")
        text = string_to_sign(
            request.method,
            request.raw_path.split("?", 1)[0],
            request.query.items(),
            timestamp,
            nonce,
            body,
        )
        if not signature_matches(app_secret(self.master_secret, key), text, signature):
            raise SignatureInvalid("the signature does not match the request")
        nonce_key = f"{self.settings.redis_prefix}:api:nonce:{key}:{nonce}"
        with redis_errors("nonce check"):
            fresh = await self.redis.set(nonce_key, b"1", nx=True, ex=2 * window + 1)
        if not fresh:
            raise SignatureInvalid("this nonce was already used (a replayed request)")
        return Principal(Role.VENDOR, SIGNED_SUBJECT_PREFIX + key, vendor_code=vendor.code)


def is_signed(principal: Principal) -> bool:
    return principal.subject.startswith(SIGNED_SUBJECT_PREFIX)


# ----------------------------------------------------------------------------- schemas


class LoginIn(RequestModel):
    user: str = Field(min_length=1, max_length=64, description="admin user name")
    pwd: PasswordMd5


class RefreshIn(RequestModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class PasswordChangeIn(RequestModel):
    old_pwd: PasswordMd5
    new_pwd: PasswordMd5


class TokenOut(ResponseModel):
    access_token: str
    refresh_token: str
    expires_in: int = Field(description="seconds the access token lives")
    refresh_expires_in: int = Field(description="seconds the refresh token lives")
    token_type: str = Field(description='always "Bearer"')
    role: Role
    vid: str | None = Field(description="the caller's vendor code; null for the platform")
    agent_id: int | None = Field(description="the caller's agent/dealer node; else null")


class MeOut(ResponseModel):
    role: Role
    subject: str = Field(description="admin account id, member uid, or app:<app key>")
    vid: str | None
    agent_id: int | None
    agent_path: str | None
    user: str | None = Field(description="admin user name; null for members and signed calls")


def agent_id_of(principal: Principal) -> int | None:
    if principal.agent_path is None:
        return None
    return int(principal.agent_path.strip("/").split("/")[-1])


def token_out(pair: dict[str, object], principal: Principal) -> TokenOut:
    return TokenOut.model_validate(
        {
            **pair,
            "role": principal.role,
            "vid": principal.vendor_code,
            "agent_id": agent_id_of(principal),
        }
    )


# ----------------------------------------------------------------------------- routes

routes = RouteTable("auth", "Logins, tokens and the caller's own account (docs/api-auth.md).")


def _settings(call: Call) -> Settings:
    return call.app[SETTINGS]


def _redis(call: Call) -> aioredis.Redis:
    return call.app[REDIS]


def _guess_key(call: Call, username: str) -> str:
    """The back-off key of password guesses for one user name from one client address."""
    subject = f"{username.lower()}|{call.client_ip}"
    return ratelimit.rate_key(_settings(call).redis_prefix, "admin-login", subject)


def _guess_backoff(settings: Settings) -> ratelimit.Backoff:
    return ratelimit.Backoff(
        free=settings.admin_login_free_attempts,
        base_s=1,
        max_s=settings.admin_login_max_wait_s,
        forget_s=settings.admin_login_window_s,
    )


async def _limit_login(call: Call, username: str) -> None:
    """Per client IP a cap; per user name and IP growing waits (no lock-out of the account).

    A cap per user name alone would let anyone lock an admin out with a few wrong passwords;
    the waits slow guessing from one address while the right password from another works.
    """
    settings = _settings(call)
    redis = _redis(call)
    per_ip = await ratelimit.hit(
        redis,
        ratelimit.rate_key(settings.redis_prefix, "admin-login-ip", call.client_ip),
        settings.admin_login_per_ip,
        settings.admin_login_window_s,
    )
    per_ip.raise_if_refused("login attempts from this address")
    guesses = await ratelimit.attempt(redis, _guess_key(call, username), _guess_backoff(settings))
    guesses.raise_if_refused("wrong passwords for this user name from this address")


@routes.post(
    "/auth/login",
    summary="Admin login (user name + MD5 password)",
    roles=PUBLIC,
    body=LoginIn,
    response=TokenOut,
    status=200,
    errors=(401, 429),
    description="Platform, vendor, agent and dealer accounts log in here. Limited per client "
    "IP; wrong passwords for a user name from one IP make the next attempt from there wait "
    "longer each time (429 with Retry-After), without locking the account out elsewhere.",
)
async def admin_login(call: Call) -> TokenOut:
    body: LoginIn = call.body
    await _limit_login(call, body.user)
    try:
        account, principal = await login_admin(body.user, body.pwd)
    except LoginRefused as exc:
        log.info("admin_login_refused", user=body.user, ip=call.client_ip, reason=exc.message)
        raise
    await ratelimit.reset(_redis(call), _guess_key(call, body.user))
    pair = await call.app[TOKENS].issue(principal)
    log.info("admin_login", account=account.id, role=str(principal.role), ip=call.client_ip)
    return token_out(dict(pair), principal)


@routes.post(
    "/auth/refresh",
    summary="New access and refresh tokens for a refresh token (rotation)",
    roles=PUBLIC,
    body=RefreshIn,
    response=TokenOut,
    status=200,
    errors=(401,),
    description="The refresh token is replaced; using an already replaced one ends the "
    "session (a sign it was stolen). Admins and members alike.",
)
async def refresh_tokens(call: Call) -> TokenOut:
    body: RefreshIn = call.body
    try:
        pair, principal = await call.app[TOKENS].refresh(body.refresh_token)
    except TokenRejected as exc:
        raise Unauthorized(str(exc)) from None
    return token_out(dict(pair), principal)


@routes.post(
    "/auth/logout",
    summary="End this session (access and refresh token)",
    roles=ANY_ROLE | TECHNICIAN_ONLY,
    status=200,
)
async def logout(call: Call) -> None:
    if is_signed(call.principal):
        raise ApiError("signed requests have no session", code="bad_request", status=400)
    _, _, token = call.request.headers.get("Authorization", "").partition(" ")
    try:
        await call.app[TOKENS].revoke(token.strip())
    except TokenRejected as exc:
        raise Unauthorized(str(exc)) from None


@routes.get(
    "/auth/me", summary="Who the caller is", roles=ANY_ROLE | TECHNICIAN_ONLY, response=MeOut
)
async def me(call: Call) -> MeOut:
    principal = call.principal
    user = None
    if principal.role in ACCOUNT_ROLES and principal.subject.isdigit():
        account = await AdminAccount.get_or_none(id=int(principal.subject))
        user = account.username if account else None
    return MeOut(
        role=principal.role,
        subject=principal.subject,
        vid=principal.vendor_code,
        agent_id=agent_id_of(principal),
        agent_path=principal.agent_path,
        user=user,
    )


@routes.put(
    "/auth/pwd",
    summary="Change the caller's own admin password",
    roles=ACCOUNT_ROLES,
    body=PasswordChangeIn,
    errors=(401, 429),
    description="Every session of the account ends (this one too): log in again.",
)
async def change_own_password(call: Call) -> None:
    body: PasswordChangeIn = call.body
    principal = call.principal
    if is_signed(principal) or not principal.subject.isdigit():
        raise ApiError("only an admin login can change its password", code="forbidden", status=403)
    account = await AdminAccount.get_or_none(id=int(principal.subject))
    if account is None:
        raise Unauthorized("the account no longer exists")
    # Guesses of the old password wait like login guesses from this address (a stolen token
    # must not turn into a fast password oracle).
    key = _guess_key(call, account.username)
    decision = await ratelimit.attempt(_redis(call), key, _guess_backoff(_settings(call)))
    decision.raise_if_refused("wrong passwords for this account from this address")
    if not await verify_password(account.password_hash, body.old_pwd):
        raise ApiError("the old password is wrong", code="login_failed", status=401)
    await ratelimit.reset(_redis(call), key)
    await set_password(account, body.new_pwd)
    await call.app[TOKENS].revoke_subject(principal.role, principal.subject)
