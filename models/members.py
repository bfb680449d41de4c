"""Members (the seed's 会员/用户, AA-01..10): end users of a vendor's app or WeChat account.

uid: the seed's "XXXX0123456789ABCDEF", 20 characters: the 4-character vendor code, a 12-digit
serial per vendor that is never reused, and 4 hex digits of CRC-16/MODBUS over the first 16
(as device ids have), so a mistyped uid is caught before it reaches the database.

A member belongs to one vendor and, optionally, to an agent or dealer node of its tree (the
node its referrer belongs to, or one an admin assigns), which scopes what agents see.

Deregistration (AA-10) never deletes the row: orders, ledgers and commissions may reference the
uid. It blanks every personal field (name, avatar, mobile, e-mail, address, WeChat binding,
password), sets the state to DEREGISTERED (no login), and keeps uid, vendor, agent, referrer,
registration time, VIP flag and bonus points (what money and commissions depend on).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, Protocol

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aquafleet.models.accounts import hash_password, normalise_md5, verify_password
from aquafleet.models.agents import Agent, AgentState
from aquafleet.models.errors import Conflict, DomainError, InvalidInput, NotFound
from aquafleet.models.ids import check_vendor_code
from aquafleet.models.sms_codes import CodePurpose, SmsCodeError, SmsCodes, check_mobile
from aquafleet.models.vendors import Vendor, VendorState
from aquafleet.protocol.crc import crc16_modbus

UID_RE = re.compile(r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$")
MAX_MEMBER_SERIAL = 999_999_999_999


class MemberState(IntEnum):
    """The seed's states, plus DEREGISTERED (AA-10: anonymised, kept for the ledgers)."""

    DISABLED = 0  # blocked by an admin: no login
    INACTIVE = 1  # registered, never logged in
    ACTIVE = 2
    DEREGISTERED = 3


LOGIN_ALLOWED = frozenset({MemberState.INACTIVE, MemberState.ACTIVE})
# The one answer to a password reset without a login that fails, for whatever reason.
NO_RESET_CODE = "no valid code for this member: wrong, expired or used; request a new one"


class MemberCounter(Model):
    """The next member serial of a vendor (serials are never reused)."""

    vendor: fields.OneToOneRelation[Vendor] = fields.OneToOneField(
        "models.Vendor", related_name="member_counter", primary_key=True, on_delete=fields.RESTRICT
    )
    next_serial = fields.BigIntField(default=1)

    vendor_id: str

    class Meta:
        table = "member_counter"


class Member(Model):
    uid = fields.CharField(primary_key=True, max_length=20)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="members", on_delete=fields.RESTRICT
    )
    agent: fields.ForeignKeyNullableRelation[Agent] = fields.ForeignKeyField(
        "models.Agent", related_name="members", null=True, on_delete=fields.RESTRICT
    )
    referrer: fields.ForeignKeyNullableRelation[Member] = fields.ForeignKeyField(
        "models.Member", related_name="referred", null=True, on_delete=fields.RESTRICT
    )
    state = fields.IntEnumField(MemberState, default=MemberState.INACTIVE)
    type = fields.SmallIntField(default=0)
    name = fields.CharField(max_length=64, default="")
    avatar = fields.CharField(max_length=255, default="")
    mobile = fields.CharField(max_length=11, null=True)  # None: WeChat-only or deregistered
    email = fields.CharField(max_length=128, default="")
    area = fields.CharField(max_length=128, default="")
    address = fields.CharField(max_length=255, default="")
    remark = fields.CharField(max_length=255, default="")
    vip = fields.BooleanField(default=False)
    bonus = fields.BigIntField(default=0)  # points, an integer
    password_hash = fields.CharField(max_length=255, null=True)
    wx_openid = fields.CharField(max_length=64, null=True)
    wx_unionid = fields.CharField(max_length=64, null=True, db_index=True)
    wx_nick = fields.CharField(max_length=64, default="")
    wx_avatar = fields.CharField(max_length=255, default="")
    wx_sex = fields.SmallIntField(default=0)  # WeChat: 0 unknown, 1 male, 2 female
    wx_sbc_tms = fields.BigIntField(null=True)  # subscribe time, unix seconds (the seed's sbc_tms)
    reg_tms = fields.DatetimeField(auto_now_add=True, db_index=True)
    updated_at = fields.DatetimeField(auto_now=True)
    last_login_at = fields.DatetimeField(null=True)
    deregistered_at = fields.DatetimeField(null=True)

    vendor_id: str
    agent_id: int | None
    referrer_id: str | None

    class Meta:
        table = "member"
        unique_together = (("vendor", "mobile"), ("vendor", "wx_openid"))


# ----------------------------------------------------------------------------- ids


def member_uid(vendor_code: str, serial: int) -> str:
    check_vendor_code(vendor_code)
    if not 1 <= serial <= MAX_MEMBER_SERIAL:
        raise InvalidInput(f"member serial {serial} out of range 1..{MAX_MEMBER_SERIAL}")
    body = f"{vendor_code}{serial:012d}"
    return f"{body}{crc16_modbus(body.encode()):04X}"


def is_valid_uid(uid: str) -> bool:
    if not UID_RE.match(uid):
        return False
    return f"{crc16_modbus(uid[:16].encode()):04X}" == uid[16:]


# ----------------------------------------------------------------------------- errors


class MobileTaken(Conflict):
    code = "mobile_taken"


class WechatTaken(Conflict):
    code = "wechat_bound_elsewhere"


class MemberDeregistered(Conflict):
    code = "member_deregistered"


class LastLoginMethod(Conflict):
    """Unbinding WeChat would leave a member without any way to log in."""

    code = "last_login_method"


class WrongPassword(DomainError):
    code = "wrong_password"


# ----------------------------------------------------------------------------- WeChat interface


@dataclass(frozen=True, slots=True)
class WechatApp:
    """The vendor's WeChat official account or mini program (its appid and secret)."""

    appid: str
    secret: str

    def __repr__(self) -> str:
        return f"WechatApp(appid={self.appid!r})"


@dataclass(frozen=True, slots=True)
class WechatProfile:
    openid: str
    unionid: str | None = None
    nick: str = ""
    avatar: str = ""
    sex: int = 0
    subscribe_time: int | None = None  # unix seconds, when the user followed the account


WechatFlow = Literal["web", "mini"]


class WechatAuth(Protocol):
    """Turns a WeChat OAuth code into the user's identity (gateway/providers/wechat.py).

    Raises models.members.WechatError subclasses when WeChat refuses or does not answer.
    """

    async def profile_for_code(
        self, app: WechatApp, code: str, flow: WechatFlow
    ) -> WechatProfile: ...


class WechatError(DomainError):
    code = "wechat_unavailable"


class WechatCodeInvalid(WechatError):
    """The OAuth code is wrong, expired or already used (the client should get a new one)."""

    code = "wechat_code_invalid"


class WechatMisconfigured(WechatError):
    """The vendor's appid/secret are wrong or missing: an operator must act."""

    code = "wechat_misconfigured"


class WechatUnavailable(WechatError):
    """WeChat did not answer, answered garbage, or is busy; may be retried."""

    code = "wechat_unavailable"


# ----------------------------------------------------------------------------- services

PROFILE_FIELDS = ("name", "avatar", "email", "area", "address", "remark")
ADMIN_FIELDS = ("state", "type", "vip", "agent_id", "referrer_id", "mobile")


async def get_member(uid: str) -> Member:
    member = await Member.get_or_none(uid=uid) if is_valid_uid(uid) else None
    if member is None:
        raise NotFound(f"member {uid} does not exist")
    return member


async def agent_path_of(member: Member) -> str | None:
    """The materialised path of the member's agent node (None: owned by the vendor)."""
    if member.agent_id is None:
        return None
    agent = await Agent.get_or_none(id=member.agent_id)
    return agent.path if agent is not None else None


async def _usable_vendor(vendor_code: str) -> Vendor:
    vendor = await Vendor.get_or_none(code=vendor_code)
    if vendor is None or vendor.state in (VendorState.DISABLED, VendorState.DEREGISTERED):
        raise NotFound(f"vendor {vendor_code} does not exist")
    return vendor


async def _check_referrer(vendor_code: str, referrer_uid: str | None) -> Member | None:
    if not referrer_uid:
        return None
    referrer = await Member.get_or_none(uid=referrer_uid) if is_valid_uid(referrer_uid) else None
    if referrer is None or referrer.vendor_id != vendor_code:
        raise InvalidInput(f"referrer {referrer_uid} is not a member of vendor {vendor_code}")
    return referrer


MAX_REFERRAL_DEPTH = 64


async def _check_no_referral_loop(uid: str, referrer: Member | None) -> None:
    """Referral chains (commissions walk them) must not loop back to the member."""
    seen = 0
    while referrer is not None and seen < MAX_REFERRAL_DEPTH:
        if referrer.uid == uid:
            raise InvalidInput("the referral would make a loop (a member referring itself)")
        if referrer.referrer_id is None:
            return
        referrer = await Member.get_or_none(uid=referrer.referrer_id)
        seen += 1


async def _check_agent(vendor_code: str, agent_id: int | None) -> Agent | None:
    if agent_id is None:
        return None
    agent = await Agent.get_or_none(id=agent_id)
    if agent is None or agent.vendor_id != vendor_code:
        raise InvalidInput(f"agent {agent_id} is not a node of vendor {vendor_code}")
    if agent.state == AgentState.DISABLED:
        raise Conflict(f"agent {agent_id} is disabled")
    return agent


async def _next_uid(vendor_code: str) -> str:
    """Take the vendor's next serial; call inside a transaction."""
    counter = await MemberCounter.filter(vendor_id=vendor_code).select_for_update().first()
    if counter is None:
        try:
            async with in_transaction("default"):
                counter = await MemberCounter.create(vendor_id=vendor_code, next_serial=1)
        except IntegrityError:  # created by a concurrent registration
            counter = await MemberCounter.filter(vendor_id=vendor_code).select_for_update().get()
    serial = counter.next_serial
    counter.next_serial = serial + 1
    await counter.save(update_fields=["next_serial"])
    return member_uid(vendor_code, serial)


async def _create_member(vendor_code: str, **values: Any) -> Member:
    async with in_transaction("default"):
        uid = await _next_uid(vendor_code)
        try:
            async with in_transaction("default"):
                return await Member.create(uid=uid, vendor_id=vendor_code, **values)
        except IntegrityError:
            if values.get("mobile"):
                raise MobileTaken(f"mobile {values['mobile']} is already registered") from None
            raise WechatTaken("this WeChat account is already bound to a member") from None


class Members:
    """Member services that need SMS codes; one instance per node."""

    def __init__(self, codes: SmsCodes) -> None:
        self.codes = codes

    async def register(
        self,
        *,
        vendor_code: str,
        mobile: str,
        code: str,
        name: str,
        password_md5: str | None = None,
        referrer_uid: str | None = None,
        profile: Mapping[str, str] | None = None,
    ) -> Member:
        """AA-02B: a new member proven to hold `mobile` by a registration code."""
        check_mobile(mobile)
        await _usable_vendor(vendor_code)
        if await Member.exists(vendor_id=vendor_code, mobile=mobile):
            raise MobileTaken(f"mobile {mobile} is already registered")
        # The code first: without one, the answer is the same whether or not `referrer_uid`
        # exists (registration is anonymous). A refused referrer uses up the code.
        await self.codes.verify(CodePurpose.REGISTER, vendor_code, mobile, code)
        referrer = await _check_referrer(vendor_code, referrer_uid)
        password_hash = await hash_password(password_md5) if password_md5 else None
        extra = {k: v for k, v in (profile or {}).items() if k in PROFILE_FIELDS and k != "remark"}
        return await _create_member(
            vendor_code,
            mobile=mobile,
            name=name,
            password_hash=password_hash,
            referrer_id=referrer.uid if referrer else None,
            agent_id=referrer.agent_id if referrer else None,
            state=MemberState.INACTIVE,
            **extra,
        )

    async def send_code(
        self, purpose: CodePurpose, vendor_code: str, mobile: str, *, ip: str | None
    ) -> None:
        await self.codes.send(purpose, vendor_code, mobile, ip=ip)

    async def change_mobile(self, member: Member, new_mobile: str, code: str) -> Member:
        """AA-06B: the new number, proven by a code sent to it."""
        _check_live(member)
        check_mobile(new_mobile)
        if new_mobile == member.mobile:
            return member
        await _ensure_mobile_free(member.vendor_id, new_mobile, member.uid)
        await self.codes.verify(CodePurpose.MOBILE, member.vendor_id, new_mobile, code)
        return await set_mobile(member, new_mobile)

    async def reset_password(self, member: Member, code: str, new_password_md5: str) -> Member:
        """AA-07B: a new password, proven by a code sent to the member's mobile."""
        _check_live(member)
        if member.mobile is None:
            raise Conflict("the member has no mobile number to send a code to")
        new_hash = await hash_password(new_password_md5)
        await self.codes.verify(CodePurpose.RESET, member.vendor_id, member.mobile, code)
        member.password_hash = new_hash
        await member.save(update_fields=["password_hash", "updated_at"])
        return member

    async def reset_password_anonymously(
        self, uid: str, code: str, new_password_md5: str
    ) -> Member:
        """AA-07B without a login: every failure, an unknown uid included, is the same
        SmsCodeError after the same work, so the answer does not tell which members exist."""
        member = await Member.get_or_none(uid=uid) if is_valid_uid(uid) else None
        usable = member is not None and member.state in LOGIN_ALLOWED and bool(member.mobile)
        # No code is ever stored under the placeholder: an unknown uid fails like a wrong code.
        vendor_code, mobile = (
            (member.vendor_id, str(member.mobile)) if member and usable else ("-", "-")
        )
        try:
            await self.codes.verify(CodePurpose.RESET, vendor_code, mobile, code)
        except SmsCodeError:
            raise SmsCodeError(NO_RESET_CODE) from None
        if member is None or not usable:
            raise SmsCodeError(NO_RESET_CODE)
        member.password_hash = await hash_password(new_password_md5)
        await member.save(update_fields=["password_hash", "updated_at"])
        return member

    async def login_with_code(self, vendor_code: str, mobile: str, code: str) -> Member:
        """A member proven to hold `mobile` by a login code; InvalidInput-free 'no' otherwise."""
        check_mobile(mobile)
        member = await Member.get_or_none(vendor_id=vendor_code, mobile=mobile)
        await self.codes.verify(CodePurpose.LOGIN, vendor_code, mobile, code)
        if member is None or member.state not in LOGIN_ALLOWED:
            raise NotFound("no member may log in with this mobile")
        return await mark_logged_in(member)


def _check_live(member: Member) -> None:
    if member.state == MemberState.DEREGISTERED:
        raise MemberDeregistered(f"member {member.uid} is deregistered")


async def _ensure_mobile_free(vendor_code: str, mobile: str, uid: str) -> None:
    taken = await Member.filter(vendor_id=vendor_code, mobile=mobile).exclude(uid=uid).exists()
    if taken:
        raise MobileTaken(f"mobile {mobile} is already registered")


async def set_mobile(member: Member, mobile: str) -> Member:
    member.mobile = mobile
    try:
        await member.save(update_fields=["mobile", "updated_at"])
    except IntegrityError:
        raise MobileTaken(f"mobile {mobile} is already registered") from None
    return member


async def mobile_is_free(vendor_code: str, mobile: str) -> bool:
    return not await Member.exists(vendor_id=vendor_code, mobile=mobile)


async def update_member(member: Member, changes: Mapping[str, Any]) -> Member:
    """AA-04: profile fields, and (for admins, checked by the caller) state/type/vip/agent/rid."""
    _check_live(member)
    unknown = set(changes) - set(PROFILE_FIELDS) - set(ADMIN_FIELDS)
    if unknown:
        raise InvalidInput(f"cannot change {sorted(unknown)[0]}")
    if "state" in changes:
        state = MemberState(changes["state"])
        if state == MemberState.DEREGISTERED:
            raise InvalidInput("deregister a member with DELETE /users/{uid}")
    if "agent_id" in changes:
        await _check_agent(member.vendor_id, changes["agent_id"])
    if changes.get("referrer_id"):
        referrer = await _check_referrer(member.vendor_id, changes["referrer_id"])
        await _check_no_referral_loop(member.uid, referrer)
    if changes.get("mobile"):
        check_mobile(changes["mobile"])
        await _ensure_mobile_free(member.vendor_id, changes["mobile"], member.uid)
    for name, value in changes.items():
        setattr(member, name, value if value != "" or name != "referrer_id" else None)
    if changes:
        try:
            await member.save(update_fields=[*changes, "updated_at"])
        except IntegrityError:
            raise MobileTaken("mobile is already registered") from None
    return member


async def change_password(
    member: Member, new_password_md5: str, *, old_password_md5: str | None, require_old: bool
) -> Member:
    """AA-05: members give their old password (when they have one); admins need not."""
    _check_live(member)
    normalise_md5(new_password_md5)
    if require_old and member.password_hash is not None:
        right = old_password_md5 is not None and await verify_password(
            member.password_hash, old_password_md5
        )
        if not right:
            raise WrongPassword("the old password is wrong")
    member.password_hash = await hash_password(new_password_md5)
    await member.save(update_fields=["password_hash", "updated_at"])
    return member


async def login_with_password(vendor_code: str, mobile: str, password_md5: str) -> Member | None:
    """The member when the password is right and it may log in; None otherwise (as slow)."""
    member = await Member.get_or_none(vendor_id=vendor_code, mobile=mobile)
    stored = member.password_hash if member is not None else None
    if not await verify_password(stored, password_md5) or member is None:
        return None
    if member.state not in LOGIN_ALLOWED:
        return None
    return await mark_logged_in(member)


async def mark_logged_in(member: Member) -> Member:
    member.last_login_at = dt.datetime.now(dt.UTC)
    fields_ = ["last_login_at"]
    if member.state == MemberState.INACTIVE:
        member.state = MemberState.ACTIVE
        fields_.append("state")
    await member.save(update_fields=fields_)
    return member


async def bind_wechat(
    vendor_code: str, profile: WechatProfile, *, member: Member | None
) -> tuple[Member, bool]:
    """AA-08: bind the WeChat account to `member`, or find its member, or register one.

    Returns (member, created). A WeChat account bound to another member answers WechatTaken.
    """
    await _usable_vendor(vendor_code)
    bound = await Member.get_or_none(vendor_id=vendor_code, wx_openid=profile.openid)
    wx = {
        "wx_openid": profile.openid,
        "wx_unionid": profile.unionid,
        "wx_nick": profile.nick[:64],
        "wx_avatar": profile.avatar[:255],
        "wx_sex": profile.sex if profile.sex in (0, 1, 2) else 0,
        "wx_sbc_tms": profile.subscribe_time,
    }
    if member is not None:
        _check_live(member)
        if member.vendor_id != vendor_code:
            raise NotFound(f"member {member.uid} does not exist")
        if bound is not None and bound.uid != member.uid:
            raise WechatTaken("this WeChat account is already bound to another member")
        for name, value in wx.items():
            setattr(member, name, value)
        try:
            await member.save(update_fields=[*wx, "updated_at"])
        except IntegrityError:
            raise WechatTaken("this WeChat account is already bound to another member") from None
        return member, False
    if bound is not None:
        if bound.state not in LOGIN_ALLOWED:
            raise NotFound("no member may log in with this WeChat account")
        for name, value in wx.items():  # keep the nickname and avatar current
            setattr(bound, name, value)
        await bound.save(update_fields=[*wx, "updated_at"])
        return await mark_logged_in(bound), False
    created = await _create_member(
        vendor_code,
        name=profile.nick[:64],
        avatar=profile.avatar[:255],
        state=MemberState.ACTIVE,
        **wx,
    )
    return created, True


async def unbind_wechat(member: Member) -> Member:
    """AA-09: forget the WeChat binding (refused when it is the member's only way in)."""
    _check_live(member)
    if member.wx_openid is None:
        return member
    if member.mobile is None:
        raise LastLoginMethod("the member has no mobile; set one before unbinding WeChat")
    member.wx_openid = None
    member.wx_unionid = None
    member.wx_nick = ""
    member.wx_avatar = ""
    member.wx_sex = 0
    member.wx_sbc_tms = None
    await member.save(
        update_fields=[
            "wx_openid",
            "wx_unionid",
            "wx_nick",
            "wx_avatar",
            "wx_sex",
            "wx_sbc_tms",
            "updated_at",
        ]
    )
    return member


async def deregister(member: Member) -> Member:
    """AA-10: anonymise and block; the row and what money depends on stay (module docstring)."""
    if member.state == MemberState.DEREGISTERED:
        return member
    member.state = MemberState.DEREGISTERED
    member.deregistered_at = dt.datetime.now(dt.UTC)
    blanks: dict[str, Any] = {
        "name": "",
        "avatar": "",
        "mobile": None,
        "email": "",
        "area": "",
        "address": "",
        "remark": "",
        "password_hash": None,
        "wx_openid": None,
        "wx_unionid": None,
        "wx_nick": "",
        "wx_avatar": "",
        "wx_sex": 0,
        "wx_sbc_tms": None,
    }
    for name, value in blanks.items():
        setattr(member, name, value)
    await member.save(update_fields=[*blanks, "state", "deregistered_at", "updated_at"])
    from aquafleet.models.devices import release_member  # devices refer to members: import late

    await release_member(member.uid)  # its purifiers can be bound by their next user
    return member
