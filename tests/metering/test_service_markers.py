"""A service change's request id across the two stores, on SQLite and PostgreSQL with real Redis:
Redis applies the change and marks the request id, then the database records it. A process
that dies between the two, and a retry that comes after the marker expired, still apply the
change exactly once and record what it did."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from tortoise.exceptions import OperationalError
from tortoise.transactions import in_transaction

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.service import (
    ChangeStage,
    ServiceChange,
    ServiceMode,
    ServiceRequestReused,
)
from aquafleet.models.service_pending import GRACE, Recovered, recover_changes
from tests.devices import register_devices

ACTOR = "test-admin"


class Died(Exception):
    """The process died here."""


class DyingStore:
    """The live store, the process dying right after Redis answered a change: Redis applied it
    and marked its request id, the database never heard of it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def change(self, did: str, op: str, *args: int | None, **options: Any) -> Any:
        await self.store.change(did, op, *args, **options)
        raise Died


class DiedBeforeRedis:
    """The live store, the process dying before the change reached Redis."""

    async def change(self, did: str, op: str, *args: int | None, **options: Any) -> Any:
        raise Died


async def _volume_device(node_factory: Any, database_url: str, ml: int) -> tuple[Any, str]:
    node = await node_factory(database_url=database_url)
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    await service.configure(store, dev.did, ServiceMode.VOLUME_RENTAL, remaining_ml=ml, actor=ACTOR)
    return store, dev.did


async def _expire_marker(store: Any, did: str, request_id: str) -> None:
    """Let the request's marker run out, as it does a week after the change."""
    marker = store.keyspace.service_request(did, request_id)
    assert await store.client.exists(marker)
    await store.client.pexpire(marker, 1)
    for _ in range(100):
        if not await store.client.exists(marker):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the marker did not expire")


async def test_a_retry_after_a_crash_between_redis_and_the_database_records_what_was_applied(
    node_factory: Any, database_url: str
):
    """The top-up landed in Redis, the process died before its row; the device changed again
    since (another top-up). The retry records the top-up as it was applied (the balance and
    version right after it), not the state the device is in when the retry comes."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    with pytest.raises(Died):
        await service.top_up(DyingStore(store), did, 500, actor=ACTOR, request_id="pay-1")
    applied = await store.read(did)
    assert applied.remaining_ml == 1500
    await service.top_up(store, did, 200, actor=ACTOR)  # 1700 ml, a later version

    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="pay-1")

    assert retry.already_applied and not retry.applied
    assert retry.remaining_ml == 1700  # applied once: the live balance
    row = await ServiceChange.get(did=did, request_id="pay-1")
    assert (row.op, row.amount_ml, row.request_args) == ("topup", 500, [500])
    assert (row.remaining_ml, row.version) == (1500, applied.version)


async def test_another_change_under_a_request_id_redis_applied_before_the_crash_is_refused(
    node_factory: Any, database_url: str
):
    """Redis applied a 500 ml top-up under pay-1, the database never recorded it; a 900 ml
    top-up under pay-1 is refused (409 idempotency_key_reused), not answered as applied and
    recorded as the 900 ml that never landed."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    with pytest.raises(Died):
        await service.top_up(DyingStore(store), did, 500, actor=ACTOR, request_id="pay-1")

    with pytest.raises(ServiceRequestReused, match="ml 500, not 900") as refused:
        await service.top_up(store, did, 900, actor=ACTOR, request_id="pay-1")
    assert refused.value.code == "idempotency_key_reused"
    assert refused.value.data == {"op": "top_up", "ml": 500}
    with pytest.raises(ServiceRequestReused, match="op top_up, not extend"):
        await service.extend_rental(store, did, days=30, actor=ACTOR, request_id="pay-1")
    assert (await store.read(did)).remaining_ml == 1500
    row = await ServiceChange.get(did=did, request_id="pay-1")  # as it was before Redis ran it
    assert (row.stage, row.request_args, row.remaining_ml) == (ChangeStage.PENDING, [500], None)
    # The same change again finishes the job: recorded as it was applied.
    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="pay-1")
    assert retry.already_applied and retry.remaining_ml == 1500
    row = await ServiceChange.get(did=did, request_id="pay-1")
    assert (row.amount_ml, row.remaining_ml) == (500, 1500)


async def test_a_top_up_retried_after_its_marker_expired_is_not_applied_again(
    node_factory: Any, database_url: str
):
    """The database recorded the top-up; a retry after its Redis marker expired finds the
    row and applies nothing: the water is granted once."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    first = await service.top_up(store, did, 500, actor=ACTOR, request_id="pay-1")
    assert first.applied and first.remaining_ml == 1500
    await _expire_marker(store, did, "pay-1")

    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="pay-1")

    assert retry.already_applied and not retry.applied
    assert (retry.remaining_ml, retry.version) == (1500, first.version)
    assert (await store.read(did)).remaining_ml == 1500
    assert await ServiceChange.filter(did=did, request_id="pay-1").count() == 1
    with pytest.raises(ServiceRequestReused, match="ml 500, not 900"):
        await service.top_up(store, did, 900, actor=ACTOR, request_id="pay-1")
    assert (await store.read(did)).remaining_ml == 1500


async def test_a_rental_extension_retried_after_its_marker_expired_is_not_applied_again(
    node_factory: Any, database_url: str
):
    """The same for rental time: a renewal's 30 days retried after the marker expired are
    not granted a second time."""
    node = await node_factory(database_url=database_url)
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    expires = 2_000_000_000
    await service.configure(
        store, dev.did, ServiceMode.TIME_RENTAL, rental_expires_at=expires, actor=ACTOR
    )
    first = await service.extend_rental(store, dev.did, days=30, actor=ACTOR, request_id="order:R1")
    assert first.rental_expires_at == expires + 30 * 86_400
    await _expire_marker(store, dev.did, "order:R1")

    retry = await service.extend_rental(
        store, dev.did, package="30d", actor=ACTOR, request_id="order:R1"
    )

    assert retry.already_applied and retry.rental_expires_at == expires + 30 * 86_400
    assert (await store.read(dev.did)).rental_expires_at == expires + 30 * 86_400


# ------------------------------------------------------- pending rows (written before Redis)


class RowWriteFailed(OperationalError):
    """The database failed writing the change's row (after Redis ran the change)."""


def _fail_row_write_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next change's row (completing its pending row) fails, as a database that went away
    between Redis' answer and the row would."""
    real = service.record_applied
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RowWriteFailed("connection lost")
        await real(*args, **kwargs)

    monkeypatch.setattr(service, "record_applied", failing)


async def _lose_marker(store: Any, did: str, request_id: str) -> None:
    """The request's marker is gone (expired a week after the change, or deleted)."""
    assert await store.client.delete(store.keyspace.service_request(did, request_id)) == 1


async def _unrecorded(store: Any, did: str) -> dict[Any, Any]:
    return dict(await store.client.hgetall(store.keyspace.service_unrecorded(did)))


async def test_a_top_up_whose_row_failed_is_granted_once_when_retried_after_its_marker_is_gone(
    node_factory: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Redis granted 500 ml, the row's write failed; the retry comes after the marker is
    gone (a week later). The water is granted once and the row ends complete, with the state
    right after the top-up."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    _fail_row_write_once(monkeypatch)
    with pytest.raises(RowWriteFailed):
        await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    applied = await store.read(did)
    assert applied.remaining_ml == 1500
    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert row.stage is ChangeStage.PENDING
    await _lose_marker(store, did, "order:P1")

    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")

    assert retry.already_applied and not retry.applied
    assert (retry.remaining_ml, retry.version) == (1500, applied.version)
    assert (await store.read(did)).remaining_ml == 1500  # granted once
    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.op, row.amount_ml, row.request_args) == (
        ChangeStage.DONE, "topup", 500, [500],
    )  # fmt: skip
    assert (row.remaining_ml, row.version) == (1500, applied.version)
    assert await _unrecorded(store, did) == {}  # nothing left for Redis to keep
    again = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    assert again.already_applied and (await store.read(did)).remaining_ml == 1500


async def test_a_rental_extension_whose_row_failed_is_granted_once_after_its_marker_is_gone(
    node_factory: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    node = await node_factory(database_url=database_url)
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    expires = 2_000_000_000
    await service.configure(
        store, dev.did, ServiceMode.TIME_RENTAL, rental_expires_at=expires, actor=ACTOR
    )
    _fail_row_write_once(monkeypatch)
    with pytest.raises(RowWriteFailed):
        await service.extend_rental(store, dev.did, days=30, actor=ACTOR, request_id="order:R2")
    await _lose_marker(store, dev.did, "order:R2")

    retry = await service.extend_rental(
        store, dev.did, package="30d", actor=ACTOR, request_id="order:R2"
    )

    assert retry.already_applied
    assert (await store.read(dev.did)).rental_expires_at == expires + 30 * 86_400
    row = await ServiceChange.get(did=dev.did, request_id="order:R2")
    assert (row.stage, row.seconds, row.rental_expires_at) == (
        ChangeStage.DONE, 30 * 86_400, expires + 30 * 86_400,
    )  # fmt: skip


async def test_another_change_under_a_pending_request_id_is_refused_after_the_marker_is_gone(
    node_factory: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """A 900 ml top-up under the id of a 500 ml one whose row is pending is refused (409
    idempotency_key_reused), with or without the marker, and nothing is applied."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    _fail_row_write_once(monkeypatch)
    with pytest.raises(RowWriteFailed):
        await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    await _lose_marker(store, did, "order:P1")

    with pytest.raises(ServiceRequestReused, match="ml 500, not 900") as refused:
        await service.top_up(store, did, 900, actor=ACTOR, request_id="order:P1")
    assert refused.value.code == "idempotency_key_reused"
    with pytest.raises(ServiceRequestReused, match="op top_up, not extend"):
        await service.extend_rental(store, did, days=30, actor=ACTOR, request_id="order:P1")

    assert (await store.read(did)).remaining_ml == 1500
    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.request_args) == (ChangeStage.PENDING, [500])


async def test_the_recovery_pass_completes_a_pending_row_from_what_redis_kept(
    node_factory: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """No retry comes: the scheduler's recovery pass finds the pending row, learns from Redis
    that the top-up ran (its marker gone, the device's unrecorded record kept) and completes
    the row as it was applied; a later retry changes nothing."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    _fail_row_write_once(monkeypatch)
    with pytest.raises(RowWriteFailed):
        await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    applied = await store.read(did)
    await _lose_marker(store, did, "order:P1")
    await service.top_up(store, did, 200, actor=ACTOR)  # 1700 ml since

    young = await recover_changes(store)  # its try may still be waiting for Redis: left
    assert young == Recovered() and await _unrecorded(store, did) != {}
    later = dt.datetime.now(dt.UTC) + GRACE + dt.timedelta(seconds=1)
    assert await recover_changes(store, now=later) == Recovered(completed=1)

    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.amount_ml, row.request_args) == (ChangeStage.DONE, 500, [500])
    assert (row.remaining_ml, row.version) == (1500, applied.version)
    assert await _unrecorded(store, did) == {}
    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    assert retry.already_applied and (await store.read(did)).remaining_ml == 1700


async def test_a_change_that_never_reached_redis_is_applied_once_and_its_row_dropped_if_not(
    node_factory: Any, database_url: str
):
    """The process died after the pending row, before Redis: the retry applies the top-up
    (once). One never retried is dropped by the recovery pass: nothing ran under the id."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    with pytest.raises(Died):
        await service.top_up(DiedBeforeRedis(), did, 500, actor=ACTOR, request_id="order:P1")
    with pytest.raises(Died):
        await service.top_up(DiedBeforeRedis(), did, 300, actor=ACTOR, request_id="order:P2")
    assert (await store.read(did)).remaining_ml == 1000

    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    assert retry.applied and retry.remaining_ml == 1500
    later = dt.datetime.now(dt.UTC) + GRACE + dt.timedelta(seconds=1)
    assert await recover_changes(store, now=later) == Recovered(dropped=1)

    assert (await ServiceChange.get(did=did, request_id="order:P1")).stage is ChangeStage.DONE
    assert not await ServiceChange.exists(did=did, request_id="order:P2")
    assert (await store.read(did)).remaining_ml == 1500


async def test_a_change_in_a_transaction_that_rolled_back_is_not_granted_again(
    node_factory: Any, database_url: str
):
    """A change made inside the caller's transaction (a delivery's) that rolls back after
    Redis ran it: its row goes with the transaction, Redis keeps its record, and a retry
    after the marker is gone records it instead of granting it again."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    with pytest.raises(Died):
        async with in_transaction("default"):
            await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
            raise Died
    assert not await ServiceChange.exists(did=did, request_id="order:P1")
    await _lose_marker(store, did, "order:P1")

    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")

    assert retry.already_applied and (await store.read(did)).remaining_ml == 1500
    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.remaining_ml) == (ChangeStage.DONE, 1500)


async def test_a_change_with_a_request_id_is_recorded_done_and_leaves_nothing_in_redis(
    node_factory: Any, database_url: str
):
    """The usual path: one row, done; Redis keeps the marker only."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    first = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    assert first.applied and first.remaining_ml == 1500
    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.remaining_ml, row.version) == (ChangeStage.DONE, 1500, first.version)
    assert await _unrecorded(store, did) == {}
    assert await store.client.exists(store.keyspace.service_request(did, "order:P1"))


async def test_a_change_in_a_committed_transaction_is_settled_by_the_recovery_pass(
    node_factory: Any, database_url: str
):
    """Inside the caller's transaction Redis keeps the change's record (the row might roll
    back); once committed, the recovery pass lets Redis forget it."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    async with in_transaction("default"):
        await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.remaining_ml) == (ChangeStage.UNSETTLED, 1500)
    assert len(await _unrecorded(store, did)) == 1

    later = dt.datetime.now(dt.UTC) + GRACE + dt.timedelta(seconds=1)
    assert await recover_changes(store, now=later) == Recovered(settled=1)

    assert (await ServiceChange.get(did=did, request_id="order:P1")).stage is ChangeStage.DONE
    assert await _unrecorded(store, did) == {}
    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    assert retry.already_applied and (await store.read(did)).remaining_ml == 1500


async def test_service_show_marks_a_pending_change_and_does_not_name_it_as_the_locker(
    node_factory: Any, database_url: str
):
    """A lock whose try died before Redis is listed as pending; the lock in force is named as
    the one that ran."""
    from aquafleet.commands.service import _locks_and_history, _state_json

    store, did = await _volume_device(node_factory, database_url, 1000)
    await service.lock(store, did, actor="ops:lee", reason="unpaid invoice")
    with pytest.raises(Died):
        await service.lock(DiedBeforeRedis(), did, actor="ops:kim", request_id="T1")

    shown = await _locks_and_history(did, _state_json(did, await store.read(did)), 5)

    assert [(lock["kind"], lock["by"]) for lock in shown["locks"]] == [("manual", "ops:lee")]
    assert [(h["actor"], h["pending"]) for h in shown["history"][:2]] == [
        ("ops:kim", True), ("ops:lee", False),
    ]  # fmt: skip


async def test_racing_retries_of_a_pending_top_up_grant_it_once(
    node_factory: Any, database_url: str
):
    """Three retries at once of a top-up that never reached Redis: one applies it, the others
    answer it applied; one row, done."""
    store, did = await _volume_device(node_factory, database_url, 1000)
    with pytest.raises(Died):
        await service.top_up(DiedBeforeRedis(), did, 500, actor=ACTOR, request_id="order:P1")

    answers = await asyncio.gather(
        *(service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1") for _ in range(3))
    )

    assert sorted(a.applied for a in answers) == [False, False, True]
    assert (await store.read(did)).remaining_ml == 1500
    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.remaining_ml) == (ChangeStage.DONE, 1500)
