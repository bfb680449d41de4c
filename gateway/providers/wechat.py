"""WeChat sign-in behind models.members.WechatAuth: an OAuth code becomes openid/unionid/profile.

Two flows of WeChat's HTTP API (api.weixin.qq.com), both with the vendor's appid and secret:
- "web" (official account web pages, 网页授权): GET /sns/oauth2/access_token with the code
  -> access_token, openid, scope, unionid; when the scope is snsapi_userinfo, GET /sns/userinfo
  -> nickname, sex, headimgurl, unionid. With snsapi_base only the openid is known.
- "mini" (mini program, 小程序登录): GET /sns/jscode2session with the js_code -> openid,
  session_key (not kept), unionid.
WeChat answers HTTP 200 for its errors too, with {errcode, errmsg}; they become typed errors.
The access token and session key are used once and never stored or logged.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from aquafleet.gateway.logs import get_logger
from aquafleet.models.members import (
    WechatApp,
    WechatCodeInvalid,
    WechatError,
    WechatFlow,
    WechatMisconfigured,
    WechatProfile,
    WechatUnavailable,
)

log = get_logger("aquafleet.wechat")

WECHAT_API = "https://api.weixin.qq.com"
MAX_ANSWER_BYTES = 64 * 1024

# errcode -> what it means for us (anything else: WechatUnavailable).
_CODE_INVALID = {
    40029,  # invalid code
    40163,  # code been used
    41008,  # missing code
    40226,  # high risk user: WeChat refuses this login
}
_MISCONFIGURED = {
    40001,  # invalid credential
    40002,  # invalid grant_type
    40013,  # invalid appid
    40125,  # invalid appsecret
    40164,  # caller IP not in the account's whitelist
    41002,  # appid missing
    41004,  # appsecret missing
    48001,  # api unauthorized (e.g. userinfo without the snsapi_userinfo scope)
}


def wechat_error(errcode: int, errmsg: str) -> WechatError:
    text = f"wechat {errcode}: {errmsg.split(', rid:', 1)[0][:120]}"
    if errcode in _CODE_INVALID:
        return WechatCodeInvalid(text)
    if errcode in _MISCONFIGURED:
        return WechatMisconfigured(text)
    return WechatUnavailable(text)


class WechatClient:
    """WeChat OAuth for one node; the ClientSession is owned by the caller."""

    def __init__(
        self, session: aiohttp.ClientSession, *, base_url: str = WECHAT_API, timeout_s: float = 5.0
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    async def profile_for_code(self, app: WechatApp, code: str, flow: WechatFlow) -> WechatProfile:
        if not app.appid or not app.secret:
            raise WechatMisconfigured("the vendor has no WeChat appid/secret configured")
        if flow == "mini":
            return await self._mini(app, code)
        return await self._web(app, code)

    async def _web(self, app: WechatApp, code: str) -> WechatProfile:
        token = await self._get(
            "/sns/oauth2/access_token",
            {
                "appid": app.appid,
                "secret": app.secret,
                "code": code,
                "grant_type": "authorization_code",
            },
        )
        openid = _text(token, "openid")
        if not openid:
            raise WechatUnavailable("wechat: no openid in the access token answer")
        unionid = _text(token, "unionid") or None
        if "snsapi_userinfo" not in _text(token, "scope"):
            return WechatProfile(openid=openid, unionid=unionid)
        info = await self._get(
            "/sns/userinfo",
            {"access_token": _text(token, "access_token"), "openid": openid, "lang": "zh_CN"},
        )
        sex = info.get("sex")
        return WechatProfile(
            openid=openid,
            unionid=_text(info, "unionid") or unionid,
            nick=_text(info, "nickname"),
            avatar=_text(info, "headimgurl"),
            sex=sex if isinstance(sex, int) and sex in (0, 1, 2) else 0,
        )

    async def _mini(self, app: WechatApp, code: str) -> WechatProfile:
        session = await self._get(
            "/sns/jscode2session",
            {
                "appid": app.appid,
                "secret": app.secret,
                "js_code": code,
                "grant_type": "authorization_code",
            },
        )
        openid = _text(session, "openid")
        if not openid:
            raise WechatUnavailable("wechat: no openid in the jscode2session answer")
        return WechatProfile(openid=openid, unionid=_text(session, "unionid") or None)

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        answer = await wechat_json(
            self.session, "GET", self.base_url + path, timeout_s=self.timeout_s, params=params
        )
        errcode = answer.get("errcode", 0)
        if errcode not in (0, None):
            error = wechat_error(
                errcode if isinstance(errcode, int) else -1, str(answer.get("errmsg", ""))
            )
            log.warning("wechat_refused", path=path, errcode=errcode, error=type(error).__name__)
            raise error
        return answer


async def wechat_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeout_s: float,
    params: dict[str, str],
    data: bytes | None = None,
) -> dict[str, Any]:
    """One call of WeChat's (not WeChat Pay's) API: its JSON object, errcode unread;
    WechatUnavailable for no answer in `timeout_s`, an HTTP error or something not JSON."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.request(method, url, params=params, data=data) as response:
                status = response.status
                raw = await response.content.read(MAX_ANSWER_BYTES)
    except TimeoutError:
        raise WechatUnavailable("wechat: no answer in time") from None
    except aiohttp.ClientError as exc:
        raise WechatUnavailable(f"wechat: {type(exc).__name__}") from None
    if status != 200:
        raise WechatUnavailable(f"wechat: HTTP {status}")
    try:
        answer = json.loads(raw)  # WeChat labels its JSON text/plain
    except (UnicodeDecodeError, ValueError):
        raise WechatUnavailable("wechat: an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise WechatUnavailable("wechat: an unexpected answer")
    return answer


def _text(answer: dict[str, Any], name: str) -> str:
    value = answer.get(name)
    return value if isinstance(value, str) else ""
