"""Commands to devices as the business sees them: which ops exist, what each carries on the
wire, and who may send which (docs/commands.md). Delivery is the gateway's (gateway/facade.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aquafleet.models.errors import Conflict, Forbidden, InvalidInput
from aquafleet.models.service import ServiceMode
from aquafleet.protocol import CommandOp

OP_NAMES: dict[str, CommandOp] = {
    "dispense": CommandOp.DISPENSE,
    "lock": CommandOp.LOCK,
    "unlock": CommandOp.UNLOCK,
    "reset_filter": CommandOp.RESET_FILTER,
    "time_sync": CommandOp.TIME_SYNC,
    "firmware_notice": CommandOp.FIRMWARE_NOTICE,
    "reboot": CommandOp.REBOOT,
}
NAME_OF_OP = {int(op): name for name, op in OP_NAMES.items()}
# The argument each op takes, and its key on the wire (anything else is refused).
OP_ARGUMENT: dict[str, str] = {
    "dispense": "ml",
    "reset_filter": "filter",
    "firmware_notice": "version_code",
}
ARGUMENT_KEY = 1
STATE_CHANGE_OPS = frozenset({"lock", "unlock"})
ADMIN_ONLY_OPS = frozenset({"firmware_notice"})
# A member may lock or unlock their own purifier (a child lock); on a rented or vending device a
# lock is the vendor's business (an unpaid rental must not be unlocked by its renter).
MEMBER_LOCK_MODES = frozenset({None, ServiceMode.SALE, ServiceMode.TEST})


# What each lock reason of the live service state (gateway/service_state.py LOCK_REASONS)
# means to a person reading the refusal.
LOCK_REASON_TEXT = {
    "quota_exhausted": "quota exhausted",
    "rental_expired": "rental expired",
    "manual": "locked by a person",
}


class PaymentRequired(Conflict):
    code = "payment_required"


class DeviceLocked(Conflict):
    code = "device_locked"


def needs_service_mode(op: str, *, member: bool) -> bool:
    """Whether the rules for `op` need the device's service mode (dispense on a vending
    machine; a member's lock)."""
    return op == "dispense" or (member and op in STATE_CHANGE_OPS)


def check_command_allowed(op: str, mode: ServiceMode | None, *, member: bool) -> None:
    """The rules beyond "may use this device": raises Forbidden or PaymentRequired."""
    if not member:
        return
    if op in ADMIN_ONLY_OPS:
        raise Forbidden(f"{op} is for the vendor's console")
    if op in STATE_CHANGE_OPS and mode not in MEMBER_LOCK_MODES:
        raise Forbidden("the vendor locks and unlocks a rented or vending device")
    if op == "dispense" and mode is ServiceMode.VENDING:
        raise PaymentRequired("a vending machine pours after payment, not by command")


def check_not_locked(did: str, op: str, lock_reasons: Sequence[str]) -> None:
    """A locked device pours nothing: a dispense is refused by the platform, whoever sends it
    and whatever the device would do, with the lock's reasons (the live ones, from Redis)."""
    if op == "dispense" and lock_reasons:
        why = ", ".join(LOCK_REASON_TEXT.get(reason, reason) for reason in lock_reasons)
        raise DeviceLocked(f"device {did} is locked ({why}): it pours nothing until unlocked")


def wire_args(op: str, given: Mapping[str, int], *, now_s: int) -> dict[int, int]:
    """The command's arguments on the wire: the op's one argument, or the clock for time_sync."""
    wanted = OP_ARGUMENT.get(op)
    extra = set(given) - {wanted}
    if extra:
        raise InvalidInput(f"{op} takes no {', '.join(sorted(extra))}")
    if wanted is not None:
        if wanted not in given:
            raise InvalidInput(f"{op} needs {wanted}")
        return {ARGUMENT_KEY: given[wanted]}
    if op == "time_sync":
        return {ARGUMENT_KEY: now_s}
    return {}
