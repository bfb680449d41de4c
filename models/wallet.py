"""The member wallet (`pay_ch` wallet): a balance in fen that is the credit balance of the
ledger account `wallet:{uid}` (models/money.py), never a counter.

- A top-up is a bill (`Payment`, purpose topup) paid through WeChat Pay; its confirmation posts
  `topup:{bill_no}`: the channel debited, the wallet credited.
- Paying an order from the wallet posts the order's usual `pay:{oid}` with the wallet as source,
  guarded: the wallet never goes below zero, however many spends race (the guard locks it).
- A vending dispense paid from the wallet holds the most it can cost before the device is told
  to pour (`vend-hold:{session}`: the wallet debited, `dispense:{session}` credited, guarded);
  once the session closes (the poured ml known, or failed) `vend-settle:{session}` gives the
  unused part back to the wallet and books the charge to `vending:{vendor}`.
- Refunds of a wallet-paid order go back to the wallet (`settle_refund` with its account).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import TYPE_CHECKING, Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from aquafleet.models.errors import Conflict, InvalidInput
from aquafleet.models.money import (
    Guard,
    Leg,
    MoneyTransaction,
    Side,
    balance,
    channel_account,
    post,
    wallet_account,
)
from aquafleet.models.order_payment import pay_order
from aquafleet.models.order_states import SYSTEM
from aquafleet.models.orders import Order, OrderKind
from aquafleet.models.payments import (
    ChannelPayment,
    Outcome,
    Payment,
    PaymentNotice,
    PaymentState,
    Purpose,
    open_order_bill,
)
from aquafleet.models.vending import DispenseSession, DispenseState

if TYPE_CHECKING:
    from aquafleet.models.delivery import ServiceApplier

WALLET = "wallet"
MAX_TOPUP_FEN = 2_000_000  # 20,000 yuan a top-up: a purifier bought from the wallet fits
MIN_TOPUP_FEN = 1


def vending_account(vendor: str) -> str:
    """What the vendor earned from vending dispenses paid from wallets."""
    return f"vending:{vendor}"


def dispense_account(session_id: int) -> str:
    """Money held for one dispense until its poured ml is known."""
    return f"dispense:{session_id}"


async def wallet_balance(member_uid: str) -> int:
    """What the platform owes the member, in fen (the wallet's credit balance)."""
    return -await balance(wallet_account(member_uid))


# ----------------------------------------------------------------------------- top-ups


async def open_topup(member: Any, amount_fen: int, channel: str) -> Payment:
    """A new top-up bill of `amount_fen` for the member, to pay at `channel`."""
    if type(amount_fen) is not int or not MIN_TOPUP_FEN <= amount_fen <= MAX_TOPUP_FEN:
        raise InvalidInput(f"a top-up is {MIN_TOPUP_FEN}..{MAX_TOPUP_FEN} fen")
    now = dt.datetime.now(dt.UTC)
    return await Payment.create(
        bill_no=f"TU{secrets.token_hex(11)}", purpose=Purpose.TOPUP.value, order_oid=None,
        member_uid=member.uid, vendor_code=member.vendor_id, channel=channel,
        amount_fen=amount_fen, created_at=now, updated_at=now,
    )  # fmt: skip


async def credit_topup(payment: Payment, notice: ChannelPayment) -> Outcome:
    """The channel confirmed a top-up: credit the wallet, once (in one transaction with the
    bill marked paid and the notice recorded)."""
    now = dt.datetime.now(dt.UTC)
    try:
        async with in_transaction("default"):
            await post(
                f"topup:{payment.bill_no}", kind="topup", vendor=payment.vendor_code,
                legs=[
                    Leg(channel_account(notice.channel, payment.vendor_code), payment.amount_fen),
                    Leg(wallet_account(payment.member_uid), -payment.amount_fen),
                ],
                actor=f"{notice.channel}:{notice.transaction_no}"[:64],
                memo=f"{notice.channel} {notice.transaction_no}",
            )  # fmt: skip
            updated = await Payment.filter(id=payment.id, state=PaymentState.PENDING).update(
                state=PaymentState.PAID, transaction_no=notice.transaction_no[:64],
                paid_at=now, updated_at=now,
            )  # fmt: skip
            if not updated:
                raise Conflict("the top-up was confirmed meanwhile")
            await PaymentNotice.create(
                notice_id=notice.notice_id[:64], bill_no=payment.bill_no, channel=notice.channel,
                outcome=Outcome.TOPPED_UP.value, amount_fen=notice.amount_fen,
                transaction_no=notice.transaction_no[:64], created_at=now,
            )  # fmt: skip
    except (IntegrityError, Conflict):
        return Outcome.DUPLICATE
    return Outcome.TOPPED_UP


# ----------------------------------------------------------------------------- orders


async def pay_order_from_wallet(
    order: Order, member_uid: str, *, apply_service: ServiceApplier | None = None
) -> Order:
    """Pay the member's own unpaid order from its wallet, at once: PAY fired, the wallet
    debited (guarded: InsufficientFunds, nothing changes) and the bill paid, in one
    transaction. A renewal then renews its device through `apply_service` (pay_order)."""
    payment = await open_order_bill(order, member_uid, WALLET)
    now = dt.datetime.now(dt.UTC)

    async def mark(_order: Order) -> None:
        await Payment.filter(id=payment.id).update(
            state=PaymentState.PAID, transaction_no=f"wallet-{payment.bill_no}",
            paid_at=now, updated_at=now,
        )  # fmt: skip

    return await pay_order(
        order, channel=WALLET, payment_key=member_uid, actor_role=SYSTEM,
        actor_id=f"wallet:{member_uid}",
        reason="paid from the wallet", within=mark, source=wallet_account(member_uid),
        apply_service=apply_service if order.kind is OrderKind.RENEWAL else None,
    )  # fmt: skip


# ----------------------------------------------------------------------------- vending


async def hold_for_dispense(session: DispenseSession, member_uid: str) -> None:
    """Before the device pours: take the most the pour can cost from the wallet (guarded)."""
    from aquafleet.models.vending import charge_fen

    most = charge_fen(session.requested_ml, session.price_fen_per_l)
    if most <= 0:
        return
    await post(
        f"vend-hold:{session.id}", kind="vend-hold", vendor=session.vendor_code,
        legs=[Leg(wallet_account(member_uid), most), Leg(dispense_account(session.id), -most)],
        guards=[Guard(wallet_account(member_uid), Side.CREDIT)], actor=member_uid,
        memo=f"{session.did} {session.requested_ml} ml",
    )  # fmt: skip


async def settle_dispenses(limit: int = 100) -> int:
    """Settle closed wallet-paid dispenses: charge what was poured, give the rest back to the
    wallet, once each. Answers how many were settled."""
    held = MoneyTransaction.filter(kind="vend-hold").values_list("key", flat=True)
    done = MoneyTransaction.filter(kind="vend-settle").values_list("key", flat=True)
    settled: set[str] = {str(key).split(":")[1] for key in await done}
    open_ids = [
        int(ident)
        for ident in (str(key).split(":")[1] for key in await held)
        if ident not in settled
    ][:limit]
    count = 0
    for session in await DispenseSession.filter(
        id__in=open_ids, state__in=(DispenseState.DONE, DispenseState.FAILED)
    ):
        count += await _settle(session)
    return count


async def _settle(session: DispenseSession) -> int:
    from aquafleet.models.vending import charge_fen

    most = charge_fen(session.requested_ml, session.price_fen_per_l)
    charged = min(int(session.charge_fen or 0), most) if session.state is DispenseState.DONE else 0
    back = most - charged
    legs = [Leg(dispense_account(session.id), most)]
    if back:
        legs.append(Leg(wallet_account(str(session.payer_uid)), -back))
    if charged:
        legs.append(Leg(vending_account(session.vendor_code), -charged))
    _txn, created = await post(
        f"vend-settle:{session.id}", kind="vend-settle", vendor=session.vendor_code, legs=legs,
        memo=f"{session.did}: {session.actual_ml or 0} ml poured, {charged} fen",
    )  # fmt: skip
    return int(created)
