"""The recovery pass of service changes made under a request id (models/service.py writes
their row PENDING before Redis runs them): a row left pending by a process that died between
Redis and the database is completed from the record Redis keeps of the change, or dropped when
the change never ran; a recorded row whose record Redis still keeps has it forgotten; a change
Redis ran whose row rolled back with its caller's transaction is recorded from Redis' record.

Run by the scheduler's owner (one per cluster), at most once per EVERY_S and at its start; the
rules are in docs/metering.md ("A change's request id").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from aquafleet.models.service import (
    ChangeStage,
    ServiceBackend,
    ServiceChange,
    asked_of,
    copy_state,
    record_applied,
)

# A row this young may belong to a try still waiting for Redis' answer: left to it. (Dropping
# one whose change then lands would still be safe: its try writes the row again.)
GRACE = dt.timedelta(minutes=5)
BATCH = 200  # most rows of each kind one pass looks at
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Recovered:
    completed: int = 0  # pending rows whose change ran: recorded as Redis' record says
    dropped: int = 0  # pending rows whose change never ran: deleted (a retry applies it once)
    settled: int = 0  # recorded rows whose record Redis has forgotten now
    recorded: int = 0  # changes Redis ran whose row rolled back: recorded from Redis' record

    def __bool__(self) -> bool:
        return bool(self.completed or self.dropped or self.settled or self.recorded)


class RecoveryBackend(ServiceBackend, Protocol):
    """The live store as the recovery pass uses it (gateway.service_state.ServiceStore):
    `unrecorded_due` lists the unrecorded records applied at or before a time (DueRecord:
    did, request_id, applied_ms), `unindex` stops listing one."""

    async def unrecorded_due(self, upto_ms: int, limit: int) -> list[Any]: ...

    async def unindex(self, did: str, request_id: str) -> None: ...


async def recover_changes(
    backend: RecoveryBackend, *, now: dt.datetime | None = None, grace: dt.timedelta = GRACE
) -> Recovered:
    """One pass over the rows written before `now - grace` that are not done, then over the
    records Redis keeps of changes applied before then (record_unrecorded)."""
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
    recorded, settled_too = await record_unrecorded(backend, now - grace)
    return Recovered(completed, dropped, settled + settled_too, recorded)


ROLLED_BACK = "applied in Redis; its row rolled back with its caller's transaction"


async def record_unrecorded(backend: RecoveryBackend, before: dt.datetime) -> tuple[int, int]:
    """The records Redis keeps of changes applied before `before`: (recorded, settled). One
    whose row is recorded is forgotten (settled); one with no row ran in Redis and its row
    rolled back with its caller's transaction (or its process died before it committed): it
    is recorded as it was applied, from the record, and then forgotten, so the row holds the
    request id's promise from then on. One with a pending row is the pending pass's."""
    due = await backend.unrecorded_due(int(before.timestamp() * 1000), BATCH)
    if not due:
        return 0, 0
    stages = {
        (did, request_id): ChangeStage(stage)
        for did, request_id, stage in await ServiceChange.filter(
            request_id__in=sorted({item.request_id for item in due})
        ).values_list("did", "request_id", "stage")
    }
    recorded = settled = 0
    for item in due:
        stage = stages.get((item.did, item.request_id))
        if stage is ChangeStage.PENDING:
            continue
        if stage is None:
            if not await _record_rolled_back(backend, item):
                continue
            recorded += 1
        if not await backend.settle(item.did, item.request_id):
            continue  # the unsettled pass tries again
        settled += stage is not None
        await ServiceChange.filter(
            did=item.did, request_id=item.request_id, stage=ChangeStage.UNSETTLED
        ).update(stage=ChangeStage.DONE)
    return recorded, settled


async def _record_rolled_back(backend: RecoveryBackend, item: Any) -> bool:
    """Record the change Redis ran under `item`'s request id from its record (UNSETTLED);
    False when there is nothing to record (none kept, or a record that does not tell the
    change: left in Redis, out of the index)."""
    recalled = await backend.recall(item.did, item.request_id)
    applied, marked = recalled[0], recalled[1]
    if not applied or marked is None:
        await backend.unindex(item.did, item.request_id)
        return False
    asked = asked_of(marked.op, marked.args)
    await record_applied(
        item.did, marked.op, marked.state, actor="recovery", reason=ROLLED_BACK,
        request_id=item.request_id, request_args=list(marked.args),
        amount_ml=asked.get("ml", asked.get("remaining_ml")),
        seconds=marked.args[0] if marked.op == "extend" else None,
        now=dt.datetime.fromtimestamp(item.applied_ms / 1000, dt.UTC),
        stage=ChangeStage.UNSETTLED,
    )  # fmt: skip
    log.warning(
        "service_change_recorded_from_redis", did=item.did, request_id=item.request_id,
        op=marked.op, reason=ROLLED_BACK,
    )  # fmt: skip
    return True


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


class UpgradingBackend(RecoveryBackend, Protocol):
    """The live store with the upgrade's one-off step (ServiceStore.carry_old_records)."""

    async def carry_old_records(self, rows_of: Any) -> Any: ...


async def rows_of(pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of the (did, request id) pairs the database has a row of, in any stage."""
    found: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start : start + BATCH]
        rows = await ServiceChange.filter(
            request_id__in=sorted({request_id for _did, request_id in chunk})
        ).values_list("did", "request_id")
        found.update((did, request_id) for did, request_id in rows)
    return found


class ChangeRecovery:
    """Runs recover_changes at most once per EVERY_S (the first call at once: the start);
    before its first pass, the upgrade's one-off step (once per Redis: it keeps a flag)."""

    EVERY_S = 60

    def __init__(self, backend: UpgradingBackend) -> None:
        self.backend = backend
        self.next_at = 0.0
        self.carried = False

    async def maybe_recover(self, now: dt.datetime) -> Recovered:
        if now.timestamp() < self.next_at:
            return Recovered()
        self.next_at = now.timestamp() + self.EVERY_S
        if not self.carried:
            done = await self.backend.carry_old_records(rows_of)
            self.carried = True
            if done.indexed or done.carried:
                log.info("service_records_carried", indexed=done.indexed, carried=done.carried)
        return await recover_changes(self.backend, now=now)
