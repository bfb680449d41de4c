"""Service state per device: how it is billed (mode), its volume quota, its rental expiry, its
locks; and the history of every change, with who and why.

The live state is in Redis next to the device's meter (gateway/service_state.py), so metering
can draw the quota down atomically. These services validate a change, apply it there through a
`ServiceBackend`, and record it here. A change carrying a `request_id` (an order id, say) is
applied once however often it is retried.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Subquery
from tortoise.filters import escape_like
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device, DeviceState, DeviceType, visible_devices
from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.ids import is_valid_device_id
from aquafleet.models.tenancy import Principal, Role

MAX_TOP_UP_ML = 10**9  # a million litres in one top-up is a typo, not an order
DAY_S = 86_400

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


class CommandTarget(NamedTuple):
    """What a command needs of its device: that the caller may see it, its state, its mode."""

    did: str
    state: DeviceState
    mode: ServiceMode | None  # None: not asked for, or the device has no service row


# command_target's statements, one per (dialect, scope, with_mode): the visibility rules of
# `visible_devices` written out once, so a command's lookup builds no query. Each scope says
# how the caller's rows are named: PLATFORM every device, MEMBER those bound or shared to the
# member, VENDOR the vendor's, SUBTREE the vendor's devices under the caller's agent node.
# tests/api/test_command_target.py holds them to `visible_devices` for every role.
_SCOPE_SQL = {
    "platform": ("", ""),
    "member": ("", ' AND (d."owner_id"={p} OR d."did" IN '
               '(SELECT "device_id" FROM "device_share" WHERE "member_id"={p}))'),
    "vendor": ("", ' AND d."vendor_id"={p}'),
    "subtree": (' JOIN "agent" a ON a."id"=d."agent_id"',
                ' AND d."vendor_id"={p} AND a."path" LIKE {p} ESCAPE \'\\\''),
}  # fmt: skip
_MODE_SQL = ',(SELECT s."mode" FROM "device_service" s WHERE s."did"=d."did")'
_TARGET_SQL: dict[tuple[str, str, bool], str] = {}


def _target_scope(principal: Principal) -> tuple[str, list[str]] | None:
    """The caller's scope and its parameters (as `visible_devices`); None: sees no device."""
    if principal.role is Role.PLATFORM:
        return "platform", []
    if principal.role is Role.MEMBER:
        return "member", [principal.subject, principal.subject]
    if principal.vendor_code is None:
        return None
    if principal.role is Role.VENDOR:
        return "vendor", [principal.vendor_code]
    if principal.agent_path:
        return "subtree", [principal.vendor_code, escape_like(principal.agent_path) + "%"]
    return None


def _target_sql(dialect: str, scope: str, with_mode: bool) -> str:
    key = (dialect, scope, with_mode)
    sql = _TARGET_SQL.get(key)
    if sql is None:
        join, where = _SCOPE_SQL[scope]
        count = 1 + where.count("{p}")
        marks = [f"${n}" for n in range(1, count + 1)] if dialect == "postgres" else ["?"] * count
        where = where.replace("{p}", "{}").format(*marks[1:])
        sql = _TARGET_SQL[key] = (
            f'SELECT d."did",d."state"{_MODE_SQL if with_mode else ""} FROM "device" d{join} '
            f'WHERE d."did"={marks[0]}{where} LIMIT 1'
        )
    return sql


async def command_target(
    principal: Principal, did: str, *, with_mode: bool
) -> CommandTarget | None:
    """The device if the caller may see it (as `find_visible`), with its service mode when
    `with_mode`: one statement, written once per scope (no query built, no model), on the path
    of every command."""
    if not is_valid_device_id(did):
        return None
    scope = _target_scope(principal)
    if scope is None:
        return None
    name, params = scope
    client = Device._meta.db
    dialect = client.capabilities.dialect
    if dialect not in ("postgres", "sqlite"):  # no statement written for it: build the query
        return await _built_target(principal, did, with_mode=with_mode)
    _, rows = await client.execute_query(_target_sql(dialect, name, with_mode), [did, *params])
    if not rows:
        return None
    row = rows[0]
    mode_value = row[2] if with_mode else None
    return CommandTarget(
        str(row[0]),
        DeviceState(row[1]),
        None if mode_value is None else ServiceMode(int(mode_value)),
    )


async def _built_target(principal: Principal, did: str, *, with_mode: bool) -> CommandTarget | None:
    """`command_target` through the ORM's query builder (any database)."""
    query = visible_devices(principal).filter(did=did).limit(1)
    if with_mode:
        mode = Subquery(DeviceService.filter(did=did).values("mode"))
        rows = await query.annotate(mode=mode).values_list("did", "state", "mode")
    else:
        rows = await query.values_list("did", "state")
    if not rows:
        return None
    row = rows[0]
    mode_value = row[2] if with_mode else None
    return CommandTarget(
        str(row[0]),
        DeviceState(row[1]),
        None if mode_value is None else ServiceMode(int(mode_value)),
    )


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
    created_at = fields.DatetimeField()

    class Meta:
        table = "service_change"
        unique_together = (("did", "request_id"),)


class ServiceBackend(Protocol):
    """The live store (gateway.service_state.ServiceStore satisfies it)."""

    async def change(
        self, did: str, op: str, *args: int | None, request_id: str | None = None,
        now_ms: int | None = None,
    ) -> tuple[Any, Any]: ...  # fmt: skip


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


def _whole(name: str, value: Any, low: int, high: int) -> int:
    """An integer in [low, high]; booleans and floats are refused (money and water are ints)."""
    if type(value) is not int or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}")
    return value


def _text(name: str, value: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(f"{name} must be 1..{limit} characters")
    return value.strip()


async def _record_change(**values: Any) -> None:
    async with in_transaction():  # its own transaction: an IntegrityError must not poison another
        await ServiceChange.create(**values)


METERED_OPS = frozenset({"topup", "extend", "set_expiry"})


class UnmeteredDevice(Conflict):
    """A quota or rental change for a test (type 8) device: it has neither."""


async def _device(did: str) -> Device:
    device = await Device.get_or_none(did=did)
    if device is None:
        raise NotFound(f"device {did} not found")
    return device


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
    now: dt.datetime | None = None,
) -> ChangeOutcome:
    actor = _text("actor", actor, 64)
    if request_id is not None:
        request_id = _text("request_id", request_id, 64)
    device = await _device(did)
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
    applied, state = await backend.change(
        did, op, *args, request_id=request_id, now_ms=int(now.timestamp() * 1000)
    )
    code = int(applied)
    if code == -2:
        raise Conflict(f"device {did} is not metered against a volume quota")
    await _settle(
        did, op, state, actor=actor, reason=reason, request_id=request_id, amount_ml=amount_ml,
        seconds=seconds, now=now,
    )  # fmt: skip
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


async def _settle(
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
) -> None:
    """Record a change Redis applied (once per request id) and move the copy up to it."""
    already = request_id is not None and await ServiceChange.exists(did=did, request_id=request_id)
    if not already:  # a retry after a crash between Redis and here records it now
        with contextlib.suppress(IntegrityError):  # a concurrent retry recorded it first
            await _record_change(
                did=did, op=op, amount_ml=amount_ml, seconds=seconds,
                remaining_ml=state.remaining_ml, rental_expires_at=state.rental_expires_at,
                lock_bits=state.lock_bits, version=state.version, actor=actor,
                reason=reason[:255], request_id=request_id, created_at=now,
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
    now: dt.datetime | None = None,
) -> ChangeOutcome:
    """Set the billing mode; volume rental needs a starting quota, time rental an expiry."""
    try:
        mode = ServiceMode(mode)
    except ValueError:
        raise InvalidInput(f"mode must be one of {[m.value for m in ServiceMode]}") from None
    if mode is ServiceMode.VOLUME_RENTAL:
        remaining_ml = _whole("remaining_ml", remaining_ml, -MAX_TOP_UP_ML, MAX_TOP_UP_ML)
    elif remaining_ml is not None:
        raise InvalidInput("remaining_ml applies to volume rental (mode 3) only")
    if mode is ServiceMode.TIME_RENTAL:
        rental_expires_at = _whole("rental_expires_at", rental_expires_at, 0, 2**32 - 1)
    elif rental_expires_at is not None:
        raise InvalidInput("rental_expires_at applies to time rental (mode 2) only")
    if low_balance_ml is not None:
        if mode is not ServiceMode.VOLUME_RENTAL:
            raise InvalidInput("low_balance_ml applies to volume rental (mode 3) only")
        low_balance_ml = _whole("low_balance_ml", low_balance_ml, 0, MAX_TOP_UP_ML)
    return await _apply(
        backend, did, "configure", [int(mode), remaining_ml, rental_expires_at, low_balance_ml],
        actor=actor, reason=reason, request_id=request_id, amount_ml=remaining_ml, now=now,
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
    ml = _whole("ml", ml, 1, MAX_TOP_UP_ML)
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
    days = _whole("days", days, 1, 3660)
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
    expires = _whole("rental_expires_at", rental_expires_at, 0, 2**32 - 1)
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


class HandoverReply(Protocol):
    """The live store's answer to a hand-over (gateway/service_state.py HandoverAnswer)."""

    @property
    def applied(self) -> Any: ...  # -2: refused, the quota went to `received_by`
    @property
    def state(self) -> Any: ...
    @property
    def given_ml(self) -> int | None: ...
    @property
    def received_by(self) -> str | None: ...


class QuotaBackend(ServiceBackend, Protocol):
    """The live store with the exchange's hand-over (ServiceStore satisfies it)."""

    async def hand_over(
        self, did: str, *, request_id: str, recipient: str, now_ms: int | None = None
    ) -> HandoverReply: ...

    async def hand_back(
        self, did: str, *, request_id: str, phase: str, ml: int | None = None,
        lock_request_id: str | None = None, now_ms: int | None = None,
    ) -> HandoverReply: ...  # fmt: skip

    async def take_back(
        self, did: str, *, request_id: str, handed_ml: int | None, now_ms: int | None = None
    ) -> HandoverReply: ...


class HandedOverElsewhere(Conflict):
    """A retried hand-over names another recipient than the one that received the quota."""

    code = "handed_over_elsewhere"

    def __init__(self, did: str, received_by: str, request_id: str) -> None:
        super().__init__(
            f"the service of device {did} was already handed over to device {received_by} "
            f"(request {request_id}): only {received_by} can receive it"
        )
        self.received_by = received_by


class HandedBack(Conflict):
    """A hand-over retried once its ticket's cancellation began giving the quota back."""

    code = "handed_back"

    def __init__(self, did: str, request_id: str) -> None:
        super().__init__(
            f"the service device {did} handed over (request {request_id}) is being given back: "
            "its ticket is being cancelled; cancel it again to finish"
        )


@dataclass(frozen=True, slots=True)
class Handover:
    """The live service a device hands to its replacement: `remaining_ml` is the quota it had
    left at that moment (it keeps none), the rest is its state as it stands."""

    mode: ServiceMode | None  # None: the device has no service to hand over
    remaining_ml: int | None
    rental_expires_at: int | None
    low_balance_ml: int | None


async def hand_over(
    backend: QuotaBackend,
    did: str,
    *,
    recipient: str,
    actor: str,
    reason: str,
    request_id: str,
    now: dt.datetime | None = None,
) -> Handover:
    """An exchange: the live service of `did` for its replacement `recipient`. Its quota is
    read and set to 0 in one Redis step, so water poured until then is off it and none poured
    after is given again; a retry with the same request id and recipient answers the same
    amount, one naming another recipient raises HandedOverElsewhere (the quota is on one
    device only)."""
    actor = _text("actor", actor, 64)
    request_id = _text("request_id", request_id, 64)
    recipient = _text("recipient", recipient, 64)
    await _device(did)
    now = now or dt.datetime.now(dt.UTC)
    answer = await backend.hand_over(
        did, request_id=request_id, recipient=recipient, now_ms=int(now.timestamp() * 1000)
    )
    if int(answer.applied) == -3:
        raise HandedBack(did, request_id)
    if int(answer.applied) == -2:
        raise HandedOverElsewhere(did, answer.received_by or "?", request_id)
    state, given = answer.state, answer.given_ml
    await _settle(
        did, "hand_over", state, actor=actor, reason=reason, request_id=request_id,
        amount_ml=given, seconds=None, now=now,
    )  # fmt: skip
    return Handover(
        mode=None if state.mode is None else ServiceMode(state.mode),
        remaining_ml=given,
        rental_expires_at=state.rental_expires_at,
        low_balance_ml=state.low_balance_ml,
    )


@dataclass(frozen=True, slots=True)
class HandBack:
    """What undoing a hand-over did: `recipient` the device the service had gone to (None:
    nothing was handed over, nothing done), `returned_ml` the quota the old device got back."""

    recipient: str | None
    returned_ml: int | None


async def hand_back(
    backend: QuotaBackend,
    did: str,
    *,
    request_id: str,
    lock_request_id: str | None,
    actor: str,
    reason: str,
    now: dt.datetime | None = None,
) -> HandBack:
    """A cancelled exchange: the quota `did` handed over under `request_id` comes back to it,
    once, in three Redis steps each safe to repeat: the hand-over is marked given back (a
    retry of it is refused from then on: HandedBack), the recipient gives back what is left
    of the amount (less the water it metered since the exchange configured it, never below 0,
    never more than it holds; what others added stays on it; the amount handed over when the
    exchange never configured it), the old device gets that (a debt comes back as a debt) and
    loses the person's lock the exchange's lock (`lock_request_id`) set. A time rental's
    recipient loses what is still to run of the expiry the exchange gave it and keeps what
    others added beyond it (a renewal paid there); the old device kept its own expiry. Nothing
    handed over: nothing. The rule is service.lua's `takeback` (docs/metering.md)."""
    actor = _text("actor", actor, 64)
    request_id = _text("request_id", request_id, 64)
    await _device(did)
    now = now or dt.datetime.now(dt.UTC)
    now_ms = int(now.timestamp() * 1000)
    begun = await backend.hand_back(did, request_id=request_id, phase="begin", now_ms=now_ms)
    if int(begun.applied) == -2:
        raise Conflict(f"the hand-over of device {did} (request {request_id}) names no recipient")
    recipient = begun.received_by
    if recipient is None:
        return HandBack(None, None)
    record = f"{request_id}:cancel"[:64]
    taken = await backend.take_back(
        recipient, request_id=request_id, handed_ml=begun.given_ml, now_ms=now_ms
    )
    if int(taken.applied) == 1:  # it had the quota (its configure landed): it came off it
        await _settle(
            recipient, "take_back", taken.state, actor=actor, reason=reason,
            request_id=record, amount_ml=taken.given_ml, seconds=None, now=now,
        )  # fmt: skip
    back = await backend.hand_back(
        did, request_id=request_id, phase="credit", ml=taken.given_ml,
        lock_request_id=lock_request_id, now_ms=now_ms,
    )  # fmt: skip
    await _settle(
        did, "hand_back", back.state, actor=actor, reason=reason, request_id=record,
        amount_ml=back.given_ml, seconds=None, now=now,
    )  # fmt: skip
    return HandBack(recipient, back.given_ml)


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


@dataclass(frozen=True, slots=True)
class ServiceChangeRequest:
    """One change of AB-08 (`PUT /devices/{did}/svc`): `op` says which; the fields it does not
    use are None. `rental_expires_at` is unix seconds."""

    op: str  # configure, top_up, extend, set_expiry, lock, unlock
    mode: ServiceMode | int | None = None
    remaining_ml: int | None = None
    low_balance_ml: int | None = None
    rental_expires_at: int | None = None
    ml: int | None = None
    package: str | None = None
    days: int | None = None
    reason: str = ""
    request_id: str | None = None


async def apply_change(
    backend: ServiceBackend, did: str, change: ServiceChangeRequest, *, actor: str
) -> ChangeOutcome:
    """The change `change.op` names, with its fields (InvalidInput when one it needs is
    missing)."""
    reason, request_id = change.reason, change.request_id
    match change.op:
        case "configure":
            if change.mode is None:
                raise InvalidInput("configure needs mode")
            return await configure(
                backend, did, change.mode, remaining_ml=change.remaining_ml,
                rental_expires_at=change.rental_expires_at, low_balance_ml=change.low_balance_ml,
                actor=actor, reason=reason, request_id=request_id,
            )  # fmt: skip
        case "top_up":
            if change.ml is None:
                raise InvalidInput("top_up needs ml")
            return await top_up(
                backend, did, change.ml, actor=actor, reason=reason, request_id=request_id
            )
        case "extend":
            return await extend_rental(
                backend, did, package=change.package, days=change.days,
                actor=actor, reason=reason, request_id=request_id,
            )  # fmt: skip
        case "set_expiry":
            if change.rental_expires_at is None:
                raise InvalidInput("set_expiry needs rental_expires_at")
            return await set_expiry(
                backend, did, change.rental_expires_at, actor=actor, reason=reason,
                request_id=request_id,
            )  # fmt: skip
        case "lock":
            return await lock(backend, did, actor=actor, reason=reason, request_id=request_id)
        case "unlock":
            return await unlock(backend, did, actor=actor, reason=reason)
    raise InvalidInput(f"unknown service op {change.op!r}")


# ----------------------------------------------------------------------------- events


async def record_rental_reminder(did: str, rental_expires_at: int) -> None:
    """The reminder before a rental runs out, and its message to the owner (one transaction)."""
    from aquafleet.models.outbox import NotificationKind, enqueue_device_event

    async with in_transaction("default") as conn:
        await ServiceChange.create(
            did=did, op="rental_reminder", rental_expires_at=rental_expires_at,
            actor="scheduler", reason="rental expires soon", created_at=dt.datetime.now(dt.UTC),
            using_db=conn,
        )  # fmt: skip
        await enqueue_device_event(
            conn, did, NotificationKind.RENTAL_REMINDER,
            f"rental:{did}:{rental_expires_at}:reminder", {"detail": _when(rental_expires_at)},
        )  # fmt: skip


async def record_rental_expired(did: str, rental_expires_at: int) -> None:
    """A rental ran out and the device locked: recorded, and the owner told (once)."""
    from aquafleet.models.outbox import NotificationKind, enqueue_device_event

    async with in_transaction("default") as conn:
        await enqueue_device_event(
            conn, did, NotificationKind.RENTAL_EXPIRED,
            f"rental:{did}:{rental_expires_at}:expired", {"detail": _when(rental_expires_at)},
        )  # fmt: skip


def _when(unix_s: int) -> str:
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def open_dismantle_after_grace(did: str, rental_expires_at: int) -> None:
    """The grace period after an expiry passed without renewal: one dismantle ticket."""
    from aquafleet.models.tickets import open_dismantle_ticket

    device = await Device.get_or_none(did=did)
    if device is None:
        return
    _ticket, created = await open_dismantle_ticket(did, device.vendor_id, rental_expires_at)
    if created:
        await ServiceChange.create(
            did=did, op="dismantle_ticket", rental_expires_at=rental_expires_at,
            actor="scheduler", reason="rental not renewed within the grace period",
            created_at=dt.datetime.now(dt.UTC),
        )  # fmt: skip


async def reset_filter(
    router: Any,
    did: str,
    stage: int,
    *,
    actor: str,
    reason: str = "",
    now: dt.datetime | None = None,
) -> int:
    """Tell the device a filter stage was replaced (reset_filter command); returns the cid.

    The device resets that stage's hours and bumps its reset_count, which its next TELEMETRY
    reports: that starts a new filter cycle (models/filters.py). An offline device cannot be
    told: DeviceOffline, and nothing is recorded.
    """
    from aquafleet.models.vending import DeviceOffline
    from aquafleet.protocol import Command, CommandOp

    stage = _whole("stage", stage, 0, 255)
    actor = _text("actor", actor, 64)
    await _device(did)
    now = now or dt.datetime.now(dt.UTC)
    cid = int(await router.next_cid())
    command = Command(
        cid=cid, op=CommandOp.RESET_FILTER, exp=int(now.timestamp()) + 300, args={1: stage}
    )
    if not await router.deliver(did, command):
        raise DeviceOffline(f"device {did} is offline: reset its filter when it is back")
    await _record_change(
        did=did, op="reset_filter", actor=actor, reason=f"stage {stage}: {reason}"[:255],
        request_id=f"cid:{cid}", created_at=now,
    )  # fmt: skip
    return cid
