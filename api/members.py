"""Members (AA-01..10), member login, and the SMS code endpoints (docs/api-members.md).

Thin: the rules live in models.members and models.sms_codes. This module checks who may see
which member (tenancy: another tenant's uid answers 404), shapes the answers per role (seed
note 1), applies the login limits, and turns provider failures into answers.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import ClassVar, Literal

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import Field
from tortoise.queryset import QuerySet

from api.errors import (
    ApiError,
    ConflictError,
    Forbidden,
    NotFoundError,
    RateLimited,
    Unavailable,
    ValidationFailed,
    register_domain_error,
)
from api.routing import AUTHENTICATOR, PUBLIC, Call, Page, RouteTable
from api.schemas import (
    Email,
    ListQuery,
    Mobile,
    PasswordMd5,
    PathParams,
    Query,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    VendorCode,
    text,
)
from api.tokens import TOKENS, TokenService
from gateway.appkeys import REDIS, SETTINGS
from gateway.config import Settings
from gateway.logs import get_logger
from gateway.providers.sms import AliyunSmsConfig, AliyunSmsSender, LogSmsSender
from gateway.providers.wechat import WechatClient
from models import ratelimit
from models.accounts import LoginRefused
from models.devices import bound_device_counts
from models.errors import NotFound
from models.members import (
    LOGIN_ALLOWED,
    Member,
    Members,
    MemberState,
    WechatApp,
    WechatCodeInvalid,
    WechatError,
    WrongPassword,
    agent_path_of,
    bind_wechat,
    change_password,
    deregister,
    get_member,
    login_with_password,
    mobile_is_free,
    unbind_wechat,
    update_member,
)
from models.sms_codes import (
    CodePurpose,
    SmsCodeError,
    SmsCodes,
    SmsError,
    SmsRecipientRejected,
    SmsSender,
    SmsThrottled,
    derive_code_secret,
)
from models.tenancy import (
    ADMIN_ROLES,
    PLATFORM_ONLY,
    PLATFORM_VENDOR_OR_MEMBER,
    Principal,
    Role,
)
from models.vendors import Vendor, VendorState

log = get_logger("aquafleet.api.members")

MEMBERS: web.AppKey[Members] = web.AppKey("members", Members)
WECHAT: web.AppKey[WechatClient] = web.AppKey("wechat", WechatClient)
HTTP_TIMEOUT_S = 10.0

register_domain_error(SmsCodeError, 422)
register_domain_error(WrongPassword, 401)
register_domain_error(WechatCodeInvalid, 422)

UID_PATTERN = r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$"
Uid = Field(pattern=UID_PATTERN, description="member id: vendor code + 12-digit serial + check")
SmsCode = Field(pattern=r"^[0-9]{6}$", description="the 6-digit SMS verification code")


# ----------------------------------------------------------------------------- schemas


class MemberPath(PathParams):
    uid: str = Uid


class WeixinOut(ResponseModel):
    nick: str = Field(description="WeChat nickname")
    avatar: str = Field(description="WeChat avatar URL")
    sex: int = Field(description="0 unknown, 1 male, 2 female")
    sbc_tms: int | None = Field(description="when the user followed the account, unix seconds")
    OpenID: str | None = Field(description="openid in the vendor's app; null for agents/dealers")
    UnionID: str | None = Field(description="unionid; null for agents/dealers or when unknown")


class MemberOut(ResponseModel):
    """A member as AA-01/AA-03 answer it; fields marked "admins only" are null for members."""

    state: MemberState = Field(description="0 disabled, 1 inactive, 2 active, 3 deregistered")
    type: int
    uid: str
    name: str
    avatar: str
    mobile: str | None = Field(description="null for WeChat-only or deregistered members")
    email: str
    area: str
    address: str
    reg_tms: UtcDateTime
    remark: str | None = Field(description="admins only: the admins' note on the member")
    vip: bool
    bonus: int = Field(description="bonus points (integer)")
    devices: int = Field(description="devices bound to the member")
    vid: str | None = Field(description="admins only: the member's vendor code")
    rid: str | None = Field(description="admins only: the referrer's uid")
    agent_id: int | None = Field(description="admins only: the agent/dealer node it belongs to")
    has_password: bool = Field(description="false: the member logs in by SMS code or WeChat")
    weixin: WeixinOut | None = Field(description="the bound WeChat account, null when none")


class MemberLoginOut(ResponseModel):
    uid: str
    access_token: str
    refresh_token: str
    expires_in: int = Field(description="seconds the access token lives")
    refresh_expires_in: int = Field(description="seconds the refresh token lives")
    token_type: str = Field(description='always "Bearer"')
    role: Role
    vid: str
    created: bool = Field(description="true when this call registered the member")


class MemberListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "uid": "uid",
        "name": "name",
        "reg_tms": "reg_tms",
        "bonus": "bonus",
        "state": "state",
    }
    sort: Literal["uid", "name", "reg_tms", "bonus", "state"] = "uid"
    state: MemberState | None = Field(None, description="only members in this state")
    type: int | None = Field(None, ge=0, le=255)
    vip: bool | None = None
    mobile: str | None = Field(None, max_length=11, description="mobile equals")
    name: str | None = Field(None, max_length=64, description="name contains")
    vid: VendorCode | None = Field(None, description="platform only: members of this vendor")
    agent_id: int | None = Field(None, ge=1, description="members of this node and below")


class CodeQuery(Query):
    """AA-02A and the login code: which vendor's app, which number."""

    vid: VendorCode
    mobile: Mobile


class MemberCodeQuery(Query):
    """AA-06A / AA-07A: the number to send the code to (uid, if given, must be the path's)."""

    mobile: Mobile
    uid: str | None = Field(None, pattern=UID_PATTERN)


class RegisterIn(RequestModel):
    """AA-02B: mobile and code prove the number; pwd is optional (login by code works)."""

    mobile: Mobile
    code: str = SmsCode
    name: str = text(64, min_length=1)
    vid: VendorCode
    rid: str | None = Field(None, pattern=UID_PATTERN, description="referrer's uid")
    pwd: PasswordMd5 | None = None
    avatar: str = text(255, default="")
    email: Email = ""
    area: str = text(128, default="")
    address: str = text(255, default="")


class MemberUpdate(RequestModel):
    """AA-04: only the fields given change. Admin-only fields answer 403 for members."""

    uid: str | None = Field(None, pattern=UID_PATTERN, description="if given, the path's uid")
    vid: VendorCode | None = Field(None, description="if given, the member's own vendor")
    name: str | None = text(64, default=None)
    avatar: str | None = text(255, default=None)
    email: Email | None = None
    area: str | None = text(128, default=None)
    address: str | None = text(255, default=None)
    mobile: Mobile | None = Field(None, description="admins only; members use AA-06 with a code")
    remark: str | None = text(255, default=None)
    rid: str | None = Field(
        None,
        pattern=rf"({UID_PATTERN[1:-1]})?",
        description="referrer uid (admins; members only while they have none); '' clears",
    )
    state: Literal[0, 1, 2] | None = Field(None, description="admins only: 0 disable, 2 enable")
    type: int | None = Field(None, ge=0, le=255, description="admins only")
    vip: bool | None = Field(None, description="admins only")
    agent_id: int | None = Field(None, ge=1, description="admins only: agent/dealer node")


class PasswordIn(RequestModel):
    """AA-05: members give old_pwd when they have a password; admins need not."""

    uid: str | None = Field(None, pattern=UID_PATTERN)
    old_pwd: PasswordMd5 | None = None
    new_pwd: PasswordMd5


class MobileIn(RequestModel):
    uid: str | None = Field(None, pattern=UID_PATTERN)
    mobile: Mobile
    code: str = SmsCode


class ResetIn(RequestModel):
    uid: str | None = Field(None, pattern=UID_PATTERN)
    pwd: PasswordMd5
    code: str = SmsCode


class BindIn(RequestModel):
    """AA-08: the code WeChat gave the app (web OAuth `code`, or the mini program's js_code)."""

    vid: VendorCode
    code: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.~-]+$")
    flow: Literal["web", "mini"] = Field("web", description="web OAuth or mini program login")


class MemberLoginIn(RequestModel):
    """Member login: mobile with either pwd (MD5) or an SMS login code."""

    vid: VendorCode
    mobile: Mobile
    pwd: PasswordMd5 | None = None
    code: str | None = Field(None, pattern=r"^[0-9]{6}$", description="SMS login code")


# ----------------------------------------------------------------------------- helpers


def _settings(app: web.Application) -> Settings:
    return app[SETTINGS]


def _redis(app: web.Application) -> aioredis.Redis:
    return app[REDIS]


def _same_uid(given: str | None, uid: str) -> None:
    if given is not None and given != uid:
        raise ValidationFailed(
            "body uid: differs from the path's uid",
            data=[{"field": "uid", "message": "differs from the path's uid"}],
        )


async def visible_member(principal: Principal, uid: str) -> Member:
    """The member if it is in the caller's subtree (a member: itself); 404 otherwise."""
    try:
        member = await get_member(uid)
    except NotFound:
        raise NotFoundError(f"member {uid} not found") from None
    if principal.role is Role.MEMBER:
        if principal.subject != member.uid:
            raise NotFoundError(f"member {uid} not found")
        return member
    if not principal.may_see_node(member.vendor_id, await agent_path_of(member)):
        raise NotFoundError(f"member {uid} not found")
    return member


def member_out(member: Member, viewer: Principal, devices: int = 0) -> MemberOut:
    """`devices`: how many devices are bound to the member (models.devices.bound_device_counts)."""
    admin = viewer.role in ADMIN_ROLES
    full_weixin = viewer.role in (Role.PLATFORM, Role.VENDOR, Role.MEMBER)
    weixin = None
    if member.wx_openid is not None:
        weixin = WeixinOut(
            nick=member.wx_nick,
            avatar=member.wx_avatar,
            sex=member.wx_sex,
            sbc_tms=member.wx_sbc_tms,
            OpenID=member.wx_openid if full_weixin else None,
            UnionID=member.wx_unionid if full_weixin else None,
        )
    return MemberOut(
        state=member.state,
        type=member.type,
        uid=member.uid,
        name=member.name,
        avatar=member.avatar,
        mobile=member.mobile,
        email=member.email,
        area=member.area,
        address=member.address,
        reg_tms=member.reg_tms,
        remark=member.remark if admin else None,
        vip=member.vip,
        bonus=member.bonus,
        devices=devices,
        vid=member.vendor_id if admin else None,
        rid=member.referrer_id if admin else None,
        agent_id=member.agent_id if admin else None,
        has_password=member.password_hash is not None,
        weixin=weixin,
    )


def member_principal(member: Member) -> Principal:
    return Principal(Role.MEMBER, member.uid, vendor_code=member.vendor_id)


async def _login_answer(call: Call, member: Member, *, created: bool = False) -> MemberLoginOut:
    principal = member_principal(member)
    pair = await call.app[TOKENS].issue(principal)
    return MemberLoginOut(
        uid=member.uid, role=Role.MEMBER, vid=member.vendor_id, created=created, **pair
    )


async def _send_code(call: Call, purpose: CodePurpose, vendor_code: str, mobile: str) -> None:
    try:
        await call.app[MEMBERS].send_code(purpose, vendor_code, mobile, ip=call.client_ip)
    except SmsRecipientRejected:
        raise ApiError(
            "the SMS provider refuses this number", code="sms_mobile_rejected", status=422
        ) from None
    except SmsThrottled:
        raise RateLimited(
            "the SMS provider limits messages to this number; try again later",
            code="sms_throttled",
            retry_after_s=60,
        ) from None
    except SmsError as exc:
        log.warning(
            "sms_send_failed", purpose=purpose.value, error=type(exc).__name__, why=str(exc)
        )
        raise Unavailable(
            "the SMS could not be sent; try again later", code="sms_unavailable"
        ) from None


async def _usable_vendor(vid: str) -> Vendor:
    vendor = await Vendor.get_or_none(code=vid)
    if vendor is None or vendor.state not in (VendorState.ACTIVE, VendorState.INACTIVE):
        raise NotFoundError(f"vendor {vid} not found")
    return vendor


async def _limit_member_login(call: Call, mobile: str | None) -> None:
    settings = _settings(call.app)
    prefix, window = settings.redis_prefix, settings.member_login_window_s
    limits: list[tuple[str, int, float]] = [
        (
            ratelimit.rate_key(prefix, "member-login-ip", call.client_ip),
            settings.member_login_per_ip,
            window,
        )
    ]
    if mobile is not None:
        limits.append(
            (
                ratelimit.rate_key(prefix, "member-login-mobile", mobile),
                settings.member_login_per_mobile,
                window,
            )
        )
    decision = await ratelimit.hit_all(_redis(call.app), limits)
    decision.raise_if_refused("login attempts")


async def _end_sessions(call: Call, member: Member) -> None:
    await call.app[TOKENS].revoke_subject(Role.MEMBER, member.uid)


# ----------------------------------------------------------------------------- routes

routes = RouteTable(
    "members",
    "Members (会员, AA-01..10), member login and SMS codes (docs/api-members.md).",
)

# Fixed paths are declared before /users/{uid}: aiohttp matches routes in the order added.


@routes.get(
    "/users/code",
    seed="AA-02A",
    summary="Send a registration code by SMS",
    roles=PUBLIC,
    query=CodeQuery,
    status=200,
    errors=(404, 409, 429, 503),
    description="Public (the person has no account yet). One code a minute and ten a day "
    "per number, thirty requests an hour per client IP (429 with Retry-After). A number "
    "already registered with the vendor answers 409 mobile_taken.",
)
async def send_register_code(call: Call) -> None:
    query: CodeQuery = call.query
    await _usable_vendor(query.vid)
    if not await mobile_is_free(query.vid, query.mobile):
        raise ConflictError(f"mobile {query.mobile} is already registered", code="mobile_taken")
    await _send_code(call, CodePurpose.REGISTER, query.vid, query.mobile)


@routes.post(
    "/users",
    seed="AA-02B",
    summary="Register a member with the code sent by AA-02A",
    roles=PUBLIC,
    body=RegisterIn,
    response=MemberLoginOut,
    errors=(404, 409, 422, 429),
    description="Public. The code proves the number; the answer logs the new member in "
    "(tokens). rid must be a member of the same vendor; the new member joins the referrer's "
    "agent/dealer node. Limited per client IP like logins.",
)
async def register_member(call: Call) -> MemberLoginOut:
    body: RegisterIn = call.body
    await _usable_vendor(body.vid)
    await _limit_member_login(call, None)
    member = await call.app[MEMBERS].register(
        vendor_code=body.vid,
        mobile=body.mobile,
        code=body.code,
        name=body.name,
        password_md5=body.pwd,
        referrer_uid=body.rid,
        profile={
            "avatar": body.avatar,
            "email": body.email,
            "area": body.area,
            "address": body.address,
        },
    )
    log.info("member_registered", uid=member.uid, ip=call.client_ip)
    return await _login_answer(call, member, created=True)


@routes.get(
    "/users/login/code",
    summary="Send a login code by SMS",
    roles=PUBLIC,
    query=CodeQuery,
    status=200,
    errors=(404, 429, 503),
    description="Not in the seed: the code for POST /users/login with mobile + code. Sent "
    "only to registered members who may log in; the answer is the same either way, so it "
    "does not tell who is registered. Limits as for AA-02A.",
)
async def send_login_code(call: Call) -> None:
    query: CodeQuery = call.query
    await _usable_vendor(query.vid)
    member = await Member.get_or_none(vendor_id=query.vid, mobile=query.mobile)
    if member is None or member.state not in LOGIN_ALLOWED:
        # Count the request like a real one, so the answer (and its limits) give nothing away.
        await call.app[MEMBERS].codes.check_limits(query.mobile, ip=call.client_ip)
        return
    await _send_code(call, CodePurpose.LOGIN, query.vid, query.mobile)


@routes.post(
    "/users/login",
    summary="Member login (mobile + password, or mobile + SMS code)",
    roles=PUBLIC,
    body=MemberLoginIn,
    response=MemberLoginOut,
    status=200,
    errors=(401, 422, 429),
    description="Give exactly one of pwd (MD5) or code. Limited per mobile and per client IP "
    "(settings member_login_*; 429 with Retry-After). Tokens refresh and end through "
    "/auth/refresh and /auth/logout.",
)
async def member_login(call: Call) -> MemberLoginOut:
    body: MemberLoginIn = call.body
    if (body.pwd is None) == (body.code is None):
        raise ValidationFailed(
            "body: give either pwd or code",
            data=[{"field": "pwd", "message": "give either pwd or code"}],
        )
    await _limit_member_login(call, body.mobile)
    if body.pwd is not None:
        member = await login_with_password(body.vid, body.mobile, body.pwd)
        if member is None:
            log.info("member_login_refused", vid=body.vid, ip=call.client_ip)
            raise LoginRefused("mobile or password is wrong")
    else:
        assert body.code is not None
        try:
            member = await call.app[MEMBERS].login_with_code(body.vid, body.mobile, body.code)
        except SmsCodeError as exc:
            raise LoginRefused(f"mobile or code is wrong ({exc.message})") from None
        except NotFound:
            raise LoginRefused("mobile or code is wrong") from None
    await ratelimit.reset(
        _redis(call.app),
        ratelimit.rate_key(_settings(call.app).redis_prefix, "member-login-mobile", body.mobile),
    )
    log.info("member_login", uid=member.uid, ip=call.client_ip)
    return await _login_answer(call, member)


@routes.post(
    "/users/bind",
    seed="AA-08",
    summary="Bind WeChat to a member; sign in with WeChat (registers when unknown)",
    roles=PUBLIC,
    body=BindIn,
    response=MemberLoginOut,
    status=200,
    errors=(401, 403, 404, 409, 422, 429, 503),
    description="With a member's bearer token: binds that member's WeChat account. Without "
    "one: signs in the member bound to this WeChat account, registering a new member when "
    "there is none (seed: 不存在则注册). Either way the answer carries fresh tokens. Limited "
    "per client IP.",
)
async def bind_weixin(call: Call) -> MemberLoginOut:
    body: BindIn = call.body
    member: Member | None = None
    if call.request.headers.get("Authorization"):
        principal = await call.app[AUTHENTICATOR].authenticate(call.request, b"")
        if principal.role is not Role.MEMBER:
            raise Forbidden("only a member binds their own WeChat account")
        member = await visible_member(principal, principal.subject)
        if member.vendor_id != body.vid:
            raise ValidationFailed(
                "body vid: not the member's vendor",
                data=[{"field": "vid", "message": "not the member's vendor"}],
            )
    else:
        await _limit_member_login(call, None)
    vendor = await _usable_vendor(body.vid)
    try:
        profile = await call.app[WECHAT].profile_for_code(
            WechatApp(vendor.mp_appid, vendor.mp_secret), body.code, body.flow
        )
    except WechatCodeInvalid:
        raise
    except WechatError as exc:
        log.warning("wechat_failed", vid=body.vid, error=type(exc).__name__, why=str(exc))
        raise Unavailable(
            "WeChat sign-in is not available; try again later", code="wechat_unavailable"
        ) from None
    bound, created = await bind_wechat(body.vid, profile, member=member)
    log.info("member_wechat", uid=bound.uid, created=created, bound_to_login=member is not None)
    return await _login_answer(call, bound, created=created)


@routes.get(
    "/users",
    seed="AA-01",
    summary="List members (what each role sees: docs/api-members.md)",
    roles=ADMIN_ROLES,
    query=MemberListQuery,
    response=MemberOut,
    many=True,
    description="Platform: every vendor's members (filter by vid); vendor: its own; agent or "
    "dealer: the members of its node and the nodes below. Members call AA-03 for themselves.",
)
async def list_members(call: Call) -> Page:
    query: MemberListQuery = call.query
    principal = call.principal
    qs: QuerySet[Member] = Member.all()
    if principal.role is not Role.PLATFORM:
        qs = qs.filter(vendor_id=principal.vendor_code)
    if query.vid is not None:
        qs = qs.filter(vendor_id=query.vid)
    if principal.role in (Role.AGENT, Role.DEALER):
        qs = qs.filter(agent__path__startswith=principal.agent_path or "/none/")
    if query.agent_id is not None:
        from models.agents import Agent

        node = await Agent.get_or_none(id=query.agent_id)
        if node is None or not principal.may_see_node(node.vendor_id, node.path):
            raise NotFoundError(f"agent {query.agent_id} not found")
        qs = qs.filter(agent__path__startswith=node.path)
    if query.state is not None:
        qs = qs.filter(state=query.state)
    if query.type is not None:
        qs = qs.filter(type=query.type)
    if query.vip is not None:
        qs = qs.filter(vip=query.vip)
    if query.mobile:
        qs = qs.filter(mobile=query.mobile)
    if query.name:
        qs = qs.filter(name__icontains=query.name)
    total = await qs.count()
    rows = await qs.order_by(*query.ordering(pk="uid")).offset(query.offset).limit(query.limit)
    counts = await bound_device_counts([m.uid for m in rows])
    return Page([member_out(m, principal, counts.get(m.uid, 0)) for m in rows], total)


@routes.get(
    "/users/{uid}",
    seed="AA-03",
    summary="Read a member",
    roles=ADMIN_ROLES | {Role.MEMBER},
    params=MemberPath,
    response=MemberOut,
    description="A member reads only themself; admins read members of their subtree.",
)
async def read_member(call: Call) -> MemberOut:
    member = await visible_member(call.principal, call.params.uid)
    counts = await bound_device_counts([member.uid])
    return member_out(member, call.principal, counts.get(member.uid, 0))


@routes.put(
    "/users/{uid}",
    seed="AA-04",
    summary="Update a member's profile",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    body=MemberUpdate,
    response=MemberOut,
    errors=(403, 404, 409),
    description="Only the fields given change. Members may change name, avatar, email, area, "
    "address, and rid while they have none; mobile, remark, state, type, vip, agent_id and a "
    "set rid are for platform and vendor admins (403 for members). vid cannot change.",
)
async def update_member_profile(call: Call) -> MemberOut:
    body: MemberUpdate = call.body
    principal = call.principal
    member = await visible_member(principal, call.params.uid)
    _same_uid(body.uid, member.uid)
    given = body.model_dump(include=body.model_fields_set - {"uid"})
    if "vid" in given and given.pop("vid") != member.vendor_id:
        raise ValidationFailed(
            "body vid: a member cannot move to another vendor",
            data=[{"field": "vid", "message": "a member cannot move to another vendor"}],
        )
    if "rid" in given:
        given["referrer_id"] = given.pop("rid") or None
    is_member = principal.role is Role.MEMBER
    admin_only = {"mobile", "remark", "state", "type", "vip", "agent_id"}
    if is_member:
        refused = sorted(admin_only & set(given))
        if "referrer_id" in given and member.referrer_id is not None:
            refused.append("rid")
        if refused:
            raise Forbidden(f"only an admin may change {', '.join(refused)}")
    changes = {k: v for k, v in given.items() if v is not None or k == "referrer_id"}
    was_blocked = member.state == MemberState.DISABLED
    member = await update_member(member, changes)
    if member.state == MemberState.DISABLED and not was_blocked:
        await _end_sessions(call, member)
    counts = await bound_device_counts([member.uid])
    return member_out(member, principal, counts.get(member.uid, 0))


@routes.put(
    "/users/{uid}/pwd",
    seed="AA-05",
    summary="Change a member's password",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    body=PasswordIn,
    errors=(401, 404),
    description="A member gives old_pwd (unless it has no password yet); platform and vendor "
    "admins set a new one without it. Every session of the member ends.",
)
async def change_member_password(call: Call) -> None:
    body: PasswordIn = call.body
    principal = call.principal
    member = await visible_member(principal, call.params.uid)
    _same_uid(body.uid, member.uid)
    await change_password(
        member,
        body.new_pwd,
        old_password_md5=body.old_pwd,
        require_old=principal.role is Role.MEMBER,
    )
    await _end_sessions(call, member)


@routes.get(
    "/users/{uid}/mob/code",
    seed="AA-06A",
    summary="Send a mobile-change code to the new number",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    query=MemberCodeQuery,
    status=200,
    errors=(404, 409, 429, 503),
)
async def send_mobile_code(call: Call) -> None:
    query: MemberCodeQuery = call.query
    member = await visible_member(call.principal, call.params.uid)
    _same_uid(query.uid, member.uid)
    if not await mobile_is_free(member.vendor_id, query.mobile):
        raise ConflictError(f"mobile {query.mobile} is already registered", code="mobile_taken")
    await _send_code(call, CodePurpose.MOBILE, member.vendor_id, query.mobile)


@routes.put(
    "/users/{uid}/mob",
    seed="AA-06B",
    summary="Change a member's mobile number (with the code sent to it)",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    body=MobileIn,
    errors=(404, 409, 422),
)
async def change_member_mobile(call: Call) -> None:
    body: MobileIn = call.body
    member = await visible_member(call.principal, call.params.uid)
    _same_uid(body.uid, member.uid)
    await call.app[MEMBERS].change_mobile(member, body.mobile, body.code)


async def _reset_target(call: Call, uid: str, mobile: str | None) -> Member:
    """AA-07 is public (a member who forgot the password has no token): the code proves it."""
    principal = call.principal_or_none
    if principal is None and call.request.headers.get("Authorization"):
        principal = await call.app[AUTHENTICATOR].authenticate(call.request, b"")
    if principal is not None:
        if principal.role not in PLATFORM_VENDOR_OR_MEMBER:
            raise Forbidden(f"a {principal.role} account may not call this endpoint")
        member = await visible_member(principal, uid)
    else:
        try:
            member = await get_member(uid)
        except NotFound:
            raise NotFoundError("no member with this uid and mobile") from None
    if mobile is not None and not (
        member.mobile is not None and hmac.compare_digest(member.mobile, mobile)
    ):
        raise NotFoundError("no member with this uid and mobile")
    return member


@routes.get(
    "/users/{uid}/rst/code",
    seed="AA-07A",
    summary="Send a password-reset code to the member's mobile",
    roles=PUBLIC,
    params=MemberPath,
    query=MemberCodeQuery,
    status=200,
    errors=(401, 403, 404, 429, 503),
    description="Public (seed: A#+C; but who forgot the password has no token): the mobile "
    "must be the member's own. With a token, the seed's roles apply.",
)
async def send_reset_code(call: Call) -> None:
    query: MemberCodeQuery = call.query
    _same_uid(query.uid, call.params.uid)
    member = await _reset_target(call, call.params.uid, query.mobile)
    if member.state not in LOGIN_ALLOWED:
        raise NotFoundError("no member with this uid and mobile")
    await _send_code(call, CodePurpose.RESET, member.vendor_id, query.mobile)


@routes.put(
    "/users/{uid}/rst",
    seed="AA-07B",
    summary="Reset a member's password with the code",
    roles=PUBLIC,
    params=MemberPath,
    body=ResetIn,
    errors=(401, 403, 404, 422),
    description="Public like AA-07A. Every session of the member ends.",
)
async def reset_member_password(call: Call) -> None:
    body: ResetIn = call.body
    _same_uid(body.uid, call.params.uid)
    if not call.request.headers.get("Authorization"):  # anonymous: tells no one who exists
        members = call.app[MEMBERS]
        member = await members.reset_password_anonymously(call.params.uid, body.code, body.pwd)
        await _end_sessions(call, member)
        return
    member = await _reset_target(call, call.params.uid, None)
    if member.state not in LOGIN_ALLOWED:
        raise NotFoundError("no member with this uid and mobile")
    await call.app[MEMBERS].reset_password(member, body.code, body.pwd)
    await _end_sessions(call, member)


@routes.delete(
    "/users/{uid}/bind",
    seed="AA-09",
    summary="Unbind a member's WeChat account",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    errors=(404, 409),
    description="409 last_login_method when the member has no mobile (WeChat is its only way "
    "in). The seed writes the path /users/<UID>bind; the slash is assumed.",
)
async def unbind_weixin(call: Call) -> None:
    member = await visible_member(call.principal, call.params.uid)
    await unbind_wechat(member)


@routes.delete(
    "/users/{uid}",
    seed="AA-10",
    summary="Deregister a member (platform admin only)",
    roles=PLATFORM_ONLY,
    params=MemberPath,
    errors=(404,),
    description="The member can no longer log in and its personal data is erased; the row, "
    "uid, vendor, agent, referrer, bonus and VIP flag stay, because orders, ledgers and "
    "commissions refer to them (docs/api-members.md). Repeating it answers 204 again.",
)
async def deregister_member(call: Call) -> None:
    member = await visible_member(call.principal, call.params.uid)
    await deregister(member)
    await _end_sessions(call, member)
    log.info("member_deregistered", uid=member.uid)


# ----------------------------------------------------------------------------- the node side


def build_sms_sender(settings: Settings, session: aiohttp.ClientSession) -> SmsSender:
    if settings.sms_provider == "aliyun":
        secret = settings.sms_access_key_secret
        return AliyunSmsSender(
            session,
            AliyunSmsConfig(
                access_key_id=settings.sms_access_key_id,
                access_key_secret=secret.get_secret_value() if secret else "",
                sign_name=settings.sms_sign_name,
                template_code=settings.sms_template_code,
                endpoint=settings.sms_endpoint,
            ),
        )
    return LogSmsSender()


async def members_ctx(app: web.Application) -> AsyncIterator[None]:
    """The member services, the SMS sender and the WeChat client (one HTTP session)."""
    settings = _settings(app)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=32),
    ) as session:
        codes = SmsCodes(
            _redis(app),
            prefix=settings.redis_prefix,
            secret=derive_code_secret(settings.master_secret_bytes()),
            sender=build_sms_sender(settings, session),
        )
        app[MEMBERS] = Members(codes)
        app[WECHAT] = WechatClient(session, base_url=settings.wechat_api_url)
        tokens: TokenService = app[TOKENS]
        tokens.register_loader({Role.MEMBER}, reload_member)
        yield


async def reload_member(principal: Principal) -> Principal | None:
    """A member session's principal at refresh; None once it may no longer log in."""
    member = await Member.get_or_none(uid=principal.subject)
    if member is None or member.state not in LOGIN_ALLOWED:
        return None
    vendor = await Vendor.get_or_none(code=member.vendor_id)
    if vendor is None or vendor.state not in (VendorState.ACTIVE, VendorState.INACTIVE):
        return None
    return member_principal(member)
