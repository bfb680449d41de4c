"""A service change's request id across the two stores, on SQLite and PostgreSQL with real Redis:
Redis applies the change and marks the request id, then the database records it. A process
that dies between the two, and a retry that comes after the marker expired, still apply the
change exactly once and record what it did."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.service import ServiceChange, ServiceMode, ServiceRequestReused
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
    assert not await ServiceChange.exists(did=did, request_id="pay-1")
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
