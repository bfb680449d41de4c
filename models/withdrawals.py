"""Withdrawals of commission (AE-03, seed section 七): an earner takes its available commission
out, at most once every 30 seconds, through a payout channel (an operator's manual transfer,
WeChat Pay's merchant transfer: gateway/payouts.py) (docs/commissions.md, "Withdrawals").

`request_withdrawal` moves the amount from the earner's `commission:{earner}:available` to
`...:payout` (key `withdrawal:{id}`) and hands it to the channel; `settle_withdrawal` records the
channel's outcome once: paid (out of the vendor's channel account, key `withdrawal-paid:{id}`) or
failed (back to available, key `withdrawal-failed:{id}`). The rows and the buckets are those of
models/commissions.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from tortoise.transactions import in_transaction

from aquafleet.models.account_locks import lock_accounts
from aquafleet.models.commissions import (
    MAX_REASON,
    MAX_REQUEST_ID,
    Bucket,
    Withdrawal,
    WithdrawalState,
    commission_account,
    deciding_accounts,
    earner_of,
)
from aquafleet.models.db import database_now
from aquafleet.models.errors import Conflict, Forbidden, InvalidInput, NotFound, RequestReused
from aquafleet.models.money import (
    Guard,
    Leg,
    Side,
    balance,
    channel_account,
    post,
    side_balance,
)
from aquafleet.models.ratelimit import RateLimited
from aquafleet.models.tenancy import Principal

WITHDRAWAL_INTERVAL = dt.timedelta(seconds=30)  # the seed: 间隔30秒以上 (for reconciliation)
DEFAULT_MIN_WITHDRAWAL_FEN = 100


class PayoutOutcome(IntEnum):
    REQUESTED = 1  # the channel took it; someone or something confirms it later
    PAID = 2
    FAILED = 3


@dataclass(frozen=True, slots=True)
class PayoutResult:
    outcome: PayoutOutcome
    reference: str = ""
    reason: str = ""
    # A failure that holds only if no send of the withdrawal was recorded after this time
    # (`transfer_sent_at`): one recorded later may still be being accepted.
    sent_before: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Payee:
    """Where a channel pays a withdrawal, fixed on the row when it is requested so that every
    send of it is the same (WeChat Pay: the merchant, its app, the earner's openid); a manual
    payout has none."""

    mchid: str | None = None
    appid: str | None = None
    openid: str | None = None


class PayoutChannel(Protocol):
    """How a withdrawal reaches the earner's account (bank, WeChat change)."""

    name: str

    async def payee(self, earner: str, vendor_code: str) -> Payee: ...

    async def submit(self, withdrawal: Withdrawal) -> PayoutResult: ...


class ManualPayout:
    """An operator makes the transfer and records it (`aquafleet commissions payout`)."""

    name = "manual"

    async def payee(self, earner: str, vendor_code: str) -> Payee:
        return Payee()

    async def submit(self, withdrawal: Withdrawal) -> PayoutResult:
        return PayoutResult(PayoutOutcome.REQUESTED)


PAYOUT_CHANNELS: dict[str, PayoutChannel] = {"manual": ManualPayout()}


class WithdrawalTooSoon(RateLimited):
    code = "rate_limited"


async def request_withdrawal(
    principal: Principal,
    *,
    amount_fen: int,
    request_id: str,
    channel: PayoutChannel,
    min_fen: int = DEFAULT_MIN_WITHDRAWAL_FEN,
    asked_channel: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Withdrawal, bool]:
    """AE-03: the caller withdraws `amount_fen` of its available commission. Idempotent by
    `request_id` (answers (withdrawal, created)): the same request again answers the first
    withdrawal; another amount, or another channel than the first took when the request names
    one (`asked_channel`), is RequestReused and nothing moves. The earner's available account
    is locked while the 30-second rule and the balance are checked and the money moved to
    payout, so two withdrawals at once cannot both pass either. Timed by the database's clock
    (`now`: another time, for tests and tools)."""
    earner = earner_of(principal)
    if earner is None or principal.vendor_code is None:
        raise Forbidden("only an earner (a member, an agent or a dealer) withdraws commission")
    if type(amount_fen) is not int or amount_fen <= 0:
        raise InvalidInput("a withdrawal is a positive integer amount of fen")
    if not 1 <= len(request_id) <= MAX_REQUEST_ID:
        raise InvalidInput(f"request_id must be 1..{MAX_REQUEST_ID} characters")
    first = await Withdrawal.get_or_none(earner=earner, request_id=request_id)
    if first is not None:
        return _same_withdrawal(first, amount_fen, asked_channel), False
    if amount_fen < min_fen:
        raise InvalidInput(f"withdraw at least {min_fen} fen")
    payee = await channel.payee(earner, principal.vendor_code)  # refused: nothing moved yet
    available = commission_account(earner, Bucket.AVAILABLE)
    async with in_transaction("default"):
        await lock_accounts([available])
        # The time is read once the lock is held, so racing requests are timed in the order
        # they pass it (read before, a later request could seem to come before an earlier one),
        # and from the database's clock: the last withdrawal may have been made by another
        # node, whose clock this one's would have to agree with (docs/commissions.md).
        now = now or await database_now()
        first = await Withdrawal.get_or_none(earner=earner, request_id=request_id)
        if first is not None:
            return _same_withdrawal(first, amount_fen, asked_channel), False
        last = await Withdrawal.filter(earner=earner).order_by("-created_at").first()
        wait_s = seconds_to_wait(last.created_at if last is not None else None, now)
        if wait_s:
            raise WithdrawalTooSoon(
                f"one withdrawal every {WITHDRAWAL_INTERVAL.seconds} s: try again in {wait_s} s",
                wait_s,
            )
        withdrawal = await Withdrawal.create(
            vendor_code=principal.vendor_code, earner=earner,
            earner_path=principal.agent_path, request_id=request_id, amount_fen=amount_fen,
            channel=channel.name, requested_by=f"{principal.role.value}:{principal.subject}"[:64],
            created_at=now, updated_at=now, transfer_mchid=payee.mchid,
            transfer_appid=payee.appid, transfer_openid=payee.openid,
        )  # fmt: skip
        await post(
            f"withdrawal:{withdrawal.id}", kind="withdrawal", vendor=principal.vendor_code,
            legs=[Leg(available, amount_fen),
                  Leg(commission_account(earner, Bucket.PAYOUT), -amount_fen)],
            guards=[Guard(available, Side.CREDIT)], now=now, actor=withdrawal.requested_by,
        )  # fmt: skip
    result = await channel.submit(withdrawal)
    if result.outcome is not PayoutOutcome.REQUESTED:
        withdrawal = await settle_withdrawal(
            withdrawal.id, paid=result.outcome is PayoutOutcome.PAID, reason=result.reason,
            reference=result.reference, actor=f"channel:{channel.name}",
            sent_before=result.sent_before,
        )  # fmt: skip
    return withdrawal, True


def seconds_to_wait(last_created_at: dt.datetime | None, now: dt.datetime) -> int:
    """How many whole seconds (at least 1) an earner whose last withdrawal was made at
    `last_created_at` waits at `now` before the next (the 30-second rule); 0: none. Both times
    on one clock, the database's."""
    if last_created_at is None or now - last_created_at >= WITHDRAWAL_INTERVAL:
        return 0
    wait = WITHDRAWAL_INTERVAL - (now - last_created_at)
    return max(1, int(wait.total_seconds() + 0.999))


def withdrawal_differences(
    withdrawal: Withdrawal, amount_fen: int, asked_channel: str | None
) -> list[str]:
    """What a request under a withdrawal's request id asks otherwise than the withdrawal it
    made (pure): its amount, its channel when it names one (unnamed, any channel is the one it
    asked for). Empty: the same request, a retry."""
    differs = []
    if withdrawal.amount_fen != amount_fen:
        differs.append(f"amount {withdrawal.amount_fen} fen, not {amount_fen}")
    if asked_channel is not None and withdrawal.channel != asked_channel:
        differs.append(f"channel {withdrawal.channel}, not {asked_channel}")
    return differs


def _same_withdrawal(
    withdrawal: Withdrawal, amount_fen: int, asked_channel: str | None
) -> Withdrawal:
    differs = withdrawal_differences(withdrawal, amount_fen, asked_channel)
    if differs:
        raise RequestReused(
            f"request_id {withdrawal.request_id!r} made withdrawal {withdrawal.id} from another "
            f"request ({', '.join(differs)}): a new withdrawal needs a new request_id",
            {"withdrawal_id": withdrawal.id},
        )
    return withdrawal


async def settle_withdrawal(
    withdrawal_id: int,
    *,
    paid: bool,
    reason: str,
    reference: str = "",
    actor: str = "",
    channel: str | None = None,
    sent_before: dt.datetime | None = None,
) -> Withdrawal:
    """A requested withdrawal was paid out (the vendor's channel credited) or failed (the
    money back to available), once; a repeat of the same outcome answers it as it is. With
    `channel`, only a withdrawal of that channel (an operator records manual payouts only: a
    WeChat transfer's outcome is WeChat Pay's to tell, else a failed one could be paid too).
    With `sent_before`, a failure only if no send of it was recorded after that time: else it
    stays requested, as it is (that send may still be being accepted). Under the row lock, so
    a send recorded later finds it failed and is not made."""
    target = WithdrawalState.PAID if paid else WithdrawalState.FAILED
    async with in_transaction("default"):
        withdrawal = await Withdrawal.filter(id=withdrawal_id).select_for_update().first()
        if withdrawal is None:
            raise NotFound(f"withdrawal {withdrawal_id} not found")
        if channel is not None and withdrawal.channel != channel:
            raise Conflict(
                f"withdrawal {withdrawal_id} is paid out through {withdrawal.channel}, not "
                f"{channel}: its channel settles it"
            )
        if withdrawal.state is target:
            return withdrawal
        if withdrawal.state is not WithdrawalState.REQUESTED:
            raise Conflict(
                f"withdrawal {withdrawal_id} is {withdrawal.state.name.lower()}: it cannot "
                f"become {target.name.lower()}"
            )
        sent = withdrawal.transfer_sent_at
        if not paid and sent_before is not None and sent is not None and sent > sent_before:
            return withdrawal
        payout = commission_account(withdrawal.earner, Bucket.PAYOUT)
        amount = int(withdrawal.amount_fen)
        guards: list[Guard] = []
        if paid:
            others = [Leg(channel_account(withdrawal.channel, withdrawal.vendor_code), -amount)]
            key = f"withdrawal-paid:{withdrawal.id}"
        else:
            others, guards = await _returned(withdrawal.earner, amount)
            key = f"withdrawal-failed:{withdrawal.id}"
        now = await database_now()
        await post(
            key, kind=key.split(":")[0], vendor=withdrawal.vendor_code,
            legs=[Leg(payout, amount), *others], actor=actor[:64], memo=reason, now=now,
            guards=guards,
        )  # fmt: skip
        await Withdrawal.filter(id=withdrawal.id).update(
            state=target, reason=reason[:MAX_REASON], channel_ref=reference[:64],
            settled_by=actor[:64], updated_at=now,
        )  # fmt: skip
    await withdrawal.refresh_from_db()
    return withdrawal


async def _returned(earner: str, amount: int) -> tuple[list[Leg], list[Guard]]:
    """Where a failed withdrawal's money goes back: to the earner's debt first (a reversal
    while it was on its way took it as withdrawn), the rest to available, as an activation
    does (models/commissions.py `_activate`). Else an earner whose withdrawal failed after a
    refund reversed it withdrew the reversed money again, its debt still owed."""
    debt = commission_account(earner, Bucket.DEBT)
    await lock_accounts(deciding_accounts(earner))  # as a reversal racing it does
    repay = min(amount, max(0, side_balance(await balance(debt), Side.DEBIT)))
    legs = [Leg(debt, -repay)] if repay else []
    if amount - repay:
        legs.append(Leg(commission_account(earner, Bucket.AVAILABLE), -(amount - repay)))
    return legs, [Guard(debt, Side.DEBIT)]


async def stop_sending(withdrawal_id: int, *, channel: str, now: dt.datetime) -> Withdrawal:
    """An operator stops a requested withdrawal of `channel` from being sent again, the first
    step of failing it by hand (gateway/payouts.py `fail_stopped`); the row as it is then (a
    failed one unchanged). Its row lock orders the stop against a send about to start."""
    async with in_transaction("default"):
        withdrawal = await Withdrawal.filter(id=withdrawal_id).select_for_update().first()
        if withdrawal is None:
            raise NotFound(f"withdrawal {withdrawal_id} not found")
        if withdrawal.channel != channel:
            raise Conflict(
                f"withdrawal {withdrawal_id} is paid out through {withdrawal.channel}, not "
                f"{channel}: an operator records its outcome (`aquafleet commissions payout`)"
            )
        if withdrawal.state is WithdrawalState.PAID:
            raise Conflict(f"withdrawal {withdrawal_id} is paid: it cannot become failed")
        if withdrawal.state is WithdrawalState.REQUESTED and withdrawal.transfer_stopped_at is None:
            await Withdrawal.filter(id=withdrawal_id).update(transfer_stopped_at=now)
            withdrawal.transfer_stopped_at = now
    return withdrawal
