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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.fakes.channel import rsa_sign, rsa_verify, serve, stop_serving
from tests.payments.keys import public_pem, rsa_private_pem

BEIJING = dt.timezone(dt.timedelta(hours=8))
MERCHANT: web.RequestKey[FakeMerchant] = web.RequestKey("merchant")
BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("body")
PLATFORM_SERIAL = "PUB_KEY_ID_0119000001092026120600000000"
FORGED = "forged"  # signed with another key than the platform's, the platform's serial claimed
UNSIGNED = "unsigned"  # no Wechatpay-Timestamp/-Nonce/-Signature/-Serial at all


def _sign(private_pem: str, message: str) -> str:
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


@dataclass
class Notification:
    url: str
    headers: dict[str, str]
    body: str


@dataclass
class FakeWechatPay:
    merchants: dict[str, FakeMerchant] = field(default_factory=dict)
    platform_private: str = field(default_factory=lambda: rsa_private_pem("wechatpay-platform"))
    platform_serial: str = PLATFORM_SERIAL
    transactions: dict[str, FakeTransaction] = field(default_factory=dict)
    refunds: dict[str, FakeRefund] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    transfer_creates: list[dict[str, Any]] = field(default_factory=list)  # bodies, as received
    refused_openids: set[str] = field(default_factory=set)  # of another app, a closed account
    unauthorised: set[str] = field(default_factory=set)  # mchids without transfer permission
    slow_accepting: bool = False  # batches made are being accepted (queries 404) until finished
    accepting: set[str] = field(default_factory=set)  # out_batch_no still being accepted
    # Notification controls.
    hold: bool = False  # keep notifications (late) until release()
    held: list[Notification] = field(default_factory=list)
    duplicate: int = 1  # send each this many times
    delay_s: float = 0.0
    corrupt: str = ""  # "", "signature", "serial", "stale", "ciphertext"
    answers: list[tuple[int, str]] = field(default_factory=list)  # our answers to notifications
    refund_auto_succeed: bool = True
    tamper_download: bool = False  # the bill file differs from its announced hash
    _failures: list[tuple[str, int, str]] = field(default_factory=list)
    _forgeries: list[tuple[str, int, str, str]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    url: str = ""

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

    # ------------------------------------------------------------------------- signing

    def _signed_headers(self, body: str, *, at: int | None = None) -> dict[str, str]:
        timestamp = str(at if at is not None else int(time.time()))
        nonce = secrets.token_hex(16)
        return {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": _sign(self.platform_private, f"{timestamp}\n{nonce}\n{body}\n"),
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
            headers["Wechatpay-Signature"] = _sign(forger, f"{timestamp}\n{nonce}\n{body}\n")
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

    async def succeed_refund(self, refund_no: str) -> None:
        refund = self.refunds[refund_no]
        refund.status = "SUCCESS"
        if refund.notify_url:
            txn = self.transactions[refund.out_trade_no]
            await self._notify(
                self.merchants[txn.mchid], refund.notify_url, "REFUND.SUCCESS", "refund",
                {
                    "mchid": txn.mchid, "out_trade_no": txn.out_trade_no,
                    "transaction_id": txn.transaction_id, "out_refund_no": refund.out_refund_no,
                    "refund_id": refund.refund_id, "refund_status": "SUCCESS",
                    "success_time": beijing_time(time.time()),
                    "user_received_account": "支付用户零钱",
                    "amount": {"total": refund.total, "refund": refund.refund,
                               "payer_total": refund.total, "payer_refund": refund.refund},
                },
            )  # fmt: skip

    def _refund_view(self, refund: FakeRefund) -> dict[str, Any]:
        txn = self.transactions[refund.out_trade_no]
        return {
            "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
            "transaction_id": txn.transaction_id, "out_trade_no": refund.out_trade_no,
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "create_time": beijing_time(refund.created_at), "status": refund.status,
            "amount": {"total": refund.total, "refund": refund.refund, "payer_total": refund.total,
                       "payer_refund": refund.refund, "currency": "CNY"},
        }  # fmt: skip

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
            headers["Wechatpay-Signature"] = _sign(
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
        refund; amounts in yuan with two decimals, every field prefixed with a backquote."""

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
            if day(refund.created_at) == bill_date:
                rows.append([
                    clock(refund.created_at),
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

    # ------------------------------------------------------------------------- transfers

    async def _create_batch(self, request: web.Request) -> web.Response:
        """发起商家转账: keyed by out_batch_no per merchant; the same batch again answers the
        batch as it is (nothing is paid twice), another batch under the same number is refused."""
        merchant: FakeMerchant = request[MERCHANT]
        body = request[BODY]
        self.transfer_creates.append(body)
        # The permission as the create arrives; its answer may come later (held below).
        authorised = merchant.mch_id not in self.unauthorised
        try:
            no = str(body["out_batch_no"])
            details = [
                {
                    "out_detail_no": str(d["out_detail_no"]),
                    "transfer_amount": int(d["transfer_amount"]),
                    "transfer_remark": str(d["transfer_remark"]),
                    "openid": str(d["openid"]),
                }
                for d in body["transfer_detail_list"]
            ]
            total = int(body["total_amount"])
            str(body["batch_name"]), str(body["batch_remark"])
        except (KeyError, TypeError, ValueError):
            return self._error(400, "PARAM_ERROR", "missing parameter")
        if body.get("appid") != merchant.app_id:
            return self._error(400, "INVALID_REQUEST", "appid and mchid do not match")
        if not re.fullmatch(r"[A-Za-z0-9]{5,32}", no) or any(
            not re.fullmatch(r"[A-Za-z0-9]{5,32}", d["out_detail_no"]) for d in details
        ):
            return self._error(400, "PARAM_ERROR", "out_batch_no / out_detail_no: 5-32 [A-Za-z0-9]")
        if any(d["transfer_amount"] <= 0 or not d["openid"] for d in details):
            return self._error(400, "PARAM_ERROR", "transfer_amount or openid")
        if any(d["openid"] in self.refused_openids for d in details):
            return self._error(400, "PARAM_ERROR", "openid与appid不匹配")
        if any(d["transfer_amount"] >= 200_000 and "user_name" not in d for d in details):
            return self._error(400, "PARAM_ERROR", "user_name is required from 2000 yuan")
        if sum(d["transfer_amount"] for d in details) != total or len(details) != int(
            body.get("total_num", -1)
        ):
            return self._error(
                400, "PARAM_ERROR", "total_amount or total_num does not match the details"
            )
        key = f"{merchant.mch_id}/{no}"
        gate = self.__dict__.pop("_create_gate", None)
        if gate is not None:
            # Held while accepting (受理中): a query of the number answers 404 meanwhile.
            self.create_held.set()
            await gate.wait()
        if not authorised:
            return self._error(403, "NO_AUTH", "商户号没有商家转账到零钱的权限")
        existing = self.batches.get(no)
        if existing is not None and (
            existing["mchid"] != merchant.mch_id or existing["details"] != details
        ):
            return self._error(
                400, "INVALID_REQUEST", f"{key}: 单号已存在但信息不一致,请查单后比较确认"
            )
        if existing is None:
            existing = self.batches[no] = {
                "mchid": merchant.mch_id, "out_batch_no": no,
                "batch_id": f"1030{secrets.token_hex(12)}",
                "create_time": beijing_time(time.time()), "batch_status": "ACCEPTED",
                "total_amount": total, "total_num": len(details), "details": details,
                "detail_status": {d["out_detail_no"]: "PROCESSING" for d in details},
                "detail_ids": {
                    d["out_detail_no"]: f"1040{secrets.token_hex(12)}" for d in details
                },
                "close_reason": "",
            }  # fmt: skip
            if self.slow_accepting:
                self.accepting.add(no)
        answer = self._answer(
            200,
            {k: existing[k] for k in ("out_batch_no", "batch_id", "create_time", "batch_status")},
        )
        if self._lost_answers.get("/v3/transfer/batches", 0) > 0:
            # The batch is made, but the answer never reaches the merchant (a 5xx on the way).
            self._lost_answers["/v3/transfer/batches"] -= 1
            return self._error(500, "SYSTEM_ERROR", "answer lost after the batch was made")
        return answer

    def refuse_openid(self, openid: str) -> None:
        """Creates that name `openid` are unacceptable (400 PARAM_ERROR: the openid is not of
        the merchant's app), refused before anything is accepted."""
        self.refused_openids.add(openid)

    def deny_transfers(self, mch_id: str) -> None:
        """The merchant loses its transfer permission (商家转账到零钱 closed, suspended): a
        create that arrives until `grant_transfers()` is refused 403 NO_AUTH, nothing made."""
        self.unauthorised.add(mch_id)

    def grant_transfers(self, mch_id: str) -> None:
        self.unauthorised.discard(mch_id)

    def accept_slowly(self) -> None:
        """Batches made from now on stay being accepted (受理中): a query of their number
        answers 404 until `finish_accepting()`."""
        self.slow_accepting = True

    def finish_accepting(self) -> None:
        self.slow_accepting = False
        self.accepting.clear()

    def hold_next_create(self) -> asyncio.Event:
        """The next transfer batch create waits, before the batch is made, until the answered
        event is set (`create_held` is set once it waits): a create still being accepted."""
        gate = self.__dict__["_create_gate"] = asyncio.Event()
        self.__dict__["create_held"] = asyncio.Event()
        return gate

    @property
    def create_held(self) -> asyncio.Event:
        held: asyncio.Event = self.__dict__.setdefault("create_held", asyncio.Event())
        return held

    def lose_answers(self, path: str, times: int = 1) -> None:
        """The next `times` calls to `path` are carried out, but answered 500."""
        self._lost_answers[path] = self._lost_answers.get(path, 0) + times

    @property
    def _lost_answers(self) -> dict[str, int]:
        lost: dict[str, int] = self.__dict__.setdefault("_lost_answer_counts", {})
        return lost

    def finish_batch(
        self, out_batch_no: str, *, failed: tuple[str, ...] = (), reason: str = "ACCOUNT_FROZEN"
    ) -> None:
        """WeChat Pay carries the batch out: every detail succeeds, except those `failed`
        (with `reason`: the account frozen, not real-name verified...)."""
        batch = self.batches[out_batch_no]
        batch["batch_status"] = "FINISHED"
        for no in batch["detail_status"]:
            batch["detail_status"][no] = "FAIL" if no in failed else "SUCCESS"
        batch["fail_reasons"] = {no: reason for no in failed}

    def close_batch(self, out_batch_no: str, reason: str = "OVERDUE_CLOSE") -> None:
        """The batch is closed before it was paid (the merchant's balance ran short, ...)."""
        batch = self.batches[out_batch_no]
        batch["batch_status"], batch["close_reason"] = "CLOSED", reason
        for no in batch["detail_status"]:
            batch["detail_status"][no] = "FAIL"

    def paid_out(self, openid: str) -> int:
        """Fen that reached `openid`'s WeChat change (successful details only)."""
        return sum(
            d["transfer_amount"]
            for batch in self.batches.values()
            for d in batch["details"]
            if d["openid"] == openid and batch["detail_status"][d["out_detail_no"]] == "SUCCESS"
        )

    async def _query_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["no"])
        if (
            batch is None
            or batch["mchid"] != request[MERCHANT].mch_id
            or batch["out_batch_no"] in self.accepting
        ):
            return self._error(404, "NOT_FOUND", "记录不存在")
        status = batch["detail_status"]
        amounts = {d["out_detail_no"]: d["transfer_amount"] for d in batch["details"]}
        done = [no for no, s in status.items() if s == "SUCCESS"]
        failed = [no for no, s in status.items() if s == "FAIL"]
        summary: dict[str, Any] = {
            "mchid": batch["mchid"], "out_batch_no": batch["out_batch_no"],
            "batch_id": batch["batch_id"], "batch_status": batch["batch_status"],
            "batch_type": "API", "total_amount": batch["total_amount"],
            "total_num": batch["total_num"], "create_time": batch["create_time"],
            "success_amount": sum(amounts[n] for n in done), "success_num": len(done),
            "fail_amount": sum(amounts[n] for n in failed), "fail_num": len(failed),
        }  # fmt: skip
        if batch["close_reason"]:
            summary["close_reason"] = batch["close_reason"]
        details = []
        if request.query.get("need_query_detail") == "true":
            wanted = request.query.get("detail_status", "ALL")
            details = [
                {
                    "detail_id": batch["detail_ids"][no], "out_detail_no": no,
                    "detail_status": s,
                }
                for no, s in status.items()
                if wanted == "ALL" or wanted == s
            ]  # fmt: skip
        return self._answer(200, {"transfer_batch": summary, "transfer_detail_list": details})

    async def _query_detail(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["no"])
        no = request.match_info["detail"]
        if (
            batch is None
            or batch["mchid"] != request[MERCHANT].mch_id
            or batch["out_batch_no"] in self.accepting
            or (no not in batch["detail_status"])
        ):
            return self._error(404, "NOT_FOUND", "记录不存在")
        detail = next(d for d in batch["details"] if d["out_detail_no"] == no)
        answer: dict[str, Any] = {
            "mchid": batch["mchid"], "out_batch_no": batch["out_batch_no"],
            "batch_id": batch["batch_id"], "out_detail_no": no,
            "detail_id": batch["detail_ids"][no], "detail_status": batch["detail_status"][no],
            "transfer_amount": detail["transfer_amount"],
            "transfer_remark": detail["transfer_remark"], "openid": detail["openid"],
            "initiate_time": batch["create_time"], "update_time": beijing_time(time.time()),
        }  # fmt: skip
        if batch["detail_status"][no] == "FAIL":
            answer["fail_reason"] = batch.get("fail_reasons", {}).get(
                no, batch["close_reason"] or "OTHER"
            )
        return self._answer(200, answer)


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
