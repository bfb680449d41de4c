"""Allinpay 通联 收银宝 (vsp.allinpay.com) over aiohttp: the card acquirer adapter.

The unified API (统一支付API, 统一查询API, 订单关闭, 统一退款API, 交易结果通知)
takes form-encoded POSTs signed with the merchant's RSA key (models/allinpay.py) and answers
JSON signed with Allinpay's key, verified here before anything is read. `trxstatus` 0000 is
success, 2000/2008 are still processing, anything else failed. A card payment is `paytype` U01
(银联扫码: `payinfo` is the code the app opens for the member's UnionPay card); a debit-only
one (AD-09) adds `limit_pay=no_credit`. The notification is a signed form posted to our
`notify_url`, answered `success`. Calls keyed by our own number (a pay by `reqsn`, a refund by
its `reqsn`, a query) are retried a bounded number of times when Allinpay does not answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from aquafleet.gateway.cards import (
    AcquirerRefused,
    AcquirerUnavailable,
    CardKind,
    CardNotificationRefused,
    CardPrepay,
    CardResult,
    CloseResult,
    RefundResult,
)
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.providers.http import fetch, with_retries
from aquafleet.models.allinpay import (
    VERSION,
    AllinpayMerchant,
    allinpay_merchant,
    random_str,
    rsa_verify,
    signed,
)
from aquafleet.models.merchants import ALLINPAY

log = get_logger("aquafleet.allinpay")

ALLINPAY_API = "https://vsp.allinpay.com"
PAY_PATH = "/apiweb/unitorder/pay"
QUERY_PATH = "/apiweb/tranx/query"
CLOSE_PATH = "/apiweb/tranx/close"
REFUND_PATH = "/apiweb/tranx/refund"
SUCCESS = "0000"
PROCESSING = frozenset({"2000", "2008"})
CARD_PAYTYPE = "U01"
MAX_ANSWER_BYTES = 256 * 1024


class AllinpayAcquirer:
    """The `CardAcquirer` of 收银宝, for any vendor's merchant."""

    name = ALLINPAY
    notify_ack = "success"

    def __init__(self, session: aiohttp.ClientSession, box: Any, *, base_url: str) -> None:
        self._session = session
        self._box = box
        self._base = (base_url or ALLINPAY_API).rstrip("/")

    async def merchant(self, vendor_code: str) -> AllinpayMerchant:
        return await allinpay_merchant(vendor_code, self._box)

    async def call(
        self, merchant: AllinpayMerchant, path: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """One signed POST; the verified answer (retcode SUCCESS), or AcquirerRefused."""
        form = signed(
            {"cusid": merchant.cusid, "appid": merchant.appid, "version": VERSION,
             "randomstr": random_str(), **fields},
            merchant.private_key,
        )  # fmt: skip
        answer = await with_retries(lambda: self._once(path, form), AcquirerUnavailable)
        if answer.get("retcode") != "SUCCESS":
            raise AcquirerRefused(f"allinpay {path}: {str(answer.get('retmsg', ''))[:120]}")
        if not rsa_verify(answer, merchant.public_key):
            raise AcquirerUnavailable(f"allinpay {path}: the answer's signature is wrong")
        if answer.get("cusid") != merchant.cusid or answer.get("appid") != merchant.appid:
            raise AcquirerRefused(f"allinpay {path}: the answer is for another merchant")
        return answer

    async def _once(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        status, body, _ = await fetch(
            self._session, "POST", self._base + path, data=form, max_bytes=MAX_ANSWER_BYTES,
            unreachable=lambda why: AcquirerUnavailable(f"allinpay {path}: {why}"),
        )  # fmt: skip
        if status >= 500:
            raise AcquirerUnavailable(f"allinpay {path}: HTTP {status}")
        if status != 200 or len(body) > MAX_ANSWER_BYTES:
            raise AcquirerRefused(f"allinpay {path}: HTTP {status}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise AcquirerUnavailable(f"allinpay {path}: not JSON") from None
        if not isinstance(answer, dict):
            raise AcquirerUnavailable(f"allinpay {path}: not an object")
        return {str(k): "" if v is None else str(v) for k, v in answer.items()}

    async def pay(
        self, merchant: AllinpayMerchant, *, bill_no: str, amount_fen: int, description: str,
        kind: CardKind, notify_url: str,
    ) -> CardPrepay:  # fmt: skip
        answer = await self.call(
            merchant, PAY_PATH,
            {"trxamt": amount_fen, "reqsn": bill_no, "paytype": CARD_PAYTYPE,
             "body": description[:100], "notify_url": notify_url,
             "limit_pay": "no_credit" if kind is CardKind.DEBIT else ""},
        )  # fmt: skip
        status = answer.get("trxstatus", "")
        if status != SUCCESS and status not in PROCESSING:
            raise AcquirerRefused(f"allinpay pay {status}: {answer.get('errmsg', '')[:120]}")
        return CardPrepay(
            transaction_no=answer.get("trxid", ""), pay_info=answer.get("payinfo", "")
        )

    def verify_notification(
        self, merchant: AllinpayMerchant, form: Mapping[str, str]
    ) -> CardResult | None:
        if not rsa_verify(form, merchant.public_key):
            raise CardNotificationRefused("the notification's signature is wrong")
        if form.get("cusid") != merchant.cusid or form.get("appid") != merchant.appid:
            raise CardNotificationRefused("the notification is for another merchant")
        if form.get("trxstatus") != SUCCESS:
            return None
        return self._result(form.get("trxid", ""), form.get("cusorderid", ""), form)

    @staticmethod
    def _result(trxid: str, bill_no: str, fields: Mapping[str, str]) -> CardResult:
        try:
            amount = int(fields.get("trxamt", ""))
        except ValueError:
            amount = -1
        return CardResult(notice_id=trxid, bill_no=bill_no, transaction_no=trxid, amount_fen=amount)

    async def query(self, merchant: AllinpayMerchant, bill_no: str) -> CardResult | None:
        answer = await self.call(merchant, QUERY_PATH, {"reqsn": bill_no})
        if answer.get("trxstatus") != SUCCESS:
            return None
        return self._result(answer.get("trxid", ""), bill_no, answer)

    async def close(self, merchant: AllinpayMerchant, bill_no: str) -> CloseResult:
        """订单关闭 of our bill (`oldreqsn`). Only `trxstatus` 0000 is taken as closed; any
        other answer (a bill paid, or closed before, a refusal) is settled by the bill's query:
        paid, still processing (open), or anything else: finished unpaid (closed)."""
        try:
            answer = await self.call(merchant, CLOSE_PATH, {"oldreqsn": bill_no})
        except AcquirerRefused as exc:
            log.warning("allinpay_close_refused", bill_no=bill_no, why=str(exc))
            answer = {}
        if answer.get("trxstatus") == SUCCESS:
            return CloseResult.CLOSED
        status = (await self.call(merchant, QUERY_PATH, {"reqsn": bill_no})).get("trxstatus", "")
        if status == SUCCESS:
            return CloseResult.PAID
        return CloseResult.OPEN if status in PROCESSING else CloseResult.CLOSED

    async def refund(
        self, merchant: AllinpayMerchant, *, bill_no: str, refund_no: str, refund_fen: int,
        total_fen: int, reason: str,
    ) -> RefundResult:  # fmt: skip
        answer = await self.call(
            merchant, REFUND_PATH,
            {"trxamt": refund_fen, "reqsn": refund_no, "oldreqsn": bill_no,
             "remark": reason[:160]},
        )  # fmt: skip
        status = answer.get("trxstatus", "")
        if status == SUCCESS:
            return RefundResult.SUCCEEDED
        if status in PROCESSING:
            return RefundResult.PENDING
        raise AcquirerRefused(f"allinpay refund {status}: {answer.get('errmsg', '')[:120]}")

    async def query_refund(self, merchant: AllinpayMerchant, refund_no: str) -> RefundResult | None:
        answer = await self.call(merchant, QUERY_PATH, {"reqsn": refund_no})
        status = answer.get("trxstatus", "")
        if status == SUCCESS:
            return RefundResult.SUCCEEDED
        return RefundResult.PENDING if status in PROCESSING else None
