"""The recovery pass of service changes made under a request id (models/service.py writes
their row PENDING before Redis runs them): a row left pending by a process that died between
Redis and the database is completed from the record Redis keeps of the change, or dropped when
the change never ran; a recorded row whose record Redis still keeps has it forgotten.

Run by the scheduler's owner (one per cluster), at most once per EVERY_S and at its start; the
rules are in docs/metering.md ("A change's request id").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from aquafleet.models.service import (
    ChangeStage,
    ServiceBackend,
    ServiceChange,
    asked_of,
    copy_state,
)

# A row this young may belong to a try still waiting for Redis' answer: left to it. (Dropping
# one whose change then lands would still be safe: its try writes the row again.)
GRACE = dt.timedelta(minutes=5)
BATCH = 200  # most rows of each kind one pass looks at


@dataclass(frozen=True, slots=True)
class Recovered:
    completed: int = 0  # pending rows whose change ran: recorded as Redis' record says
    dropped: int = 0  # pending rows whose change never ran: deleted (a retry applies it once)
    settled: int = 0  # recorded rows whose record Redis has forgotten now

    def __bool__(self) -> bool:
        return bool(self.completed or self.dropped or self.settled)


async def recover_changes(
    backend: ServiceBackend, *, now: dt.datetime | None = None, grace: dt.timedelta = GRACE
) -> Recovered:
    """One pass over the rows written before `now - grace` that are not done."""
    now = now or dt.datetime.now(dt.UTC)
    completed = dropped = settled = 0
    pending = ServiceChange.filter(stage=ChangeStage.PENDING, created_at__lte=now - grace)
    for row in await pending.order_by("id").limit(BATCH):
        if await complete_pending(backend, row, now):
            completed += 1
        else:
            dropped += await ServiceChange.filter(id=row.id, stage=ChangeStage.PENDING).delete()
    unsettled = ServiceChange.filter(stage=ChangeStage.UNSETTLED, created_at__lte=now - grace)
    for row in await unsettled.order_by("id").limit(BATCH):
        if row.request_id is not None and await backend.settle(row.did, row.request_id):
            settled += await ServiceChange.filter(id=row.id, stage=ChangeStage.UNSETTLED).update(
                stage=ChangeStage.DONE
            )
    return Recovered(completed, dropped, settled)


async def complete_pending(backend: ServiceBackend, row: ServiceChange, now: dt.datetime) -> bool:
    """Complete `row` (pending) when Redis ran its change: with the state right after it from
    its record (the live state when Redis kept none), and let Redis forget the record. False:
    the change never ran, nothing is changed."""
    assert row.request_id is not None
    recalled = await backend.recall(row.did, row.request_id)
    applied, marked = recalled[0], recalled[1]
    if not applied:
        return False
    live = await backend.change(row.did, "read")
    state: Any = live[1]
    after: Any = state if marked is None else marked.state
    values: dict[str, Any] = {
        "remaining_ml": after.remaining_ml, "rental_expires_at": after.rental_expires_at,
        "lock_bits": after.lock_bits, "version": after.version,
    }  # fmt: skip
    if marked is not None:  # what ran: a recomputed configure's first values, say
        values.update(op=marked.op, request_args=list(marked.args))
        if marked.op == "configure":
            values["amount_ml"] = asked_of("configure", marked.args).get("remaining_ml")
    done = await ServiceChange.filter(id=row.id, stage=ChangeStage.PENDING).update(
        stage=ChangeStage.UNSETTLED, **values
    )
    if done and state.mode is not None:
        await copy_state(row.did, state, now)
    if await backend.settle(row.did, row.request_id):
        await ServiceChange.filter(id=row.id, stage=ChangeStage.UNSETTLED).update(
            stage=ChangeStage.DONE
        )
    return True


class ChangeRecovery:
    """Runs recover_changes at most once per EVERY_S (the first call at once: the start)."""

    EVERY_S = 60

    def __init__(self, backend: ServiceBackend) -> None:
        self.backend = backend
        self.next_at = 0.0

    async def maybe_recover(self, now: dt.datetime) -> Recovered:
        if now.timestamp() < self.next_at:
            return Recovered()
        self.next_at = now.timestamp() + self.EVERY_S
        return await recover_changes(self.backend, now=now)
