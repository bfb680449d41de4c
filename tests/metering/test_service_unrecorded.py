"""What Redis keeps of a service change for the database (the device's unrecorded hash
`sa:<did>`) after the change's row went: on SQLite and PostgreSQL with real Redis. A change
whose row rolled back with its caller's transaction is recorded by the recovery pass, and the
hash does not keep it forever; the upgrade's one-off step carries markers written before
records were kept, so a late retry of such a change is not granted twice."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from tortoise.transactions import in_transaction

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.service import ChangeStage, ServiceChange, ServiceMode
from aquafleet.models.service_pending import (
    GRACE,
    ROLLED_BACK,
    ChangeRecovery,
    Recovered,
    recover_changes,
)
from tests.devices import register_devices

ACTOR = "test-admin"


class RolledBack(Exception):
    """The caller's transaction failed after the change (a device bound meanwhile, say)."""


async def _device(node_factory: Any, database_url: str, mode: ServiceMode) -> tuple[Any, str]:
    # No scheduler in the node: its own recovery pass would race the test's.
    node = await node_factory(database_url=database_url, rental_scheduler=False)
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    if mode is ServiceMode.VOLUME_RENTAL:
        await service.configure(store, dev.did, mode, remaining_ml=1000, actor=ACTOR)
    else:
        await service.configure(store, dev.did, mode, rental_expires_at=2_000_000_000, actor=ACTOR)
    return store, dev.did


async def _unrecorded(store: Any, did: str) -> dict[Any, Any]:
    return dict(await store.client.hgetall(store.keyspace.service_unrecorded(did)))


async def _indexed(store: Any, did: str) -> list[Any]:
    index = store.keyspace.service_unrecorded_index(store.keyspace.shard_of(did))
    return list(await store.client.zrange(index, 0, -1))


async def _lose_marker(store: Any, did: str, request_id: str) -> None:
    """The request's marker is gone (expired a week after the change)."""
    assert await store.client.delete(store.keyspace.service_request(did, request_id)) == 1


async def _upgrade(store: Any) -> Recovered:
    """The first recovery pass of this release on a Redis the release before used (the test
    node's own first pass ran before the test wrote what the release before left)."""
    await store.client.delete(store.keyspace.service_carried)
    return await ChangeRecovery(store).maybe_recover(dt.datetime.now(dt.UTC))


def _later() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + GRACE + dt.timedelta(seconds=1)


async def test_a_top_up_whose_row_rolled_back_with_its_caller_is_recorded_by_the_recovery_pass(
    node_factory: Any, database_url: str
):
    """Redis granted 500 ml inside the caller's transaction, which then rolled back and was
    never retried (the order failed for another reason): the water is on the device with no
    row. The recovery pass records it as it was applied (who: the recovery; the state right
    after it) and Redis forgets its record; a retry after the marker expired is answered
    from the row and grants nothing."""
    store, did = await _device(node_factory, database_url, ServiceMode.VOLUME_RENTAL)
    with pytest.raises(RolledBack):
        async with in_transaction("default"):
            await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
            raise RolledBack
    applied = await store.read(did)
    assert applied.remaining_ml == 1500
    assert not await ServiceChange.exists(did=did, request_id="order:P1")
    await service.top_up(store, did, 200, actor=ACTOR)  # 1700 ml since

    young = await recover_changes(store)  # its caller may still be committing: left
    assert young == Recovered() and len(await _unrecorded(store, did)) == 1
    found = await recover_changes(store, now=_later())

    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.op, row.amount_ml, row.request_args) == (
        ChangeStage.DONE, "topup", 500, [500],
    )  # fmt: skip
    assert (row.remaining_ml, row.version) == (1500, applied.version)
    assert (row.actor, row.reason) == ("recovery", ROLLED_BACK)
    assert await _unrecorded(store, did) == {} and await _indexed(store, did) == []
    assert found == Recovered(recorded=1)
    await _lose_marker(store, did, "order:P1")
    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
    assert retry.already_applied and (await store.read(did)).remaining_ml == 1700
    assert await ServiceChange.filter(did=did, request_id="order:P1").count() == 1


async def test_a_rental_extension_whose_row_rolled_back_is_recorded_once(
    node_factory: Any, database_url: str
):
    """The same for rental time: the 30 days granted are recorded with their seconds and the
    expiry after them; a second pass finds nothing left to do."""
    store, did = await _device(node_factory, database_url, ServiceMode.TIME_RENTAL)
    with pytest.raises(RolledBack):
        async with in_transaction("default"):
            await service.extend_rental(store, did, days=30, actor=ACTOR, request_id="order:R1")
            raise RolledBack

    assert await recover_changes(store, now=_later()) == Recovered(recorded=1)
    assert await recover_changes(store, now=_later()) == Recovered()

    row = await ServiceChange.get(did=did, request_id="order:R1")
    assert (row.stage, row.op, row.seconds, row.rental_expires_at) == (
        ChangeStage.DONE, "extend", 30 * 86_400, 2_000_000_000 + 30 * 86_400,
    )  # fmt: skip
    assert await _unrecorded(store, did) == {}
    retry = await service.extend_rental(
        store, did, package="30d", actor=ACTOR, request_id="order:R1"
    )
    assert retry.already_applied and retry.rental_expires_at == 2_000_000_000 + 30 * 86_400


async def test_a_record_of_the_release_before_is_indexed_and_recorded_at_the_upgrade(
    node_factory: Any, database_url: str
):
    """A change whose row rolled back under the release before: its record is in the device's
    hash, not in the index (there was none). The upgrade's step indexes it, the first pass
    records it, and the hash is empty."""
    store, did = await _device(node_factory, database_url, ServiceMode.VOLUME_RENTAL)
    with pytest.raises(RolledBack):
        async with in_transaction("default"):
            await service.top_up(store, did, 500, actor=ACTOR, request_id="order:P1")
            raise RolledBack
    marker = store.keyspace.service_request(did, "order:P1")
    index = store.keyspace.service_unrecorded_index(store.keyspace.shard_of(did))
    await store.client.zrem(index, marker)  # as the release before left it
    await store.client.pexpire(marker, 86_400_000)  # applied six days ago

    found = await _upgrade(store)

    assert found == Recovered(recorded=1)
    row = await ServiceChange.get(did=did, request_id="order:P1")
    assert (row.stage, row.op, row.remaining_ml) == (ChangeStage.DONE, "topup", 1500)
    assert abs((dt.datetime.now(dt.UTC) - row.created_at).days - 6) <= 1  # when it was applied
    assert await _unrecorded(store, did) == {} and await _indexed(store, did) == []


async def _grant_as_the_old_release(store: Any, did: str, request_id: str, ml: int) -> None:
    """A top-up applied by a release before markers kept records: the grant and a bare "1"
    marker for a week (its row was then written after Redis, or never when the process died)."""
    await store.change(did, "topup", ml)
    await store.client.set(store.keyspace.service_request(did, request_id), "1", ex=604_800)


async def test_a_change_of_the_old_release_without_a_row_is_not_granted_again_after_its_week(
    node_factory: Any, database_url: str
):
    """Applied before records were kept, its process died before the row: within its marker's
    week a retry records it; after the week it used to be granted again. The upgrade's step
    carries the marker into the device's hash, so the retry after the week is answered
    applied and recorded (with the live state: the marker never told more)."""
    store, did = await _device(node_factory, database_url, ServiceMode.VOLUME_RENTAL)
    await _grant_as_the_old_release(store, did, "order:OLD", 500)
    await _grant_as_the_old_release(store, did, "order:ROW", 300)  # this one has its row
    await ServiceChange.create(
        did=did, op="topup", amount_ml=300, actor=ACTOR, request_id="order:ROW",
        created_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    assert (await store.read(did)).remaining_ml == 1800

    await _upgrade(store)
    await _lose_marker(store, did, "order:OLD")
    await _lose_marker(store, did, "order:ROW")

    assert list(await _unrecorded(store, did)) == [
        store.keyspace.service_request(did, "order:OLD").encode()
    ]  # the one with a row needs nothing: its row answers
    retry = await service.top_up(store, did, 500, actor=ACTOR, request_id="order:OLD")
    assert retry.already_applied and (await store.read(did)).remaining_ml == 1800
    row = await ServiceChange.get(did=did, request_id="order:OLD")
    assert (row.stage, row.remaining_ml) == (ChangeStage.DONE, 1800)
    assert await _unrecorded(store, did) == {}
    again = await service.top_up(store, did, 300, actor=ACTOR, request_id="order:ROW")
    assert again.already_applied and (await store.read(did)).remaining_ml == 1800


async def test_the_upgrade_step_runs_once_and_leaves_the_exchanges_markers(
    node_factory: Any, database_url: str
):
    """An exchange's own markers ("amount|did", "taken|ml") are no changes of models/service.py
    and are not carried; a second node's start does not scan again."""
    store, did = await _device(node_factory, database_url, ServiceMode.VOLUME_RENTAL)
    await store.client.set(store.keyspace.service_request(did, "T1"), "700|ACME0000000000FF")
    await store.client.set(store.keyspace.service_request(did, "T2"), "taken|700")

    await _upgrade(store)
    assert await _unrecorded(store, did) == {}
    await _grant_as_the_old_release(store, did, "order:LATE", 500)
    await ChangeRecovery(store).maybe_recover(dt.datetime.now(dt.UTC))
    assert await _unrecorded(store, did) == {}  # carried once, at the upgrade
