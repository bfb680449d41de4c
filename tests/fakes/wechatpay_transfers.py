"""WeChat Pay's merchant transfers (商家转账到零钱, the commissions' payouts), as the fake serves
them: batches created (keyed by out_batch_no), queried with their details, carried out or
closed by `finish_batch()` / `close_batch()`, and the test controls of their creates (held,
answers lost, openids refused, the transfer permission denied, accepting slowly)."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.wechatpay_signing import BODY, MERCHANT, FakeMerchant, SignedApi, beijing_time


@dataclass
class TransferRoutes(SignedApi):
    """The transfer routes and their controls, as the fake (FakeWechatPay) serves them."""

    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfer_creates: list[dict[str, Any]] = field(default_factory=list)  # bodies, as received
    refused_openids: set[str] = field(default_factory=set)  # of another app, a closed account
    unauthorised: set[str] = field(default_factory=set)  # mchids without transfer permission
    slow_accepting: bool = False  # batches made are being accepted (queries 404) until finished
    accepting: set[str] = field(default_factory=set)  # out_batch_no still being accepted

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
