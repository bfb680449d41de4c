"""Commissions end to end in the models, on SQLite and PostgreSQL: a three-level chain buys,
part of the order is refunded, the order is done, a level withdraws, the rest is refunded
(a debt), a renewal pays the debt; the balances and every invariant hold at each step. And
the races: a split computed by several nodes at once is stored once; two withdrawals at once
cannot both pass the balance."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest

from aquafleet.models import withdrawals
from aquafleet.models.accounts import AdminAccount, create_account
from aquafleet.models.agents import Agent, create_agent
from aquafleet.models.commission_check import check_commissions
from aquafleet.models.commissions import (
    Bucket,
    Commission,
    CommissionSplit,
    CommissionState,
    Summary,
    Withdrawal,
    WithdrawalState,
    agent_earner,
    commission_account,
    member_earner,
    settle_order,
    summary,
)
from aquafleet.models.errors import Conflict, Forbidden, InvalidInput, RequestReused
from aquafleet.models.members import Member, member_uid
from aquafleet.models.money import (
    GUARDED_PREFIXES,
    InsufficientFunds,
    MoneyEntry,
    MoneyTransaction,
    Part,
    RefundExceedsPayment,
    balance,
    check_ledger,
    record_order_payment,
    request_refund,
    settle_refund,
)
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.order_placing import LineRequest, OrderRequest, create_order
from aquafleet.models.order_states import SYSTEM, fire
from aquafleet.models.orders import Order, OrderEvent, OrderKind, OrderLine, OrderState
from aquafleet.models.products import Product, create_product, snapshot
from aquafleet.models.registry import create_vendor
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.withdrawals import (
    ManualPayout,
    WithdrawalTooSoon,
    request_withdrawal,
    settle_withdrawal,
)
from tests.conftest import MASTER_SECRET
from tests.platform.test_cli import aquafleet, clean_env

pytestmark = pytest.mark.usefixtures("db")

VID = "COMM"
ADMIN = "ops"
RECEIVER = {"name": "张三", "mobile": "13800138000", "address": "上海"}
PRODUCT = {
    "name": "净水机",
    "billing": 3,
    "price_fen": 2999,
    "freight_fen": 500,
    "state": 1,
    "commis_enabled": True,
    "commis_config": [21, 9, 3],
    "rent_packages": [{"name": "30天", "key": "30d", "value": 6000, "days": 30}],
}


class Chain:
    """Buyer B referred by M2, referred by M1; all three belong to dealer D under agent A."""

    def __init__(self, agent: Agent, dealer: Agent, m1: str, m2: str, buyer: str, pid: str):
        self.agent, self.dealer, self.m1, self.m2, self.buyer, self.pid = (
            agent, dealer, m1, m2, buyer, pid,
        )  # fmt: skip

    def member(self, uid: str) -> Principal:
        return Principal(Role.MEMBER, uid, vendor_code=VID)

    @property
    def dealer_principal(self) -> Principal:
        return Principal(Role.DEALER, "dealer", vendor_code=VID, agent_path=self.dealer.path)


async def make_chain(vid: str = VID, first_serial: int = 1, **product: Any) -> Chain:
    vendor = await create_vendor(vid, f"Vendor {vid}")
    if not await AdminAccount.exists(username=ADMIN):
        await create_account(ADMIN, "0" * 32, Role.PLATFORM)
    low = vid.lower()
    agent = await create_agent(vendor, None, {"name": "A"}, f"{low}-agent", "0" * 32)
    dealer = await create_agent(vendor, agent, {"name": "D"}, f"{low}-dealer", "0" * 32)
    uids = [member_uid(vid, first_serial + i) for i in range(3)]
    referrer = None
    for i, uid in enumerate(uids):
        await Member.create(
            uid=uid, vendor_id=vid, name=f"m{i}", state=2, referrer_id=referrer,
            agent_id=dealer.id,
        )  # fmt: skip
        referrer = uid
    p = await create_product(vid, {**PRODUCT, **product})
    return Chain(agent, dealer, uids[0], uids[1], uids[2], p.pid)


async def order_of(chain: Chain, quantity: int = 2, package: str | None = None) -> Order:
    member = await Member.get(uid=chain.buyer)
    order, _ = await create_order(
        member, OrderRequest([LineRequest(chain.pid, quantity, package)], RECEIVER)
    )
    return order


async def paid(chain: Chain, **kwargs: Any) -> Order:
    order = await order_of(chain, **kwargs)
    return await mark_paid(order.oid, admin=ADMIN, reason="cash")


async def refund(order: Order, amount: int, no: str) -> None:
    await request_refund(order=order, amount_fen=amount, refund_no=no, reason="test", actor="t")
    await settle_refund(no, channel="manual")


async def done(order: Order) -> Order:
    for event, role in (
        (OrderEvent.DELIVER, Role.VENDOR.value),
        (OrderEvent.CONFIRM, Role.MEMBER.value),
        (OrderEvent.FINISH, SYSTEM),
    ):
        order = await fire(order, event, actor_role=role, actor_id="test")
    assert order.state is OrderState.DONE
    return order


async def invariants() -> None:
    """What `aquafleet commissions check` runs: both checks find nothing."""
    assert await check_commissions() == []
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []


async def of(earner: str) -> Summary:
    return await summary(vendor_code=VID, earner=earner)


async def levels(oid: str) -> list[tuple[int, str, int, int, CommissionState]]:
    rows = await Commission.filter(order_oid=oid).order_by("level")
    return [(r.level, r.earner, r.amount_fen, r.reversed_fen, r.state) for r in rows]


async def test_a_three_level_chain_buys_is_refunded_in_part_withdraws_and_renews(
    db: str, tmp_path: Any
):
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=db)
    chain = await make_chain()
    m1, m2, dealer = member_earner(chain.m1), member_earner(chain.m2), agent_earner(chain.dealer.id)
    P, A, R = CommissionState.PENDING, CommissionState.AVAILABLE, CommissionState.REVERSED

    # Bought: 2 x 2999 goods + 2 x 500 freight = 6998 paid; levels of the goods only.
    order = await paid(chain)
    assert order.total_fen == 6998
    assert await levels(order.oid) == [
        (1, m2, 1259, 0, P),
        (2, m1, 539, 0, P),
        (3, dealer, 179, 0, P),
    ]
    assert await of(m2) == Summary(pending=1259, earned=1259)
    assert await balance(f"order:{order.oid}:goods") == -5998 + 1977
    await invariants()

    # Paying again, and settling again on several "nodes" at once, changes nothing.
    txns = await MoneyTransaction.all().count()
    await mark_paid(order.oid, admin=ADMIN, reason="again")
    await asyncio.gather(*(settle_order(order.oid) for _ in range(4)))
    assert await MoneyTransaction.all().count() == txns
    assert await Commission.filter(order_oid=order.oid).count() == 3
    await invariants()

    # Half refunded while returnable: each level keeps its share of what remains, rounded down.
    await refund(order, 3499, "part-1")
    assert await levels(order.oid) == [
        (1, m2, 1259, 630, P),
        (2, m1, 539, 270, P),
        (3, dealer, 179, 90, P),
    ]
    assert await of(m2) == Summary(pending=629, reversed=630, earned=629)
    await invariants()

    # Done: what is kept becomes available.
    order = await done(order)
    assert [r[4] for r in await levels(order.oid)] == [A, A, A]
    assert await of(m2) == Summary(available=629, reversed=630, earned=629)
    assert await of(dealer) == Summary(available=89, reversed=90, earned=89)
    await invariants()

    # M2 withdraws all of it; the operator records the transfer.
    withdrawal, created = await request_withdrawal(
        chain.member(chain.m2),
        amount_fen=629,
        request_id="w-1",
        channel=ManualPayout(),
        min_fen=100,
    )
    assert created and withdrawal.state is WithdrawalState.REQUESTED
    assert await of(m2) == Summary(payout=629, reversed=630, earned=629)
    await invariants()
    again, created = await request_withdrawal(
        chain.member(chain.m2), amount_fen=629, request_id="w-1", channel=ManualPayout()
    )
    assert not created and again.id == withdrawal.id
    code, out = await aquafleet(
        env, "commissions", "payout", str(withdrawal.id), "--paid", "--reason", "bank #1",
        "--by", "ops", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["state"] == "paid", out
    assert await of(m2) == Summary(withdrawn=629, reversed=630, earned=629)
    assert await balance(f"channel:manual:{VID}") == 6998 - 3499 - 629
    await invariants()

    # The rest refunded after the order was done (a goodwill refund): everything is reversed;
    # M2 had withdrawn its part, so it owes it; M1's and D's available pay theirs.
    await refund(order, 3499, "part-2")
    assert [r[3:] for r in await levels(order.oid)] == [(1259, R), (539, R), (179, R)]
    assert await of(m2) == Summary(debt=629, withdrawn=629, reversed=1259, earned=0)
    assert await of(m1) == Summary(reversed=539, earned=0)
    await invariants()

    # The buyer renews its rental: the renewal earns at once (it is done when paid); M2's
    # share pays its debt first.
    renewal = await renewal_paid(chain)
    assert renewal.state is OrderState.DONE
    assert await levels(renewal.oid) == [
        (1, m2, 1260, 0, A),
        (2, m1, 540, 0, A),
        (3, dealer, 180, 0, A),
    ]
    assert await of(m2) == Summary(available=631, withdrawn=629, reversed=1259, earned=1260)
    assert await of(m1) == Summary(available=540, reversed=539, earned=540)
    await invariants()
    code, out = await aquafleet(env, "commissions", "check")
    assert code == 0 and "commissions ok: 6 commissions of 2 orders" in out, out


async def renewal_paid(chain: Chain) -> Order:
    """A renewal order (kind 3) paid, as models/renewals.py makes and pays one (the device
    side is tested there): the same order moves, PAY then RENEW."""
    product = await Product.get(pid=chain.pid)
    now = dt.datetime.now(dt.UTC)
    member = await Member.get(uid=chain.buyer)
    order = await Order.create(
        oid=f"{now:%Y%m%d}{VID}{999_000_000_001:012d}", vendor_id=VID, member_id=member.uid,
        agent_id=member.agent_id, referrer_uid=member.referrer_id, kind=OrderKind.RENEWAL,
        rent_fen=6000, total_fen=6000, created_at=now, updated_at=now,
    )  # fmt: skip
    await OrderLine.create(
        order=order, product_id=product.pid, position=1, quantity=1, package_key="30d",
        price_fen=6000, amount_fen=6000, snapshot=snapshot(product),
    )  # fmt: skip
    order = await fire(order, OrderEvent.PAY, actor_role=SYSTEM, actor_id="payment")
    await record_order_payment(order, channel="manual", payment_key="renewal")
    return await fire(order, OrderEvent.RENEW, actor_role=SYSTEM, actor_id="payment")


async def test_renewals_earn_only_when_the_product_says_so():
    chain = await make_chain(commis_renewal=False)
    renewal = await renewal_paid(chain)
    assert await levels(renewal.oid) == []
    assert await CommissionSplit.filter(order_oid=renewal.oid).count() == 1
    await invariants()


async def test_who_earns_follows_the_vendors_levels_and_skips_those_who_cannot():
    chain = await make_chain()
    await Member.filter(uid=chain.m1).update(state=0)  # disabled: its level is not paid
    order = await paid(chain, quantity=1)
    assert [(lv, e) for lv, e, *_ in await levels(order.oid)] == [
        (1, member_earner(chain.m2)), (3, agent_earner(chain.dealer.id)),
    ]  # fmt: skip
    # Without a referrer the buyer's node and its parent earn; two levels only.
    from aquafleet.models.vendors import Vendor

    await Vendor.filter(code=VID).update(config={"commission_levels": 2})
    await Member.filter(uid=chain.buyer).update(referrer_id=None)
    member = await Member.get(uid=chain.buyer)
    second, _ = await create_order(member, OrderRequest([LineRequest(chain.pid, 1)], RECEIVER))
    second = await mark_paid(second.oid, admin=ADMIN, reason="cash")
    assert [(lv, e, a) for lv, e, a, *_ in await levels(second.oid)] == [
        (1, agent_earner(chain.dealer.id), 629), (2, agent_earner(chain.agent.id), 269),
    ]  # fmt: skip
    await invariants()


async def test_a_split_computed_by_several_nodes_at_once_is_stored_once(db: str, tmp_path: Any):
    chain = await make_chain()
    order = await order_of(chain)
    # Paid by a path that did not settle (a node that died after paying): four settle at once,
    # and the operator's sweep too.
    await Order.filter(id=order.id).update(state=OrderState.PAID, paid_at=dt.datetime.now(dt.UTC))
    await record_order_payment(order, channel="manual", payment_key="x")
    await asyncio.gather(*(settle_order(order.oid) for _ in range(4)))
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=db)
    code, out = await aquafleet(env, "commissions", "settle", "--json")
    assert code == 0 and json.loads(out) == {"orders": 1}, out
    assert await CommissionSplit.filter(order_oid=order.oid).count() == 1
    assert await Commission.filter(order_oid=order.oid).count() == 3
    assert await MoneyTransaction.filter(key=f"commission:{order.oid}").count() == 1
    assert await balance(commission_account(member_earner(chain.m2), Bucket.PENDING)) == -1259
    await invariants()


async def test_two_withdrawals_at_once_cannot_both_pass_the_balance(monkeypatch: Any):
    chain = await make_chain()
    await done(await paid(chain, quantity=4))  # M2: floor(11996 x 21%) = 2519 available
    earner = chain.member(chain.m2)
    monkeypatch.setattr(withdrawals, "WITHDRAWAL_INTERVAL", dt.timedelta(0))  # the balance decides
    results = await asyncio.gather(
        *(
            request_withdrawal(earner, amount_fen=2000, request_id=f"r{i}", channel=ManualPayout())
            for i in range(4)
        ),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(ok) == 1 and all(isinstance(r, InsufficientFunds) for r in refused), results
    assert await of(member_earner(chain.m2)) == Summary(available=519, payout=2000, earned=2519)
    await invariants()


async def test_the_withdrawal_rules():
    chain = await make_chain()
    await done(await paid(chain, quantity=4))
    earner = chain.member(chain.m2)
    t0 = dt.datetime.now(dt.UTC)
    with pytest.raises(InvalidInput, match="at least 100"):
        await request_withdrawal(earner, amount_fen=99, request_id="a", channel=ManualPayout())
    with pytest.raises(InsufficientFunds):
        await request_withdrawal(earner, amount_fen=2520, request_id="a", channel=ManualPayout())
    first, _ = await request_withdrawal(
        earner, amount_fen=500, request_id="a", channel=ManualPayout(), now=t0
    )
    with pytest.raises(RequestReused, match="amount 500 fen, not 600"):
        await request_withdrawal(earner, amount_fen=600, request_id="a", channel=ManualPayout())
    with pytest.raises(WithdrawalTooSoon) as too_soon:
        await request_withdrawal(
            earner, amount_fen=500, request_id="b", channel=ManualPayout(),
            now=t0 + dt.timedelta(seconds=29),
        )  # fmt: skip
    assert too_soon.value.retry_after_s == 1
    second, _ = await request_withdrawal(
        earner, amount_fen=500, request_id="b", channel=ManualPayout(),
        now=t0 + dt.timedelta(seconds=30),
    )  # fmt: skip
    # A failed payout returns the money to available; a final state does not change again.
    failed = await settle_withdrawal(second.id, paid=False, reason="account closed", actor="ops")
    assert failed.state is WithdrawalState.FAILED
    assert await settle_withdrawal(second.id, paid=False, reason="again") == failed
    with pytest.raises(Conflict, match="failed"):
        await settle_withdrawal(second.id, paid=True, reason="late")
    assert await of(member_earner(chain.m2)) == Summary(available=2019, payout=500, earned=2519)
    with pytest.raises(Forbidden):
        await request_withdrawal(
            Principal(Role.VENDOR, "v", vendor_code=VID), amount_fen=500, request_id="c",
            channel=ManualPayout(),
        )  # fmt: skip
    assert await Withdrawal.filter(id=first.id, state=WithdrawalState.REQUESTED).exists()
    await invariants()


async def test_the_check_finds_a_commission_that_does_not_add_up(db: str, tmp_path: Any):
    env = clean_env(data_dir=tmp_path / "data", master_secret=MASTER_SECRET, database_url=db)
    chain = await make_chain()
    order = await paid(chain)
    await invariants()
    await Commission.filter(order_oid=order.oid, level=1).update(amount_fen=1300)
    whats = {p.what for p in await check_commissions()}
    assert {"order_unbalanced", "commission_mismatch", "earner_unbalanced"} <= whats
    code, out = await aquafleet(env, "commissions", "check", "--json")
    assert code == 1, out
    assert {"order_unbalanced", "commission_mismatch", "earner_unbalanced"} <= {
        p["what"] for p in json.loads(out)["problems"]
    }
    await Commission.filter(order_oid=order.oid, level=1).update(amount_fen=1259)
    await invariants()
    entry = await MoneyEntry.filter(
        account=commission_account(member_earner(chain.m2), Bucket.PENDING)
    ).first()
    assert entry is not None
    await MoneyEntry.filter(id=entry.id).update(amount_fen=entry.amount_fen + 1)
    whats = {p.what for p in await check_commissions()}
    assert {"commission_mismatch", "earner_unbalanced"} <= whats


async def test_a_returned_order_never_makes_its_commission_available_and_the_refund_reverses_it():
    chain = await make_chain()
    order = await paid(chain)
    for event, role in (
        (OrderEvent.DELIVER, Role.VENDOR.value),
        (OrderEvent.CONFIRM, Role.MEMBER.value),
        (OrderEvent.RETURN, Role.MEMBER.value),
        (OrderEvent.CONSENT, Role.VENDOR.value),
        (OrderEvent.REFUND, Role.VENDOR.value),
    ):
        order = await fire(order, event, actor_role=role, actor_id="test")
    P = CommissionState.PENDING
    assert [r[4] for r in await levels(order.oid)] == [P, P, P]
    await invariants()
    await refund(order, 6998, f"return-{order.oid}")
    assert [r[3:] for r in await levels(order.oid)] == [
        (1259, CommissionState.REVERSED), (539, CommissionState.REVERSED),
        (179, CommissionState.REVERSED),
    ]  # fmt: skip
    assert await of(member_earner(chain.m2)) == Summary(reversed=1259)
    assert await balance(f"order:{order.oid}:goods") == -5998
    await invariants()


async def test_a_rentals_deposit_back_keeps_its_commission_and_a_part_is_never_overrefunded():
    """A rental ends as agreed and its deposit goes back (a dismantling ticket's refund names
    the deposit): the dealers keep the commission on the rent. Rent given back is reversed,
    and the order given back whole takes the rest."""
    chain = await make_chain(deposit_fen=50000)
    order = await paid(chain, quantity=1, package="30d")
    assert (order.goods_fen, order.rent_fen, order.deposit_fen) == (0, 6000, 50000)
    m2 = member_earner(chain.m2)
    P, R = CommissionState.PENDING, CommissionState.REVERSED
    assert [r[2:] for r in await levels(order.oid)] == [(1260, 0, P), (540, 0, P), (180, 0, P)]

    await request_refund(
        order=order, amount_fen=50000, refund_no="dep-1", reason="rental ended", actor="t",
        part=Part.DEPOSIT,
    )  # fmt: skip
    await settle_refund("dep-1", channel="manual")
    assert [r[3] for r in await levels(order.oid)] == [0, 0, 0]
    assert await of(m2) == Summary(pending=1260, earned=1260)
    await invariants()

    # The deposit is all back: not one fen more of it, though the order still holds money.
    with pytest.raises(RefundExceedsPayment, match="of its deposit asked, 0 fen of it left"):
        await request_refund(
            order=order, amount_fen=1, refund_no="dep-2", reason="x", actor="t",
            part=Part.DEPOSIT,
        )  # fmt: skip
    # The same refund number again names the same part, or it is another refund.
    with pytest.raises(Conflict):
        await request_refund(
            order=order, amount_fen=50000, refund_no="dep-1", reason="x", actor="t"
        )
    with pytest.raises(InvalidInput):
        await request_refund(
            order=order, amount_fen=1, refund_no="bad", reason="x", actor="t", part=Part.REFUND
        )

    # Half the rent back: half of each level is reversed.
    await request_refund(
        order=order, amount_fen=3000, refund_no="rent-1", reason="x", actor="t", part=Part.RENT
    )
    await settle_refund("rent-1", channel="manual")
    assert [r[2:] for r in await levels(order.oid)] == [(1260, 630, P), (540, 270, P), (180, 90, P)]
    await invariants()

    # The rest of the order given back whole (3000 rent + 500 freight): nothing is left.
    await refund(order, 3500, "rest")
    assert [r[3:] for r in await levels(order.oid)] == [(1260, R), (540, R), (180, R)]
    assert await of(m2) == Summary(reversed=1260)
    await invariants()


async def test_a_withdrawal_that_fails_after_a_refund_reversed_it_pays_the_debt_first():
    """Reversed while on its way, the withdrawn money was a debt; coming back, it pays it."""
    chain = await make_chain()
    m2 = member_earner(chain.m2)
    order = await done(await paid(chain))
    assert await of(m2) == Summary(available=1259, earned=1259)
    withdrawal, _ = await request_withdrawal(
        chain.member(chain.m2), amount_fen=1259, request_id="w-1", channel=ManualPayout()
    )
    await refund(order, order.total_fen, "all")  # a goodwill refund while the transfer is made
    assert await of(m2) == Summary(payout=1259, debt=1259, reversed=1259, earned=0)
    failed = await settle_withdrawal(withdrawal.id, paid=False, reason="account closed")
    assert failed.state is WithdrawalState.FAILED
    # Nothing to withdraw: the reversed money paid the debt.
    assert await of(m2) == Summary(reversed=1259, earned=0)
    with pytest.raises(InsufficientFunds):
        await request_withdrawal(
            chain.member(chain.m2), amount_fen=1259, request_id="w-2", channel=ManualPayout(),
            now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
        )  # fmt: skip
    await invariants()
    # Failing it again changes nothing.
    await settle_withdrawal(withdrawal.id, paid=False, reason="again")
    assert await of(m2) == Summary(reversed=1259, earned=0)


async def test_refunds_that_succeed_out_of_order_reverse_the_commission_in_full():
    """Two refunds asked together, the later one paid out first: the whole order given back
    leaves no commission (the earliest asked, succeeding last, reversed nothing: the levels kept
    half of an order refunded in full)."""
    chain = await make_chain()
    order = await paid(chain)
    for no in ("first", "second"):
        await request_refund(order=order, amount_fen=3499, refund_no=no, reason="t", actor="t")
    await settle_refund("second", channel="manual")
    assert [r[3] for r in await levels(order.oid)] == [630, 270, 90]
    await settle_refund("first", channel="manual")
    R = CommissionState.REVERSED
    assert [r[3:] for r in await levels(order.oid)] == [(1259, R), (539, R), (179, R)]
    assert await of(member_earner(chain.m2)) == Summary(reversed=1259, earned=0)
    await invariants()
