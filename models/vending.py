"""Vending (scan to dispense): a paid pour of N ml, charged for what was actually poured.

A session is opened, the `dispense` command goes to the device with a unique cid and a deadline,
and the device's `dispense_done` EVENT (deduplicated like every record, and carried by the
ledger) closes it with the ml actually poured; the charge is that amount at the session's price.
A session without a result by its deadline fails and charges nothing; a retried command (same
cid) or a repeated event never pours or charges twice: the device answers a repeated cid from
memory, and a session closes once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import Protocol

from tortoise import fields
from tortoise.models import Model

from aquafleet.models.devices import Device
from aquafleet.models.errors import Conflict, NotFound
from aquafleet.models.service import DeviceService, ServiceMode, whole
from aquafleet.protocol import Command, CommandOp

MAX_DISPENSE_ML = 20_000  # one pour; a vending machine's largest cup is far below
MAX_PRICE_FEN_PER_L = 100_000  # 1,000 yuan a litre is a typo
DEFAULT_TIMEOUT_S = 60
MAX_TIMEOUT_S = 600


class DispenseState(IntEnum):
    PENDING = 1  # command sent, no dispense_done yet
    DONE = 2  # dispense_done received: actual_ml and charge_fen are set
    FAILED = 3  # the device was offline, or no result came by the deadline: nothing charged


class DeviceOffline(Conflict):
    code = "device_offline"


class DispenseSession(Model):
    id = fields.BigIntField(primary_key=True)
    did = fields.CharField(max_length=16, db_index=True)
    vendor_code = fields.CharField(max_length=4)
    payer_uid = fields.CharField(max_length=20, null=True)
    requested_ml = fields.IntField()
    price_fen_per_l = fields.IntField()
    cid = fields.BigIntField()
    state = fields.IntEnumField(DispenseState, default=DispenseState.PENDING)
    actual_ml = fields.IntField(null=True)
    charge_fen = fields.BigIntField(null=True)
    late_ml = fields.IntField(null=True)  # poured after the session had failed: not charged
    failure = fields.CharField(max_length=64, default="")
    deadline_at = fields.DatetimeField()
    created_at = fields.DatetimeField()
    closed_at = fields.DatetimeField(null=True)

    class Meta:
        table = "dispense_session"
        unique_together = (("did", "cid"),)


def charge_fen(actual_ml: int, price_fen_per_l: int) -> int:
    """The charge of a pour in whole fen, half a fen rounded up (integers only)."""
    return (actual_ml * price_fen_per_l + 500) // 1000


class LockView(Protocol):
    @property
    def lock_reasons(self) -> list[str]: ...


class LiveService(Protocol):
    """The live service state (gateway.service_state.ServiceStore): locks are read there, not
    from the database's copy, which a lock by metering or a schedule updates later."""

    async def read(self, did: str) -> LockView: ...


class CommandRouter(Protocol):
    """Gets a command to the node holding the device (gateway.commands.CommandService)."""

    async def next_cid(self) -> int: ...

    async def deliver(self, did: str, command: Command) -> bool: ...


async def start_dispense(
    router: CommandRouter,
    live: LiveService,
    did: str,
    ml: int,
    *,
    price_fen_per_l: int,
    payer_uid: str | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    now: dt.datetime | None = None,
    before_send: Callable[[DispenseSession], Awaitable[object]] | None = None,
) -> DispenseSession:
    """Open a session and send `dispense ml` to the device; a device that is offline fails the
    session at once (DeviceOffline), so nobody waits for water that cannot come, and a locked
    one is refused (DeviceLocked) before anything is logged or sent."""
    from aquafleet.models.commands import check_not_locked

    ml = whole("ml", ml, 1, MAX_DISPENSE_ML)
    price_fen_per_l = whole("price_fen_per_l", price_fen_per_l, 0, MAX_PRICE_FEN_PER_L)
    timeout_s = whole("timeout_s", timeout_s, 5, MAX_TIMEOUT_S)
    device = await Device.get_or_none(did=did)
    if device is None:
        raise NotFound(f"device {did} not found")
    service = await DeviceService.get_or_none(did=did)
    if service is None or service.mode is not ServiceMode.VENDING:
        raise Conflict(f"device {did} is not a vending machine (service mode 4)")
    check_not_locked(did, "dispense", (await live.read(did)).lock_reasons)
    now = now or dt.datetime.now(dt.UTC)
    deadline = now + dt.timedelta(seconds=timeout_s)
    cid = await router.next_cid()
    session = await DispenseSession.create(
        did=did, vendor_code=device.vendor_id, payer_uid=payer_uid, requested_ml=ml,
        price_fen_per_l=price_fen_per_l, cid=cid, deadline_at=deadline, created_at=now,
    )  # fmt: skip
    if before_send is not None:
        # The payment is taken before the device is told to pour (a wallet's hold): refused,
        # the session fails and nothing is sent.
        try:
            await before_send(session)
        except Exception:
            await DispenseSession.filter(id=session.id).update(
                state=DispenseState.FAILED, failure="not paid", closed_at=now
            )
            raise
    command = Command(cid=cid, op=CommandOp.DISPENSE, exp=int(deadline.timestamp()), args={1: ml})
    if not await router.deliver(did, command):
        session.state = DispenseState.FAILED
        session.failure = "device offline"
        session.closed_at = now
        await session.save(update_fields=["state", "failure", "closed_at"])
        raise DeviceOffline(f"device {did} is offline: nothing was poured or charged")
    return session


async def expire_dispenses(now: dt.datetime | None = None) -> int:
    """Fail every pending session past its deadline (nothing charged); returns how many."""
    now = now or dt.datetime.now(dt.UTC)
    return await DispenseSession.filter(state=DispenseState.PENDING, deadline_at__lt=now).update(
        state=DispenseState.FAILED, failure="no result by the deadline", closed_at=now
    )


# The ledger writer closes sessions in the transaction that stores the dispense_done records
# (so a replayed ledger entry closes nothing twice: the state guard makes it a no-op).
CLOSE_SESSION_SQL = (
    "UPDATE dispense_session SET state = {p1}, actual_ml = {p2}, "
    "charge_fen = ({p2} * price_fen_per_l + 500) / 1000, closed_at = {p3} "
    "WHERE did = {p4} AND cid = {p5} AND state = {p6}"
)
LATE_POUR_SQL = (
    "UPDATE dispense_session SET late_ml = {p1} "
    "WHERE did = {p2} AND cid = {p3} AND state = {p4} AND late_ml IS NULL"
)
