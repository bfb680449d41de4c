"""A local fake of Allinpay 通联 收银宝's unified API (vsp.allinpay.com), faithful to its HTTP
protocol: form-encoded POSTs signed by the merchant (signtype RSA: every non-empty field but
`sign`, sorted by name, `k=v&...`, SHA1WithRSA, base64), JSON answers signed the same way with
Allinpay's own key, and the asynchronous 交易结果通知 posted form-encoded to the bill's
`notify_url`, signed with Allinpay's key, which expects the body `success`.

Served: 统一支付 (/apiweb/unitorder/pay), 统一查询 (/apiweb/tranx/query), 订单关闭
(/apiweb/tranx/close: an unpaid trade closes and can no longer be paid; a paid one is not
closed), 统一退款 (/apiweb/tranx/refund). A request whose signature does not verify with the
merchant's public key answers `retcode FAIL` (unsigned), as Allinpay does. Test controls:
`pay()` is the member paying with a card (the notification is sent, or not; it can be
duplicated, forged or carry another amount; a closed trade refuses the card);
`fail_next()` makes the next calls to a path answer 503, `refuse_next()` answers them
`retcode FAIL` with a message (unsigned, as Allinpay refuses). Written from Allinpay's
documentation, sharing no code with aquafleet's adapter.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import hashes

from tests.fakes.channel import rsa_sign, rsa_verify, serve, stop_serving
from tests.payments.keys import public_pem, rsa_private_pem

SUCCESS = "0000"
PENDING = "2000"
CLOSED = "3088"  # a trade closed unpaid (what a query answers: neither success nor processing)


def _text(fields: dict[str, str]) -> str:
    return "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "sign" and fields[k] != "")


def _sign(private: str, fields: dict[str, str]) -> str:
    return rsa_sign(private, _text(fields), hashes.SHA1())


def _verify(public: str, fields: dict[str, str]) -> bool:
    return rsa_verify(public, _text(fields), fields.get("sign", ""), hashes.SHA1())


@dataclass
class FakeCusMerchant:
    cusid: str
    appid: str
    private_pem: str = field(repr=False)  # the merchant's key (the vendor sets it in aquafleet)

    @property
    def public_pem(self) -> str:
        return public_pem(self.private_pem)


@dataclass
class FakeTrx:
    cusid: str
    reqsn: str
    trxid: str
    trxamt: int
    notify_url: str
    limit_pay: str
    status: str = PENDING
    acct_type: str = ""
    refunded: int = 0


@dataclass
class FakeRefundTrx:
    reqsn: str
    trxid: str
    oldreqsn: str
    trxamt: int
    status: str


class FakeAllinpay:
    def __init__(self) -> None:
        self.private_pem = rsa_private_pem("allinpay-platform")
        self.merchants: dict[str, FakeCusMerchant] = {}
        self.trx: dict[str, FakeTrx] = {}
        self.refunds: dict[str, FakeRefundTrx] = {}
        self.refund_status = SUCCESS  # what a refund answers (2000: processing, then query)
        self.close_status = SUCCESS  # what closing an unpaid trade answers (else: not closed)
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.notified: list[tuple[int, str]] = []
        self._failing: dict[str, int] = {}
        self._refusing: dict[str, tuple[str, int]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    @property
    def public_pem(self) -> str:
        return public_pem(self.private_pem)

    def add_merchant(self, cusid: str = "990581007426001", appid: str = "00000051") -> Any:
        merchant = FakeCusMerchant(cusid, appid, rsa_private_pem(f"allinpay-cus-{cusid}"))
        self.merchants[cusid] = merchant
        return merchant

    def fail_next(self, path: str, times: int = 1) -> None:
        self._failing[path] = times

    def refuse_next(self, path: str, retmsg: str = "商户状态异常", times: int = 1) -> None:
        """The next `times` calls to `path` answer `retcode FAIL` with `retmsg` (a merchant
        Allinpay suspended, say)."""
        self._refusing[path] = (retmsg, times)

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/apiweb/unitorder/pay", self._pay)
        app.router.add_post("/apiweb/tranx/query", self._query)
        app.router.add_post("/apiweb/tranx/close", self._close)
        app.router.add_post("/apiweb/tranx/refund", self._refund)
        self._runner, self.url, self._session = await serve(app, port)
        return self.url

    async def stop(self) -> None:
        await stop_serving(self._runner, self._session)

    # ------------------------------------------------------------------------- protocol

    def _signed(self, merchant: FakeCusMerchant, fields: dict[str, Any]) -> web.Response:
        answer = {
            "retcode": "SUCCESS", "cusid": merchant.cusid, "appid": merchant.appid,
            "randomstr": secrets.token_hex(8), **{k: str(v) for k, v in fields.items()},
        }  # fmt: skip
        answer["sign"] = _sign(self.private_pem, answer)
        return web.json_response(answer)

    async def _form(self, request: web.Request) -> tuple[FakeCusMerchant | None, Any]:
        """The request's merchant and form; or None and the answer to give."""
        path = request.path
        if self._failing.get(path, 0) > 0:
            self._failing[path] -= 1
            return None, web.Response(status=503, text="busy")
        if request.content_type != "application/x-www-form-urlencoded":
            return None, web.json_response({"retcode": "FAIL", "retmsg": "请求格式错误"})
        form = dict(urllib.parse.parse_qsl(await request.text(), keep_blank_values=True))
        self.calls.append((path, form))
        retmsg, refusing = self._refusing.get(path, ("", 0))
        if refusing > 0:
            self._refusing[path] = (retmsg, refusing - 1)
            return None, web.json_response({"retcode": "FAIL", "retmsg": retmsg})
        merchant = self.merchants.get(form.get("cusid", ""))
        if merchant is None or form.get("appid") != merchant.appid:
            return None, web.json_response({"retcode": "FAIL", "retmsg": "商户不存在"})
        if form.get("signtype") != "RSA" or not _verify(merchant.public_pem, form):
            return None, web.json_response({"retcode": "FAIL", "retmsg": "签名验证失败"})
        for name in ("version", "randomstr"):
            if not form.get(name):
                return None, web.json_response({"retcode": "FAIL", "retmsg": f"{name}不能为空"})
        return merchant, form

    async def _pay(self, request: web.Request) -> web.Response:
        merchant, form = await self._form(request)
        if merchant is None:
            return form  # type: ignore[no-any-return]
        try:
            amount = int(form["trxamt"])
            reqsn, notify_url = form["reqsn"], form["notify_url"]
        except (KeyError, ValueError):
            return web.json_response({"retcode": "FAIL", "retmsg": "参数错误"})
        trx = self.trx.get(reqsn)
        if trx is None:
            trx = self.trx[reqsn] = FakeTrx(
                cusid=merchant.cusid, reqsn=reqsn, trxid=f"2612{next(self._ids):014d}",
                trxamt=amount, notify_url=notify_url, limit_pay=form.get("limit_pay", ""),
            )  # fmt: skip
        elif trx.trxamt != amount:
            return self._signed(
                merchant, {"reqsn": reqsn, "trxstatus": "3999", "errmsg": "订单号重复"}
            )
        return self._signed(
            merchant,
            {"trxid": trx.trxid, "reqsn": reqsn, "trxstatus": SUCCESS,
             "payinfo": f"https://qr.95516.com/00010000/{trx.trxid}"},
        )  # fmt: skip

    async def _query(self, request: web.Request) -> web.Response:
        merchant, form = await self._form(request)
        if merchant is None:
            return form  # type: ignore[no-any-return]
        reqsn = form.get("reqsn", "")
        if reqsn in self.refunds:
            ref = self.refunds[reqsn]
            return self._signed(
                merchant,
                {"trxid": ref.trxid, "reqsn": reqsn, "trxcode": "VSP553", "trxamt": ref.trxamt,
                 "trxstatus": ref.status},
            )  # fmt: skip
        trx = self.trx.get(reqsn)
        if trx is None or trx.cusid != merchant.cusid:
            return web.json_response({"retcode": "FAIL", "retmsg": "交易不存在"})
        return self._signed(
            merchant,
            {"trxid": trx.trxid, "reqsn": reqsn, "trxcode": "VSP551", "trxamt": trx.trxamt,
             "trxstatus": trx.status, "accttype": trx.acct_type},
        )  # fmt: skip

    async def _close(self, request: web.Request) -> web.Response:
        merchant, form = await self._form(request)
        if merchant is None:
            return form  # type: ignore[no-any-return]
        trx = self.trx.get(form.get("oldreqsn", ""))
        if trx is None or trx.cusid != merchant.cusid:
            return web.json_response({"retcode": "FAIL", "retmsg": "原交易不存在"})
        if trx.status == SUCCESS:
            return self._signed(
                merchant, {"trxid": trx.trxid, "trxstatus": "3999", "errmsg": "交易已支付"}
            )
        if self.close_status != SUCCESS:  # busy: the trade stays as it was
            return self._signed(merchant, {"trxid": trx.trxid, "trxstatus": self.close_status})
        trx.status = CLOSED
        return self._signed(merchant, {"trxid": trx.trxid, "trxstatus": SUCCESS})

    async def _refund(self, request: web.Request) -> web.Response:
        merchant, form = await self._form(request)
        if merchant is None:
            return form  # type: ignore[no-any-return]
        reqsn = form.get("reqsn", "")
        if reqsn in self.refunds:  # the same refund asked again: the same answer
            ref = self.refunds[reqsn]
            return self._signed(
                merchant, {"trxid": ref.trxid, "reqsn": reqsn, "trxstatus": ref.status}
            )
        trx = self.trx.get(form.get("oldreqsn", ""))
        amount = int(form.get("trxamt", "0") or 0)
        if trx is None or trx.cusid != merchant.cusid or trx.status != SUCCESS:
            return self._signed(
                merchant, {"reqsn": reqsn, "trxstatus": "3888", "errmsg": "原交易不存在"}
            )
        if amount <= 0 or trx.refunded + amount > trx.trxamt:
            return self._signed(
                merchant, {"reqsn": reqsn, "trxstatus": "3999", "errmsg": "退款金额超过可退金额"}
            )
        trx.refunded += amount
        ref = self.refunds[reqsn] = FakeRefundTrx(
            reqsn=reqsn, trxid=f"2612{next(self._ids):014d}", oldreqsn=trx.reqsn,
            trxamt=amount, status=self.refund_status,
        )  # fmt: skip
        return self._signed(merchant, {"trxid": ref.trxid, "reqsn": reqsn, "trxstatus": ref.status})

    def finish_refund(self, reqsn: str) -> None:
        self.refunds[reqsn].status = SUCCESS

    # ------------------------------------------------------------------------- the member

    async def pay(
        self, reqsn: str, *, card: str = "credit", amount: int | None = None,
        times: int = 1, forge: bool = False, notify: bool = True,
    ) -> list[tuple[int, str]]:  # fmt: skip
        """The member pays bill `reqsn` with a card; the notification is posted `times` times
        (forged: signed with another key; `amount`: naming another amount; `notify=False`:
        lost, found only by a query). A debit-only bill refuses a credit card and a closed one
        any card (ValueError); nothing is notified."""
        trx = self.trx[reqsn]
        if trx.status == CLOSED:
            raise ValueError("this bill is closed")
        if card == "credit" and trx.limit_pay == "no_credit":
            raise ValueError("this bill refuses credit cards")
        trx.status = SUCCESS
        trx.acct_type = "02" if card == "credit" else "00"
        merchant = self.merchants[trx.cusid]
        form = {
            "appid": merchant.appid, "cusid": merchant.cusid, "trxcode": "VSP551",
            "trxid": trx.trxid, "cusorderid": trx.reqsn, "outtrxid": trx.reqsn,
            "trxamt": str(trx.trxamt if amount is None else amount),
            "initamt": str(trx.trxamt), "trxdate": time.strftime("%Y%m%d"),
            "paytime": time.strftime("%Y%m%d%H%M%S"), "trxstatus": SUCCESS,
            "accttype": trx.acct_type, "acct": "622588******1234", "fee": "0",
            "chnltrxid": f"UP{trx.trxid}", "signtype": "RSA",
        }  # fmt: skip
        key = rsa_private_pem("allinpay-forger") if forge else self.private_pem
        form["sign"] = _sign(key, form)
        answers: list[tuple[int, str]] = []
        for _ in range(times if notify else 0):
            answers.append(await self.deliver(trx.notify_url, form))
        return answers

    async def deliver(self, url: str, form: dict[str, str]) -> tuple[int, str]:
        assert self._session is not None
        async with self._session.post(url, data=form) as response:
            answer = (response.status, await response.text())
        self.notified.append(answer)
        return answer


async def _serve(port: int) -> None:
    """Development: the fake on `port`, the body that sets its merchant printed."""
    fake = FakeAllinpay()
    await fake.start(port)
    merchant = fake.add_merchant()
    print(f"fake Allinpay on {fake.url}: set AQUAFLEET_ALLINPAY_API_URL={fake.url}")
    print("PUT /api/v1/vendors/<vid>/acquirers/allinpay with:")
    print(
        json.dumps(
            {
                "allinpay_cusid": merchant.cusid, "allinpay_appid": merchant.appid,
                "allinpay_private_key": merchant.private_pem,
                "allinpay_public_key": fake.public_pem,
            },
            indent=2,
        )
    )  # fmt: skip
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8901))
