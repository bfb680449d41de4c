"""Members' request and response models, path and query parameters (docs/api-members.md)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from aquafleet.api.errors import register_domain_error
from aquafleet.api.schemas import (
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
from aquafleet.models.members import MemberState, WechatCodeInvalid, WrongPassword
from aquafleet.models.sms_codes import SmsCodeError
from aquafleet.models.tenancy import Role

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
