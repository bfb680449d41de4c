"""Who may see which member (another tenant's uid answers 404, as an unknown one does), answers
shaped per role (seed note 1), the login limits and SMS sends the routes share."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from aquafleet.api.errors import ApiError, NotFoundError, RateLimited, Unavailable, ValidationFailed
from aquafleet.api.members.schemas import MemberLoginOut, MemberOut, WeixinOut
from aquafleet.api.routing import Call
from aquafleet.api.tokens import TOKENS
from aquafleet.gateway.appkeys import REDIS, SETTINGS
from aquafleet.gateway.config import Settings
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.providers.wechat import WechatClient
from aquafleet.models import ratelimit
from aquafleet.models.errors import NotFound
from aquafleet.models.members import Member, Members, agent_path_of, get_member
from aquafleet.models.sms_codes import CodePurpose, SmsError, SmsRecipientRejected, SmsThrottled
from aquafleet.models.tenancy import ADMIN_ROLES, Principal, Role
from aquafleet.models.vendors import Vendor, VendorState

log = get_logger("aquafleet.api.members")

MEMBERS: web.AppKey[Members] = web.AppKey("members", Members)
WECHAT: web.AppKey[WechatClient] = web.AppKey("wechat", WechatClient)


# ----------------------------------------------------------------------------- helpers


def settings_of(app: web.Application) -> Settings:
    return app[SETTINGS]


def redis_of(app: web.Application) -> aioredis.Redis:
    return app[REDIS]


def check_same_uid(given: str | None, uid: str) -> None:
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


async def login_answer(call: Call, member: Member, *, created: bool = False) -> MemberLoginOut:
    principal = member_principal(member)
    pair = await call.app[TOKENS].issue(principal)
    return MemberLoginOut(
        uid=member.uid, role=Role.MEMBER, vid=member.vendor_id, created=created, **pair
    )


async def send_code(call: Call, purpose: CodePurpose, vendor_code: str, mobile: str) -> None:
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


async def send_code_telling_nothing(
    call: Call, purpose: CodePurpose, vendor_code: str, mobile: str
) -> None:
    """For a request whose answer must not tell a registered number from an unknown one (a
    login code): the limits are counted and refused (429) as for any request, but the
    provider's failure (refused number, throttled, down) is only logged. Answering it (422, 429
    sms_throttled, 503) where an unknown number got 200 told who is registered."""
    try:
        await call.app[MEMBERS].send_code(purpose, vendor_code, mobile, ip=call.client_ip)
    except SmsError as exc:
        log.warning(
            "sms_send_failed", purpose=purpose.value, error=type(exc).__name__, why=str(exc),
            answered="as if sent",
        )  # fmt: skip


async def usable_vendor(vid: str) -> Vendor:
    vendor = await Vendor.get_or_none(code=vid)
    if vendor is None or vendor.state not in (VendorState.ACTIVE, VendorState.INACTIVE):
        raise NotFoundError(f"vendor {vid} not found")
    return vendor


def login_guess_key(call: Call, vendor_code: str, mobile: str) -> str:
    """The back-off key of password or code guesses for one member from one client address."""
    subject = f"{vendor_code}|{mobile}|{call.client_ip}"
    return ratelimit.rate_key(settings_of(call.app).redis_prefix, "member-login", subject)


async def limit_member_login(call: Call, vendor_code: str, mobile: str | None) -> None:
    """Per client IP a cap; per mobile and IP growing waits (no lock-out of the member).

    A cap per mobile alone would let anyone lock a member out with a few wrong passwords; the
    waits slow guessing from one address while the right password from another works."""
    settings = settings_of(call.app)
    redis = redis_of(call.app)
    per_ip = await ratelimit.hit(
        redis,
        ratelimit.rate_key(settings.redis_prefix, "member-login-ip", call.client_ip),
        settings.member_login_per_ip,
        settings.member_login_window_s,
    )
    per_ip.raise_if_refused("login attempts from this address")
    if mobile is None:
        return
    guesses = await ratelimit.attempt(
        redis, login_guess_key(call, vendor_code, mobile), _guess_backoff(settings)
    )
    guesses.raise_if_refused("wrong passwords or codes for this mobile from this address")


def _guess_backoff(settings: Settings) -> ratelimit.Backoff:
    return ratelimit.Backoff(
        free=settings.member_login_free_attempts,
        base_s=1,
        max_s=settings.member_login_max_wait_s,
        forget_s=settings.member_login_window_s,
    )


def password_guess_key(call: Call, member: Member) -> str:
    """The login back-off key of the member from this address (its uid when it has no mobile)."""
    return login_guess_key(call, member.vendor_id, member.mobile or member.uid)


async def limit_password_guesses(call: Call, member: Member) -> None:
    """Old-password guesses (AA-05) wait like login guesses from this address: a stolen token
    must not turn into a fast password oracle."""
    decision = await ratelimit.attempt(
        redis_of(call.app), password_guess_key(call, member), _guess_backoff(settings_of(call.app))
    )
    decision.raise_if_refused("wrong passwords for this member from this address")


async def end_sessions(call: Call, member: Member) -> None:
    await call.app[TOKENS].revoke_subject(Role.MEMBER, member.uid)
