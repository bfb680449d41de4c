"""An exchange's service hand-over: the live service of a device for its replacement (the quota
it had left moves over in one Redis step, bound to the replacement), and, when the exchange is
cancelled, the hand-back: what is left of it comes back to the old device, once.

The Redis half is service.lua's handover, handback and takeback (gateway/service_state.py);
the rules are in docs/metering.md. Each step is recorded as a service change
(models/service.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from aquafleet.models.errors import Conflict
from aquafleet.models.service import (
    ServiceBackend,
    ServiceMode,
    checked_text,
    known_device,
    record_applied,
)


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
        self, did: str, *, request_id: str, recipient: str, recorded: bool = False,
        now_ms: int | None = None,
    ) -> HandoverReply: ...  # fmt: skip

    async def hand_back(
        self, did: str, *, request_id: str, phase: str, ml: int | None = None,
        lock_request_id: str | None = None, recorded: bool = False, now_ms: int | None = None,
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


class HandoverExpired(Conflict):
    """The database recorded a hand-over longer ago than its Redis marker lives, and the
    marker is gone: a retry or a hand-back could move the quota twice or give back the wrong
    amount, so nothing is done (models/ticket_work.py says what the operator does)."""

    code = "handover_expired"


EXPIRED = -4  # service.lua: the `recorded` step's marker is gone
# How long service.lua keeps a request's marker ('EX', 604800 there): a step retried later is
# no longer recognised by the live store alone (an exchange's: models/ticket_work.py).
MARKER_TTL_S = 604_800


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
    recorded: bool = False,
    now: dt.datetime | None = None,
) -> Handover:
    """An exchange: the live service of `did` for its replacement `recipient`. Its quota is
    read and set to 0 in one Redis step, so water poured until then is off it and none poured
    after is given again; a retry with the same request id and recipient answers the same
    amount, one naming another recipient raises HandedOverElsewhere (the quota is on one
    device only). `recorded`: the caller's database says this hand-over began longer ago
    than Redis keeps its marker; when the marker is gone, HandoverExpired and nothing moves."""
    actor = checked_text("actor", actor, 64)
    request_id = checked_text("request_id", request_id, 64)
    recipient = checked_text("recipient", recipient, 64)
    await known_device(did)
    now = now or dt.datetime.now(dt.UTC)
    answer = await backend.hand_over(
        did, request_id=request_id, recipient=recipient, recorded=recorded,
        now_ms=int(now.timestamp() * 1000),
    )  # fmt: skip
    if int(answer.applied) == EXPIRED:
        raise HandoverExpired(
            f"the hand-over of device {did} (request {request_id}) is no longer known to the "
            "live store (its marker expired): it is not repeated"
        )
    if int(answer.applied) == -3:
        raise HandedBack(did, request_id)
    if int(answer.applied) == -2:
        raise HandedOverElsewhere(did, answer.received_by or "?", request_id)
    state, given = answer.state, answer.given_ml
    await record_applied(
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
    recorded: bool = False,
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
    handed over: nothing. `recorded` as for hand_over: the caller's database says the
    hand-over began longer ago than its marker lives; when the marker is gone,
    HandoverExpired and nothing is given back (what went where is no longer known). The rule
    is service.lua's `takeback` (docs/metering.md)."""
    actor = checked_text("actor", actor, 64)
    request_id = checked_text("request_id", request_id, 64)
    await known_device(did)
    now = now or dt.datetime.now(dt.UTC)
    now_ms = int(now.timestamp() * 1000)
    begun = await backend.hand_back(
        did, request_id=request_id, phase="begin", recorded=recorded, now_ms=now_ms
    )
    if int(begun.applied) == EXPIRED:
        raise HandoverExpired(
            f"the hand-over of device {did} (request {request_id}) is no longer known to the "
            "live store (its marker expired): nothing is given back"
        )
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
        await record_applied(
            recipient, "take_back", taken.state, actor=actor, reason=reason,
            request_id=record, amount_ml=taken.given_ml, seconds=None, now=now,
        )  # fmt: skip
    back = await backend.hand_back(
        did, request_id=request_id, phase="credit", ml=taken.given_ml,
        lock_request_id=lock_request_id, recorded=recorded, now_ms=now_ms,
    )  # fmt: skip
    if int(back.applied) == EXPIRED:  # it expired between the begin and now
        raise HandoverExpired(
            f"the hand-over of device {did} (request {request_id}) expired while it was "
            "given back: the old device is not credited"
        )
    await record_applied(
        did, "hand_back", back.state, actor=actor, reason=reason, request_id=record,
        amount_ml=back.given_ml, seconds=None, now=now,
    )  # fmt: skip
    return HandBack(recipient, back.given_ml)
