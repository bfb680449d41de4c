"""Alipay Open Platform over aiohttp (openapi.alipay.com/gateway.do): the H5 payment URL
(alipay.trade.wap.pay), query, close, refund and refund query (docs/payments.md).

Every call is a form-encoded POST of the common parameters (app_id, method, format JSON,
charset utf-8, sign_type RSA2, timestamp in Beijing time, version 1.0, biz_content as JSON,
notify_url where it applies) signed with the vendor's app key (models/alipay.py); every answer's
`*_response` is verified with Alipay's public key before it is read. `code` 10000 is success;
anything else is refused (`sub_code` says why). Every call is keyed by our own numbers
(out_trade_no, out_request_no), which Alipay answers the same way when repeated, so a failure to
connect, a timeout or a 5xx is retried a bounded number of times.

alipay.trade.wap.pay is not called from here: it is a page the member's browser opens. Its URL
is the gateway's with the signed parameters in the query string; the trade exists at Alipay
once the member opens it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlencode

import aiohttp

from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.providers.http import fetch, with_retries
from aquafleet.models.alipay import (
    CHARSET,
    FORMAT,
    SIGN_TYPE,
    VERSION,
    AlipayError,
    AlipayMerchant,
    open_response,
    signed_request,
    yuan,
)
from aquafleet.models.errors import DomainError, Unavailable

log = get_logger("aquafleet.alipay")

ALIPAY_GATEWAY = "https://openapi.alipay.com/gateway.do"
SUCCESS = "10000"
WAP_PRODUCT = "QUICK_WAP_WAY"
BEIJING = dt.timezone(dt.timedelta(hours=8))
MAX_ANSWER_BYTES = 256 * 1024
# sub_codes that say "try again later", not "no"
RETRYABLE = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR", "isp.unknow-error"})


class AlipayUnavailable(Unavailable):
    """Alipay did not answer (timeout, connection, 5xx, a system error): try again later."""

    code = "alipay_unavailable"


class AlipayRefused(DomainError):
    """Alipay answered, and refused: its code and sub_code."""

    code = "alipay_refused"

    def __init__(self, method: str, answer: dict[str, Any]) -> None:
        self.alipay_code = str(answer.get("code", ""))
        self.sub_code = str(answer.get("sub_code", ""))
        message = str(answer.get("sub_msg", "") or answer.get("msg", ""))[:120]
        super().__init__(f"alipay {method} {self.alipay_code} {self.sub_code}: {message}")


def beijing_now() -> str:
    return dt.datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


class AlipayClient:
    """One aiohttp session's client of Alipay's gateway, for any vendor's app."""

    def __init__(self, session: aiohttp.ClientSession, *, gateway_url: str = ALIPAY_GATEWAY):
        self._session = session
        self.gateway_url = gateway_url or ALIPAY_GATEWAY

    def params(
        self, merchant: AlipayMerchant, method: str, biz: dict[str, Any], notify_url: str = ""
    ) -> dict[str, str]:
        """The signed common parameters of a call."""
        return signed_request(
            {
                "app_id": merchant.app_id, "method": method, "format": FORMAT,
                "charset": CHARSET, "sign_type": SIGN_TYPE, "timestamp": beijing_now(),
                "version": VERSION, "notify_url": notify_url,
                "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
            },
            merchant.private_key,
        )  # fmt: skip

    def wap_pay_url(
        self, merchant: AlipayMerchant, *, bill_no: str, amount_fen: int, subject: str,
        notify_url: str, quit_url: str = "", time_expire: dt.datetime | None = None,
    ) -> str:  # fmt: skip
        """The signed alipay.trade.wap.pay URL the member's browser opens (H5 手机网站支付).
        `time_expire`: after it Alipay neither opens the page nor takes a payment of the
        trade (绝对超时时间, Beijing time `yyyy-MM-dd HH:mm:ss`, 1m..15d ahead)."""
        biz: dict[str, Any] = {
            "out_trade_no": bill_no, "total_amount": yuan(amount_fen),
            "subject": subject[:128] or bill_no, "product_code": WAP_PRODUCT,
        }  # fmt: skip
        if time_expire is not None:
            biz["time_expire"] = time_expire.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        if quit_url:
            biz["quit_url"] = quit_url
        params = self.params(merchant, "alipay.trade.wap.pay", biz, notify_url)
        return self.gateway_url + "?" + urlencode(params)

    async def call(
        self, merchant: AlipayMerchant, method: str, biz: dict[str, Any]
    ) -> dict[str, Any]:
        """One signed call; the verified `*_response` (code 10000), or AlipayRefused."""
        form = self.params(merchant, method, biz)

        async def once() -> dict[str, Any]:
            answer = await self._once(merchant, method, form)
            if answer.get("sub_code") in RETRYABLE:
                raise AlipayUnavailable(f"alipay {method}: {answer.get('sub_code')}")
            return answer

        def retrying(attempt: int, exc: Exception) -> None:
            log.warning("alipay_retry", method=method, attempt=attempt, why=str(exc))

        answer = await with_retries(once, AlipayUnavailable, on_retry=retrying)
        if answer.get("code") != SUCCESS:
            raise AlipayRefused(method, answer)
        return answer

    async def _once(
        self, merchant: AlipayMerchant, method: str, form: dict[str, str]
    ) -> dict[str, Any]:
        status, body, _ = await fetch(
            self._session, "POST", self.gateway_url, params={"charset": CHARSET}, data=form,
            max_bytes=MAX_ANSWER_BYTES,
            unreachable=lambda why: AlipayUnavailable(f"alipay {method}: {why}"),
        )  # fmt: skip
        if status >= 500:
            raise AlipayUnavailable(f"alipay {method}: HTTP {status}")
        if status != 200 or len(body) > MAX_ANSWER_BYTES:
            raise AlipayRefused(method, {"code": f"HTTP {status}"})
        try:
            answer = open_response(body.decode("utf-8", "replace"), method, merchant.public_key)
        except AlipayError as exc:
            raise AlipayUnavailable(f"alipay {method}: {exc}") from None
        if answer.pop("_unsigned", False):
            # Not authenticated (our key or app id is wrong at Alipay), or not Alipay: nothing
            # it says is taken, and nothing is decided on it.
            raise AlipayUnavailable(
                f"alipay {method}: unsigned {answer.get('code', '')} {answer.get('sub_code', '')}"
            )
        return answer

    # ------------------------------------------------------------------------- the calls

    async def query(self, merchant: AlipayMerchant, bill_no: str) -> dict[str, Any] | None:
        """alipay.trade.query; None when Alipay has no such trade (never opened)."""
        try:
            return await self.call(merchant, "alipay.trade.query", {"out_trade_no": bill_no})
        except AlipayRefused as exc:
            if exc.sub_code == "ACQ.TRADE_NOT_EXIST":
                return None
            raise

    async def close(self, merchant: AlipayMerchant, bill_no: str) -> None:
        """alipay.trade.close (AlipayRefused ACQ.TRADE_NOT_EXIST: never opened;
        ACQ.TRADE_STATUS_ERROR: paid, or closed before)."""
        await self.call(merchant, "alipay.trade.close", {"out_trade_no": bill_no})

    async def refund(
        self, merchant: AlipayMerchant, *, bill_no: str, refund_no: str, refund_fen: int,
        reason: str,
    ) -> dict[str, Any]:  # fmt: skip
        return await self.call(
            merchant, "alipay.trade.refund",
            {"out_trade_no": bill_no, "refund_amount": yuan(refund_fen),
             "out_request_no": refund_no, "refund_reason": reason[:128]},
        )  # fmt: skip

    async def query_refund(
        self, merchant: AlipayMerchant, *, bill_no: str, refund_no: str
    ) -> dict[str, Any]:
        return await self.call(
            merchant, "alipay.trade.fastpay.refund.query",
            {"out_trade_no": bill_no, "out_request_no": refund_no},
        )  # fmt: skip
