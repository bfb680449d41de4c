"""A local fake of Aliyun SMS (dysmsapi.aliyuncs.com, API 2017-05-25), action SendSms.

It checks what the real service checks, in the same order, and answers the way it does:
- gateway (POP) errors with an HTTP 4xx status and {RequestId, HostId, Code, Message, Recommend}:
  a missing parameter, an unknown version or action, an unknown access key, a malformed or
  stale Timestamp (more than 15 minutes off), a reused SignatureNonce, a wrong signature (the
  message carries the server's string to sign, as the real one does);
- business errors with HTTP 200 and {RequestId, Code, Message}: an invalid number, an unknown
  sign name or template, a TemplateParam that is not JSON or lacks a template variable, the
  per-number flow control (1 message a minute), an empty balance;
- success: HTTP 200 {RequestId, BizId, Code: "OK", Message: "OK"}.
The signature is recomputed here with an implementation of its own (form-encoding, then the
substitutions Aliyun's documentation gives for Java's URLEncoder), not with the provider's code.
Requests may come as GET (query) or POST (form body). Only Format=JSON is served.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from aiohttp import web

HOST_ID = "dysmsapi.aliyuncs.com"
REQUIRED = (
    "AccessKeyId",
    "Action",
    "SignatureMethod",
    "SignatureNonce",
    "SignatureVersion",
    "Timestamp",
    "Version",
    "Signature",
)
MOBILE_RE = re.compile(r"^1[3-9][0-9]{9}$")
TEMPLATE_VAR_RE = re.compile(r"\$\{(\w+)\}")


def _java_style_encode(value: str) -> str:
    return quote_plus(value, safe="").replace("+", "%20").replace("*", "%2A").replace("%7E", "~")


def expected_signature(method: str, params: dict[str, str], secret: str) -> tuple[str, str]:
    pairs = sorted((k, v) for k, v in params.items() if k != "Signature")
    canonical = "&".join(f"{_java_style_encode(k)}={_java_style_encode(v)}" for k, v in pairs)
    to_sign = f"{method}&{_java_style_encode('/')}&{_java_style_encode(canonical)}"
    mac = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode(), to_sign


@dataclass
class SentSms:
    mobile: str
    sign_name: str
    template_code: str
    params: dict[str, str]
    text: str


@dataclass
class FakeAliyunSms:
    access_keys: dict[str, str] = field(default_factory=lambda: {"LTAIfake0001": "fake-secret"})
    sign_names: set[str] = field(default_factory=lambda: {"净水云"})
    templates: dict[str, str] = field(
        default_factory=lambda: {"SMS_100001": "您的验证码为${code}，5分钟内有效。"}
    )
    balance: int = 1000  # messages the account can still pay for
    clock: Callable[[], float] = time.time
    sent: list[SentSms] = field(default_factory=list)
    requests: int = 0
    # Answers to give instead of processing the next requests: (HTTP status, body text).
    scripted: list[tuple[int, str]] = field(default_factory=list)
    _nonces: dict[str, float] = field(default_factory=dict)
    _last_to_mobile: dict[str, float] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    url: str = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeAliyunSms:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def codes_sent_to(self, mobile: str) -> list[str]:
        return [
            json.loads(s.params["TemplateParam"])["code"] for s in self.sent if s.mobile == mobile
        ]

    # ------------------------------------------------------------------ the API

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.scripted:
            status, body = self.scripted.pop(0)
            return web.Response(status=status, text=body, content_type="application/json")
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            form = await request.post()
            params.update({k: str(v) for k, v in form.items()})
        elif request.method != "GET":
            return self._pop_error(
                405, "UnsupportedHTTPMethod", "Specified HTTP method is not supported."
            )
        request_id = str(uuid.uuid4()).upper()
        for name in REQUIRED:
            if not params.get(name):
                return self._pop_error(
                    400,
                    "MissingParameter",
                    f'The input parameter "{name}" that is mandatory for processing this '
                    "request is not supplied.",
                    request_id,
                )
        if params["Version"] != "2017-05-25":
            return self._pop_error(
                400, "InvalidVersion", "Specified parameter Version is not valid.", request_id
            )
        if params["Action"] != "SendSms":
            return self._pop_error(
                404,
                "InvalidAction.NotFound",
                "Specified api is not found, please check your url and method.",
                request_id,
            )
        if params.get("Format", "XML").upper() != "JSON":
            raise AssertionError("the fake serves Format=JSON only")
        if params["SignatureMethod"] != "HMAC-SHA1" or params["SignatureVersion"] != "1.0":
            return self._pop_error(
                400,
                "InvalidSignatureMethod",
                "Specified signature method is not valid.",
                request_id,
            )
        secret = self.access_keys.get(params["AccessKeyId"])
        if secret is None:
            return self._pop_error(
                404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.", request_id
            )
        try:
            stamp = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return self._pop_error(
                400,
                "InvalidTimeStamp.Format",
                "Specified time stamp or date value is not well formatted.",
                request_id,
            )
        now = self.clock()
        if abs(stamp.timestamp() - now) > 15 * 60:
            return self._pop_error(
                400,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
                request_id,
            )
        expected, to_sign = expected_signature(request.method, params, secret)
        if not hmac.compare_digest(expected, params["Signature"]):
            return self._pop_error(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation. "
                f"server string to sign is:{to_sign}",
                request_id,
            )
        nonce = params["SignatureNonce"]
        self._nonces = {n: t for n, t in self._nonces.items() if now - t < 15 * 60}
        if nonce in self._nonces:
            return self._pop_error(
                400, "SignatureNonceUsed", "Specified signature nonce was used already.", request_id
            )
        self._nonces[nonce] = now
        return self._send(params, request_id, now)

    def _send(self, params: dict[str, str], request_id: str, now: float) -> web.Response:
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                return self._pop_error(
                    400,
                    "MissingParameter",
                    f'The input parameter "{name}" that is mandatory for processing this '
                    "request is not supplied.",
                    request_id,
                )
        mobile = params["PhoneNumbers"]
        if not MOBILE_RE.match(mobile):
            return self._biz_error("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号", request_id)
        if params["SignName"] not in self.sign_names:
            return self._biz_error(
                "isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名", request_id
            )
        template = self.templates.get(params["TemplateCode"])
        if template is None:
            return self._biz_error("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板", request_id)
        try:
            values: Any = json.loads(params.get("TemplateParam", "{}"))
        except ValueError:
            values = None
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            return self._biz_error(
                "isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值", request_id
            )
        missing = [name for name in TEMPLATE_VAR_RE.findall(template) if name not in values]
        if missing:
            return self._biz_error("isv.TEMPLATE_MISSING_PARAMETERS", "模版缺少变量", request_id)
        last = self._last_to_mobile.get(mobile)
        if last is not None and now - last < 60:
            return self._biz_error(
                "isv.BUSINESS_LIMIT_CONTROL", "触发分钟级流控Permits:1", request_id
            )
        if self.balance <= 0:
            return self._biz_error("isv.AMOUNT_NOT_ENOUGH", "账户余额不足", request_id)
        self.balance -= 1
        self._last_to_mobile[mobile] = now
        text = TEMPLATE_VAR_RE.sub(lambda m: values[m.group(1)], template)
        self.sent.append(SentSms(mobile, params["SignName"], params["TemplateCode"], params, text))
        biz_id = f"{secrets.randbelow(10**15):015d}^0"
        return web.json_response(
            {"RequestId": request_id, "Message": "OK", "BizId": biz_id, "Code": "OK"}
        )

    @staticmethod
    def _pop_error(
        status: int, code: str, message: str, request_id: str | None = None
    ) -> web.Response:
        request_id = request_id or str(uuid.uuid4()).upper()
        return web.json_response(
            {
                "RequestId": request_id,
                "HostId": HOST_ID,
                "Code": code,
                "Message": message,
                "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}&product=Dysmsapi"
                f"&requestId={request_id}",
            },
            status=status,
        )

    @staticmethod
    def _biz_error(code: str, message: str, request_id: str) -> web.Response:
        return web.json_response({"RequestId": request_id, "Message": message, "Code": code})
