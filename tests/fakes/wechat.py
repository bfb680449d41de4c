"""A local fake of WeChat's HTTP API (api.weixin.qq.com): web OAuth, mini programs, and the
official account's access token and template messages (模板消息).

Answers like WeChat: HTTP 200 with JSON labelled text/plain, errors as {errcode, errmsg} with
", rid: ..." appended to errmsg. It checks appid (40013, 41002 when missing), secret (40125,
41004), grant_type (40002), the code (41008 missing, 40029 unknown or of another app or
expired after 5 minutes, 40163 already used), the access token (40001) and openid (40003) of
/sns/userinfo, and the scope (48001: userinfo needs snsapi_userinfo).
openids are per app (as WeChat's are); a unionid is the same across the apps of one owner.

Template messages: GET /cgi-bin/token (grant_type client_credential; 40002, 41002/40013 appid,
41004/40001 secret) issues a 7200 s token; POST /cgi-bin/message/template/send?access_token=
checks the token (40001 unknown, 42001 expired), the JSON body (47001), the template id of the
app (40037), and that the openid is the app's and follows the account (40003, 43004); a sent
message is kept in `messages` and answered {errcode 0, errmsg "ok", msgid}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CODE_TTL_S = 300


@dataclass(frozen=True)
class FakeWechatUser:
    key: str  # who the person is, across apps
    nickname: str = "微信用户"
    sex: int = 1
    headimgurl: str = "https://thirdwx.qlogo.cn/mmopen/fake/132"


@dataclass
class _Code:
    appid: str
    user: FakeWechatUser
    scope: str
    flow: str
    issued_at: float
    used: bool = False


@dataclass
class SentTemplate:
    appid: str
    touser: str
    template_id: str
    data: dict[str, str]  # name -> value
    msgid: int


@dataclass
class FakeWechat:
    apps: dict[str, str] = field(default_factory=lambda: {"wx0123456789abcdef": "wx-secret"})
    with_unionid: bool = True
    clock: Callable[[], float] = time.time
    requests: list[str] = field(default_factory=list)
    scripted: list[tuple[int, str]] = field(default_factory=list)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> (openid, scope)
    _runner: web.AppRunner | None = None
    url: str = ""
    templates: dict[str, set[str]] = field(default_factory=dict)  # appid -> template ids
    followers: dict[str, set[str]] = field(default_factory=dict)  # appid -> openids
    messages: list[SentTemplate] = field(default_factory=list)
    token_requests: int = 0
    _app_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (app, exp)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/cgi-bin/token", self._cgi_token)
        app.router.add_post("/cgi-bin/message/template/send", self._template_send)
        app.router.add_get("/sns/oauth2/access_token", self._access_token)
        app.router.add_get("/sns/userinfo", self._userinfo)
        app.router.add_get("/sns/jscode2session", self._jscode2session)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeWechat:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ what a phone does

    def issue_code(
        self, appid: str, user: FakeWechatUser, *, scope: str = "snsapi_userinfo", flow: str = "web"
    ) -> str:
        """The code WeChat hands the user's browser (web) or wx.login() (mini) for this app."""
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(appid, user, scope, flow, self.clock())
        return code

    def openid(self, appid: str, user: FakeWechatUser) -> str:
        return "o" + hashlib.sha256(f"{appid}|{user.key}".encode()).hexdigest()[:27]

    def unionid(self, user: FakeWechatUser) -> str | None:
        if not self.with_unionid:
            return None
        return "u" + hashlib.sha256(f"owner|{user.key}".encode()).hexdigest()[:27]

    def follow(self, appid: str, user: FakeWechatUser) -> str:
        """The user follows the official account; its openid there."""
        openid = self.openid(appid, user)
        self.followers.setdefault(appid, set()).add(openid)
        return openid

    def expire_tokens(self) -> None:
        """Every access token issued so far expires now (42001 from then on)."""
        self._app_tokens = {t: (app, 0.0) for t, (app, _) in self._app_tokens.items()}

    def messages_to(self, openid: str) -> list[SentTemplate]:
        return [m for m in self.messages if m.touser == openid]

    # ------------------------------------------------------------------ the API

    @staticmethod
    def _answer(data: dict[str, Any]) -> web.Response:
        return web.Response(
            text=json.dumps(data, ensure_ascii=False), content_type="text/plain", charset="utf-8"
        )

    def _error(self, errcode: int, errmsg: str) -> web.Response:
        rid = f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        return self._answer({"errcode": errcode, "errmsg": f"{errmsg}, rid: {rid}"})

    def _check_app(self, query: Any) -> web.Response | None:
        appid, secret = query.get("appid"), query.get("secret")
        if not appid:
            return self._error(41002, "appid missing")
        if appid not in self.apps:
            return self._error(40013, "invalid appid")
        if not secret:
            return self._error(41004, "appsecret missing")
        if not secrets.compare_digest(secret, self.apps[appid]):
            return self._error(40125, "invalid appsecret")
        if query.get("grant_type") != "authorization_code":
            return self._error(40002, "invalid grant_type")
        return None

    def _take_code(self, appid: str, code: str | None, flow: str) -> _Code | web.Response:
        if not code:
            return self._error(41008, "missing code")
        issued = self._codes.get(code)
        if issued is None or issued.appid != appid or issued.flow != flow:
            return self._error(40029, "invalid code")
        if self.clock() - issued.issued_at > CODE_TTL_S:
            return self._error(40029, "invalid code")
        if issued.used:
            return self._error(40163, "code been used")
        issued.used = True
        return issued

    def _scripted(self, path: str) -> web.Response | None:
        self.requests.append(path)
        if self.scripted:
            status, body = self.scripted.pop(0)
            return web.Response(status=status, text=body, content_type="text/plain")
        return None

    async def _access_token(self, request: web.Request) -> web.Response:
        scripted = self._scripted(request.path)
        if scripted is not None:
            return scripted
        problem = self._check_app(request.query)
        if problem is not None:
            return problem
        appid = request.query["appid"]
        taken = self._take_code(appid, request.query.get("code"), "web")
        if isinstance(taken, web.Response):
            return taken
        openid = self.openid(appid, taken.user)
        token = secrets.token_urlsafe(48)
        self._tokens[token] = (openid, taken.scope)
        answer: dict[str, Any] = {
            "access_token": token,
            "expires_in": 7200,
            "refresh_token": secrets.token_urlsafe(48),
            "openid": openid,
            "scope": taken.scope,
        }
        unionid = self.unionid(taken.user)
        if unionid is not None:
            answer["unionid"] = unionid
        return self._answer(answer)

    async def _userinfo(self, request: web.Request) -> web.Response:
        scripted = self._scripted(request.path)
        if scripted is not None:
            return scripted
        held = self._tokens.get(request.query.get("access_token", ""))
        if held is None:
            return self._error(40001, "invalid credential, access_token is invalid or not latest")
        openid, scope = held
        if request.query.get("openid") != openid:
            return self._error(40003, "invalid openid")
        if "snsapi_userinfo" not in scope:
            return self._error(48001, "api unauthorized")
        user = next(c.user for c in self._codes.values() if self.openid(c.appid, c.user) == openid)
        answer: dict[str, Any] = {
            "openid": openid,
            "nickname": user.nickname,
            "sex": user.sex,
            "province": "",
            "city": "",
            "country": "",
            "headimgurl": user.headimgurl,
            "privilege": [],
        }
        unionid = self.unionid(user)
        if unionid is not None:
            answer["unionid"] = unionid
        return self._answer(answer)

    async def _jscode2session(self, request: web.Request) -> web.Response:
        scripted = self._scripted(request.path)
        if scripted is not None:
            return scripted
        problem = self._check_app(request.query)
        if problem is not None:
            return problem
        appid = request.query["appid"]
        taken = self._take_code(appid, request.query.get("js_code"), "mini")
        if isinstance(taken, web.Response):
            return taken
        answer: dict[str, Any] = {
            "openid": self.openid(appid, taken.user),
            "session_key": base64.b64encode(secrets.token_bytes(16)).decode(),
        }
        unionid = self.unionid(taken.user)
        if unionid is not None:
            answer["unionid"] = unionid
        return self._answer(answer)

    async def _cgi_token(self, request: web.Request) -> web.Response:
        scripted = self._scripted(request.path)
        if scripted is not None:
            return scripted
        self.token_requests += 1
        query = request.query
        if query.get("grant_type") != "client_credential":
            return self._error(40002, "invalid grant_type")
        appid, secret = query.get("appid"), query.get("secret")
        if not appid:
            return self._error(41002, "appid missing")
        if appid not in self.apps:
            return self._error(40013, "invalid appid")
        if not secret:
            return self._error(41004, "appsecret missing")
        if not secrets.compare_digest(secret, self.apps[appid]):
            return self._error(40001, "invalid credential, access_token is invalid or not latest")
        token = secrets.token_urlsafe(96)
        self._app_tokens[token] = (appid, self.clock() + 7200)
        return self._answer({"access_token": token, "expires_in": 7200})

    async def _template_send(self, request: web.Request) -> web.Response:
        scripted = self._scripted(request.path)
        if scripted is not None:
            return scripted
        held = self._app_tokens.get(request.query.get("access_token", ""))
        if held is None:
            return self._error(40001, "invalid credential, access_token is invalid or not latest")
        appid, expires = held
        if self.clock() >= expires:
            return self._error(42001, "access_token expired")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._error(47001, "data format error")
        if not isinstance(body, dict) or not isinstance(body.get("data", {}), dict):
            return self._error(47001, "data format error")
        template_id = body.get("template_id")
        if template_id not in self.templates.get(appid, set()):
            return self._error(40037, "invalid template_id")
        touser = body.get("touser")
        known = {self.openid(appid, c.user) for c in self._codes.values()}
        following = self.followers.get(appid, set())
        if touser not in known | following:
            return self._error(40003, "invalid openid")
        if touser not in following:
            return self._error(43004, "require subscribe")
        data = {
            name: str(item.get("value", "")) if isinstance(item, dict) else ""
            for name, item in body.get("data", {}).items()
        }
        msgid = 200_000_000 + len(self.messages) + 1
        self.messages.append(SentTemplate(appid, str(touser), str(template_id), data, msgid))
        return self._answer({"errcode": 0, "errmsg": "ok", "msgid": msgid})
