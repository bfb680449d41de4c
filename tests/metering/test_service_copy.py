"""The database's copy of a device's service state (DeviceService), on SQLite and PostgreSQL with
real Redis: it only moves forward, whatever order racing changes finish in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import service
from aquafleet.models.service import DeviceService, HandedOverElsewhere, ServiceMode
from tests.devices import register_devices

ACTOR = "test-admin"


class HeldStore:
    """The live store, holding back Redis's answer to a change until released: the change is
    applied in Redis, its copy not written yet."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.answered = asyncio.Event()
        self.release = asyncio.Event()

    async def change(self, did: str, op: str, *args: int | None, **options: Any) -> Any:
        answer = await self.store.change(did, op, *args, **options)
        self.answered.set()
        await self.release.wait()
        return answer


async def test_an_older_changes_copy_landing_last_does_not_overwrite_a_newer_one(
    node_factory: Any, database_url: str
):
    node = await node_factory(database_url=database_url)
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    await service.configure(
        store, dev.did, ServiceMode.VOLUME_RENTAL, remaining_ml=1000, actor=ACTOR
    )
    held = HeldStore(store)
    older = asyncio.ensure_future(service.top_up(held, dev.did, 100, actor=ACTOR))
    try:
        await asyncio.wait_for(held.answered.wait(), 5)  # applied in Redis: 1100 ml
        newer = await service.top_up(store, dev.did, 200, actor=ACTOR)  # 1300 ml, copied
        held.release.set()
        first = await older  # its copy (1100 ml) lands last
    finally:
        held.release.set()
        await asyncio.gather(older, return_exceptions=True)

    assert (first.remaining_ml, newer.remaining_ml) == (1100, 1300)
    assert first.version < newer.version
    copy = await DeviceService.get(did=dev.did)
    live = await store.read(dev.did)
    assert (copy.remaining_ml, copy.version) == (1300, newer.version)
    assert (copy.remaining_ml, copy.version) == (live.remaining_ml, live.version)


async def test_a_handover_takes_the_quota_once_and_its_retry_answers_the_same_amount(
    node_factory: Any, database_url: str
):
    """An exchange retried after a failure half way gives the replacement what the old device
    had then, not the nothing it has left since."""
    node = await node_factory(database_url=database_url)
    (dev,) = await register_devices(node, 1)
    store = node.app[SERVICE_STORE]
    await service.configure(
        store, dev.did, ServiceMode.VOLUME_RENTAL, remaining_ml=700, actor=ACTOR
    )
    given = await service.hand_over(
        store, dev.did, recipient="NEW1", actor=ACTOR, reason="t", request_id="T1"
    )
    again = await service.hand_over(
        store, dev.did, recipient="NEW1", actor=ACTOR, reason="t", request_id="T1"
    )
    assert (given.mode, given.remaining_ml) == (ServiceMode.VOLUME_RENTAL, 700)
    assert again == given
    left = await store.read(dev.did)
    assert (left.remaining_ml, left.lock_reasons) == (0, ["quota_exhausted"])
    copy = await DeviceService.get(did=dev.did)
    assert (copy.remaining_ml, copy.version) == (0, left.version)
    other = await service.hand_over(
        store, dev.did, recipient="NEW2", actor=ACTOR, reason="t", request_id="T2"
    )
    assert other.remaining_ml == 0  # another exchange finds nothing left


async def test_a_handover_is_bound_to_its_recipient_and_old_markers_still_answer(
    node_factory: Any, database_url: str
):
    """A retried hand-over naming another recipient is refused, naming the one that received
    the quota; a marker written before recipients were kept (the amount only) still answers."""
    node = await node_factory(database_url=database_url)
    dev, older = await register_devices(node, 2)
    store = node.app[SERVICE_STORE]
    await service.configure(
        store, dev.did, ServiceMode.VOLUME_RENTAL, remaining_ml=700, actor=ACTOR
    )
    given = await service.hand_over(
        store, dev.did, recipient="NEW1", actor=ACTOR, reason="t", request_id="T1"
    )
    with pytest.raises(HandedOverElsewhere, match="to device NEW1") as refused:
        await service.hand_over(
            store, dev.did, recipient="NEW2", actor=ACTOR, reason="t", request_id="T1"
        )
    assert (refused.value.code, refused.value.received_by) == ("handed_over_elsewhere", "NEW1")
    again = await service.hand_over(
        store, dev.did, recipient="NEW1", actor=ACTOR, reason="t", request_id="T1"
    )
    assert given.remaining_ml == again.remaining_ml == 700

    await service.configure(
        store, older.did, ServiceMode.VOLUME_RENTAL, remaining_ml=0, actor=ACTOR
    )
    await store.client.set(store.keyspace.service_request(older.did, "T0"), "500")
    legacy = await service.hand_over(
        store, older.did, recipient="NEW3", actor=ACTOR, reason="t", request_id="T0"
    )
    assert legacy.remaining_ml == 500
