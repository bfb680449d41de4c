"""The member wallet through the API and the fake WeChat Pay, on SQLite and PostgreSQL: a
top-up, an order paid from it, racing spends that cannot overdraw it, a refund back to it, and
a vending dispense paid from it (charged for what was poured, the rest given back)."""

from __future__ import annotations

import asyncio
from typing import Any

from aquafleet.api.payments import PAYMENTS
from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.money import (
    MoneyTransaction,
    Refund,
    RefundState,
    balance,
    channel_account,
    request_refund,
)
from aquafleet.models.orders import Order
from aquafleet.models.service import ServiceMode
from aquafleet.models.vending import DispenseSession, DispenseState
from aquafleet.models.wallet import vending_account
from aquafleet.protocol import Command, CommandOp
from tests.api.conftest import ApiClient
from tests.devices import register_devices
from tests.metering.test_vending import pour
from tests.metering.test_volume_rental import ACTOR, eventually
from tests.payments.test_wechat_pay_flow import Shop, assert_ledger_clean, shop

__all__ = ["shop"]


async def _wallet(shop: Shop) -> int:
    answer = await shop.shopper.client.call("GET", f"/users/{shop.shopper.uid}/wallet")
    return int(answer.data["balance"])


async def _top_up(shop: Shop, fen: int) -> None:
    answer = await shop.shopper.client.call(
        "POST", f"/users/{shop.shopper.uid}/wallet/topup", {"amount": fen}
    )
    assert answer.data["package"].startswith("prepay_id=")
    await shop.fake.pay(answer.data["bill_no"])  # the member pays in the app


async def test_a_top_up_pays_orders_and_racing_spends_never_overdraw(shop: Shop):
    assert await _wallet(shop) == 0
    order = await shop.order()
    total = order["amounts"]["total"]
    refused = await shop.shopper.client.call(
        "POST", f"/orders/{order['order_id']}/prepay/wallet", expect=409
    )
    assert refused.code == "insufficient_funds"
    assert await shop.state(order["order_id"]) == "obligation"

    await _top_up(shop, total * 2 + 100)  # enough for two orders, not three
    assert '"outcome":"topped_up"' in shop.fake.answers[-1][1]
    assert await _wallet(shop) == total * 2 + 100
    assert await balance(channel_account("weixin", shop.vid)) == total * 2 + 100
    others = [await shop.order() for _ in range(3)]
    client = shop.shopper.client

    async def pay(oid: str) -> int:
        async with client.session.post(
            f"{client.base}/api/v1/orders/{oid}/prepay/wallet",
            headers={"Authorization": f"Bearer {client.token}"},
        ) as response:
            return response.status

    statuses = await asyncio.gather(*(pay(o["order_id"]) for o in [order, *others[:2]]))
    assert sorted(statuses) == [200, 200, 409]
    assert await _wallet(shop) == 100
    paid = [o for o in [order, *others[:2]] if await shop.state(o["order_id"]) == "paid"]
    assert len(paid) == 2
    info = (await shop.shopper.client.call("GET", f"/orders/{paid[0]['order_id']}/payment")).data
    assert info["pay_ch"] == "wallet" and info["pay_state"] == "paid"
    await assert_ledger_clean()

    # A return of a wallet-paid order goes back to the wallet.
    first = await Order.get(oid=paid[0]["order_id"])
    await request_refund(
        order=first, amount_fen=total, refund_no=f"return-{first.oid}", reason="退货", actor="t"
    )
    report = await shop.node.app[PAYMENTS].sweep()
    assert report.refunds_settled == 1 and report.refunds_sent == 0
    assert (await Refund.get(refund_no=f"return-{first.oid}")).state is RefundState.SUCCEEDED
    assert await _wallet(shop) == total + 100
    assert not shop.fake.refunds  # nothing went through WeChat Pay
    await assert_ledger_clean()


async def test_a_wallet_top_up_notified_twice_credits_once(shop: Shop):
    shop.fake.duplicate = 2
    await _top_up(shop, 500)
    outcomes = [text.split('"outcome":"')[1].split('"')[0] for _, text in shop.fake.answers]
    assert outcomes == ["topped_up", "duplicate"]
    assert await _wallet(shop) == 500
    assert await MoneyTransaction.filter(kind="topup").count() == 1
    await assert_ledger_clean()


async def test_a_vending_dispense_paid_from_the_wallet(
    shop: Shop, api: ApiClient, device_factory: Any
):
    (dev,) = await register_devices(shop.node, 1, vendor=shop.vid)
    await service.configure(shop.node.app[SERVICE_STORE], dev.did, ServiceMode.VENDING, actor=ACTOR)
    device = device_factory(dev.did, dev.key, shop.node.tcp_port)
    await device.login()
    vend = f"/devices/{dev.did}/vend"
    unpriced = await shop.shopper.client.call("POST", vend, {"ml": 500}, expect=409)
    assert unpriced.code == "vending_unpriced"
    await api.call("PUT", f"/vendors/{shop.vid}/cfg", {"vending_price_fen_per_l": 200})
    broke = await shop.shopper.client.call("POST", vend, {"ml": 500}, expect=409)
    assert broke.code == "insufficient_funds"
    assert await DispenseSession.filter(did=dev.did, state=DispenseState.PENDING).count() == 0
    await _top_up(shop, 150)

    # 500 ml at 2 yuan a litre: 100 fen held before the machine is told to pour.
    started = asyncio.ensure_future(shop.shopper.client.call("POST", vend, {"ml": 500}))
    command = await device.wait_for(Command)
    assert command.op == CommandOp.DISPENSE and dict(command.args) == {1: 500}
    assert await _wallet(shop) == 50
    await pour(device, command, 430, rec=1, total=430)  # the cup was full at 430 ml
    answer = (await started).data
    assert answer["held"] == 100 and answer["price_fen_per_l"] == 200

    async def done() -> DispenseSession | None:
        s = await DispenseSession.get(id=answer["session_id"])
        return s if s.state is DispenseState.DONE else None

    session = await eventually(done)
    assert (session.actual_ml, session.charge_fen) == (430, 86)
    report = await shop.node.app[PAYMENTS].sweep()
    assert report.dispenses_settled == 1
    assert await _wallet(shop) == 150 - 86  # the 14 fen not poured came back
    assert await balance(vending_account(shop.vid)) == -86
    assert (await shop.node.app[PAYMENTS].sweep()).dispenses_settled == 0  # once
    await assert_ledger_clean()
