"""AA-01, AA-02, AA-08, AA-09 and the member login: registration with an SMS code, login by
password or code, binding and unbinding WeChat; each answers with the member's tokens."""

from __future__ import annotations

from aquafleet.api.errors import ConflictError, Forbidden, Unavailable, ValidationFailed
from aquafleet.api.members.access import (
    MEMBERS,
    WECHAT,
    limit_member_login,
    login_answer,
    login_guess_key,
    redis_of,
    send_code,
    send_code_telling_nothing,
    usable_vendor,
    visible_member,
)
from aquafleet.api.members.schemas import (
    BindIn,
    CodeQuery,
    MemberLoginIn,
    MemberLoginOut,
    MemberPath,
    RegisterIn,
)
from aquafleet.api.routing import AUTHENTICATOR, PUBLIC, Call, RouteTable
from aquafleet.api.sealing import box_of
from aquafleet.gateway.logs import get_logger
from aquafleet.models import ratelimit
from aquafleet.models.accounts import LoginRefused
from aquafleet.models.errors import NotFound
from aquafleet.models.members import (
    LOGIN_ALLOWED,
    Member,
    WechatApp,
    WechatCodeInvalid,
    WechatError,
    bind_wechat,
    login_with_password,
    mobile_is_free,
    unbind_wechat,
)
from aquafleet.models.merchants import open_vendor_secret
from aquafleet.models.sms_codes import CodePurpose, SmsCodeError
from aquafleet.models.tenancy import PLATFORM_VENDOR_OR_MEMBER, Role

log = get_logger("aquafleet.api.members")

routes = RouteTable("members")


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
    await usable_vendor(query.vid)
    if not await mobile_is_free(query.vid, query.mobile):
        raise ConflictError(f"mobile {query.mobile} is already registered", code="mobile_taken")
    await send_code(call, CodePurpose.REGISTER, query.vid, query.mobile)


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
    await usable_vendor(body.vid)
    await limit_member_login(call, body.vid, None)
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
    return await login_answer(call, member, created=True)


@routes.get(
    "/users/login/code",
    summary="Send a login code by SMS",
    roles=PUBLIC,
    query=CodeQuery,
    status=200,
    errors=(404, 429, 503),
    description="Not in the seed: the code for POST /users/login with mobile + code. Sent "
    "only to registered members who may log in; the answer is the same either way (also when "
    "the SMS provider fails: that is only logged), so it does not tell who is registered. "
    "Limits as for AA-02A.",
)
async def send_login_code(call: Call) -> None:
    query: CodeQuery = call.query
    await usable_vendor(query.vid)
    member = await Member.get_or_none(vendor_id=query.vid, mobile=query.mobile)
    if member is None or member.state not in LOGIN_ALLOWED:
        # Count the request like a real one, so the answer (and its limits) give nothing away.
        await call.app[MEMBERS].codes.check_limits(query.mobile, ip=call.client_ip)
        return
    # The member's number is answered as the unknown one above even when the SMS provider
    # fails (logged as sms_send_failed): a 503 here said "this number is registered".
    await send_code_telling_nothing(call, CodePurpose.LOGIN, query.vid, query.mobile)


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
    await limit_member_login(call, body.vid, body.mobile)
    if body.pwd is not None:
        member = await login_with_password(body.vid, body.mobile, body.pwd)
        if member is None:
            log.info("member_login_refused", vid=body.vid, ip=call.client_ip)
            raise LoginRefused("mobile or password is wrong")
    else:
        assert body.code is not None
        try:
            member = await call.app[MEMBERS].login_with_code(body.vid, body.mobile, body.code)
        except (SmsCodeError, NotFound):
            # One answer for every failure: "wrong code, n tries left" was said only where a
            # code had been sent, that is, to registered members (docs/api-members.md).
            raise LoginRefused("mobile or code is wrong, expired or used") from None
    await ratelimit.reset(redis_of(call.app), login_guess_key(call, body.vid, body.mobile))
    log.info("member_login", uid=member.uid, ip=call.client_ip)
    return await login_answer(call, member)


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
        await limit_member_login(call, body.vid, None)
    vendor = await usable_vendor(body.vid)
    try:
        profile = await call.app[WECHAT].profile_for_code(
            WechatApp(
                vendor.mp_appid,
                open_vendor_secret(vendor, "mp_secret", box_of(call)),
            ),
            body.code,
            body.flow,
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
    return await login_answer(call, bound, created=created)


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
