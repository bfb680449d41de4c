"""The database's copy of a device's service state (DeviceService), on SQLite and PostgreSQL with
real Redis: it only moves forward, whatever order racing changes finish in."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from aquafleet.gateway.appkeys import SERVICE_STORE
from aquafleet.models import handover, service
from aquafleet.models.handover import HandedOverElsewhere
from aquafleet.models.service import DeviceService, ServiceMode
from tests.devices import register_devices, telemetry

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
    given = await handover.hand_over(
        store, dev.did, recipient="NEW1", actor=ACTOR, reason="t", request_id="T1"
    )
    again = await handover.hand_over(
        store, dev.did, recipient="NEW1", actor=ACTOR, reason="t", request_id="T1"
    )
    assert (given.mode, given.remaining_ml) == (ServiceMode.VOLUME_RENTAL, 700)
    assert again == given
    left = await store.read(dev.did)
    assert (left.remaining_ml, left.lock_reasons) == (0, ["quota_exhausted"])
    copy = await DeviceService.get(did=dev.did)
    assert (copy.remaining_ml, copy.version) == (0, left.version)
    other = await handover.hand_over(
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
    given = await handover.hand_over(
        store, dev.did, recipient="NEW1", actor=ACTOR, reason="t", request_id="T1"
    )
    with pytest.raises(HandedOverElsewhere, match="to device NEW1") as refused:
        await handover.hand_over(
            store, dev.did, recipient="NEW2", actor=ACTOR, reason="t", request_id="T1"
        )
    assert (refused.value.code, refused.value.received_by) == ("handed_over_elsewhere", "NEW1")
    again = await handover.hand_over(
        store, dev.did, recipient="NEW1", actor=ACTOR, reason="t", request_id="T1"
    )
    assert given.remaining_ml == again.remaining_ml == 700

    await service.configure(
        store, older.did, ServiceMode.VOLUME_RENTAL, remaining_ml=0, actor=ACTOR
    )
    await store.client.set(store.keyspace.service_request(older.did, "T0"), "500")
    legacy = await handover.hand_over(
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
    await handover.hand_over(
        store, old.did, recipient=new.did, actor=ACTOR, reason="t", request_id="T1"
    )
    back = await handover.hand_back(
        store, old.did, request_id="T1", lock_request_id="T1:lock", actor=ACTOR, reason="t"
    )
    assert back == handover.HandBack(new.did, 700)
    again = await handover.hand_back(
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
    with pytest.raises(handover.HandedBack):
        await handover.hand_over(
            store, old.did, recipient=new.did, actor=ACTOR, reason="t", request_id="T1"
        )
    assert (await store.read(old.did)).remaining_ml == 700
    nothing = await handover.hand_back(
        store, old.did, request_id="T2", lock_request_id=None, actor=ACTOR, reason="t"
    )
    assert nothing == handover.HandBack(None, None)  # no hand-over under T2: nothing done
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
        await handover.hand_over(
            store, source, recipient=target, actor=ACTOR, reason="t", request_id="T1"
        )
        await service.configure(
            store, target, ServiceMode.TIME_RENTAL, rental_expires_at=expires, actor=ACTOR,
            request_id="T1",
        )  # fmt: skip
        await service.lock(store, source, actor=ACTOR, reason="exchanged", request_id="T1:lock")
        back = await handover.hand_back(
            store, source, request_id="T1", lock_request_id="T1:lock", actor=ACTOR, reason="t"
        )
        assert back == handover.HandBack(target, None)
        emptied = await store.read(target)
        assert (emptied.rental_expires_at, emptied.lock_reasons) == (None, ["rental_expired"])
    returned, still = await store.read(old.did), await store.read(held.did)
    assert (returned.rental_expires_at, returned.locked) == (expires, False)
    assert (still.rental_expires_at, still.lock_reasons) == (expires, ["manual"])


DAY_S = 86_400


def day(base: int, days: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(base + days * DAY_S, dt.UTC)


@pytest.mark.parametrize(
    ("exchange_day", "then", "cancel_day", "kept_day"),
    [
        (20, ("extend", 0, 30), 1, 31),  # a renewal paid while the exchange's period ran
        (20, ("set_expiry", 0, 30), 1, 11),  # an operator's later expiry: 10 days beyond it
        (2, ("extend", 5, 30), 6, 35),  # renewed after the exchange's expiry: all of it stays
        (20, ("extend", 0, 30), 25, 50),  # cancelled after the exchange's expiry: nothing of it
        (20, ("set_expiry", 0, 15), 1, None),  # an earlier expiry holds only the exchange's
        (20, None, 1, None),  # nothing added: the exchange's expiry goes, as before
    ],
)
async def test_a_hand_back_of_a_time_rental_leaves_the_time_others_gave_the_new_device(
    node_factory: Any, database_url: str,
    exchange_day: int, then: tuple[str, int, int] | None, cancel_day: int, kept_day: int | None,
):  # fmt: skip
    """The exchange gave the new device the old one's expiry; a renewal paid on the new device
    (or an operator's later expiry) stays on it after a cancel: the part of the exchange's
    period still to run at the cancel comes off, the rest stays; the old device keeps its own
    expiry (the exchange never took it). Days are counted from the test's start."""
    node = await node_factory(database_url=database_url)
    old, new = await register_devices(node, 2)
    store = node.app[SERVICE_STORE]
    base = int(time.time())
    expires = base + exchange_day * DAY_S
    await service.configure(
        store, old.did, ServiceMode.TIME_RENTAL, rental_expires_at=expires, actor=ACTOR,
        now=day(base, 0),
    )  # fmt: skip
    await handover.hand_over(
        store, old.did, recipient=new.did, actor=ACTOR, reason="t", request_id="T1",
        now=day(base, 0),
    )  # fmt: skip
    await service.configure(
        store, new.did, ServiceMode.TIME_RENTAL, rental_expires_at=expires, actor=ACTOR,
        request_id="T1", now=day(base, 0),
    )  # fmt: skip
    await service.lock(
        store, old.did, actor=ACTOR, reason="exchanged", request_id="T1:lock", now=day(base, 0)
    )
    if then is not None:
        op, at, value = then
        if op == "extend":
            await service.extend_rental(
                store, new.did, days=value, actor=ACTOR, request_id="O1", now=day(base, at)
            )
        else:
            await service.set_expiry(
                store, new.did, base + value * DAY_S, actor=ACTOR, now=day(base, at)
            )

    back = await handover.hand_back(
        store, old.did, request_id="T1", lock_request_id="T1:lock", actor=ACTOR, reason="t",
        now=day(base, cancel_day),
    )  # fmt: skip
    assert back == handover.HandBack(new.did, None)
    kept = await store.read(new.did)
    if kept_day is None:
        assert (kept.rental_expires_at, kept.lock_reasons) == (None, ["rental_expired"])
    else:
        assert (kept.rental_expires_at, kept.locked) == (base + kept_day * DAY_S, False)
    copy = await DeviceService.get(did=new.did)
    assert (copy.rental_expires_at, copy.version) == (kept.rental_expires_at, kept.version)
    shard = store.keyspace.shard_of(new.did)
    scheduled = await store.client.zscore(store.keyspace.rental_schedule("expiry", shard), new.did)
    assert scheduled == (None if kept_day is None else float(base + kept_day * DAY_S))
    returned = await store.read(old.did)
    assert (returned.rental_expires_at, returned.locked) == (expires, False)
    again = await handover.hand_back(
        store, old.did, request_id="T1", lock_request_id="T1:lock", actor=ACTOR, reason="t",
        now=day(base, cancel_day + 1),
    )  # fmt: skip
    assert again == back  # a retry takes nothing more
    assert (await store.read(new.did)).rental_expires_at == kept.rental_expires_at


async def exchanged(store: Any, old: str, new: str, remaining_ml: int) -> None:
    """An exchange up to its configure of `new` (request T1), before its binding: `old` had
    `remaining_ml` left, all of it handed over."""
    await service.configure(
        store, old, ServiceMode.VOLUME_RENTAL, remaining_ml=remaining_ml, actor=ACTOR
    )
    given = await handover.hand_over(
        store, old, recipient=new, actor=ACTOR, reason="t", request_id="T1"
    )
    assert given.remaining_ml == remaining_ml
    await service.configure(
        store, new, ServiceMode.VOLUME_RENTAL, remaining_ml=remaining_ml, actor=ACTOR,
        request_id="T1",
    )  # fmt: skip


async def cancelled(store: Any, old: str) -> handover.HandBack:
    return await handover.hand_back(
        store, old, request_id="T1", lock_request_id=None, actor=ACTOR, reason="t"
    )


async def test_a_hand_back_takes_what_is_left_of_the_amount_and_leaves_what_others_added(
    database_url: str, node_factory: Any, device_factory: Any
):  # the database first: it outlives the node, whose ledger writer stores records as it stops
    """The new device poured 200 ml of the 700 handed over, then a paid top-up added 5000: the
    cancel gives the old device 500 back and the top-up stays on the new device (water it
    metered before the exchange configured it is not counted)."""
    node = await node_factory(database_url=database_url)
    old, new = await register_devices(node, 2)
    store = node.app[SERVICE_STORE]
    device = device_factory(new.did, new.key, node.tcp_port)
    await device.login()
    boot = int(time.time())
    await device.send(telemetry(1, boot, 50))  # before the exchange: no quota to draw on
    await device.settled()
    await exchanged(store, old.did, new.did, 700)
    await device.send(telemetry(2, boot, 250))  # 200 ml of the 700
    await device.settled()
    assert (await store.read(new.did)).remaining_ml == 500
    await service.top_up(store, new.did, 5000, actor=ACTOR, request_id="O1")  # a paid order

    back = await cancelled(store, old.did)
    assert back == handover.HandBack(new.did, 500)
    returned, kept = await store.read(old.did), await store.read(new.did)
    assert (returned.remaining_ml, returned.locked) == (500, False)
    assert (kept.remaining_ml, kept.locked) == (5000, False)
    assert 200 + returned.remaining_ml + kept.remaining_ml == 700 + 5000  # none made or lost
    assert await cancelled(store, old.did) == back  # a retry gives nothing twice
    assert (await store.read(new.did)).remaining_ml == 5000


@pytest.mark.parametrize(
    ("handed_ml", "poured_ml", "then", "back_ml", "kept_ml"),
    [
        (700, 0, ("configure", 100), 100, 0),  # reconfigured lower: never more than it holds
        (700, 800, None, 0, -100),  # poured past it: nothing back, its own debt stays on it
        (-200, 0, ("top_up", 500), -200, 500),  # a debt goes back, the top-up stays
        (-200, 0, None, -200, 0),  # a debt nobody touched: as before
    ],
)
async def test_a_hand_back_gives_what_is_left_never_more_than_the_device_holds(
    database_url: str, node_factory: Any, device_factory: Any,
    handed_ml: int, poured_ml: int, then: tuple[str, int] | None, back_ml: int, kept_ml: int,
):  # fmt: skip
    node = await node_factory(database_url=database_url)
    old, new = await register_devices(node, 2)
    store = node.app[SERVICE_STORE]
    await exchanged(store, old.did, new.did, handed_ml)
    if poured_ml:
        device = device_factory(new.did, new.key, node.tcp_port)
        await device.login()
        await device.send(telemetry(1, int(time.time()), poured_ml))
        await device.settled()
    if then == ("configure", 100):
        await service.configure(
            store, new.did, ServiceMode.VOLUME_RENTAL, remaining_ml=100, actor=ACTOR
        )
    elif then is not None:
        await service.top_up(store, new.did, then[1], actor=ACTOR)

    back = await cancelled(store, old.did)
    assert back == handover.HandBack(new.did, back_ml)
    returned, kept = await store.read(old.did), await store.read(new.did)
    assert (returned.remaining_ml, returned.locked) == (back_ml, back_ml <= 0)
    assert (kept.remaining_ml, kept.locked) == (kept_ml, kept_ml <= 0)


async def test_a_hand_back_after_a_configure_marker_from_before_takes_all_the_device_holds(
    node_factory: Any, database_url: str
):
    """A configure marker written before the metered total was kept ("1"): the take-back
    cannot tell the exchange's quota from others', and takes all of it, as it did then."""
    node = await node_factory(database_url=database_url)
    old, new = await register_devices(node, 2)
    store = node.app[SERVICE_STORE]
    await exchanged(store, old.did, new.did, 700)
    await store.client.set(store.keyspace.service_request(new.did, "T1"), "1")
    await service.top_up(store, new.did, 300, actor=ACTOR)

    assert await cancelled(store, old.did) == handover.HandBack(new.did, 1000)
    returned, emptied = await store.read(old.did), await store.read(new.did)
    assert (returned.remaining_ml, emptied.remaining_ml, emptied.locked) == (1000, 0, True)


async def test_a_hand_back_leaves_a_rental_that_someone_else_gave_the_new_device(
    node_factory: Any, database_url: str
):
    """The exchange gave a quota; an admin then made the new device a time rental: there is
    no quota left to give back, and the rental it was given stays."""
    node = await node_factory(database_url=database_url)
    old, new = await register_devices(node, 2)
    store = node.app[SERVICE_STORE]
    await exchanged(store, old.did, new.did, 700)
    expires = int(time.time()) + 30 * 86_400
    await service.configure(
        store, new.did, ServiceMode.TIME_RENTAL, rental_expires_at=expires, actor=ACTOR
    )

    assert await cancelled(store, old.did) == handover.HandBack(new.did, None)
    kept = await store.read(new.did)
    assert (kept.mode, kept.rental_expires_at, kept.locked) == (2, expires, False)  # time rental
    assert (await store.read(old.did)).remaining_ml == 0  # nothing came back to it
