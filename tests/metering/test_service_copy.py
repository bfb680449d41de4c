"""The database's copy of a device's service state (DeviceService), on SQLite and PostgreSQL with
real Redis: it only moves forward, whatever order racing changes finish in."""

from __future__ import annotations

import asyncio
import time
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


async def test_a_hand_back_before_the_recipient_was_configured_returns_the_amount_handed_over(
    node_factory: Any, database_url: str
):
    """The exchange failed between the hand-over and the new device's configure: the old
    device gets the amount handed over back, the new one is left as it was, and a late
    configure with the exchange's request id no longer lands (the quota is on one device)."""
    node = await node_factory(database_url=database_url)
    old, new = await register_devices(node, 2)
    store = node.app[SERVICE_STORE]
    await service.configure(
        store, old.did, ServiceMode.VOLUME_RENTAL, remaining_ml=700, actor=ACTOR
    )
    await service.hand_over(
        store, old.did, recipient=new.did, actor=ACTOR, reason="t", request_id="T1"
    )
    back = await service.hand_back(
        store, old.did, request_id="T1", lock_request_id="T1:lock", actor=ACTOR, reason="t"
    )
    assert back == service.HandBack(new.did, 700)
    again = await service.hand_back(
        store, old.did, request_id="T1", lock_request_id="T1:lock", actor=ACTOR, reason="t"
    )
    assert again == back  # a retry gives nothing twice
    returned = await store.read(old.did)
    assert (returned.remaining_ml, returned.locked) == (700, False)
    assert (await store.read(new.did)).mode is None  # never configured
    late = await service.configure(
        store, new.did, ServiceMode.VOLUME_RENTAL, remaining_ml=700, actor=ACTOR,
        request_id="T1",
    )  # fmt: skip
    assert late.already_applied and (await store.read(new.did)).mode is None
    with pytest.raises(service.HandedBack):
        await service.hand_over(
            store, old.did, recipient=new.did, actor=ACTOR, reason="t", request_id="T1"
        )
    assert (await store.read(old.did)).remaining_ml == 700
    nothing = await service.hand_back(
        store, old.did, request_id="T2", lock_request_id=None, actor=ACTOR, reason="t"
    )
    assert nothing == service.HandBack(None, None)  # no hand-over under T2: nothing done
    assert (await store.read(old.did)).version == returned.version


async def test_a_hand_back_of_a_time_rental_lifts_only_the_exchanges_own_lock(
    node_factory: Any, database_url: str
):
    """A time rental moves no quota: the new device's expiry is cleared (locked as expired)
    and the old one keeps its expiry; the person's lock the exchange set is lifted, one a
    person had set before the exchange stays."""
    node = await node_factory(database_url=database_url)
    old, new, held, spare = await register_devices(node, 4)
    store = node.app[SERVICE_STORE]
    expires = int(time.time()) + 20 * 86_400
    for did in (old.did, held.did):
        await service.configure(
            store, did, ServiceMode.TIME_RENTAL, rental_expires_at=expires, actor=ACTOR
        )
    await service.lock(store, held.did, actor=ACTOR, reason="unpaid repair")  # before
    for source, target in ((old.did, new.did), (held.did, spare.did)):
        await service.hand_over(
            store, source, recipient=target, actor=ACTOR, reason="t", request_id="T1"
        )
        await service.configure(
            store, target, ServiceMode.TIME_RENTAL, rental_expires_at=expires, actor=ACTOR,
            request_id="T1",
        )  # fmt: skip
        await service.lock(store, source, actor=ACTOR, reason="exchanged", request_id="T1:lock")
        back = await service.hand_back(
            store, source, request_id="T1", lock_request_id="T1:lock", actor=ACTOR, reason="t"
        )
        assert back == service.HandBack(target, None)
        emptied = await store.read(target)
        assert (emptied.rental_expires_at, emptied.lock_reasons) == (None, ["rental_expired"])
    returned, still = await store.read(old.did), await store.read(held.did)
    assert (returned.rental_expires_at, returned.locked) == (expires, False)
    assert (still.rental_expires_at, still.lock_reasons) == (expires, ["manual"])
