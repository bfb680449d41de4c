"""A service change as one request: AB-08's (`PUT /devices/{did}/svc`) and every internal
caller's (an order's delivery, a renewal, an exchange, a return). `op` names the change and its
fields carry what that change takes; `apply_change` makes it through models/service.py's
changes, which validate, apply and record it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aquafleet.models.errors import InvalidInput
from aquafleet.models.service import (
    ChangeOutcome,
    ServiceBackend,
    ServiceMode,
    configure,
    extend_rental,
    lock,
    set_expiry,
    top_up,
    unlock,
)


@dataclass(frozen=True, slots=True)
class ServiceChangeRequest:
    """One change of AB-08 (`PUT /devices/{did}/svc`): `op` says which; the fields it does not
    use are None. `rental_expires_at` is unix seconds. With `request_id`, the same change again
    is a retry (applied once) and another is ServiceRequestReused; `retry_recomputes` (an
    internal caller's configure whose values are computed afresh on each try: a delivery's
    rental from now, an exchange's from the old device's state) makes any configure under the
    id a retry of the first."""

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
    retry_recomputes: bool = False


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
                retry_recomputes=change.retry_recomputes,
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
