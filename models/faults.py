"""Fault tickets from devices (故障工单, 系统自检): a device EVENT reporting a fault opens one
fault ticket per device and fault until that ticket is done or cancelled, never one per event.

The fault's code is the event's kind (the protocol's EVENT carries no finer code): 2 fault_set,
5 leak, 6 tamper. The ticket's dedup key `fault:<did>:<code>` is released when it closes
(models/ticket_flow.py), so the same fault afterwards opens a new ticket.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import structlog
from tortoise.exceptions import BaseORMException

from aquafleet.models.errors import DomainError
from aquafleet.models.tickets import (
    AutomaticTicket,
    TicketType,
    existing_dedup_keys,
    fault_key,
    open_automatic_ticket,
)
from aquafleet.models.usage import UsageRow
from aquafleet.protocol import EventKind, FrameType

log = structlog.get_logger(__name__)

FAULT_CODES: dict[int, str] = {  # EVENT kind -> fault code
    EventKind.FAULT_SET: "fault",
    EventKind.LEAK: "leak",
    EventKind.TAMPER: "tamper",
}
DETAILS = {
    "fault": "the device reported a fault (fault_set)",
    "leak": "the device reported a water leak",
    "tamper": "the device reported tampering (its case was opened)",
}


def fault_events(rows: Iterable[UsageRow]) -> dict[str, tuple[str, ...]]:
    """(did -> fault codes) reported in these records, each code once (pure)."""
    found: dict[str, dict[str, None]] = {}
    for row in rows:
        if row.kind == FrameType.EVENT and row.event_kind in FAULT_CODES:
            found.setdefault(row.did, {})[FAULT_CODES[row.event_kind]] = None
    return {did: tuple(codes) for did, codes in found.items()}


class FaultWatch:
    """Opens fault tickets for the fault events of a committed ledger batch (errors are logged,
    never raised: the writer's work is done; the device's next report of the fault retries)."""

    def __init__(self, *, max_new_per_batch: int = 100) -> None:
        self.max_new_per_batch = max_new_per_batch
        self.opened = 0
        self.errors = 0

    async def after_batch(self, rows: Sequence[UsageRow], vendors: dict[str, str]) -> int:
        """`vendors`: did -> vendor code of the devices that reported (looked up if missing)."""
        faults = fault_events(rows)
        if not faults:
            return 0
        try:
            return await self._open(faults, vendors)
        except (DomainError, BaseORMException, ValueError) as exc:
            self.errors += 1
            log.error("fault_check_failed", error=f"{type(exc).__name__}: {exc}")
            return 0

    async def _open(self, faults: dict[str, tuple[str, ...]], vendors: dict[str, str]) -> int:
        from aquafleet.models.devices import Device

        missing = [did for did in faults if did not in vendors]
        if missing:
            rows = await Device.filter(did__in=missing).values_list("did", "vendor_id")
            vendors = {**vendors, **{str(d): str(v) for d, v in rows}}
        keys = {
            fault_key(did, code): (did, code) for did, codes in faults.items() for code in codes
        }
        existing = await existing_dedup_keys(list(keys))
        opened = 0
        for key, (did, code) in list(keys.items())[: self.max_new_per_batch]:
            if key in existing or did not in vendors:
                continue
            _, created = await open_automatic_ticket(
                AutomaticTicket(
                    dedup_key=key, type=TicketType.FAULT, vendor_code=vendors[did], did=did,
                    detail=DETAILS[code],
                )
            )  # fmt: skip
            opened += created
        self.opened += opened
        return opened
