"""The WeChat OAuth client against a faithful local fake of api.weixin.qq.com."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from aquafleet.gateway.providers.wechat import WechatClient
from aquafleet.models.members import (
    WechatApp,
    WechatCodeInvalid,
    WechatMisconfigured,
    WechatUnavailable,
)
from tests.fakes.wechat import FakeWechat, FakeWechatUser

APPID, SECRET = "wx0123456789abcdef", "wx-secret"
APP = WechatApp(APPID, SECRET)
ALICE = FakeWechatUser("alice", nickname="Alice 爱丽丝", sex=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeWechat]:
    async with FakeWechat(clock=clock) as server:
        yield server


@pytest.fixture
async def client(fake: FakeWechat) -> AsyncIterator[WechatClient]:
    async with aiohttp.ClientSession() as session:
        yield WechatClient(session, base_url=fake.url)


async def test_web_oauth_with_userinfo_scope_gives_the_profile(
    client: WechatClient, fake: FakeWechat
):
    profile = await client.profile_for_code(APP, fake.issue_code(APPID, ALICE), "web")
    assert profile.openid == fake.openid(APPID, ALICE)
    assert profile.unionid == fake.unionid(ALICE)
    assert (profile.nick, profile.sex) == ("Alice 爱丽丝", 2)
    assert profile.avatar.startswith("https://")
    assert fake.requests == ["/sns/oauth2/access_token", "/sns/userinfo"]


async def test_web_oauth_with_base_scope_gives_only_the_openid(
    client: WechatClient, fake: FakeWechat
):
    code = fake.issue_code(APPID, ALICE, scope="snsapi_base")
    profile = await client.profile_for_code(APP, code, "web")
    assert profile.openid == fake.openid(APPID, ALICE) and profile.nick == ""
    assert fake.requests == ["/sns/oauth2/access_token"]


async def test_mini_program_login_gives_openid_and_unionid(client: WechatClient, fake: FakeWechat):
    code = fake.issue_code(APPID, ALICE, flow="mini")
    profile = await client.profile_for_code(APP, code, "mini")
    assert profile.openid == fake.openid(APPID, ALICE)
    assert profile.unionid == fake.unionid(ALICE)


async def test_openids_differ_per_app_and_unionids_do_not(fake: FakeWechat):
    assert fake.openid(APPID, ALICE) != fake.openid("wxother", ALICE)


async def test_a_code_works_once(client: WechatClient, fake: FakeWechat):
    code = fake.issue_code(APPID, ALICE)
    await client.profile_for_code(APP, code, "web")
    with pytest.raises(WechatCodeInvalid, match="40163"):
        await client.profile_for_code(APP, code, "web")


async def test_an_expired_or_unknown_code_is_invalid(
    client: WechatClient, fake: FakeWechat, clock: Clock
):
    code = fake.issue_code(APPID, ALICE)
    clock.now += 301
    with pytest.raises(WechatCodeInvalid, match="40029"):
        await client.profile_for_code(APP, code, "web")
    with pytest.raises(WechatCodeInvalid, match="40029"):
        await client.profile_for_code(APP, "not-a-code", "web")


async def test_a_web_code_is_no_mini_program_code(client: WechatClient, fake: FakeWechat):
    with pytest.raises(WechatCodeInvalid):
        await client.profile_for_code(APP, fake.issue_code(APPID, ALICE), "mini")


@pytest.mark.parametrize(
    ("app", "errcode"),
    [
        (WechatApp("wxunknown", SECRET), "40013"),
        (WechatApp(APPID, "wrong"), "40125"),
    ],
)
async def test_wrong_app_credentials_are_configuration_errors(
    client: WechatClient, fake: FakeWechat, app: WechatApp, errcode: str
):
    with pytest.raises(WechatMisconfigured, match=errcode):
        await client.profile_for_code(app, fake.issue_code(APPID, ALICE), "web")


async def test_a_vendor_without_wechat_settings_is_a_configuration_error(
    client: WechatClient, fake: FakeWechat
):
    with pytest.raises(WechatMisconfigured):
        await client.profile_for_code(WechatApp("", ""), "code", "web")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, '{"errcode":-1,"errmsg":"system error, rid: x"}'),
        (200, '{"errcode":45011,"errmsg":"api minute-quota reach limit, rid: x"}'),
        (502, "<html>bad gateway</html>"),
        (200, "<html>not json</html>"),
        (200, '{"access_token":"t","scope":"snsapi_base"}'),  # no openid
    ],
)
async def test_wechat_failures_are_unavailable_errors(
    client: WechatClient, fake: FakeWechat, status: int, body: str
):
    fake.scripted.append((status, body))
    with pytest.raises(WechatUnavailable):
        await client.profile_for_code(APP, fake.issue_code(APPID, ALICE), "web")


async def test_an_unreachable_wechat_is_unavailable(fake: FakeWechat):
    url = fake.url
    await fake.close()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(WechatUnavailable):
            await WechatClient(session, base_url=url).profile_for_code(APP, "c", "web")


def test_the_app_never_shows_its_secret():
    assert SECRET not in repr(APP)
