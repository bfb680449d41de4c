"""Alipay (pay_ch alipay) end to end through a real node and the fake Alipay gateway, on SQLite
and PostgreSQL: the H5 URL opened and paid, duplicate, forged, other-seller and wrong-amount
notifications, a late notification found by alipay.trade.query, a bill closed with its order
(alipay.trade.close) and money arriving after that, partial and full refunds (over-refunds
refused), a second payment of a paid order, a refund by `aquafleet payments sweep`, the
credentials never shown. The money ledger's check is clean after each scenario."""

from __future__ import annotations

import io
import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aquafleet.api.payments import PAYMENTS
from aquafleet.models.accounts import AdminAccount, Role, create_account
from aquafleet.models.alipay import (
    fen,
    open_response,
    rsa2_sign,
    sign_content,
    verify_notification,
    yuan,
)
from aquafleet.models.merchants import PaymentMerchant
from aquafleet.models.money import (
    MoneyTransaction,
    Refund,
    RefundState,
    balance,
    channel_account,
    request_refund,
)
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.orders import Order
from aquafleet.models.payments import PaymentNotice
from aquafleet.models.sealed import is_sealed
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.fakes.alipay import FakeAlipay
from tests.payments.keys import public_pem, rsa_private_pem
from tests.payments.shops import RECEIVER, ChannelShop, assert_ledger_clean, channel_node

APP_ID = "2021000117600001"


@pytest.fixture
async def fake_alipay() -> AsyncIterator[FakeAlipay]:
    server = FakeAlipay()
    await server.start()
    server.add_app(APP_ID)
    yield server
    await server.stop()


@pytest.fixture
async def api_node(database_url: str, node_factory: Any, fake_alipay: FakeAlipay) -> Any:
    """A node whose Alipay is the fake, which notifies the node at its own port."""
    return await channel_node(node_factory, database_url, alipay_gateway_url=fake_alipay.gateway)


class AlipayShop(ChannelShop):
    fake: FakeAlipay

    async def order(self) -> tuple[str, int]:
        order = await self.new_order()
        return str(order["order_id"]), int(order["amounts"]["total"])

    async def prepay(self, oid: str, expect: int = 200) -> Any:
        return await self.shopper.client.call("POST", f"/orders/{oid}/prepay/alipay", expect=expect)

    async def opened(self, oid: str) -> str:
        """Prepay, and the member's browser opens the URL: the trade exists at Alipay."""
        url = str((await self.prepay(oid)).data["pay_url"])
        assert await self.fake.open(url) == 200
        return url


@pytest.fixture
async def shop(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], fake_alipay: FakeAlipay
) -> AlipayShop:
    a, _ = tenants
    await api.call(
        "PUT", f"/vendors/{a.vid}/mxx/alipay", fake_alipay.credentials(fake_alipay.apps[APP_ID])
    )
    pid = await add_product(a.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, a.vid)
    return AlipayShop(a.vid, shopper, api_node, fake_alipay, pid)


# ----------------------------------------------------------------------------- sans-IO rules


def test_amounts_are_converted_exactly_between_fen_and_yuan():
    assert [yuan(v) for v in (0, 1, 10, 99, 100, 12345, 1_000_000_01)] == [
        "0.00", "0.01", "0.10", "0.99", "1.00", "123.45", "1000000.01",
    ]  # fmt: skip
    assert [fen(t) for t in ("0.01", "0.1", "5", "123.45", "1000000.01")] == [
        1, 10, 500, 12345, 100000001,
    ]  # fmt: skip
    for text in ("1.001", "-1.00", "1e2", "", "0x10", " 1 .0", "1.", "01.00"):
        with pytest.raises(ValueError):
            fen(text)
    assert all(fen(yuan(v)) == v for v in range(0, 100_000, 7))


def test_the_signing_rules_are_alipays():
    # 开放平台 自行实现签名: every parameter but sign with a value, sorted, raw k=v joined by &
    params = {"app_id": "2014072300007148", "method": "alipay.trade.query", "charset": "utf-8",
              "sign_type": "RSA2", "timestamp": "2014-07-24 03:07:50", "version": "1.0",
              "notify_url": "", "biz_content": '{"out_trade_no":"A1"}', "sign": "x"}  # fmt: skip
    assert sign_content(params) == (
        'app_id=2014072300007148&biz_content={"out_trade_no":"A1"}&charset=utf-8'
        "&method=alipay.trade.query&sign_type=RSA2&timestamp=2014-07-24 03:07:50&version=1.0"
    )
    # 异步通知 验签: sign and sign_type are left out
    key = rsa_private_pem("alipay-platform")
    form = {
        "app_id": "1",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "0.01",
        "sign_type": "RSA2",
    }
    form["sign"] = rsa2_sign("app_id=1&total_amount=0.01&trade_status=TRADE_SUCCESS", key)
    assert verify_notification(form, public_pem(key))
    assert not verify_notification({**form, "total_amount": "0.02"}, public_pem(key))
    assert not verify_notification({**form, "sign_type": "RSA"}, public_pem(key))
    # An answer is verified over the exact text of its *_response value.
    inner = '{"code":"10000","msg":"Success","total_amount":"1.00"}'
    body = f'{{"alipay_trade_query_response":{inner},"sign":"{rsa2_sign(inner, key)}"}}'
    assert open_response(body, "alipay.trade.query", public_pem(key))["total_amount"] == "1.00"
    with pytest.raises(Exception, match="signature"):
        open_response(body.replace("1.00", "9.00"), "alipay.trade.query", public_pem(key))


# ----------------------------------------------------------------------------- end to end


async def test_a_member_pays_an_order_with_alipay_end_to_end(shop: AlipayShop):
    oid, total = await shop.order()
    answer = (await shop.prepay(oid)).data
    assert answer["bill_no"] == oid
    url = urllib.parse.urlsplit(answer["pay_url"])
    params = dict(urllib.parse.parse_qsl(url.query))
    assert f"{url.scheme}://{url.netloc}{url.path}" == shop.fake.gateway
    assert (params["method"], params["sign_type"], params["charset"], params["version"]) == (
        "alipay.trade.wap.pay", "RSA2", "utf-8", "1.0",
    )  # fmt: skip
    biz = json.loads(params["biz_content"])
    assert biz["out_trade_no"] == oid and biz["total_amount"] == yuan(total)
    assert params["notify_url"].endswith(f"/api/v1/payments/alipay/notify/{shop.vid}")
    assert shop.fake.trades == {}  # nothing at Alipay until the member opens the page
    assert await shop.fake.open(answer["pay_url"]) == 200
    assert await shop.fake.open(str((await shop.prepay(oid)).data["pay_url"])) == 200  # again
    assert len(shop.fake.trades) == 1
    tampered = answer["pay_url"].replace(urllib.parse.quote(yuan(total)), "0.01")
    assert await shop.fake.open(tampered) == 400  # our signature covers the amount

    assert await shop.fake.pay(oid) == [200]
    assert shop.fake.notified[-1] == (200, "success")
    assert await shop.state(oid) == "paid"
    info = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert (info["pay_ch"], info["pay_state"], info["bill_no"]) == ("alipay", "paid", oid)
    assert info["transaction_no"] == shop.fake.trade(oid).trade_no and info["amount"] == total
    assert await balance(channel_account("alipay", shop.vid)) == total
    assert shop.node.metrics.payments_paid == 1
    assert (await shop.prepay(oid, expect=409)).status == 409
    await assert_ledger_clean()


async def test_a_duplicate_notification_pays_once(shop: AlipayShop):
    oid, _total = await shop.order()
    await shop.opened(oid)
    assert await shop.fake.pay(oid, times=3) == [200, 200, 200]
    assert [body for _s, body in shop.fake.notified] == ["success"] * 3
    assert await shop.state(oid) == "paid"
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    assert await PaymentNotice.filter(bill_no=oid).count() == 1
    # The sweep's query of the same payment is the same notice.
    assert (
        await shop.node.app[PAYMENTS].alipay.query_bill(await _bill(oid)) is not None
        and await MoneyTransaction.filter(order_oid=oid).count() == 1
    )
    await assert_ledger_clean()


async def _bill(oid: str) -> Any:
    from aquafleet.models.payments import payment_of_order

    return await payment_of_order(oid)


async def test_forged_and_other_seller_notifications_change_nothing(shop: AlipayShop):
    oid, _total = await shop.order()
    await shop.opened(oid)
    assert await shop.fake.pay(oid, forge=True) == [401]
    assert "notification_refused" in shop.fake.notified[-1][1]
    trade = shop.fake.trade(oid)
    assert await shop.fake.notify(trade, seller_id="2088000000000999") == 401
    assert await shop.state(oid) == "obligation"
    assert shop.node.metrics.payments_notices_refused == 2
    assert await MoneyTransaction.filter(order_oid=oid).count() == 0
    assert await PaymentNotice.all().count() == 0
    # A genuine one still pays.
    assert await shop.fake.notify(trade) == 200
    assert await shop.state(oid) == "paid"
    await assert_ledger_clean()


async def test_a_notification_with_another_amount_never_pays(shop: AlipayShop):
    oid, total = await shop.order()
    await shop.opened(oid)
    assert await shop.fake.pay(oid, amount="0.01") == [200]
    assert shop.fake.notified[-1] == (200, "success")  # taken: Alipay stops resending
    assert await shop.state(oid) == "obligation"
    assert shop.node.metrics.payments_amount_mismatch == 1
    notice = await PaymentNotice.get(bill_no=oid)
    assert (notice.outcome, notice.amount_fen, notice.channel) == ("amount_mismatch", 1, "alipay")
    assert await MoneyTransaction.filter(order_oid=oid).count() == 0
    # The genuine notification is not hidden by the wrong one.
    assert await shop.fake.notify(shop.fake.trade(oid)) == 200
    assert await shop.state(oid) == "paid"
    assert await balance(channel_account("alipay", shop.vid)) == total
    await assert_ledger_clean()


async def test_a_late_notification_is_found_by_the_sweeps_query(shop: AlipayShop):
    oid, _total = await shop.order()
    service = shop.node.app[PAYMENTS]
    service.query_after = service.query_after * 0
    await shop.prepay(oid)
    report = await shop.sweep()  # never opened: Alipay has no such trade yet
    assert (report.bills_queried, report.bills_paid, report.errors) == (1, 0, [])
    await shop.opened(oid)
    assert await shop.fake.pay(oid, notify=False) == []
    report = await shop.sweep()
    assert (report.bills_queried, report.bills_paid) == (1, 1)
    assert await shop.state(oid) == "paid"
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    # The notification arriving after the query changes nothing.
    assert await shop.fake.notify(shop.fake.trade(oid)) == 200
    assert await MoneyTransaction.filter(order_oid=oid).count() == 1
    assert [n.outcome for n in await PaymentNotice.filter(bill_no=oid)] == ["paid"]
    await assert_ledger_clean()


async def test_the_bill_of_a_closed_order_is_closed_at_alipay(shop: AlipayShop):
    oid, _total = await shop.order()
    await shop.opened(oid)
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/close")
    report = await shop.sweep()
    assert report.bills_closed == 1
    assert shop.fake.trade(oid).status == "TRADE_CLOSED"
    assert [m for m, _p in shop.fake.calls].count("alipay.trade.close") == 1
    info = (await shop.shopper.client.call("GET", f"/orders/{oid}/payment")).data
    assert info["pay_state"] == "closed"
    assert (await shop.sweep()).bills_closed == 0  # once
    await assert_ledger_clean()


async def test_money_arriving_after_the_order_closed_goes_back(shop: AlipayShop):
    oid, total = await shop.order()
    url = str((await shop.prepay(oid)).data["pay_url"])
    await shop.shopper.client.call("POST", f"/orders/{oid}/status/close")
    assert (await shop.sweep()).bills_closed == 1  # never opened: closed here
    assert await shop.fake.open(url) == 200  # the member opens the old URL and pays anyway
    assert await shop.fake.pay(oid) == [200]
    assert await shop.state(oid) == "close"
    refund = await Refund.get(refund_no=f"close-{oid}")
    assert refund.state is RefundState.DUE and refund.amount_fen == total
    report = await shop.sweep()
    assert (report.refunds_sent, report.refunds_settled) == (1, 1)
    assert shop.fake.trade(oid).refunded == shop.fake.trade(oid).total
    assert await balance(channel_account("alipay", shop.vid)) == 0
    await assert_ledger_clean()


async def test_partial_and_full_refunds_are_executed_once_and_over_refunds_refused(
    shop: AlipayShop,
):
    oid, total = await shop.order()
    await shop.opened(oid)
    await shop.fake.pay(oid)
    paid = await Order.get(oid=oid)
    await request_refund(order=paid, amount_fen=1001, refund_no="part-1", reason="少件", actor="t")
    report = await shop.sweep()
    assert (report.refunds_sent, report.refunds_settled) == (1, 1)
    trade = shop.fake.trade(oid)
    assert trade.status == "TRADE_SUCCESS" and str(trade.refunded) == yuan(1001)
    refund_call = [p for m, p in shop.fake.calls if m == "alipay.trade.refund"][-1]
    biz = json.loads(refund_call["biz_content"])
    assert (biz["out_request_no"], biz["refund_amount"]) == ("part-1", "10.01")
    await request_refund(
        order=paid, amount_fen=total - 1001, refund_no=f"return-{oid}", reason="退货", actor="t"
    )
    report = await shop.sweep()
    assert (report.refunds_sent, report.refunds_settled) == (1, 1)
    assert trade.status == "TRADE_CLOSED" and trade.refunded == trade.total
    assert (await shop.sweep()).refunds_sent == 0  # executed once
    states = {r.refund_no: (r.state, r.channel) for r in await Refund.filter(order_oid=oid)}
    assert states == {
        "part-1": (RefundState.SUCCEEDED, "alipay"),
        f"return-{oid}": (RefundState.SUCCEEDED, "alipay"),
    }
    assert await balance(channel_account("alipay", shop.vid)) == 0
    await assert_ledger_clean()

    # Alipay refuses to give back more than it took (refunded elsewhere meanwhile).
    oid2, total2 = await shop.order()
    await shop.opened(oid2)
    await shop.fake.pay(oid2)
    shop.fake.trade(oid2).refunded = shop.fake.trade(oid2).total
    await request_refund(
        order=await Order.get(oid=oid2), amount_fen=total2, refund_no="r-2", reason="x", actor="t"
    )
    assert (await shop.sweep()).refunds_failed == 1
    refund = await Refund.get(refund_no="r-2")
    assert refund.state is RefundState.FAILED and "REFUND_AMT_NOT_EQUAL_TOTAL" in refund.failure
    assert await balance(channel_account("alipay", shop.vid)) == total2
    await assert_ledger_clean()


async def test_a_refund_whose_answer_was_lost_is_settled_by_the_query(shop: AlipayShop):
    oid, total = await shop.order()
    await shop.opened(oid)
    await shop.fake.pay(oid)
    paid = await Order.get(oid=oid)
    await request_refund(order=paid, amount_fen=total, refund_no="r-1", reason="x", actor="t")
    shop.fake.fail_next(3)  # Alipay does not answer: the refund stays due
    report = await shop.sweep()
    assert report.refunds_sent == 0 and report.errors
    assert (await Refund.get(refund_no="r-1")).state is RefundState.DUE
    # Alipay took it, but we never saw the answer: the repeat answers fund_change N, the
    # query finds it done; the money moved once.
    shop.fake._refund(shop.fake.apps[APP_ID], {"out_trade_no": oid, "refund_amount":
                      yuan(total), "out_request_no": "r-1"})  # fmt: skip
    report = await shop.sweep()
    assert (report.refunds_sent, report.refunds_settled) == (1, 1)
    methods = [m for m, _p in shop.fake.calls]
    assert methods[-2:] == ["alipay.trade.refund", "alipay.trade.fastpay.refund.query"]
    assert (await Refund.get(refund_no="r-1")).state is RefundState.SUCCEEDED
    assert (await shop.sweep()).refunds_sent == 0
    assert shop.fake.trade(oid).refunded == shop.fake.trade(oid).total
    assert await balance(channel_account("alipay", shop.vid)) == 0
    await assert_ledger_clean()


async def test_an_order_marked_paid_then_paid_with_alipay_is_refunded(shop: AlipayShop):
    oid, total = await shop.order()
    await shop.opened(oid)
    if not await AdminAccount.exists(username="ops"):
        await create_account("ops", "0" * 32, Role.PLATFORM)
    await mark_paid(oid, admin="ops", reason="paid in cash at the shop")
    assert await shop.fake.pay(oid) == [200]
    trade = shop.fake.trade(oid)
    refund = await Refund.get(refund_no=f"twice-{trade.trade_no}")
    assert (refund.amount_fen, refund.part, refund.channel) == (total, "duplicate", "alipay")
    assert (await shop.sweep()).refunds_settled == 1
    assert trade.refunded == trade.total  # back through Alipay
    assert await balance(channel_account("alipay", shop.vid)) == 0
    assert await balance(channel_account("manual", shop.vid)) == total
    await assert_ledger_clean()


async def test_the_alipay_credentials_are_sealed_never_answered_nor_logged(
    log_stream: io.StringIO, shop: AlipayShop, api: ApiClient
):
    secret_line = shop.fake.apps[APP_ID].private_pem.splitlines()[5]
    oid, _ = await shop.order()
    await shop.opened(oid)
    await shop.fake.pay(oid)
    assert await shop.state(oid) == "paid"
    answered = []
    for path in (f"/vendors/{shop.vid}", "/vendors", "/openapi.json"):
        async with api.session.get(
            f"{api.base}/api/v1{path}", headers={"Authorization": f"Bearer {api.token}"}
        ) as response:
            answered.append(await response.text())
    logged = log_stream.getvalue()
    assert "payment_confirmed" in logged
    assert secret_line not in logged and secret_line not in "\n".join(answered)
    row = await PaymentMerchant.get(vendor_id=shop.vid, channel="alipay")
    assert is_sealed(row.sealed) and secret_line not in row.sealed + str(row.public)
    assert row.public["alipay_app_id"] == APP_ID
    bad = await api.call(
        "PUT", f"/vendors/{shop.vid}/mxx/alipay",
        {"alipay_private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-key\n"}, expect=422,
    )  # fmt: skip
    assert "not-a-key" not in str(bad.body)


async def test_prepay_without_an_alipay_app_is_refused(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    _, b = tenants
    pid = await add_product(b.vendor, install=False, install_cost=0)
    shopper = await make_member(api_node, api, b.vid)
    body = {"content": [{"product_id": pid}], "receiver": RECEIVER}
    oid = (await shopper.client.call("POST", "/orders", body, expect=201)).data["order_id"]
    answer = await shopper.client.call("POST", f"/orders/{oid}/prepay/alipay", expect=409)
    assert answer.body["code"] == "payment_not_configured"


async def test_a_notification_of_no_bill_here_is_recorded_and_taken(shop: AlipayShop):
    from decimal import Decimal

    from tests.fakes.alipay import FakeTrade

    notify_url = (
        f"{shop.node.app[PAYMENTS].notify_base_url}/api/v1/payments/alipay/notify/{shop.vid}"
    )
    shop.fake.trades[(APP_ID, "NO-SUCH-BILL")] = FakeTrade(
        APP_ID, "NO-SUCH-BILL", "2026000000000000000000000999", Decimal("12.30"), "x", notify_url
    )
    assert await shop.fake.pay("NO-SUCH-BILL") == [200]
    assert shop.fake.notified[-1] == (200, "success")
    notice = await PaymentNotice.get(bill_no="NO-SUCH-BILL")
    assert (notice.outcome, notice.amount_fen, notice.channel) == ("unknown_bill", 1230, "alipay")
    # A status that is no payment (the trade closed) is taken and changes nothing.
    trade = shop.fake.trade("NO-SUCH-BILL")
    trade.status = "TRADE_CLOSED"
    assert await shop.fake.notify(trade) == 200
    assert await PaymentNotice.all().count() == 1
    await assert_ledger_clean()


async def test_the_sweep_command_refunds_through_alipay(
    shop: AlipayShop, database_url: str, tmp_path: Any
):
    from tests.conftest import MASTER_SECRET
    from tests.platform.test_cli import aquafleet, clean_env

    oid, total = await shop.order()
    await shop.opened(oid)
    await shop.fake.pay(oid)
    await request_refund(
        order=await Order.get(oid=oid), amount_fen=total, refund_no="R-cli", reason="退货",
        actor="test",
    )  # fmt: skip
    env = clean_env(
        data_dir=tmp_path / "cli", master_secret=MASTER_SECRET, database_url=database_url,
        alipay_gateway_url=shop.fake.gateway,
        payments_notify_url=f"http://127.0.0.1:{shop.node.http_port}",
    )  # fmt: skip
    code, out = await aquafleet(env, "payments", "sweep", "--json")
    assert code == 0, out
    lines = out.splitlines()
    report = json.loads("\n".join(lines[lines.index("{") : lines.index("}") + 1]))
    assert (report["refunds_sent"], report["refunds_settled"], report["errors"]) == (1, 1, [])
    assert (await Refund.get(refund_no="R-cli")).state is RefundState.SUCCEEDED
    assert shop.fake.trade(oid).refunded == shop.fake.trade(oid).total
    code, out = await aquafleet(env, "money", "check")
    assert code == 0 and "ledger ok" in out, out
    await assert_ledger_clean()
