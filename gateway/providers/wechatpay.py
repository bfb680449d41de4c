"""WeChat Pay API v3 over aiohttp (api.mch.weixin.qq.com): JSAPI prepay, query and close a
transaction, refunds, the trade bill, merchant transfers.

Every request is signed with the vendor's merchant key and every answer's platform signature is
verified before it is read (models/wechatpay.py), refusals (4xx) included: WeChat Pay signs
every answer to a request whose signature it verified, and a refusal decides things (a query's
404 may fail a withdrawal). An answer whose signature is missing or does not verify is not
WeChat Pay's word: `AnswerNotVerified`, handled like no answer (what the call did is unknown,
asked again later), counted (`wechatpay_answers_unverified`) and logged. Each call has the
session's timeout; a
failure to connect, a timeout or a 5xx is retried (a bounded number of times, with a short
backoff) only for calls that are idempotent: reads, closing, and creations keyed by our own
number (a prepay by out_trade_no, a refund by out_refund_no, a transfer batch by out_batch_no),
which WeChat Pay answers the same way when repeated.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.providers.http import RETRIES, fetch, with_retries
from aquafleet.models.merchants import WechatPayMerchant
from aquafleet.models.wechatpay import (
    SignatureInvalid,
    WechatPayError,
    authorization,
    nonce,
    verify_signed,
)

log = get_logger("aquafleet.wechatpay")

WECHATPAY_API = "https://api.mch.weixin.qq.com"
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a day's trade bill of a busy merchant fits


class WechatPayUnavailable(WechatPayError):
    """WeChat Pay did not answer (timeout, connection, 5xx): trying again later may work."""

    code = "wechatpay_unavailable"


class WechatPayRefused(WechatPayError):
    """WeChat Pay answered 4xx with its {code, message}, signed by its platform key."""

    def __init__(self, status: int, wx_code: str, wx_message: str) -> None:
        super().__init__(f"wechatpay {status} {wx_code}: {wx_message[:120]}")
        self.status = status
        self.wx_code = wx_code


class AnswerNotVerified(WechatPayUnavailable, SignatureInvalid):
    """An answer whose platform signature is missing or does not verify (forged, altered on
    its way, headers dropped by a proxy, a platform key we do not hold), whatever its status:
    nothing it says is taken. Like no answer (WechatPayUnavailable): what the call did is
    unknown, and it is asked again later; never a refusal that fails anything. `status` and
    `wx_code` are what it claimed, for the log only."""

    code = "wechatpay_answer_not_verified"

    def __init__(self, status: int, wx_code: str, why: str) -> None:
        claimed = f"{status} {wx_code}".strip()
        super().__init__(f"wechatpay answer not verified ({claimed}, not taken): {why}")
        self.status = status
        self.wx_code = wx_code


class WechatPayClient:
    """One aiohttp session's client of WeChat Pay API v3, for any vendor's merchant."""

    def __init__(
        self, session: aiohttp.ClientSession, metrics: Metrics, *, base_url: str = WECHATPAY_API
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self.metrics = metrics

    async def call(
        self,
        merchant: WechatPayMerchant,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        idempotent: bool,
        raw: bool = False,
    ) -> Any:
        """One signed call; the verified answer's JSON (None for 204), or its text (`raw`: a
        bill download, which WeChat Pay does not sign; its hash is checked instead)."""
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) if body else ""

        def retrying(attempt: int, exc: Exception) -> None:
            log.warning("wechatpay_retry", path=path.split("?")[0], attempt=attempt, why=str(exc))

        return await with_retries(
            lambda: self._once(merchant, method, path, text, raw=raw), WechatPayUnavailable,
            attempts=1 + (RETRIES if idempotent else 0), on_retry=retrying,
        )  # fmt: skip

    async def _once(
        self, merchant: WechatPayMerchant, method: str, path: str, text: str, *, raw: bool
    ) -> Any:
        headers = {
            "Authorization": authorization(
                mch_id=merchant.mch_id, key_serial=merchant.key_serial,
                private_pem=merchant.private_key, method=method, path=path, body=text,
                timestamp=int(time.time()), nonce_str=nonce(),
            ),
            "Accept": "application/json",
            "User-Agent": "aquafleet",
        }  # fmt: skip
        if text:
            headers["Content-Type"] = "application/json"
        status, answer, answer_headers = await fetch(
            self._session, method, self._base + path, data=text.encode() if text else None,
            headers=headers, max_bytes=MAX_ANSWER_BYTES,
            unreachable=lambda why: WechatPayUnavailable(f"wechatpay unreachable: {why}"),
        )  # fmt: skip
        if len(answer) > MAX_ANSWER_BYTES:
            raise WechatPayError("wechatpay answer too large")
        if status >= 500:
            raise WechatPayUnavailable(f"wechatpay answered {status}")
        decoded = answer.decode("utf-8", "replace")
        if raw and status < 400:
            return decoded  # a bill file: not signed (its hash, in a signed answer, is checked)
        error: dict[str, Any] = {}
        if status >= 400:
            try:
                loaded = json.loads(decoded)
            except ValueError:
                loaded = None
            error = loaded if isinstance(loaded, dict) else {}
        try:
            verify_signed(
                answer_headers, decoded, platform_serial=merchant.platform_serial,
                platform_pem=merchant.platform_public_key, now=int(time.time()),
            )  # fmt: skip
        except SignatureInvalid as exc:
            self.metrics.wechatpay_answers_unverified += 1
            claimed = str(error.get("code", ""))[:64]
            log.error(
                "wechatpay_answer_not_verified", path=path.split("?")[0], status=status,
                claimed_code=claimed, why=str(exc),
                request_id=str(answer_headers.get("Request-ID", ""))[:64],
            )  # fmt: skip
            raise AnswerNotVerified(status, claimed, str(exc)) from None
        if status >= 400:
            raise WechatPayRefused(
                status, str(error.get("code", "")), str(error.get("message", ""))
            )
        if status == 204 or not decoded:
            return None
        try:
            return json.loads(decoded)
        except ValueError:
            raise WechatPayError("wechatpay answered something that is not JSON") from None

    # ------------------------------------------------------------------------- the calls

    async def jsapi_prepay(
        self,
        merchant: WechatPayMerchant,
        *,
        out_trade_no: str,
        description: str,
        total_fen: int,
        openid: str,
        notify_url: str,
        expires_at: str | None = None,
    ) -> str:
        """Create the JSAPI / mini-program transaction; its prepay_id."""
        body: dict[str, Any] = {
            "appid": merchant.app_id, "mchid": merchant.mch_id,
            "description": description[:127], "out_trade_no": out_trade_no,
            "notify_url": notify_url, "amount": {"total": total_fen, "currency": "CNY"},
            "payer": {"openid": openid},
        }  # fmt: skip
        if expires_at:
            body["time_expire"] = expires_at
        answer = await self.call(
            merchant, "POST", "/v3/pay/transactions/jsapi", body, idempotent=True
        )
        return str(answer["prepay_id"])

    async def query_transaction(
        self, merchant: WechatPayMerchant, out_trade_no: str
    ) -> dict[str, Any]:
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no)}?" + urlencode(
            {"mchid": merchant.mch_id}
        )
        answer: dict[str, Any] = await self.call(merchant, "GET", path, idempotent=True)
        return answer

    async def close_transaction(self, merchant: WechatPayMerchant, out_trade_no: str) -> None:
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no)}/close"
        await self.call(merchant, "POST", path, {"mchid": merchant.mch_id}, idempotent=True)

    async def refund(
        self,
        merchant: WechatPayMerchant,
        *,
        out_trade_no: str,
        out_refund_no: str,
        refund_fen: int,
        total_fen: int,
        reason: str,
        notify_url: str,
    ) -> dict[str, Any]:
        body = {
            "out_trade_no": out_trade_no, "out_refund_no": out_refund_no,
            "reason": reason[:80], "notify_url": notify_url,
            "amount": {"refund": refund_fen, "total": total_fen, "currency": "CNY"},
        }  # fmt: skip
        answer: dict[str, Any] = await self.call(
            merchant, "POST", "/v3/refund/domestic/refunds", body, idempotent=True
        )
        return answer

    async def query_refund(self, merchant: WechatPayMerchant, out_refund_no: str) -> dict[str, Any]:
        path = f"/v3/refund/domestic/refunds/{quote(out_refund_no)}"
        answer: dict[str, Any] = await self.call(merchant, "GET", path, idempotent=True)
        return answer

    async def trade_bill(self, merchant: WechatPayMerchant, bill_date: str) -> str:
        """The day's trade bill (ALL), as WeChat Pay's CSV text."""
        path = "/v3/bill/tradebill?" + urlencode({"bill_date": bill_date, "bill_type": "ALL"})
        answer = await self.call(merchant, "GET", path, idempotent=True)
        url = str(answer["download_url"])
        if not url.startswith(self._base + "/"):
            raise WechatPayError("the bill's download URL is not WeChat Pay's")
        text: str = await self.call(
            merchant, "GET", url.removeprefix(self._base), idempotent=True, raw=True
        )
        if answer.get("hash_type") != "SHA1" or (
            hashlib.sha1(text.encode()).hexdigest() != str(answer.get("hash_value", "")).lower()
        ):
            raise WechatPayError("the downloaded bill does not match its hash")
        return text

    async def create_transfer_batch(
        self, merchant: WechatPayMerchant, body: dict[str, Any]
    ) -> dict[str, Any]:
        """商家转账到零钱 (merchant transfers): keyed by body["out_batch_no"]."""
        answer: dict[str, Any] = await self.call(
            merchant, "POST", "/v3/transfer/batches", {"appid": merchant.app_id, **body},
            idempotent=True,
        )  # fmt: skip
        return answer

    async def query_transfer_batch(
        self, merchant: WechatPayMerchant, out_batch_no: str
    ) -> dict[str, Any]:
        path = f"/v3/transfer/batches/out-batch-no/{quote(out_batch_no)}?" + urlencode(
            {"need_query_detail": "true", "detail_status": "ALL"}
        )
        answer: dict[str, Any] = await self.call(merchant, "GET", path, idempotent=True)
        return answer

    async def query_transfer_detail(
        self, merchant: WechatPayMerchant, out_batch_no: str, out_detail_no: str
    ) -> dict[str, Any]:
        """One transfer detail (its `fail_reason` when it failed)."""
        path = (
            f"/v3/transfer/batches/out-batch-no/{quote(out_batch_no)}"
            f"/details/out-detail-no/{quote(out_detail_no)}"
        )
        answer: dict[str, Any] = await self.call(merchant, "GET", path, idempotent=True)
        return answer
