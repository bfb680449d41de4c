"""Member services on SQLite and PostgreSQL, with SMS codes in the real Redis."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from aquafleet.models.agents import Agent, AgentLevel
from aquafleet.models.errors import InvalidInput, NotFound
from aquafleet.models.members import (
    LastLoginMethod,
    Member,
    MemberDeregistered,
    Members,
    MemberState,
    MobileTaken,
    WechatProfile,
    WechatTaken,
    WrongPassword,
    bind_wechat,
    change_password,
    deregister,
    get_member,
    is_valid_uid,
    login_with_password,
    member_uid,
    unbind_wechat,
    update_member,
)
from aquafleet.models.registry import create_vendor
from aquafleet.models.sms_codes import CodeExpired, CodeMismatch, CodePurpose, SmsCodes
from aquafleet.models.tenancy import child_path

MOBILE = "13800138000"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class RecordingSender:
    sent: list[tuple[str, str, CodePurpose]] = field(default_factory=list)

    async def send_code(self, mobile: str, code: str, *, purpose: CodePurpose) -> None:
        self.sent.append((mobile, code, purpose))

    def last_code(self) -> str:
        return self.sent[-1][1]


class Clock:
    """A controlled clock: each code request moves it past the one-a-minute limit."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def tick(members: Members) -> None:
    clock = members.codes.clock
    assert isinstance(clock, Clock)
    clock.now += 61


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
async def members(
    db: str, redis_client: aioredis.Redis, redis_prefix: str, sender: RecordingSender
) -> Members:
    await create_vendor("DEMO", "Demo Water")
    await create_vendor("OTHR", "Other Water")
    codes = SmsCodes(
        redis_client, prefix=redis_prefix, secret=b"s" * 32, sender=sender, clock=Clock()
    )
    return Members(codes)


async def register(
    members: Members, sender: RecordingSender, mobile: str = MOBILE, **kwargs: object
) -> Member:
    vendor = str(kwargs.pop("vendor_code", "DEMO"))
    tick(members)
    await members.send_code(CodePurpose.REGISTER, vendor, mobile, ip=None)
    return await members.register(
        vendor_code=vendor,
        mobile=mobile,
        code=sender.last_code(),
        name=str(kwargs.pop("name", "John")),
        **kwargs,  # type: ignore[arg-type]
    )


def test_uids_carry_the_vendor_a_serial_and_a_check():
    uid = member_uid("DEMO", 1)
    assert uid.startswith("DEMO000000000001") and len(uid) == 20
    assert is_valid_uid(uid)
    assert not is_valid_uid(uid[:-1] + ("0" if uid[-1] != "0" else "1"))
    assert not is_valid_uid("DEMO00000000000X" + uid[16:])


async def test_registration_needs_the_code_and_gives_serial_uids(
    members: Members, sender: RecordingSender
):
    first = await register(members, sender, password_md5=md5("secret"))
    second = await register(members, sender, mobile="13900139000")
    other = await register(members, sender, mobile=MOBILE, vendor_code="OTHR")  # per vendor
    assert first.uid == member_uid("DEMO", 1) and second.uid == member_uid("DEMO", 2)
    assert other.uid == member_uid("OTHR", 1)
    assert first.state == MemberState.INACTIVE and first.password_hash
    assert md5("secret") not in first.password_hash


async def test_a_wrong_code_registers_nobody(members: Members, sender: RecordingSender):
    await members.send_code(CodePurpose.REGISTER, "DEMO", MOBILE, ip=None)
    wrong = f"{(int(sender.last_code()) + 1) % 1_000_000:06d}"
    with pytest.raises(CodeMismatch):
        await members.register(vendor_code="DEMO", mobile=MOBILE, code=wrong, name="J")
    assert await Member.all().count() == 0


async def test_a_mobile_registers_once_per_vendor(members: Members, sender: RecordingSender):
    await register(members, sender)
    tick(members)
    with pytest.raises(MobileTaken):
        await register(members, sender)


async def test_a_referrer_must_be_of_the_same_vendor_and_gives_its_agent(
    members: Members, sender: RecordingSender
):
    agent = await Agent.create(vendor_id="DEMO", level=AgentLevel.AGENT, name="A1")
    agent.path = child_path(None, agent.id)
    await agent.save()
    referrer = await register(members, sender)
    await update_member(referrer, {"agent_id": agent.id})
    referred = await register(members, sender, mobile="13900139000", referrer_uid=referrer.uid)
    assert referred.referrer_id == referrer.uid and referred.agent_id == agent.id
    stranger = await register(members, sender, mobile="13700137000", vendor_code="OTHR")
    with pytest.raises(InvalidInput):
        await register(members, sender, mobile="13600136000", referrer_uid=stranger.uid)


async def test_concurrent_registrations_never_share_a_uid(
    members: Members, sender: RecordingSender
):
    mobiles = [f"1350013{n:04d}" for n in range(8)]
    for mobile in mobiles:
        await members.send_code(CodePurpose.REGISTER, "DEMO", mobile, ip=None)
    codes = {mobile: code for mobile, code, _ in sender.sent}
    made = await asyncio.gather(
        *(members.register(vendor_code="DEMO", mobile=m, code=codes[m], name="x") for m in mobiles)
    )
    assert sorted(m.uid for m in made) == [member_uid("DEMO", n) for n in range(1, 9)]


async def test_password_change_and_login(members: Members, sender: RecordingSender):
    member = await register(members, sender, password_md5=md5("old"))
    assert await login_with_password("DEMO", MOBILE, md5("old")) is not None
    with pytest.raises(WrongPassword):
        await change_password(member, md5("new"), old_password_md5=md5("bad"), require_old=True)
    await change_password(member, md5("new"), old_password_md5=md5("old"), require_old=True)
    assert await login_with_password("DEMO", MOBILE, md5("old")) is None
    logged_in = await login_with_password("DEMO", MOBILE, md5("new"))
    assert logged_in is not None and logged_in.state == MemberState.ACTIVE
    assert await login_with_password("OTHR", MOBILE, md5("new")) is None


async def test_reset_and_mobile_change_need_codes_of_their_purpose(
    members: Members, sender: RecordingSender
):
    member = await register(members, sender, password_md5=md5("old"))
    tick(members)
    await members.send_code(CodePurpose.MOBILE, "DEMO", MOBILE, ip=None)
    tick(members)
    with pytest.raises(CodeExpired):  # a mobile-change code does not reset a password
        await members.reset_password(member, sender.last_code(), md5("new"))
    tick(members)
    await members.send_code(CodePurpose.RESET, "DEMO", MOBILE, ip=None)
    await members.reset_password(member, sender.last_code(), md5("new"))
    assert await login_with_password("DEMO", MOBILE, md5("new")) is not None
    await members.send_code(CodePurpose.MOBILE, "DEMO", "13900139000", ip=None)
    await members.change_mobile(member, "13900139000", sender.last_code())
    assert (await get_member(member.uid)).mobile == "13900139000"


async def test_wechat_binding_registers_finds_and_unbinds(
    members: Members, sender: RecordingSender
):
    profile = WechatProfile(openid="o-1", unionid="u-1", nick="微信用户", sex=1)
    created, is_new = await bind_wechat("DEMO", profile, member=None)
    assert is_new and created.state == MemberState.ACTIVE and created.mobile is None
    again, is_new = await bind_wechat("DEMO", profile, member=None)
    assert again.uid == created.uid and not is_new
    with pytest.raises(LastLoginMethod):  # no mobile: WeChat is its only way in
        await unbind_wechat(again)
    member = await register(members, sender)
    with pytest.raises(WechatTaken):
        await bind_wechat("DEMO", profile, member=member)
    bound, _ = await bind_wechat("DEMO", WechatProfile(openid="o-2"), member=member)
    assert bound.wx_openid == "o-2"
    await unbind_wechat(bound)
    assert (await get_member(member.uid)).wx_openid is None
    # The same WeChat user in another vendor's account is another member.
    elsewhere, is_new = await bind_wechat("OTHR", profile, member=None)
    assert is_new and elsewhere.vendor_id == "OTHR"


async def test_deregistration_anonymises_blocks_login_and_keeps_the_row(
    members: Members, sender: RecordingSender
):
    member = await register(members, sender, password_md5=md5("pw"))
    await bind_wechat("DEMO", WechatProfile(openid="o-9", nick="n"), member=member)
    await update_member(member, {"vip": True, "email": "a@b.cn", "address": "Road 1"})
    member.bonus = 120
    await member.save()
    await deregister(member)
    kept = await get_member(member.uid)
    assert kept.state == MemberState.DEREGISTERED and kept.deregistered_at is not None
    assert (kept.mobile, kept.email, kept.address, kept.name, kept.wx_openid) == (
        None,
        "",
        "",
        "",
        None,
    )
    assert kept.password_hash is None and kept.bonus == 120 and kept.vip
    assert await login_with_password("DEMO", MOBILE, md5("pw")) is None
    with pytest.raises(MemberDeregistered):
        await update_member(kept, {"name": "back"})
    # The number is free again; a new registration is a new member with a new uid.
    tick(members)
    again = await register(members, sender)
    assert again.uid != member.uid


async def test_unknown_and_malformed_uids_are_not_found(members: Members):
    with pytest.raises(NotFound):
        await get_member(member_uid("DEMO", 77))
    with pytest.raises(NotFound):
        await get_member("'; drop table member; --")


async def test_referrals_cannot_loop(members: Members, sender: RecordingSender):
    first = await register(members, sender)
    second = await register(members, sender, mobile="13900139000", referrer_uid=first.uid)
    with pytest.raises(InvalidInput):
        await update_member(first, {"referrer_id": second.uid})
    with pytest.raises(InvalidInput):
        await update_member(first, {"referrer_id": first.uid})
