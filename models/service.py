"""Service state per device: how it is billed (mode), its volume quota, its rental expiry, its
locks; and the history of every change, with who and why.

The live state is in Redis next to the device's meter (gateway/service_state.py), so metering
can draw the quota down atomically. These services validate a change, apply it there through a
`ServiceBackend`, and record it here. A change carrying a `request_id` (an order id, say) is
applied once however often and however late it is retried (its row is written pending before
Redis runs it: models/service_pending.py completes the rows a process left pending); another
change under a request id already used on the device is refused (ServiceRequestReused), never
taken for a retry of the first.

A change as one request (`ServiceChangeRequest`, AB-08's op and fields) is dispatched to these
changes by models/service_requests.py; an exchange's hand-over and hand-back of the service are
in models/handover.py, a command's device lookup in models/command_target.py, what the rental
scheduler records around an expiry in models/rental_expiry.py, and a filter reset (a command
recorded here) in models/filters.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from tortoise import connections, fields
from tortoise.backends.base.client import TransactionalDBClient
from tortoise.exceptions import IntegrityError
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device, DeviceType
from aquafleet.models.errors import Conflict, InvalidInput, NotFound, RequestReused

MAX_TOP_UP_ML = 10**9  # a million litres in one top-up is a typo, not an order
DAY_S = 86_400
PERSON_LOCK = 4  # service.lua's lock bit of a person's lock (gateway/service_state.py)

# The seed's rent packages (product `rent.config`): key -> days.
RENT_PACKAGES = {"30d": 30, "60d": 60, "90d": 90, "180d": 180, "360d": 360}


class ServiceMode(IntEnum):
    """The seed's device types, as billing modes."""

    SALE = int(DeviceType.SALE)
    TIME_RENTAL = int(DeviceType.TIME_RENTAL)
    VOLUME_RENTAL = int(DeviceType.VOLUME_RENTAL)
    VENDING = int(DeviceType.VENDING)
    TEST = int(DeviceType.TEST)


class DeviceService(Model):
    """The service state as of its last change (the live quota is in Redis)."""

    # It only moves forward in version (copy_state). The docstring above is the table's
    # description in the migrations: changing it is a schema change.

    did = fields.CharField(primary_key=True, max_length=16)
    mode = fields.IntEnumField(ServiceMode)
    remaining_ml = fields.BigIntField(null=True)
    rental_expires_at = fields.BigIntField(null=True)  # unix seconds
    low_balance_ml = fields.BigIntField(null=True)
    lock_bits = fields.IntField(default=0)
    version = fields.BigIntField(default=0)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "device_service"


class ChangeStage(IntEnum):
    """How far a change's row is (docs/metering.md, "A change's request id")."""

    DONE = 0  # recorded; nothing of it left to settle in Redis (an event's row too)
    PENDING = 1  # written before Redis was asked: not known yet whether the change ran
    UNSETTLED = 2  # recorded; Redis' unrecorded hash still keeps its record (settle)


class ServiceChange(Model):
    """One change of a device's service state, or an event of it (quota lock, low balance)."""

    id = fields.BigIntField(primary_key=True)
    did = fields.CharField(max_length=16, db_index=True)
    op = fields.CharField(max_length=32)
    amount_ml = fields.BigIntField(null=True)
    seconds = fields.BigIntField(null=True)
    remaining_ml = fields.BigIntField(null=True)  # after the change
    rental_expires_at = fields.BigIntField(null=True)  # after the change
    lock_bits = fields.IntField(null=True)  # after the change
    version = fields.BigIntField(null=True)  # after the change
    actor = fields.CharField(max_length=64)
    reason = fields.CharField(max_length=255, default="")
    request_id = fields.CharField(max_length=64, null=True)
    # What the change asked (service.lua's arguments, [] for a lock), to tell a retry under its
    # request id from another change; None: an event, or recorded before they were kept.
    request_args: list[int | None] | None = fields.JSONField(null=True)
    # A change under a request id is written PENDING before service.lua runs it, and completed
    # with the state right after it once Redis answered (ChangeStage).
    stage = fields.IntEnumField(ChangeStage, default=ChangeStage.DONE, db_default=0, db_index=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "service_change"
        unique_together = (("did", "request_id"),)


class ServiceBackend(Protocol):
    """The live store (gateway.service_state.ServiceStore satisfies it). `change` answers
    (applied, state, marked): `marked`, when the request id was applied before, is what its
    marker recorded of that change (gateway.service_state.MarkedChange: op, args, state).
    `pending`: the database holds a pending row for the request id, so Redis keeps the
    change's record until `settle`; `recall` answers (applied, marked) changing nothing."""

    async def change(
        self, did: str, op: str, *args: int | None, request_id: str | None = None,
        now_ms: int | None = None, pending: bool = False,
    ) -> tuple[Any, ...]: ...  # fmt: skip

    async def recall(self, did: str, request_id: str) -> tuple[Any, ...]: ...

    async def settle(self, did: str, request_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    applied: bool  # False: nothing to change, or this request id was applied before
    version: int
    locked: bool
    lock_bits: int
    mode: int | None
    remaining_ml: int | None
    rental_expires_at: int | None
    already_applied: bool = False  # this request id was applied before: a retry changed nothing


def whole(name: str, value: Any, low: int, high: int) -> int:
    """An integer in [low, high]; booleans and floats are refused (money and water are ints)."""
    if type(value) is not int or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}")
    return value


def checked_text(name: str, value: str, limit: int) -> str:
    """`value` stripped, 1..`limit` characters (an actor, a request id); else InvalidInput."""
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(f"{name} must be 1..{limit} characters")
    return value.strip()


async def record_change(**values: Any) -> None:
    """Write one service_change row (a change, an event of it, a command's record)."""
    async with in_transaction():  # its own transaction: an IntegrityError must not poison another
        await ServiceChange.create(**values)


METERED_OPS = frozenset({"topup", "extend", "set_expiry"})


class UnmeteredDevice(Conflict):
    """A quota or rental change for a test (type 8) device: it has neither."""


async def known_device(did: str) -> Device:
    """The device `did`; NotFound when there is none."""
    device = await Device.get_or_none(did=did)
    if device is None:
        raise NotFound(f"device {did} not found")
    return device


class ServiceRequestReused(RequestReused):
    """A service change under a request id the device already changed by another change: taken
    for a retry, the caller would believe its change applied when nothing was."""

    def __init__(
        self, did: str, request_id: str, op: str, asked: dict[str, Any], differs: list[str]
    ) -> None:
        super().__init__(
            f"request_id {request_id!r} already changed device {did} by another change "
            f"({', '.join(differs)}): it was not applied; a new change needs a new request_id",
            {"op": op_name(op), **{k: _shown(k, v) for k, v in asked.items()}},
        )


def op_name(op: str) -> str:
    """A service op as the API names it (service.lua's topup is top_up)."""
    return "top_up" if op == "topup" else op


def _shown(name: str, value: int | None) -> int | str | None:
    if name == "rental_expires_at" and value is not None:
        return utc_text(value)
    return value


def utc_text(unix_s: int) -> str:
    """Unix seconds as ISO 8601 UTC text, to the second ("2026-01-31T00:00:00Z")."""
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def asked_of(op: str, args: Sequence[int | None]) -> dict[str, int | None]:
    """What a change of `op` with service.lua's `args` asks, by name (pure): configure's mode,
    remaining_ml, rental_expires_at, low_balance_ml; a top-up's ml; an extension's days (its
    seconds when not whole days); a set expiry's rental_expires_at; nothing for a lock."""
    values = list(args)
    match op:
        case "configure" if len(values) == 4:
            return dict(zip(("mode", "remaining_ml", "rental_expires_at", "low_balance_ml"),
                            values, strict=True))  # fmt: skip
        case "topup" if len(values) == 1:
            return {"ml": values[0]}
        case "extend" if len(values) == 1:
            seconds = values[0]
            if seconds is not None and seconds % DAY_S == 0:
                return {"days": seconds // DAY_S}
            return {"seconds": seconds}
        case "set_expiry" if len(values) == 1:
            return {"rental_expires_at": values[0]}
    return {}


def recorded_asked(change: ServiceChange) -> dict[str, int | None]:
    """What a recorded change asked: its arguments, or, recorded before they were kept, what
    its row still tells (a configure's mode and low balance are not known then)."""
    if change.request_args is not None:
        return asked_of(change.op, change.request_args)
    match change.op:
        case "topup":
            return asked_of("topup", [change.amount_ml])
        case "extend":
            return asked_of("extend", [change.seconds])
        case "set_expiry":
            return asked_of("set_expiry", [change.rental_expires_at])
        case "configure":
            return {"remaining_ml": change.amount_ml, "rental_expires_at": change.rental_expires_at}
    return {}


def change_differences(
    first_op: str,
    first_asked: dict[str, int | None],
    op: str,
    args: Sequence[int | None],
    *,
    retry_recomputes: bool = False,
) -> list[str]:
    """What a change of `op` with `args` asks otherwise than the first change under its request
    id did (pure); empty: the same change, a retry. `retry_recomputes`: the caller computes the
    arguments afresh on each try (a delivery's rental counts from now), so only the op tells."""
    if first_op != op:
        return [f"op {op_name(first_op)}, not {op_name(op)}"]
    if retry_recomputes:
        return []
    asked = asked_of(op, args)
    return [
        f"{name} {_shown(name, first_asked[name])}, not {_shown(name, value)}"
        for name, value in asked.items()
        if name in first_asked and first_asked[name] != value
    ]


async def check_retry(
    did: str, request_id: str, op: str, args: Sequence[int | None], *, retry_recomputes: bool
) -> ServiceChange | None:
    """The change recorded under `request_id` on `did` (None: none); ServiceRequestReused when
    it is another change than this one."""
    first = await ServiceChange.get_or_none(did=did, request_id=request_id)
    if first is None:
        return None
    first_asked = recorded_asked(first)
    differs = change_differences(first.op, first_asked, op, args, retry_recomputes=retry_recomputes)
    if differs:
        raise ServiceRequestReused(did, request_id, first.op, first_asked, differs)
    return first


def check_marked(
    did: str, request_id: str, marked: Any, op: str, args: Sequence[int | None], *,
    retry_recomputes: bool,
) -> None:  # fmt: skip
    """ServiceRequestReused when the change Redis' marker recorded under `request_id` (applied,
    not recorded in the database yet) is another change than this one."""
    first_asked = asked_of(marked.op, marked.args)
    differs = change_differences(
        marked.op, first_asked, op, args, retry_recomputes=retry_recomputes
    )
    if differs:
        raise ServiceRequestReused(did, request_id, marked.op, first_asked, differs)


async def _apply(
    backend: ServiceBackend,
    did: str,
    op: str,
    args: Sequence[int | None],
    *,
    actor: str,
    reason: str,
    request_id: str | None = None,
    amount_ml: int | None = None,
    seconds: int | None = None,
    retry_recomputes: bool = False,
    now: dt.datetime | None = None,
) -> ChangeOutcome:
    actor = checked_text("actor", actor, 64)
    if request_id is not None:
        request_id = checked_text("request_id", request_id, 64)
    device = await known_device(did)
    if device.type == DeviceType.TEST:
        # A test (quality-check) device, the seed's type 8 (FAQ 4): it pours freely, never
        # counts a quota, never expires and is never billed. Configuring it sets mode 8;
        # quota and expiry changes are refused. A person's lock still holds.
        if op == "configure":
            args, amount_ml = [int(ServiceMode.TEST), None, None, None], None
        elif op in METERED_OPS:
            raise UnmeteredDevice(
                f"device {did} is a test (quality-check) device, type 8: it has no quota or "
                "rental to change"
            )
    now = now or dt.datetime.now(dt.UTC)
    # Another change under a used request id: refused, not applied. The same change recorded
    # is applied: not sent to Redis again, whose marker of it may have expired (a week),
    # where it would grant the water or the rental time twice. A new one is written pending
    # first; one found pending is sent again, and service.lua says whether it ran.
    if request_id is not None and not await _pending_first(
        did, op, args, actor=actor, reason=reason, request_id=request_id,
        amount_ml=amount_ml, seconds=seconds, retry_recomputes=retry_recomputes, now=now,
    ):  # fmt: skip
        return await _applied_before(backend, did, now)
    answer = await backend.change(
        did, op, *args, request_id=request_id, now_ms=int(now.timestamp() * 1000),
        pending=request_id is not None,
    )  # fmt: skip
    applied, state = answer[0], answer[1]
    marked = answer[2] if len(answer) > 2 else None
    code = int(applied)
    if code == -2:
        if request_id is not None:
            await drop_pending(did, request_id)  # nothing ran: the id is free again
        raise Conflict(f"device {did} is not metered against a volume quota")
    row_state, request_args = state, list(args)
    if code == -1 and request_id is not None and marked is not None:
        # Applied before (by a try whose process died before its row): that change's record
        try:
            check_marked(did, request_id, marked, op, args, retry_recomputes=retry_recomputes)
        except ServiceRequestReused:
            await drop_pending(did, request_id)  # ours never ran: another did, under the id
            raise
        row_state, request_args = marked.state, list(marked.args)
        if op == "configure" and len(request_args) == 4:  # a recomputed one's first
            amount_ml = request_args[1]
    await record_applied(
        did, op, state, actor=actor, reason=reason, request_id=request_id, amount_ml=amount_ml,
        seconds=seconds, request_args=request_args, now=now, row_state=row_state,
        stage=ChangeStage.DONE if request_id is None else ChangeStage.UNSETTLED,
    )  # fmt: skip
    if request_id is not None:
        await settle(backend, did, request_id)
    return _outcome(code, state)


async def _pending_first(
    did: str, op: str, args: Sequence[int | None], *, actor: str, reason: str,
    request_id: str, amount_ml: int | None, seconds: int | None, retry_recomputes: bool,
    now: dt.datetime,
) -> bool:  # fmt: skip
    """Before Redis runs a change under `request_id`: False when the database recorded it
    (a retry: applied before); True when it is pending, written now or by an earlier try
    whose outcome is not known. ServiceRequestReused when the row is of another change."""
    for _ in range(2):
        first = await check_retry(did, request_id, op, args, retry_recomputes=retry_recomputes)
        if first is not None:
            return first.stage is ChangeStage.PENDING
        try:
            await record_change(
                did=did, op=op, amount_ml=amount_ml, seconds=seconds, actor=actor,
                reason=reason[:255], request_id=request_id, request_args=list(args),
                stage=ChangeStage.PENDING, created_at=now,
            )  # fmt: skip
            return True
        except IntegrityError:
            continue  # a racing try under the id wrote its row first: compare with it
    raise Conflict(f"request_id {request_id!r} of device {did} is being changed: try again")


async def drop_pending(did: str, request_id: str) -> None:
    """Delete the pending row under `request_id`: its change did not run."""
    await ServiceChange.filter(did=did, request_id=request_id, stage=ChangeStage.PENDING).delete()


def in_outer_transaction() -> bool:
    """The caller's database transaction is open (a delivery's, say): what is written now
    may still roll back."""
    return isinstance(connections.get("default"), TransactionalDBClient)


async def settle(backend: ServiceBackend, did: str, request_id: str) -> None:
    """Let Redis forget the record it keeps of a change whose row is complete, once that row
    is committed; inside a caller's transaction the recovery pass does it after the commit
    (models/service_pending.py): were it to roll back, the record is what is left."""
    if in_outer_transaction():
        return
    if await backend.settle(did, request_id):
        await ServiceChange.filter(
            did=did, request_id=request_id, stage=ChangeStage.UNSETTLED
        ).update(stage=ChangeStage.DONE)


async def _applied_before(backend: ServiceBackend, did: str, now: dt.datetime) -> ChangeOutcome:
    """The answer to a retry of a change the database recorded: the live state, unchanged."""
    state = (await backend.change(did, "read"))[1]
    if state.mode is not None:
        await copy_state(did, state, now)
    return _outcome(-1, state)


def _outcome(code: int, state: Any) -> ChangeOutcome:
    return ChangeOutcome(
        applied=code == 1,
        version=state.version,
        locked=state.lock_bits != 0,
        lock_bits=state.lock_bits,
        mode=state.mode,
        remaining_ml=state.remaining_ml,
        rental_expires_at=state.rental_expires_at,
        already_applied=code == -1,
    )


async def record_applied(
    did: str,
    op: str,
    state: Any,
    *,
    actor: str,
    reason: str,
    request_id: str | None,
    amount_ml: int | None,
    seconds: int | None,
    now: dt.datetime,
    request_args: list[int | None] | None = None,
    row_state: Any = None,
    stage: ChangeStage = ChangeStage.DONE,
) -> None:
    """Record a change Redis applied (once per request id: its pending row is completed, left
    UNSETTLED for `settle`) and move the copy up to `state`. `row_state`: the state right
    after the change when it is not `state` (a retry's: the first change's, from its
    record). `stage`: of a row written here (UNSETTLED: Redis keeps the change's record)."""
    after = state if row_state is None else row_state
    values = {
        "op": op, "amount_ml": amount_ml, "seconds": seconds,
        "remaining_ml": after.remaining_ml, "rental_expires_at": after.rental_expires_at,
        "lock_bits": after.lock_bits, "version": after.version, "request_args": request_args,
    }  # fmt: skip
    if request_id is None:
        await record_change(did=did, actor=actor, reason=reason[:255], created_at=now, **values)
    elif not await ServiceChange.filter(
        did=did, request_id=request_id, stage=ChangeStage.PENDING
    ).update(stage=ChangeStage.UNSETTLED, **values) and not await ServiceChange.exists(
        did=did, request_id=request_id
    ):  # none pending: an exchange's step, or a pending row the recovery pass dropped since
        with contextlib.suppress(IntegrityError):  # a concurrent retry recorded it first
            await record_change(
                did=did, actor=actor, reason=reason[:255], request_id=request_id,
                stage=stage, created_at=now, **values,
            )  # fmt: skip
    if state.mode is not None:
        await copy_state(did, state, now)


async def copy_state(did: str, state: Any, now: dt.datetime) -> None:
    """Write the live state `state` (as service.lua answered it) into the copy, unless the copy
    already holds a later version: two racing changes finish in any order, and the older one's
    answer must not overwrite the newer's."""
    values = {
        "mode": ServiceMode(state.mode), "remaining_ml": state.remaining_ml,
        "rental_expires_at": state.rental_expires_at, "low_balance_ml": state.low_balance_ml,
        "lock_bits": state.lock_bits, "version": state.version, "updated_at": now,
    }  # fmt: skip
    for _ in range(2):
        if await DeviceService.filter(did=did, version__lte=state.version).update(**values):
            return
        if await DeviceService.exists(did=did):
            return  # the copy is of a later version already
        try:
            async with in_transaction():  # its own: an IntegrityError must not poison another
                await DeviceService.create(did=did, **values)
            return
        except IntegrityError:
            continue  # a racing change created it first: compare versions with it


async def configure(
    backend: ServiceBackend,
    did: str,
    mode: ServiceMode | int,
    *,
    remaining_ml: int | None = None,
    rental_expires_at: int | None = None,
    low_balance_ml: int | None = None,
    actor: str,
    reason: str = "",
    request_id: str | None = None,
    retry_recomputes: bool = False,
    now: dt.datetime | None = None,
) -> ChangeOutcome:
    """Set the billing mode; volume rental needs a starting quota, time rental an expiry.
    `retry_recomputes`: see ServiceChangeRequest (models/service_requests.py)."""
    try:
        mode = ServiceMode(mode)
    except ValueError:
        raise InvalidInput(f"mode must be one of {[m.value for m in ServiceMode]}") from None
    if mode is ServiceMode.VOLUME_RENTAL:
        remaining_ml = whole("remaining_ml", remaining_ml, -MAX_TOP_UP_ML, MAX_TOP_UP_ML)
    elif remaining_ml is not None:
        raise InvalidInput("remaining_ml applies to volume rental (mode 3) only")
    if mode is ServiceMode.TIME_RENTAL:
        rental_expires_at = whole("rental_expires_at", rental_expires_at, 0, 2**32 - 1)
    elif rental_expires_at is not None:
        raise InvalidInput("rental_expires_at applies to time rental (mode 2) only")
    if low_balance_ml is not None:
        if mode is not ServiceMode.VOLUME_RENTAL:
            raise InvalidInput("low_balance_ml applies to volume rental (mode 3) only")
        low_balance_ml = whole("low_balance_ml", low_balance_ml, 0, MAX_TOP_UP_ML)
    return await _apply(
        backend, did, "configure", [int(mode), remaining_ml, rental_expires_at, low_balance_ml],
        actor=actor, reason=reason, request_id=request_id, amount_ml=remaining_ml,
        retry_recomputes=retry_recomputes, now=now,
    )  # fmt: skip


async def top_up(
    backend: ServiceBackend,
    did: str,
    ml: int,
    *,
    actor: str,
    reason: str = "",
    request_id: str | None = None,
    now: dt.datetime | None = None,
) -> ChangeOutcome:
    """Add `ml` to a volume quota; a debt (water poured after the lock) is paid off first, and
    the device unlocks once the balance is above 0."""
    ml = whole("ml", ml, 1, MAX_TOP_UP_ML)
    return await _apply(
        backend, did, "topup", [ml], actor=actor, reason=reason, request_id=request_id,
        amount_ml=ml, now=now,
    )  # fmt: skip


async def extend_rental(
    backend: ServiceBackend,
    did: str,
    *,
    package: str | None = None,
    days: int | None = None,
    actor: str,
    reason: str = "",
    request_id: str | None = None,
    now: dt.datetime | None = None,
) -> ChangeOutcome:
    """Extend a time rental by a package ("30d".."360d") or a number of days, counted from the
    later of now and the current expiry; an expired rental unlocks."""
    if (package is None) == (days is None):
        raise InvalidInput("give a package or a number of days")
    if package is not None:
        if package not in RENT_PACKAGES:
            raise InvalidInput(f"package must be one of {sorted(RENT_PACKAGES)}")
        days = RENT_PACKAGES[package]
    days = whole("days", days, 1, 3660)
    return await _apply(
        backend, did, "extend", [days * DAY_S], actor=actor, reason=reason,
        request_id=request_id, seconds=days * DAY_S, now=now,
    )  # fmt: skip


async def set_expiry(
    backend: ServiceBackend,
    did: str,
    rental_expires_at: int,
    *,
    actor: str,
    reason: str = "",
    request_id: str | None = None,
    now: dt.datetime | None = None,
) -> ChangeOutcome:
    expires = whole("rental_expires_at", rental_expires_at, 0, 2**32 - 1)
    return await _apply(
        backend, did, "set_expiry", [expires], actor=actor, reason=reason,
        request_id=request_id, now=now,
    )  # fmt: skip


async def lock(
    backend: ServiceBackend, did: str, *, actor: str, reason: str = "",
    request_id: str | None = None, now: dt.datetime | None = None,
) -> ChangeOutcome:  # fmt: skip
    """A person's lock: it holds whatever the quota or rental say, until unlocked. With a
    request id its marker says whether this lock set it (an exchange's cancel lifts only that)."""
    return await _apply(
        backend, did, "lock", [], actor=actor, reason=reason, request_id=request_id, now=now
    )


async def unlock(
    backend: ServiceBackend, did: str, *, actor: str, reason: str = "",
    now: dt.datetime | None = None,
) -> ChangeOutcome:  # fmt: skip
    """Lift a person's lock (an exhausted quota or an expired rental stays locked)."""
    return await _apply(backend, did, "unlock", [], actor=actor, reason=reason, now=now)


def is_low_balance(
    *,
    remaining_ml: int | None,
    low_balance_ml: int | None,
    rental_expires_at: int | None,
    now_s: int,
    threshold_ml: int | None,
    within_s: int,
) -> bool:
    """The device list's `low_balance` (pure): a device metered against a quota with at most
    `threshold_ml` left (default: its own low-balance threshold, else none left), or a time
    rental paid until at most `within_s` from now (expired included). Others never are."""
    if remaining_ml is not None:
        threshold = threshold_ml if threshold_ml is not None else (low_balance_ml or 0)
        if remaining_ml <= threshold:
            return True
    return rental_expires_at is not None and rental_expires_at - now_s <= within_s


async def taken_back(device: Device) -> bool:
    """The device is back from its member: bound to nobody and under a person's lock, as a
    return (AD-14), a dismantle and an exchange leave the device they take back. A device its
    member unbound (AB-13) without anyone locking it may still be at the member's."""
    if device.owner_id is not None:
        return False
    copy = await DeviceService.get_or_none(did=device.did)
    return copy is not None and bool(copy.lock_bits & PERSON_LOCK)
