"""A local fake of Alipay Open Platform's gateway (openapi.alipay.com/gateway.do), faithful to
its HTTP protocol as documented: the common parameters (app_id, method, format, charset,
sign_type RSA2, timestamp, version, biz_content, notify_url) signed by the app (every parameter
but `sign` with a value, sorted, `k=v&...`, SHA256WithRSA, base64), answers
`{"<method>_response": {...}, "sign": ...}` signed over the exact text of the response object
with Alipay's own key, and the 异步通知 posted form-encoded to the trade's notify_url, signed
over every parameter but `sign` and `sign_type`, which expects the body `success`.

Served: alipay.trade.wap.pay (GET: the page the member's browser opens; the trade exists from
then; after its `time_expire`, read against the fake's clock (`advance`), the page is refused
and the trade closes unpaid, taking no payment), alipay.trade.query, alipay.trade.close,
alipay.trade.refund (idempotent by out_request_no; an over-refund is refused
ACQ.REFUND_AMT_NOT_EQUAL_TOTAL), alipay.trade.fastpay.refund.query. A request whose signature
does not verify with the app's public key answers `isv.invalid-signature` unsigned. Test
controls: `open()` is the member's browser opening the URL, `pay()` the member paying (the
notification sent once or more, forged or with another amount, or held), `fail_next()` makes
the next calls answer 503, `refuse_next()` makes the next calls of a method answer a signed
business refusal (its code and sub_code). Written from Alipay's documentation, sharing no code with
aquafleet's client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import secrets
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import hashes

from tests.fakes.channel import rsa_sign, rsa_verify, serve, stop_serving
from tests.payments.keys import public_pem, rsa_private_pem

BEIJING = dt.timezone(dt.timedelta(hours=8))
COMMON = ("app_id", "method", "charset", "sign_type", "timestamp", "version", "biz_content")


def _content(params: dict[str, str], exclude: tuple[str, ...]) -> str:
    return "&".join(
        f"{k}={params[k]}" for k in sorted(params) if k not in exclude and params[k] != ""
    )


def _sign(private: str, text: str) -> str:
    return rsa_sign(private, text, hashes.SHA256())


def _verify(public: str, text: str, signature: str) -> bool:
    return rsa_verify(public, text, signature, hashes.SHA256())


def _yuan(text: str) -> Decimal:
    value = Decimal(text)
    if value <= 0 or value != value.quantize(Decimal("0.01")):
        raise ValueError(text)
    return value.quantize(Decimal("0.01"))


# Alipay's own clock, which time_expire is read against ("以支付宝系统时间为准"); tests move it
# with `FakeAlipay.advance`.
_clock = {"offset": dt.timedelta(0)}


def _moment() -> dt.datetime:
    return dt.datetime.now(BEIJING) + _clock["offset"]


def _now() -> str:
    return _moment().strftime("%Y-%m-%d %H:%M:%S")


def _time_expire(text: str) -> dt.datetime:
    """time_expire (绝对超时时间, Beijing time): `yyyy-MM-dd HH:mm:ss`, or the older
    `yyyy-MM-dd HH:mm`; ValueError otherwise."""
    for form in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return dt.datetime.strptime(text, form).replace(tzinfo=BEIJING)
        except ValueError:
            continue
    raise ValueError(text)


@dataclass
class FakeApp:
    app_id: str
    seller_id: str
    private_pem: str = field(repr=False)  # the app's key (the vendor sets it in aquafleet)

    @property
    def public_pem(self) -> str:
        return public_pem(self.private_pem)


@dataclass
class FakeTrade:
    app_id: str
    out_trade_no: str
    trade_no: str
    total: Decimal
    subject: str
    notify_url: str
    status: str = "WAIT_BUYER_PAY"
    refunded: Decimal = Decimal("0.00")
    paid_at: str = ""
    expires: dt.datetime | None = None  # its time_expire: unpaid then, the trade closes

    def expire(self) -> None:
        """Alipay closes a trade unpaid at its time_expire (逾期将关闭交易)."""
        expired = self.expires is not None and _moment() >= self.expires
        if self.status == "WAIT_BUYER_PAY" and expired:
            self.status = "TRADE_CLOSED"


@dataclass
class FakeRefund:
    out_request_no: str
    out_trade_no: str
    amount: Decimal
    at: str


class FakeAlipay:
    def __init__(self) -> None:
        self.private_pem = rsa_private_pem("alipay-platform")
        self.apps: dict[str, FakeApp] = {}
        self.trades: dict[tuple[str, str], FakeTrade] = {}
        self.refunds: dict[tuple[str, str, str], FakeRefund] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.notified: list[tuple[int, str]] = []
        self._failing = 0
        self._refusals: list[tuple[str, dict[str, Any]]] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    @property
    def public_pem(self) -> str:
        return public_pem(self.private_pem)

    @property
    def gateway(self) -> str:
        return self.url + "/gateway.do"

    def add_app(self, app_id: str = "2021000117600001", seller_id: str = "2088621955500001"):
        app = FakeApp(app_id, seller_id, rsa_private_pem(f"alipay-app-{app_id}"))
        self.apps[app_id] = app
        return app

    def credentials(self, app: FakeApp) -> dict[str, str]:
        """The body of PUT /vendors/{vid}/mxx/alipay for `app`."""
        return {
            "alipay_app_id": app.app_id, "alipay_seller_id": app.seller_id,
            "alipay_private_key": app.private_pem, "alipay_public_key": self.public_pem,
        }  # fmt: skip

    def fail_next(self, count: int = 1) -> None:
        self._failing = count

    def refuse_next(
        self, method: str, sub_code: str = "isv.insufficient-isv-permissions",
        code: str = "40006", sub_msg: str = "ISV权限不足", times: int = 1,
    ) -> None:  # fmt: skip
        """The next `times` calls of `method` are refused, signed, as Alipay answers a call
        it will not carry out (40006 Insufficient Permissions: the app lost the product)."""
        refusal = {"code": code, "msg": "Insufficient Permissions", "sub_code": sub_code,
                   "sub_msg": sub_msg}  # fmt: skip
        self._refusals.extend([(method, refusal)] * times)

    @staticmethod
    def advance(delta: dt.timedelta) -> None:
        """Alipay's clock moves on by `delta` (time_expire is read against it)."""
        _clock["offset"] += delta

    @staticmethod
    def reset_clock() -> None:
        _clock["offset"] = dt.timedelta(0)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/gateway.do", self._post)
        app.router.add_get("/gateway.do", self._page)
        self._runner, self.url, self._session = await serve(app, port)

    async def stop(self) -> None:
        self.reset_clock()  # the clock is the module's: the next fake starts on time
        await stop_serving(self._runner, self._session)

    # ------------------------------------------------------------------------- the protocol

    def _authenticate(self, params: dict[str, str]) -> tuple[FakeApp | None, str]:
        app = self.apps.get(params.get("app_id", ""))
        if app is None:
            return None, "isv.invalid-app-id"
        if any(not params.get(name) for name in COMMON) or params["sign_type"] != "RSA2":
            return None, "isv.missing-signature-config"
        if not _verify(app.public_pem, _content(params, ("sign",)), params.get("sign", "")):
            return None, "isv.invalid-signature"
        return app, ""

    def _answer(self, method: str, payload: dict[str, Any], *, signed: bool = True) -> web.Response:
        key = method.replace(".", "_") + "_response"
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        body = f'{{"{key}":{text}'
        if signed:
            body += f',"sign":"{_sign(self.private_pem, text)}"'
        return web.Response(text=body + "}", content_type="application/json", charset="utf-8")

    @staticmethod
    def _refused(sub_code: str, sub_msg: str) -> dict[str, Any]:
        return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}

    async def _page(self, request: web.Request) -> web.Response:
        """alipay.trade.wap.pay: the member's browser opens the signed URL."""
        params = dict(request.query)
        app, error = self._authenticate(params)
        if app is None or params.get("method") != "alipay.trade.wap.pay":
            return web.Response(status=400, text=f"错误代码 {error or 'invalid-method'}")
        biz = json.loads(params["biz_content"])
        try:
            total = _yuan(str(biz["total_amount"]))
        except (ValueError, ArithmeticError):
            return web.Response(status=400, text="错误代码 total_amount")
        if biz.get("product_code") != "QUICK_WAP_WAY" or not params.get("notify_url"):
            return web.Response(status=400, text="错误代码 product_code")
        expires: dt.datetime | None = None
        if biz.get("time_expire"):
            try:
                expires = _time_expire(str(biz["time_expire"]))
            except ValueError:
                return web.Response(status=400, text="错误代码 time_expire")
            if expires <= _moment():  # "订单参数异常，请重新下单后再发起付款"
                return web.Response(status=400, text="错误代码 ACQ.TRADE_HAS_CLOSE 订单已超时")
            if expires > _moment() + dt.timedelta(days=15):
                return web.Response(status=400, text="错误代码 time_expire 超出范围")
        key = (app.app_id, str(biz["out_trade_no"]))
        trade = self.trades.get(key)
        if trade is not None:
            trade.expire()
        if trade is None:
            trade = self.trades[key] = FakeTrade(
                app.app_id, key[1], f"2026{next(self._ids):024d}", total,
                str(biz.get("subject", "")), params["notify_url"], expires=expires,
            )  # fmt: skip
        elif trade.total != total:
            return web.Response(status=400, text="错误代码 ACQ.CONTEXT_INCONSISTENT")
        elif trade.status != "WAIT_BUYER_PAY":
            return web.Response(status=400, text=f"错误代码 {trade.status}")
        return web.Response(
            text=f"<html>支付宝 收银台 {trade.total}</html>", content_type="text/html"
        )

    async def _post(self, request: web.Request) -> web.Response:
        if self._failing > 0:
            self._failing -= 1
            return web.Response(status=503, text="busy")
        params = {k: str(v) for k, v in (await request.post()).items()}
        method = params.get("method", "")
        app, error = self._authenticate(params)
        self.calls.append((method, params))
        if app is None:
            return self._answer(
                method or "error",
                {"code": "40002", "msg": "Invalid Arguments", "sub_code": error,
                 "sub_msg": "验签出错"},
                signed=False,
            )  # fmt: skip
        for index, (refused, refusal) in enumerate(self._refusals):
            if refused == method:
                del self._refusals[index]
                return self._answer(method, refusal)
        biz = json.loads(params["biz_content"])
        handler = {
            "alipay.trade.query": self._query,
            "alipay.trade.close": self._close,
            "alipay.trade.refund": self._refund,
            "alipay.trade.fastpay.refund.query": self._refund_query,
        }.get(method)
        if handler is None:
            return self._answer(method, {"code": "40004", "sub_code": "isv.invalid-method"})
        return self._answer(method, handler(app, biz))

    def _trade(self, app: FakeApp, biz: dict[str, Any]) -> FakeTrade | None:
        trade = self.trades.get((app.app_id, str(biz.get("out_trade_no", ""))))
        if trade is not None:
            trade.expire()
        return trade

    def _query(self, app: FakeApp, biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._trade(app, biz)
        if trade is None:
            return self._refused("ACQ.TRADE_NOT_EXIST", "交易不存在")
        answer = {
            "code": "10000", "msg": "Success", "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no, "trade_status": trade.status,
            "total_amount": str(trade.total), "buyer_logon_id": "159****5620",
        }  # fmt: skip
        if trade.paid_at:
            answer["send_pay_date"] = trade.paid_at
        return answer

    def _close(self, app: FakeApp, biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._trade(app, biz)
        if trade is None:
            return self._refused("ACQ.TRADE_NOT_EXIST", "交易不存在")
        if trade.status != "WAIT_BUYER_PAY":
            return self._refused("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        trade.status = "TRADE_CLOSED"
        return {"code": "10000", "msg": "Success", "trade_no": trade.trade_no,
                "out_trade_no": trade.out_trade_no}  # fmt: skip

    def _refund(self, app: FakeApp, biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._trade(app, biz)
        if trade is None:
            return self._refused("ACQ.TRADE_NOT_EXIST", "交易不存在")
        try:
            amount = _yuan(str(biz.get("refund_amount", "")))
        except (ValueError, ArithmeticError):
            return {
                "code": "40002",
                "msg": "Invalid Arguments",
                "sub_code": "isv.invalid-refund-amount",
            }
        request_no = str(biz.get("out_request_no") or trade.out_trade_no)
        done = {"code": "10000", "msg": "Success", "trade_no": trade.trade_no,
                "out_trade_no": trade.out_trade_no, "buyer_logon_id": "159****5620"}  # fmt: skip
        key = (app.app_id, trade.out_trade_no, request_no)
        if key in self.refunds:  # the same request again: done once, answered "no change"
            return {**done, "fund_change": "N", "refund_fee": str(trade.refunded)}
        if trade.status not in ("TRADE_SUCCESS", "TRADE_CLOSED") or not trade.paid_at:
            return self._refused("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if trade.refunded + amount > trade.total:
            return self._refused("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        trade.refunded += amount
        if trade.refunded == trade.total:
            trade.status = "TRADE_CLOSED"  # refunded in full
        self.refunds[key] = FakeRefund(request_no, trade.out_trade_no, amount, _now())
        return {**done, "fund_change": "Y", "refund_fee": str(trade.refunded),
                "gmt_refund_pay": _now()}  # fmt: skip

    def _refund_query(self, app: FakeApp, biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._trade(app, biz)
        if trade is None:
            return self._refused("ACQ.TRADE_NOT_EXIST", "交易不存在")
        refund = self.refunds.get(
            (app.app_id, trade.out_trade_no, str(biz.get("out_request_no", "")))
        )
        answer: dict[str, Any] = {"code": "10000", "msg": "Success"}
        if refund is None:
            return answer  # no such refund: Alipay answers success with no refund in it
        return {**answer, "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
                "out_request_no": refund.out_request_no, "total_amount": str(trade.total),
                "refund_amount": str(refund.amount), "refund_status": "REFUND_SUCCESS"}  # fmt: skip

    # ------------------------------------------------------------------------- test controls

    async def open(self, url: str) -> int:
        """The member's browser opening the wap.pay URL the node answered; its HTTP status."""
        assert self._session is not None
        parsed = urllib.parse.urlsplit(url)
        assert parsed.path == "/gateway.do", url
        async with self._session.get(self.gateway + "?" + parsed.query) as response:
            await response.read()
            return response.status

    def trade(self, out_trade_no: str, app_id: str = "") -> FakeTrade:
        for (app, number), trade in self.trades.items():
            if number == out_trade_no and (not app_id or app == app_id):
                return trade
        raise KeyError(out_trade_no)

    async def pay(
        self, out_trade_no: str, *, times: int = 1, forge: bool = False, amount: str = "",
        notify: bool = True, status: str = "TRADE_SUCCESS", seller_id: str = "",
    ) -> list[int]:  # fmt: skip
        """The member pays the opened trade; Alipay notifies `times` times (0 / notify False:
        held, found by a query). `forge` signs with another key, `amount` names another total,
        `seller_id` another seller. The HTTP statuses of the deliveries."""
        trade = self.trade(out_trade_no)
        trade.expire()  # "订单已超时，不能付款": an expired trade takes no money
        if trade.status == "WAIT_BUYER_PAY":
            trade.status = status
            trade.paid_at = _now()
        if not notify:
            return []
        return [
            await self.notify(trade, forge=forge, amount=amount, seller_id=seller_id)
            for _ in range(times)
        ]

    def notification(
        self, trade: FakeTrade, *, forge: bool = False, amount: str = "", seller_id: str = ""
    ) -> dict[str, str]:
        app = self.apps[trade.app_id]
        total = amount or str(trade.total)
        form = {
            "notify_time": _now(), "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16), "app_id": app.app_id, "auth_app_id": app.app_id,
            "charset": "utf-8", "version": "1.0", "sign_type": "RSA2",
            "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
            "trade_status": trade.status, "total_amount": total, "receipt_amount": total,
            "buyer_pay_amount": total, "seller_id": seller_id or app.seller_id,
            "buyer_id": "2088102177846880", "subject": trade.subject,
            "gmt_create": trade.paid_at, "gmt_payment": trade.paid_at,
        }  # fmt: skip
        key = rsa_private_pem("alipay-forger") if forge else self.private_pem
        form["sign"] = _sign(key, _content(form, ("sign", "sign_type")))
        return form

    async def notify(self, trade: FakeTrade, **options: Any) -> int:
        assert self._session is not None
        form = self.notification(trade, **options)
        async with self._session.post(
            trade.notify_url, data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        ) as response:  # fmt: skip
            body = await response.text()
        self.notified.append((response.status, body))
        return response.status


async def _main(port: int) -> None:
    fake = FakeAlipay()
    await fake.start(port)
    app = fake.add_app()
    print(f"fake Alipay gateway at {fake.gateway}")
    print("PUT /api/v1/vendors/<vid>/mxx/alipay with:")
    print(json.dumps(fake.credentials(app), ensure_ascii=False, indent=2))
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 8902))
