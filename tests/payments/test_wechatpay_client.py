"""The WeChat Pay API v3 client against the local fake over real sockets: signed requests,
verified answers, safe retries, refunds, the trade bill and merchant transfers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.providers.wechatpay import (
    AnswerNotVerified,
    WechatPayClient,
    WechatPayRefused,
    WechatPayUnavailable,
)
from aquafleet.models.merchants import WechatPayMerchant
from aquafleet.models.wechatpay import (
    SignatureInvalid,
    WechatPayError,
    decrypt_resource,
    jsapi_parameters,
    rsa_verify,
    verify_signed,
)
from tests.fakes.wechatpay import FakeWechatPay
from tests.fakes.wechatpay_signing import FORGED, UNSIGNED
from tests.payments.keys import public_pem, rsa_private_pem


@pytest.fixture
async def fake() -> AsyncIterator[FakeWechatPay]:
    server = FakeWechatPay()
    await server.start()
    yield server
    await server.stop()


def merchant_of(fake: FakeWechatPay) -> WechatPayMerchant:
    m = fake.merchants.get("1900000109") or fake.add_merchant()
    return WechatPayMerchant(
        vendor="PAYS", mch_id=m.mch_id, app_id=m.app_id, key_serial=m.key_serial,
        platform_serial=fake.platform_serial, platform_public_key=fake.platform_public,
        api_v3_key=m.api_v3_key, private_key=m.private_pem,
    )  # fmt: skip


@pytest.fixture
async def client(fake: FakeWechatPay) -> AsyncIterator[WechatPayClient]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield WechatPayClient(session, Metrics(), base_url=fake.url)


async def _prepay(client: WechatPayClient, merchant: WechatPayMerchant, no: str, total: int) -> str:
    return await client.jsapi_prepay(
        merchant, out_trade_no=no, description="滤芯", total_fen=total, openid="o-alice",
        notify_url="http://127.0.0.1:9/notify",
    )  # fmt: skip


async def test_prepay_query_close_and_the_app_parameters(
    fake: FakeWechatPay, client: WechatPayClient
):
    merchant = merchant_of(fake)
    prepay_id = await _prepay(client, merchant, "T1", 3500)
    assert prepay_id.startswith("wx")
    assert await _prepay(client, merchant, "T1", 3500) == prepay_id  # same number, same answer
    with pytest.raises(WechatPayRefused) as refused:
        await _prepay(client, merchant, "T1", 3600)
    assert refused.value.wx_code == "INVALID_REQUEST"
    view = await client.query_transaction(merchant, "T1")
    assert view["trade_state"] == "NOTPAY" and view["amount"]["total"] == 3500
    await client.close_transaction(merchant, "T1")
    assert (await client.query_transaction(merchant, "T1"))["trade_state"] == "CLOSED"
    params = jsapi_parameters(
        app_id=merchant.app_id, prepay_id=prepay_id, private_pem=merchant.private_key,
        timestamp=1700000000, nonce_str="abc",
    )  # fmt: skip
    assert params["package"] == f"prepay_id={prepay_id}" and params["signType"] == "RSA"
    message = f"{merchant.app_id}\n1700000000\nabc\nprepay_id={prepay_id}\n"
    assert rsa_verify(public_pem(merchant.private_key), message, params["paySign"])


async def test_a_request_signed_with_another_key_is_refused(
    fake: FakeWechatPay, client: WechatPayClient
):
    """WeChat Pay answers 401 SIGN_ERROR, without its signature (it signs the answers to the
    requests it authenticated): said as it claims, never taken as a refusal of anything."""
    merchant = replace(merchant_of(fake), private_key=rsa_private_pem("someone-else"))
    with pytest.raises(AnswerNotVerified) as refused:
        await _prepay(client, merchant, "T2", 100)
    assert refused.value.status == 401 and refused.value.wx_code == "SIGN_ERROR"
    assert "401 SIGN_ERROR" in refused.value.message
    assert "T2" not in fake.transactions


@pytest.mark.parametrize("signature", [FORGED, UNSIGNED])
async def test_a_refusal_not_signed_by_wechat_pay_is_not_taken(
    fake: FakeWechatPay, client: WechatPayClient, signature: str
):
    """A 404 ORDER_NOT_EXIST (a refusal that may end a payment or a transfer) answered in WeChat
    Pay's place, its signature made with another key or absent: not a refusal, like no answer
    (asked again: WeChat Pay's own answer is taken), counted and logged; a genuine signed 404
    is WeChat Pay's refusal."""
    merchant = merchant_of(fake)
    await _prepay(client, merchant, "T7", 100)
    path = "/v3/pay/transactions/out-trade-no/T7"
    fake.forge_next(path, 404, "ORDER_NOT_EXIST", signature=signature)
    assert (await client.query_transaction(merchant, "T7"))["trade_state"] == "NOTPAY"
    assert client.metrics.wechatpay_answers_unverified == 1
    fake.forge_next(path, 404, "ORDER_NOT_EXIST", signature=signature, times=3)
    before = len(fake.requests)
    with pytest.raises(AnswerNotVerified) as unknown:
        await client.query_transaction(merchant, "T7")
    assert not isinstance(unknown.value, WechatPayRefused)
    assert isinstance(unknown.value, WechatPayUnavailable)  # what the call did is unknown
    assert unknown.value.status == 404 and unknown.value.wx_code == "ORDER_NOT_EXIST"
    assert len(fake.requests) - before == 3 and client.metrics.wechatpay_answers_unverified == 4
    with pytest.raises(WechatPayRefused) as refused:
        await client.query_transaction(merchant, "T-none")
    assert (refused.value.status, refused.value.wx_code) == (404, "ORDER_NOT_EXIST")
    assert client.metrics.wechatpay_answers_unverified == 4


async def test_an_answer_not_signed_by_the_known_platform_key_is_not_read(
    fake: FakeWechatPay, client: WechatPayClient
):
    merchant = replace(merchant_of(fake), platform_public_key=public_pem(rsa_private_pem("x")))
    with pytest.raises(SignatureInvalid):
        await _prepay(client, merchant, "T3", 100)
    merchant = replace(merchant_of(fake), platform_serial="PUB_KEY_ID_OTHER")
    with pytest.raises(SignatureInvalid, match="unknown platform serial"):
        await client.query_transaction(merchant, "T3")


async def test_failures_are_retried_a_bounded_number_of_times(
    fake: FakeWechatPay, client: WechatPayClient
):
    merchant = merchant_of(fake)
    await _prepay(client, merchant, "T4", 100)
    fake.fail_next("/v3/pay/transactions/out-trade-no/T4", 500, times=2)
    assert (await client.query_transaction(merchant, "T4"))["out_trade_no"] == "T4"
    fake.fail_next("/v3/pay/transactions/out-trade-no/T4", 503, times=3)
    before = len(fake.requests)
    with pytest.raises(WechatPayUnavailable):
        await client.query_transaction(merchant, "T4")
    assert len(fake.requests) - before == 3  # one try and two retries, no more
    # A refusal (4xx) is an answer: never retried.
    fake.fail_next("/v3/pay/transactions/out-trade-no/T4", 400, "PARAM_ERROR")
    before = len(fake.requests)
    with pytest.raises(WechatPayRefused):
        await client.query_transaction(merchant, "T4")
    assert len(fake.requests) - before == 1


async def test_notifications_verify_and_decrypt(fake: FakeWechatPay, client: WechatPayClient):
    from aiohttp import web

    merchant = merchant_of(fake)
    got: list[tuple[dict[str, str], str]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.text()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/notify", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await client.jsapi_prepay(
            merchant, out_trade_no="T5", description="x", total_fen=990, openid="o-bob",
            notify_url=f"http://127.0.0.1:{port}/notify",
        )  # fmt: skip
        await fake.pay("T5")
    finally:
        await runner.cleanup()
    import json

    headers, body = got[0]
    verify_signed(
        headers, body, platform_serial=fake.platform_serial,
        platform_pem=fake.platform_public, now=int(time.time()),
    )  # fmt: skip
    with pytest.raises(SignatureInvalid, match="stale"):
        verify_signed(
            headers, body, platform_serial=fake.platform_serial,
            platform_pem=fake.platform_public, now=int(time.time()) + 301,
        )  # fmt: skip
    with pytest.raises(SignatureInvalid):
        verify_signed(
            headers, body.replace("T", "U", 1), platform_serial=fake.platform_serial,
            platform_pem=fake.platform_public, now=int(time.time()),
        )  # fmt: skip
    transaction = decrypt_resource(json.loads(body)["resource"], merchant.api_v3_key)
    assert transaction["out_trade_no"] == "T5" and transaction["amount"]["total"] == 990
    assert transaction["trade_state"] == "SUCCESS" and transaction["mchid"] == merchant.mch_id


async def test_refunds_bills_and_transfers(fake: FakeWechatPay, client: WechatPayClient):
    merchant = merchant_of(fake)
    await _prepay(client, merchant, "T6", 3500)
    fake.hold = True
    await fake.pay("T6")
    fake.refund_auto_succeed = False

    def refund(no: str, fen: int):
        return client.refund(
            merchant, out_trade_no="T6", out_refund_no=no, refund_fen=fen, total_fen=3500,
            reason="退货", notify_url="http://127.0.0.1:9/n",
        )  # fmt: skip

    first = await refund("R1", 2000)
    assert first["status"] == "PROCESSING" and first["amount"]["refund"] == 2000
    assert (await refund("R1", 2000))["refund_id"] == first["refund_id"]  # idempotent
    with pytest.raises(WechatPayRefused) as refused:
        await refund("R2", 1501)
    assert refused.value.wx_code == "NOT_ENOUGH"
    assert (await client.query_refund(merchant, "R1"))["status"] == "PROCESSING"

    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))
    text = await client.trade_bill(merchant, today)
    assert "`T6,`o-alice,`JSAPI,`SUCCESS" in text and "`R1,`20.00" in text
    # A bill whose bytes do not match the announced hash is refused.
    fake.tamper_download = True
    with pytest.raises(WechatPayError, match="hash"):
        await client.trade_bill(merchant, today)
    fake.tamper_download = False

    batch = await client.create_transfer_batch(
        merchant,
        {
            "out_batch_no": "BATCH1", "batch_name": "佣金", "batch_remark": "佣金",
            "total_amount": 300, "total_num": 2,
            "transfer_detail_list": [
                {"out_detail_no": "DETAIL1", "transfer_amount": 100, "transfer_remark": "佣金",
                 "openid": "o-a"},
                {"out_detail_no": "DETAIL2", "transfer_amount": 200, "transfer_remark": "佣金",
                 "openid": "o-b"},
            ],
        },
    )  # fmt: skip
    assert batch["batch_status"] == "ACCEPTED"
    fake.finish_batch("BATCH1")
    done = await client.query_transfer_batch(merchant, "BATCH1")
    assert done["transfer_batch"]["batch_status"] == "FINISHED"
    assert {d["detail_status"] for d in done["transfer_detail_list"]} == {"SUCCESS"}
