"""A local fake of WeChat Pay API v3 (api.mch.weixin.qq.com), faithful to its HTTP protocol.

It checks every request's `Authorization` (WECHATPAY2-SHA256-RSA2048: the merchant's RSA
signature over method, path, timestamp, nonce and body, its serial and mchid, a timestamp
within five minutes) and answers 401 SIGN_ERROR otherwise, unsigned; it signs every answer to
a request it authenticated with its own platform key (Wechatpay-Timestamp/-Nonce/-Signature/
-Serial), refusals (4xx) and failures (5xx) included, as WeChat Pay documents ("如果验证商户的请求
签名正确，微信支付会在应答的HTTP头部中包括应答签名": whenever the merchant's request signature
verified, the answer carries the answer signature, whatever its status), and posts
notifications signed the same way with the resource encrypted (AEAD_AES_256_GCM) under the
merchant's API v3 key.

Served: JSAPI prepay, query by out_trade_no, close, refunds (create, query), the trade bill
(apply + download, hash SHA1), merchant transfer batches (create, query by out_batch_no;
`finish_batch()` / `close_batch()` are WeChat Pay carrying a batch out or closing it).
Test controls: `pay()` is the member's step in the app (the transaction succeeds and the
notification is sent); notifications can be held (late) and released in order or reversed,
duplicated, delayed, corrupted (signature, serial, stale timestamp, ciphertext) or carry
another amount; `fail_next()` makes the next calls to a path fail; `lose_answers()` carries a
transfer batch out but loses its answer; `hold_next_create()` keeps a transfer create being
accepted; `refuse_openid()` makes creates naming an openid unacceptable; `deny_transfers()` /
`grant_transfers()` take the merchant's transfer permission away and give it back (a create
arriving meanwhile is refused 403 NO_AUTH); `accept_slowly()` keeps the batches made from then
on being accepted (a query answers 404) until `finish_accepting()`; `transfer_creates` are
the bodies of the transfer creates received, in order; `forge_next()` answers the next calls
to a path in WeChat Pay's place (someone on the way: a 404 NOT_FOUND, say) with a signature
made with another key, or none. Written from WeChat Pay's documentation, sharing no code with
aquafleet's client.

Here: payments, refunds, their notifications and the trade bill, and the fake put together;
the signatures and the middleware are in wechatpay_signing.py, the transfers in
wechatpay_transfers.py.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.fakes.channel import serve, stop_serving
from tests.fakes.wechatpay_signing import BEIJING, BODY, MERCHANT, FakeMerchant, beijing_time, sign
from tests.fakes.wechatpay_transfers import TransferRoutes
from tests.payments.keys import rsa_private_pem


@dataclass
class FakeTransaction:
    mchid: str
    appid: str
    out_trade_no: str
    description: str
    total: int
    openid: str
    notify_url: str
    prepay_id: str
    created_at: float
    state: str = "NOTPAY"  # NOTPAY, SUCCESS, CLOSED, REFUND, PAYERROR
    transaction_id: str = ""
    success_at: float = 0.0
    refunded: int = 0


@dataclass
class FakeRefund:
    out_refund_no: str
    refund_id: str
    out_trade_no: str
    refund: int
    total: int
    notify_url: str
    created_at: float
    status: str = "PROCESSING"
    success_at: float = 0.0  # when it succeeded: the day the trade bill lists it on


@dataclass
class Notification:
    url: str
    headers: dict[str, str]
    body: str


@dataclass
class FakeWechatPay(TransferRoutes):
    transactions: dict[str, FakeTransaction] = field(default_factory=dict)
    refunds: dict[str, FakeRefund] = field(default_factory=dict)
    # Notification controls.
    hold: bool = False  # keep notifications (late) until release()
    held: list[Notification] = field(default_factory=list)
    duplicate: int = 1  # send each this many times
    delay_s: float = 0.0
    corrupt: str = ""  # "", "signature", "serial", "stale", "ciphertext"
    answers: list[tuple[int, str]] = field(default_factory=list)  # our answers to notifications
    refund_auto_succeed: bool = True
    tamper_download: bool = False  # the bill file differs from its announced hash
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    url: str = ""

    async def start(self) -> str:
        return await self.start_on(0)

    async def start_on(self, port: int) -> str:
        """Serve on 127.0.0.1:`port` (0: any free port, as the tests do)."""
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_post("/v3/pay/transactions/jsapi", self._jsapi)
        r.add_get("/v3/pay/transactions/out-trade-no/{no}", self._query)
        r.add_post("/v3/pay/transactions/out-trade-no/{no}/close", self._close)
        r.add_post("/v3/refund/domestic/refunds", self._refund)
        r.add_get("/v3/refund/domestic/refunds/{no}", self._query_refund)
        r.add_get("/v3/bill/tradebill", self._tradebill)
        r.add_get("/v3/billdownload/file", self._download)
        r.add_post("/v3/transfer/batches", self._create_batch)
        r.add_get("/v3/transfer/batches/out-batch-no/{no}", self._query_batch)
        r.add_get(
            "/v3/transfer/batches/out-batch-no/{no}/details/out-detail-no/{detail}",
            self._query_detail,
        )
        self._runner, self.url, self._session = await serve(app, port)
        return self.url

    async def stop(self) -> None:
        await stop_serving(self._runner, self._session)

    # ------------------------------------------------------------------------- payments

    async def _jsapi(self, request: web.Request) -> web.Response:
        merchant: FakeMerchant = request[MERCHANT]
        body = request[BODY]
        try:
            no, total = str(body["out_trade_no"]), int(body["amount"]["total"])
            openid, appid, mchid = body["payer"]["openid"], body["appid"], body["mchid"]
            notify_url = str(body["notify_url"])
        except (KeyError, TypeError, ValueError):
            return self._error(400, "PARAM_ERROR", "missing parameter")
        if mchid != merchant.mch_id or appid != merchant.app_id:
            return self._error(400, "APPID_MCHID_NOT_MATCH", "appid and mchid do not match")
        if total <= 0:
            return self._error(400, "PARAM_ERROR", "amount.total must be positive")
        existing = self.transactions.get(no)
        if existing is not None:
            if existing.total != total or existing.openid != openid:
                return self._error(400, "INVALID_REQUEST", "201 商户订单号重复")
            if existing.state == "CLOSED":
                return self._error(400, "ORDERCLOSED", "order closed")
            if existing.state == "SUCCESS":
                return self._error(400, "ORDERPAID", "order paid")
            return self._answer(200, {"prepay_id": existing.prepay_id})
        txn = FakeTransaction(
            mchid=mchid, appid=appid, out_trade_no=no, description=str(body.get("description", "")),
            total=total, openid=openid, notify_url=notify_url,
            prepay_id=f"wx{secrets.token_hex(16)}", created_at=time.time(),
        )  # fmt: skip
        self.transactions[no] = txn
        return self._answer(200, {"prepay_id": txn.prepay_id})

    def _transaction_view(
        self, txn: FakeTransaction, *, total: int | None = None
    ) -> dict[str, Any]:
        amount = txn.total if total is None else total
        view: dict[str, Any] = {
            "appid": txn.appid, "mchid": txn.mchid, "out_trade_no": txn.out_trade_no,
            "trade_state": txn.state, "trade_state_desc": txn.state,
            "amount": {"total": amount, "currency": "CNY"},
            "payer": {"openid": txn.openid},
        }  # fmt: skip
        if txn.transaction_id:
            view.update(
                transaction_id=txn.transaction_id, trade_type="JSAPI", bank_type="OTHERS",
                success_time=beijing_time(txn.success_at), attach="",
            )  # fmt: skip
            view["amount"].update(payer_total=amount, payer_currency="CNY")
        return view

    async def _query(self, request: web.Request) -> web.Response:
        txn = self.transactions.get(request.match_info["no"])
        if txn is None or request.query.get("mchid") != request[MERCHANT].mch_id:
            return self._error(404, "ORDER_NOT_EXIST", "order does not exist")
        return self._answer(200, self._transaction_view(txn))

    async def _close(self, request: web.Request) -> web.Response:
        txn = self.transactions.get(request.match_info["no"])
        if txn is None:
            return self._error(404, "ORDER_NOT_EXIST", "order does not exist")
        if txn.state in ("SUCCESS", "REFUND"):
            return self._error(400, "ORDERPAID", "order paid")
        txn.state = "CLOSED"
        return self._answer(204)

    async def pay(
        self, out_trade_no: str, *, amount: int | None = None, at: float | None = None
    ) -> None:
        """The member's step in the app: the transaction succeeds and WeChat Pay notifies
        (with `amount`, a notification that names another amount than the transaction's)."""
        txn = self.transactions[out_trade_no]
        if txn.state != "NOTPAY":
            raise AssertionError(f"{out_trade_no} is {txn.state}")
        txn.state = "SUCCESS"
        txn.transaction_id = (
            "4200" + f"{int(time.time() * 1000)}{secrets.randbelow(10**6):06d}"[-24:]
        )
        txn.success_at = at if at is not None else time.time()
        resource = self._transaction_view(txn, total=amount)
        await self._notify(
            self.merchants[txn.mchid],
            txn.notify_url,
            "TRANSACTION.SUCCESS",
            "transaction",
            resource,
        )

    # ------------------------------------------------------------------------- refunds

    async def _refund(self, request: web.Request) -> web.Response:
        merchant: FakeMerchant = request[MERCHANT]
        body = request[BODY]
        try:
            no, refund_no = str(body["out_trade_no"]), str(body["out_refund_no"])
            refund, total = int(body["amount"]["refund"]), int(body["amount"]["total"])
        except (KeyError, TypeError, ValueError):
            return self._error(400, "PARAM_ERROR", "missing parameter")
        existing = self.refunds.get(refund_no)
        if existing is not None:
            if existing.refund != refund or existing.out_trade_no != no:
                return self._error(
                    400, "INVALID_REQUEST", "out_refund_no used with other parameters"
                )
            return self._answer(200, self._refund_view(existing))
        txn = self.transactions.get(no)
        if txn is None or txn.mchid != merchant.mch_id:
            return self._error(404, "RESOURCE_NOT_EXISTS", "order does not exist")
        if txn.state not in ("SUCCESS", "REFUND"):
            return self._error(400, "INVALID_REQUEST", "order not paid")
        if total != txn.total:
            return self._error(400, "PARAM_ERROR", "amount.total is not the order's")
        if refund <= 0 or txn.refunded + refund > txn.total:
            return self._error(403, "NOT_ENOUGH", "refund exceeds what is left")
        txn.refunded += refund
        txn.state = "REFUND"
        created = FakeRefund(
            out_refund_no=refund_no, refund_id=f"5030{secrets.token_hex(12)}", out_trade_no=no,
            refund=refund, total=total, notify_url=str(body.get("notify_url", "")),
            created_at=time.time(),
        )  # fmt: skip
        self.refunds[refund_no] = created
        if self.refund_auto_succeed:
            asyncio.get_running_loop().call_soon(self._spawn_refund_success, refund_no)
        return self._answer(200, self._refund_view(created))

    def _spawn_refund_success(self, refund_no: str) -> None:
        self._tasks.add(asyncio.ensure_future(self.succeed_refund(refund_no)))

    @property
    def _tasks(self) -> set[asyncio.Future[Any]]:
        tasks: set[asyncio.Future[Any]] = self.__dict__.setdefault("_task_set", set())
        for done in [t for t in tasks if t.done()]:
            tasks.discard(done)
        return tasks

    async def drain(self) -> None:
        """Wait for the notifications the fake is sending on its own (refund successes)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def succeed_refund(self, refund_no: str, *, at: float | None = None) -> None:
        """The refund succeeds (at `at`, default now) and WeChat Pay notifies."""
        refund = self.refunds[refund_no]
        refund.status = "SUCCESS"
        refund.success_at = at if at is not None else time.time()
        if refund.notify_url:
            txn = self.transactions[refund.out_trade_no]
            await self._notify(
                self.merchants[txn.mchid], refund.notify_url, "REFUND.SUCCESS", "refund",
                {
                    "mchid": txn.mchid, "out_trade_no": txn.out_trade_no,
                    "transaction_id": txn.transaction_id, "out_refund_no": refund.out_refund_no,
                    "refund_id": refund.refund_id, "refund_status": "SUCCESS",
                    "success_time": beijing_time(refund.success_at),
                    "user_received_account": "支付用户零钱",
                    "amount": {"total": refund.total, "refund": refund.refund,
                               "payer_total": refund.total, "payer_refund": refund.refund},
                },
            )  # fmt: skip

    def _refund_view(self, refund: FakeRefund) -> dict[str, Any]:
        txn = self.transactions[refund.out_trade_no]
        view = {
            "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
            "transaction_id": txn.transaction_id, "out_trade_no": refund.out_trade_no,
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "create_time": beijing_time(refund.created_at), "status": refund.status,
            "amount": {"total": refund.total, "refund": refund.refund, "payer_total": refund.total,
                       "payer_refund": refund.refund, "currency": "CNY"},
        }  # fmt: skip
        if refund.status == "SUCCESS" and refund.success_at:
            view["success_time"] = beijing_time(refund.success_at)
        return view

    async def _query_refund(self, request: web.Request) -> web.Response:
        refund = self.refunds.get(request.match_info["no"])
        if refund is None:
            return self._error(404, "RESOURCE_NOT_EXISTS", "refund does not exist")
        return self._answer(200, self._refund_view(refund))

    # ------------------------------------------------------------------------- notifications

    def _encrypt(
        self, merchant: FakeMerchant, associated: str, payload: dict[str, Any]
    ) -> dict[str, str]:
        nonce = secrets.token_hex(6)  # 12 characters, as WeChat Pay's
        ciphertext = AESGCM(merchant.api_v3_key.encode()).encrypt(
            nonce.encode(), json.dumps(payload, ensure_ascii=False).encode(), associated.encode()
        )
        return {
            "algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(ciphertext).decode(),
            "associated_data": associated, "original_type": associated, "nonce": nonce,
        }  # fmt: skip

    async def _notify(
        self, merchant: FakeMerchant, url: str, event: str, kind: str, payload: dict[str, Any]
    ) -> None:
        resource = self._encrypt(merchant, kind, payload)
        if self.corrupt == "ciphertext":
            raw = bytearray(base64.b64decode(resource["ciphertext"]))
            raw[0] ^= 0x01
            resource["ciphertext"] = base64.b64encode(bytes(raw)).decode()
        body = json.dumps(
            {
                "id": f"EV-{secrets.token_hex(10)}", "create_time": beijing_time(time.time()),
                "resource_type": "encrypt-resource", "event_type": event,
                "summary": "支付成功" if kind == "transaction" else "退款成功",
                "resource": resource,
            },
            ensure_ascii=False,
        )  # fmt: skip
        at = int(time.time()) - (600 if self.corrupt == "stale" else 0)
        headers = self._signed_headers(body, at=at)
        if self.corrupt == "signature":
            headers["Wechatpay-Signature"] = sign(
                rsa_private_pem("forger"), f"{at}\n{headers['Wechatpay-Nonce']}\n{body}\n"
            )
        if self.corrupt == "serial":
            headers["Wechatpay-Serial"] = "PUB_KEY_ID_UNKNOWN"
        headers["Content-Type"] = "application/json"
        notification = Notification(url, headers, body)
        for _ in range(self.duplicate):
            if self.hold:
                self.held.append(notification)
            else:
                await self.deliver(notification)

    async def deliver(self, notification: Notification) -> tuple[int, str]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        assert self._session is not None
        async with self._session.post(
            notification.url, data=notification.body.encode(), headers=notification.headers
        ) as response:
            answer = (response.status, await response.text())
        self.answers.append(answer)
        return answer

    async def release(self, *, reverse: bool = False) -> list[tuple[int, str]]:
        """Send the held notifications, in order or reversed."""
        held, self.held = self.held, []
        return [await self.deliver(n) for n in (reversed(held) if reverse else held)]

    # ------------------------------------------------------------------------- bills

    def bill_rows(self, bill_date: str) -> list[list[str]]:
        """The day's rows (Beijing time): a SUCCESS row per paid transaction, a REFUND row per
        refund on the day it succeeded (one not finished, on the day it was asked); amounts in
        yuan with two decimals, every field prefixed with a backquote."""

        def day(at: float) -> str:
            return dt.datetime.fromtimestamp(at, BEIJING).strftime("%Y-%m-%d")

        def clock(at: float) -> str:
            return dt.datetime.fromtimestamp(at, BEIJING).strftime("%Y-%m-%d %H:%M:%S")

        def yuan(fen: int) -> str:
            return f"{fen // 100}.{fen % 100:02d}"

        rows = []
        for txn in self.transactions.values():
            if txn.transaction_id and day(txn.success_at) == bill_date:
                rows.append([
                    clock(txn.success_at),
                    txn.appid, txn.mchid, "0", "", txn.transaction_id, txn.out_trade_no, txn.openid,
                    "JSAPI", "SUCCESS", "OTHERS", "CNY", yuan(txn.total), "0.00", "0", "0", "0.00",
                    "0.00", "", "", txn.description, "", "0.00000", "0.60%", yuan(txn.total),
                    "0.00", "",
                ])  # fmt: skip
        for refund in self.refunds.values():
            txn = self.transactions[refund.out_trade_no]
            # A refund is on the day it succeeded (one not finished: the day it was asked).
            at = refund.success_at or refund.created_at
            if day(at) == bill_date:
                rows.append([
                    clock(at),
                    txn.appid, txn.mchid, "0", "", txn.transaction_id, txn.out_trade_no, txn.openid,
                    "JSAPI", "REFUND", "OTHERS", "CNY", "0.00", "0.00", refund.refund_id,
                    refund.out_refund_no, yuan(refund.refund), "0.00", "ORIGINAL", refund.status,
                    txn.description, "", "0.00000", "0.60%", "0.00", yuan(refund.refund), "",
                ])  # fmt: skip
        return rows

    def bill_text(self, bill_date: str) -> str:
        header = (
            "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
            "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
            "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
        )
        rows = self.bill_rows(bill_date)
        lines = [header] + [",".join("`" + v for v in row) for row in rows]
        lines.append(
            "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
        )
        lines.append(f"`{len(rows)},`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00")
        return "\r\n".join(lines) + "\r\n"

    async def _tradebill(self, request: web.Request) -> web.Response:
        bill_date = request.query.get("bill_date", "")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", bill_date):
            return self._error(400, "PARAM_ERROR", "bill_date")
        text = self.bill_text(bill_date)
        token = base64.urlsafe_b64encode(
            f"{request[MERCHANT].mch_id}|{bill_date}".encode()
        ).decode()
        return self._answer(200, {
            "hash_type": "SHA1", "hash_value": hashlib.sha1(text.encode()).hexdigest(),
            "download_url": f"{self.url}/v3/billdownload/file?token={token}",
        })  # fmt: skip

    async def _download(self, request: web.Request) -> web.Response:
        _mch, _, bill_date = (
            base64.urlsafe_b64decode(request.query["token"]).decode().partition("|")
        )
        # The file itself is not signed (WeChat Pay's documentation): the hash is its proof.
        text = self.bill_text(bill_date)
        if self.tamper_download:
            text = text.replace("SUCCESS", "SUCCES5", 1)
        return web.Response(body=text.encode(), content_type="text/plain")


async def _serve(port: int) -> None:
    """Development: the fake on `port`, its merchant's AX-07 body printed for the vendor."""
    fake = FakeWechatPay()
    await fake.start_on(port)
    merchant = fake.add_merchant()
    print(f"fake WeChat Pay on {fake.url}: set AQUAFLEET_WECHATPAY_API_URL={fake.url}")
    print("PUT /api/v1/vendors/<vid>/mxx with:")
    print(
        json.dumps(
            {
                "mch_gid": merchant.mch_id, "mch_appid": merchant.app_id,
                "mch_apiv3_key": merchant.api_v3_key, "mch_private_key": merchant.private_pem,
                "mch_cert_serial": merchant.key_serial, "wxpay_serial": fake.platform_serial,
                "wxpay_public_key": fake.platform_public,
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

    asyncio.run(_serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8900))
