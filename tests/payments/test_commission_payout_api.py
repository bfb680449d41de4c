"""AE-03 through a real node and the fake WeChat Pay, on SQLite and PostgreSQL: a member with
WeChat bound withdraws and is paid by merchant transfer once the node's payments sweep finds
the transfer done; agents, dealers and members without WeChat are paid manually; asking
weixin for them is refused. The invariants hold after."""

from __future__ import annotations

from typing import Any

from aquafleet.api.payments import PAYMENTS
from aquafleet.gateway.payouts import batch_no
from aquafleet.models.commission_check import check_commissions
from aquafleet.models.money import GUARDED_PREFIXES, check_ledger
from aquafleet.models.payments import check_payments
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.api.test_commissions_api import COMMIS, bought_and_done
from tests.fakes.wechatpay import FakeWechatPay
from tests.payments.test_wechat_pay_flow import set_merchant


async def test_a_member_is_paid_by_wechat_transfer_and_agents_manually(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], fake_pay: FakeWechatPay
):
    a, _ = tenants
    await set_merchant(api, a.vid, fake_pay)
    pid = await add_product(a.vendor, commis=COMMIS)  # goods 298000: 62580 / 26820 / 8940
    m1 = await make_member(api_node, api, a.vid, agent_id=a.dealer_id)
    m2 = await make_member(
        api_node, api, a.vid, agent_id=a.dealer_id, referrer_id=m1.uid, wx_openid="o-m2"
    )
    buyer = await make_member(api_node, api, a.vid, agent_id=a.dealer_id, referrer_id=m2.uid)
    await bought_and_done(a, buyer, pid)

    paid = await m2.client.call("POST", "/commission", {"amount": 50000, "request_id": "w-1"})
    assert paid.status == 201, paid
    assert (paid.data["channel"], paid.data["state_name"]) == ("weixin", "requested")
    batch = fake_pay.batches[batch_no(paid.data["id"])]
    assert [(d["openid"], d["transfer_amount"]) for d in batch["details"]] == [("o-m2", 50000)]
    fake_pay.finish_batch(batch_no(paid.data["id"]))
    report = await api_node.app[PAYMENTS].sweep()
    assert (report.payouts_paid, report.errors) == (1, [])
    listed = await m2.client.call("GET", "/commission/withdrawals")
    assert [(w["id"], w["state_name"]) for w in listed.data] == [(paid.data["id"], "paid")]
    summary = (await m2.client.call("GET", "/commission/summary")).data
    assert (summary["available"], summary["payout"], summary["withdrawn"]) == (12580, 0, 50000)

    # No openid: the dealer (an agent node) and m1 are paid manually; asking weixin is refused.
    refused = await a.dealer.call(
        "POST", "/commission", {"amount": 8940, "request_id": "d-1", "channel": "weixin"},
        expect=409,
    )  # fmt: skip
    assert refused.code == "wechat_not_bound"
    dealer_w = await a.dealer.call("POST", "/commission", {"amount": 8940, "request_id": "d-1"})
    assert (dealer_w.data["channel"], dealer_w.data["state_name"]) == ("manual", "requested")
    m1_w = await m1.client.call("POST", "/commission", {"amount": 20000, "request_id": "m1-1"})
    assert m1_w.data["channel"] == "manual"
    await m1.client.call(
        "POST", "/commission", {"amount": 100, "request_id": "x", "channel": "cash"}, expect=422
    )
    assert len(fake_pay.batches) == 1

    assert await check_commissions() == []
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []
    assert await check_payments() == []
