"""WeChat Pay API v3's signatures, as the fake speaks them: a request's way in (injected failures,
answers in WeChat Pay's place with a forged signature or none, the merchant's
WECHATPAY2-SHA256-RSA2048 `Authorization` verified) and its answers signed with the platform
key. `SignedApi` is the base the fake's routes build on (tests/fakes/wechatpay.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes

from tests.fakes.channel import rsa_sign, rsa_verify
from tests.payments.keys import public_pem, rsa_private_pem

BEIJING = dt.timezone(dt.timedelta(hours=8))
MERCHANT: web.RequestKey[FakeMerchant] = web.RequestKey("merchant")
BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("body")
PLATFORM_SERIAL = "PUB_KEY_ID_0119000001092026120600000000"
FORGED = "forged"  # signed with another key than the platform's, the platform's serial claimed
UNSIGNED = "unsigned"  # no Wechatpay-Timestamp/-Nonce/-Signature/-Serial at all


def sign(private_pem: str, message: str) -> str:
    return rsa_sign(private_pem, message, hashes.SHA256())


def _verify(public: str, message: str, signature: str) -> bool:
    return rsa_verify(public, message, signature, hashes.SHA256())


def beijing_time(at: float) -> str:
    return dt.datetime.fromtimestamp(at, BEIJING).isoformat(timespec="seconds")


@dataclass
class FakeMerchant:
    mch_id: str
    app_id: str
    api_v3_key: str
    key_serial: str
    private_pem: str  # the merchant's key: the fake keeps only its public half to verify

    @property
    def public_pem(self) -> str:
        return public_pem(self.private_pem)


@dataclass
class SignedApi:
    """The merchants WeChat Pay knows, its platform key, and the middleware every route is
    served behind."""

    merchants: dict[str, FakeMerchant] = field(default_factory=dict)
    platform_private: str = field(default_factory=lambda: rsa_private_pem("wechatpay-platform"))
    platform_serial: str = PLATFORM_SERIAL
    requests: list[str] = field(default_factory=list)
    _failures: list[tuple[str, int, str]] = field(default_factory=list)
    _forgeries: list[tuple[str, int, str, str]] = field(default_factory=list)

    @property
    def platform_public(self) -> str:
        return public_pem(self.platform_private)

    def add_merchant(
        self, mch_id: str = "1900000109", app_id: str = "wxd678efh567hg6787"
    ) -> FakeMerchant:
        merchant = FakeMerchant(
            mch_id=mch_id, app_id=app_id, api_v3_key=secrets.token_hex(16),
            key_serial=secrets.token_hex(20).upper(),
            private_pem=rsa_private_pem(f"merchant-{mch_id}"),
        )  # fmt: skip
        self.merchants[mch_id] = merchant
        return merchant

    def fail_next(
        self, path_prefix: str, status: int = 500, code: str = "SYSTEM_ERROR", times: int = 1
    ) -> None:
        self._failures.extend([(path_prefix, status, code)] * times)

    def forge_next(
        self,
        path_prefix: str,
        status: int = 404,
        code: str = "NOT_FOUND",
        *,
        signature: str = FORGED,
        times: int = 1,
    ) -> None:
        """The next `times` calls to a path under `path_prefix` are answered by someone other
        than WeChat Pay (on the way, in its place: the request goes no further) with `status`
        and WeChat Pay's error body of `code`, its signature FORGED (made with another key,
        the platform's serial claimed) or UNSIGNED (no signature headers)."""
        assert signature in (FORGED, UNSIGNED)
        self._forgeries.extend([(path_prefix, status, code, signature)] * times)

    # ------------------------------------------------------------------------- signing

    def _signed_headers(self, body: str, *, at: int | None = None) -> dict[str, str]:
        timestamp = str(at if at is not None else int(time.time()))
        nonce = secrets.token_hex(16)
        return {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": sign(self.platform_private, f"{timestamp}\n{nonce}\n{body}\n"),
            "Wechatpay-Serial": self.platform_serial,
            "Request-ID": secrets.token_hex(8),
        }

    def _answer(
        self, status: int, payload: Any = None, *, signature: str = "platform"
    ) -> web.Response:
        body = "" if payload is None else json.dumps(payload, ensure_ascii=False)
        headers = self._signed_headers(body)
        if signature == FORGED:
            timestamp, nonce = headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"]
            forger = rsa_private_pem("wechatpay-forger")
            headers["Wechatpay-Signature"] = sign(forger, f"{timestamp}\n{nonce}\n{body}\n")
        elif signature == UNSIGNED:
            headers = {"Request-ID": headers["Request-ID"]}
        return web.Response(
            status=status, text=body or None, content_type="application/json" if body else None,
            headers=headers,
        )  # fmt: skip

    def _error(
        self, status: int, code: str, message: str, *, signature: str = "platform"
    ) -> web.Response:
        return self._answer(status, {"code": code, "message": message}, signature=signature)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path_qs = request.path_qs
        self.requests.append(f"{request.method} {request.path}")
        for index, (prefix, status, code, signature) in enumerate(self._forgeries):
            if request.path.startswith(prefix):
                del self._forgeries[index]
                return self._error(status, code, "记录不存在", signature=signature)
        for index, (prefix, status, code) in enumerate(self._failures):
            if request.path.startswith(prefix):
                del self._failures[index]
                return self._error(status, code, "injected failure")
        body = await request.text()
        merchant = self._authenticate(
            request.method, path_qs, body, request.headers.get("Authorization", "")
        )
        if isinstance(merchant, web.Response):
            return merchant
        request[MERCHANT] = merchant
        request[BODY] = json.loads(body) if body else {}
        return await handler(request)

    def _authenticate(
        self, method: str, path: str, body: str, header: str
    ) -> FakeMerchant | web.Response:
        schema, _, rest = header.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if schema != "WECHATPAY2-SHA256-RSA2048" or not {
            "mchid",
            "nonce_str",
            "signature",
            "timestamp",
            "serial_no",
        } <= set(params):
            return self._unauthenticated("Authorization missing or malformed")
        merchant = self.merchants.get(params["mchid"])
        if merchant is None or params["serial_no"] != merchant.key_serial:
            return self._unauthenticated("unknown merchant or certificate serial")
        if abs(int(time.time()) - int(params["timestamp"])) > 300:
            return self._unauthenticated("timestamp expired")
        message = f"{method}\n{path}\n{params['timestamp']}\n{params['nonce_str']}\n{body}\n"
        if not _verify(merchant.public_pem, message, params["signature"]):
            return self._unauthenticated("signature mismatch")
        return merchant

    def _unauthenticated(self, message: str) -> web.Response:
        """401 to a request whose signature did not verify: WeChat Pay promises its answer
        signature only to requests it authenticated, so this one carries none."""
        return self._error(401, "SIGN_ERROR", message, signature=UNSIGNED)
