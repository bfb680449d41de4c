"""The ledger writer from the real Redis streams into SQLite and PostgreSQL, exactly once.

Records are metered by meter.lua first (as the gateway does), then drained by `LedgerWriter`;
the tests check what billing reads: one usage row per stored record with its delta, the newest
report per device, activation, and that crashes, claims, replays and poisoned entries neither
lose nor double any water.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.ledger import GROUP, LedgerWriter, decode_entries, snapshot_rows
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.redis_io import Scripts, is_cluster
from aquafleet.models.db import connection, dialect
from aquafleet.models.devices import Device, DeviceState
from aquafleet.models.registry import create_vendor, register_devices, set_device_state
from aquafleet.models.usage import (
    DeviceSnapshot,
    RecordKind,
    UsageDaily,
    UsageRecord,
    metered_ml_by_device,
    store_ledger_batch,
)
from aquafleet.models.usage_partitions import (
    attached_partitions,
    drop_months_before,
    month_bounds,
    month_of,
    next_month,
)
from aquafleet.protocol import EventKind, FilterReading, FrameType
from aquafleet.protocol.message_types import Record
from tests.gateway.meter_helpers import (
    FULL_TELEMETRY,
    NOW_MS,
    MeterDriver,
    event,
    meter_fixture,  # noqa: F401 (fixture `meter`)
    record_from_payload,
    telemetry,
)

VENDOR = "ACME"
RECEIVED_AT = dt.datetime.fromtimestamp(NOW_MS / 1000, dt.UTC)

MakeWriter = Callable[..., LedgerWriter]


@pytest.fixture
async def dids(db: str) -> list[str]:
    """Three registered devices of one vendor, all INACTIVE."""
    await create_vendor(VENDOR, "Acme Water")
    issued = await register_devices(VENDOR, 3, lambda did, version: bytes(32))
    return [d.did for d in issued]


@pytest.fixture
async def make_writer(
    db: str, redis_client: aioredis.Redis, keyspace: Keyspace
) -> AsyncIterator[MakeWriter]:
    def make(
        consumer: str = "w1",
        *,
        claim_idle_ms: int = 60_000,
        batch_entries: int = 10,
        linger_s: float = 0.0,
        linger_records: int = 0,
        snapshot_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> LedgerWriter:
        return LedgerWriter(
            client=redis_client,
            scripts=Scripts(),
            keyspace=keyspace,
            metrics=Metrics(),
            consumer=consumer,
            batch_entries=batch_entries,
            claim_idle_ms=claim_idle_ms,
            linger_s=linger_s,
            linger_records=linger_records,
            snapshot_interval_s=snapshot_interval_s,
            clock=clock,
        )

    yield make


@pytest.fixture
async def writer(make_writer: MakeWriter) -> LedgerWriter:
    """Writer "w1" with its consumer groups created before anything is metered."""
    w = make_writer()
    await w.ensure_groups()
    return w


async def usage_rows(did: str | None = None) -> list[UsageRecord]:
    query = UsageRecord.all() if did is None else UsageRecord.filter(did=did)
    return await query.order_by("did", "boot", "rec")


async def ledger_state(client: aioredis.Redis, keyspace: Keyspace) -> tuple[int, int, int]:
    """(entries left in the ledger streams, entries pending in the group, backlog), all shards."""
    length = pending = backlog = 0
    for shard in keyspace.all_shards():
        stream = keyspace.ledger_stream(shard)
        length += await client.xlen(stream)
        pending += (await client.xpending(stream, GROUP))["pending"]
        backlog += int(await client.get(keyspace.ledger_backlog(shard)) or 0)
    return length, pending, backlog


async def read_as(client: aioredis.Redis, keyspace: Keyspace, consumer: str) -> Any:
    """XREADGROUP as a writer named `consumer` would, without ever acknowledging (a stream at a
    time: on a Redis Cluster the shards' streams sit in different slots)."""
    reply = []
    for shard in keyspace.all_shards():
        streams = {keyspace.ledger_stream(shard): ">"}
        reply += await client.xreadgroup(GROUP, consumer, streams, count=100) or []
    return reply


def is_utc(value: dt.datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)


async def assert_rows_match_the_meter(meter: MeterDriver, dids: list[str]) -> None:
    """Every stored record is one row with the delta meter.lua gave it; totals agree."""
    for did in dids:
        expected = [
            (r.boot, r.rec, r.frame_type, r.event_kind, r.ts, r.delta, r.total, r.epoch)
            for r in sorted(meter.journal_of(did), key=lambda r: (r.boot, r.rec))
        ]
        rows = [
            (
                r.boot,
                r.rec,
                int(r.kind),
                r.event_kind,
                r.device_ts,
                r.delta_ml,
                -1 if r.flow_total_ml is None else r.flow_total_ml,
                -1 if r.cnt_epoch is None else r.cnt_epoch,
            )
            for r in await usage_rows(did)
        ]
        assert rows == expected
    totals = await metered_ml_by_device(dids)
    assert totals == {did: await meter.metered(did) for did in dids}


# ----------------------------------------------------------------------------- rows


async def test_usage_rows_equal_the_stored_records(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    a, b, _ = dids
    answers = await meter.send(
        [
            (a, telemetry(1, total=1_000, epoch=0, **FULL_TELEMETRY)),
            (b, telemetry(1, total=50, epoch=2)),
            (a, event(2, total=1_250, ml=250, cid=5)),
            (a, telemetry(3, tds_in_ppm=170)),  # no counter
            (a, telemetry(1, total=1_000, epoch=0, seq=8)),  # a resend
            (b, event(2, kind=EventKind.FILTER_REPLACED)),
            (b, telemetry(3, total=75)),
        ]
    )
    assert [x.rc for x in answers] == [0, 0, 0, 0, 1, 0, 0]
    # Groups created after the entries were appended still read them (created at id 0).
    writer = make_writer()
    await writer.ensure_groups()
    await writer.ensure_groups()  # idempotent: every node creates them at start

    written = await writer.write_once(block_ms=None)

    assert written == 6
    rows = await usage_rows(a)
    assert [
        (r.boot, r.rec, r.kind, r.event_kind, r.delta_ml, r.flow_total_ml, r.cnt_epoch)
        for r in rows
    ] == [
        (1, 1, RecordKind.TELEMETRY, 0, 1_000, 1_000, 0),
        (1, 2, RecordKind.EVENT, EventKind.DISPENSE_DONE, 250, 1_250, 0),
        (1, 3, RecordKind.TELEMETRY, 0, 0, None, None),
    ]
    rows_b = await usage_rows(b)
    assert [(r.rec, r.kind, r.event_kind, r.delta_ml, r.cnt_epoch) for r in rows_b] == [
        (1, RecordKind.TELEMETRY, 0, 50, 2),
        (2, RecordKind.EVENT, EventKind.FILTER_REPLACED, 0, None),
        (3, RecordKind.TELEMETRY, 0, 25, 2),
    ]
    for row in [*rows, *rows_b]:
        assert row.device_ts == telemetry(row.rec).ts
        assert is_utc(row.received_at)
        assert row.received_at == RECEIVED_AT
    await assert_rows_match_the_meter(meter, [a, b])
    assert writer.metrics.ledger_records_written == 6
    assert writer.metrics.metered_ml == 1_250 + 75
    # A round is one entry on one Redis; on a cluster, one per shard (one slot per script call).
    shards = {meter.keyspace.shard_of(d) for d in (a, b)}
    assert writer.metrics.ledger_entries_written == (len(shards) if is_cluster(meter.client) else 1)
    transactions = "aquafleet_ledger_transaction_seconds_count"
    assert writer.metrics.registry.get_sample_value(transactions) == 1  # the read's one commit

    assert await ledger_state(meter.client, meter.keyspace) == (0, 0, 0)
    assert await writer.write_once(block_ms=None) == 0
    assert writer.metrics.registry.get_sample_value(transactions) == 1  # nothing read: none
    assert len(await usage_rows()) == 6


async def test_writer_reads_a_batch_of_entries_at_a_time(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    did = dids[0]
    writer = make_writer(batch_entries=4)
    await writer.ensure_groups()
    for rec in range(1, 11):  # ten rounds: ten entries of one shard
        await meter.one(did, telemetry(rec, total=10 * rec))

    assert await writer.write_once(block_ms=None) == 4
    assert await ledger_state(meter.client, meter.keyspace) == (6, 0, 6)
    assert await writer.write_once(block_ms=None) == 4
    assert await writer.write_once(block_ms=None) == 2
    assert await writer.write_once(block_ms=None) == 0
    assert await ledger_state(meter.client, meter.keyspace) == (0, 0, 0)
    assert await metered_ml_by_device([did]) == {did: 100}


async def test_write_once_blocks_until_an_entry_arrives(
    dids: list[str], meter: MeterDriver, writer: LedgerWriter
) -> None:
    did = dids[0]
    waiting = asyncio.ensure_future(writer.write_once(block_ms=2_000))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await meter.one(did, telemetry(1, total=40))
    assert await asyncio.wait_for(waiting, 3) == 1
    assert await metered_ml_by_device([did]) == {did: 40}


async def test_a_small_read_waits_for_the_next_rounds_and_writes_them_in_one_batch(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    a, b, _ = dids
    writer = make_writer(linger_s=1.0, linger_records=100)
    await writer.ensure_groups()
    await meter.one(a, telemetry(1, total=40))
    lingering = asyncio.ensure_future(writer.write_once(block_ms=None))
    for _ in range(200):  # until the writer holds the first round (pending, not yet written)
        if await ledger_state(meter.client, meter.keyspace) == (1, 1, 1):
            break
        await asyncio.sleep(0.01)
    assert await ledger_state(meter.client, meter.keyspace) == (1, 1, 1)
    await meter.one(b, telemetry(1, total=7))  # arrives while the writer lingers

    assert await asyncio.wait_for(lingering, 10) == 2  # both rounds, one transaction
    assert writer.metrics.ledger_entries_written == 2
    assert await metered_ml_by_device([a, b]) == {a: 40, b: 7}
    assert await ledger_state(meter.client, meter.keyspace) == (0, 0, 0)


async def test_a_read_of_enough_records_is_written_without_lingering(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    did = dids[0]
    writer = make_writer(linger_s=60.0, linger_records=2)
    await writer.ensure_groups()
    await meter.send([(did, telemetry(1, total=10)), (did, telemetry(2, total=30))])
    assert await asyncio.wait_for(writer.write_once(block_ms=None), 10) == 2
    assert await metered_ml_by_device([did]) == {did: 30}


async def test_snapshot_holds_the_newest_telemetry_per_device(
    dids: list[str], meter: MeterDriver, writer: LedgerWriter
) -> None:
    a, b, c = dids
    await meter.send(
        [
            (a, telemetry(1, total=100, tds_in_ppm=1)),
            (a, telemetry(2, total=200, epoch=0, **FULL_TELEMETRY)),
            (a, event(3, total=260)),  # events never make a snapshot
            (b, event(1, total=10)),
            (c, telemetry(1)),  # no counter, no values
        ]
    )
    await writer.write_once(block_ms=None)

    snap = await DeviceSnapshot.get(did=a)
    assert (snap.boot, snap.rec, snap.device_ts) == (1, 2, telemetry(2).ts)
    assert snap.flow_total_ml == 200
    assert (snap.tds_in_ppm, snap.tds_out_ppm, snap.temperature_dc) == (180, 12, 253)
    assert snap.filters == [[1, 1200, 3000, 2], [2, 800, 3000, 0]]
    assert (snap.fault_bits, snap.signal, snap.state_bits) == (0x04, 23, 0x03)
    assert is_utc(snap.received_at)
    assert snap.received_at == RECEIVED_AT
    assert await DeviceSnapshot.get_or_none(did=b) is None
    bare = await DeviceSnapshot.get(did=c)
    assert (bare.flow_total_ml, bare.tds_in_ppm, bare.filters, bare.signal) == (None,) * 4

    # A report that arrives late (older position) is stored but leaves the snapshot alone.
    await meter.one(a, telemetry(5, total=300, tds_in_ppm=5), now_ms=NOW_MS + 1_000)
    await writer.write_once(block_ms=None)
    await meter.one(a, telemetry(4, total=280, tds_in_ppm=4), now_ms=NOW_MS + 2_000)
    await writer.write_once(block_ms=None)
    snap = await DeviceSnapshot.get(did=a)
    assert (snap.rec, snap.tds_in_ppm, snap.flow_total_ml) == (5, 5, 300)
    assert snap.received_at == RECEIVED_AT + dt.timedelta(seconds=1)

    # A new boot is newer than any rec of the old one.
    await meter.one(a, telemetry(1, boot=2, total=310, tds_in_ppm=9))
    await writer.write_once(block_ms=None)
    snap = await DeviceSnapshot.get(did=a)
    assert (snap.boot, snap.rec, snap.tds_in_ppm) == (2, 1, 9)
    assert snap.filters is None  # a full replacement, not a merge of fields


async def test_a_snapshot_follows_every_change_of_the_filters(
    dids: list[str], meter: MeterDriver, writer: LedgerWriter
) -> None:
    """The writer keeps each device's filters JSON while they stay the same: a change, a
    report without filters and a return to earlier readings each reach the snapshot."""
    a = dids[0]
    first = (FilterReading(1, 1200, 3000, 2), FilterReading(2, 800, 3000, 0))
    worn = (FilterReading(1, 1201, 3001, 2), FilterReading(2, 801, 3001, 0))
    as_rows = {first: [[1, 1200, 3000, 2], [2, 800, 3000, 0]], worn: [[1, 1201, 3001, 2],
               [2, 801, 3001, 0]], (): None}  # fmt: skip
    for rec, filters in enumerate([first, first, worn, (), first, worn], start=1):
        await meter.one(a, telemetry(rec, total=rec * 10, filters=filters))
        await writer.write_once(block_ms=None)
        snap = await DeviceSnapshot.get(did=a)
        assert (snap.rec, snap.filters) == (rec, as_rows[filters])


async def test_a_fast_reporter_s_snapshot_is_written_once_an_interval_and_never_lost(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    """ledger_snapshot_interval_ms: a device reporting faster than the interval has its newest
    snapshot held, not upserted by every transaction; the first transaction after the
    interval writes it, or the idle writer, or the graceful stop. Its records never wait."""
    now = [1000.0]
    writer = make_writer(snapshot_interval_s=1.0, clock=lambda: now[0])
    await writer.ensure_groups()
    a, b, _ = dids

    async def snapshot(did: str) -> tuple[int, int | None] | None:
        snap = await DeviceSnapshot.get_or_none(did=did)
        return None if snap is None else (snap.rec, snap.tds_in_ppm)

    await meter.one(a, telemetry(1, total=10, tds_in_ppm=1))
    await writer.write_once(block_ms=None)
    assert await snapshot(a) == (1, 1)  # a first report is written at once

    now[0] += 0.3
    await meter.one(a, telemetry(2, total=20, tds_in_ppm=2))
    await writer.write_once(block_ms=None)
    now[0] += 0.3
    await meter.one(a, telemetry(3, total=30, tds_in_ppm=3))
    await writer.write_once(block_ms=None)
    assert [r.rec for r in await usage_rows(a)] == [1, 2, 3]  # the records are all there
    assert await snapshot(a) == (1, 1)  # the newest readings held back (rec 3 only)
    assert writer.snapshots.held == 1

    now[0] += 0.5  # a's interval has passed: the next transaction, though only b's, writes it
    await meter.one(b, telemetry(1, total=5, tds_in_ppm=7))
    await writer.write_once(block_ms=None)
    assert await snapshot(a) == (3, 3)
    assert await snapshot(b) == (1, 7)
    assert writer.snapshots.held == 0

    # Held again, then written by an idle writer (a read that brings nothing) ...
    now[0] += 0.2
    await meter.one(a, telemetry(4, total=40, tds_in_ppm=4))
    await writer.write_once(block_ms=None)
    assert await snapshot(a) == (3, 3)
    await writer.write_once(block_ms=10)
    assert await snapshot(a) == (3, 3)  # ... not before its interval has passed
    now[0] += 1.0
    await writer.write_once(block_ms=10)
    assert await snapshot(a) == (4, 4)

    # ... and by the graceful stop, whatever the interval.
    now[0] += 0.1
    await meter.one(a, telemetry(5, total=50, tds_in_ppm=5))
    await writer.write_once(block_ms=None)
    assert await snapshot(a) == (4, 4)
    await writer.flush()
    assert await snapshot(a) == (5, 5)
    assert writer.snapshots.held == 0
    await assert_rows_match_the_meter(meter, [a, b])


async def test_a_held_snapshot_survives_a_failed_transaction(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing counts as written until the transaction commits: a database error while the
    held snapshot was due keeps it held, and the retry writes it."""
    import aquafleet.gateway.ledger as ledger_module

    now = [1000.0]
    writer = make_writer(snapshot_interval_s=1.0, clock=lambda: now[0])
    await writer.ensure_groups()
    a, b, _ = dids
    await meter.one(a, telemetry(1, total=10, tds_in_ppm=1))
    await writer.write_once(block_ms=None)
    now[0] += 0.1
    await meter.one(a, telemetry(2, total=20, tds_in_ppm=2))
    await writer.write_once(block_ms=None)
    now[0] += 1.0
    await meter.one(b, telemetry(1, total=5))

    real_store = ledger_module.store_ledger_batch

    async def failing_store(*args: Any, **kwargs: Any) -> None:
        raise OSError("the database went away")

    monkeypatch.setattr(ledger_module, "store_ledger_batch", failing_store)
    with pytest.raises(OSError):
        await writer.write_once(block_ms=None)
    assert writer.snapshots.held == 1
    monkeypatch.setattr(ledger_module, "store_ledger_batch", real_store)
    await writer.drain_own_pending()  # as run() does after an error
    snap = await DeviceSnapshot.get(did=a)
    assert (snap.rec, snap.tds_in_ppm) == (2, 2)
    assert writer.snapshots.held == 0
    await assert_rows_match_the_meter(meter, [a, b])


async def test_a_held_report_that_does_not_parse_keeps_the_stored_snapshot(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    """A held report is read only when its snapshot is due: one whose fields do not parse is
    metered and stored as a record like any, leaves the device's stored snapshot as it was,
    is counted then, and does not stop the next good report's snapshot."""
    now = [1000.0]
    writer = make_writer(snapshot_interval_s=1.0, clock=lambda: now[0])
    await writer.ensure_groups()
    a, b, _ = dids
    await meter.one(a, telemetry(1, total=10, tds_in_ppm=1))
    await writer.write_once(block_ms=None)
    now[0] += 0.2
    await meter.one(a, bad_telemetry(2, 25))
    await writer.write_once(block_ms=None)
    assert writer.snapshots.held == 1
    assert writer.metrics.ledger_records_dead == 0  # held: not read yet

    now[0] += 1.0  # due: the next transaction (b's) reads it, and it does not parse
    await meter.one(b, telemetry(1, total=5, tds_in_ppm=7))
    await writer.write_once(block_ms=None)
    assert writer.snapshots.held == 0
    assert writer.metrics.ledger_records_dead == 1
    snap = await DeviceSnapshot.get(did=a)
    assert (snap.rec, snap.tds_in_ppm) == (1, 1)
    assert [(r.rec, r.delta_ml) for r in await usage_rows(a)] == [(1, 10), (2, 15)]

    now[0] += 0.1  # a's interval runs from the failed read: a good report now is held ...
    await meter.one(a, telemetry(3, total=30, tds_in_ppm=3))
    await writer.write_once(block_ms=None)
    assert writer.snapshots.held == 1
    now[0] += 1.0  # ... and written by the idle writer after it
    await writer.write_once(block_ms=10)
    snap = await DeviceSnapshot.get(did=a)
    assert (snap.rec, snap.tds_in_ppm) == (3, 3)
    await assert_rows_match_the_meter(meter, [a, b])


async def test_a_reporting_device_becomes_active(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    a, b, c = dids
    await set_device_state(c, DeviceState.DISABLED)
    writer = make_writer()
    await writer.ensure_groups()
    before = dt.datetime.now(dt.UTC)
    await meter.send([(a, telemetry(1, total=10)), (c, telemetry(1, total=20))])
    await writer.write_once(block_ms=None)
    after = dt.datetime.now(dt.UTC)

    device = await Device.get(did=a)
    assert device.state is DeviceState.ACTIVE
    assert device.activated_at is not None
    assert is_utc(device.activated_at)
    assert (
        before - dt.timedelta(seconds=1) <= device.activated_at <= after + dt.timedelta(seconds=1)
    )
    untouched = await Device.get(did=b)
    assert (untouched.state, untouched.activated_at) == (DeviceState.INACTIVE, None)
    disabled = await Device.get(did=c)  # its water is still in the ledger, its state stays
    assert (disabled.state, disabled.activated_at) == (DeviceState.DISABLED, None)
    assert await metered_ml_by_device([c]) == {c: 20}

    # A later report (by a writer that has not cached the activation) keeps the first date.
    await asyncio.sleep(0.01)
    await meter.one(a, telemetry(2, total=30))
    await make_writer("w2").write_once(block_ms=None)
    again = await Device.get(did=a)
    assert again.state is DeviceState.ACTIVE
    assert again.activated_at == device.activated_at


# ----------------------------------------------------------------------------- crash safety


@pytest.mark.parametrize("stored_before_crash", [False, True], ids=["read-only", "stored"])
async def test_a_restarted_writer_rewrites_what_it_read_before_dying(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter, stored_before_crash: bool
) -> None:
    a, b, _ = dids
    first = make_writer("w1")
    await first.ensure_groups()
    await meter.send([(a, telemetry(1, total=100)), (b, telemetry(1, total=70))])
    await meter.send([(a, event(2, total=180)), (b, telemetry(2, total=95))])
    reply = await read_as(meter.client, meter.keyspace, "w1")  # then the process died
    entries = [entry for _stream, stream_entries in reply for entry in stream_entries]
    if stored_before_crash:  # ... after committing, before XACK
        batch = decode_entries(entries)
        await store_ledger_batch(batch.usage, snapshot_rows(batch.reports.values())[0], [])
    _length, pending, backlog = await ledger_state(meter.client, meter.keyspace)
    assert (pending, backlog) == (len(entries), 4)

    restarted = make_writer("w1")
    assert await restarted.write_once(block_ms=None) == 0  # not new: pending for w1
    assert await restarted.drain_own_pending() == 4

    assert len(await usage_rows()) == 4  # no duplicates from the second write
    await assert_rows_match_the_meter(meter, [a, b])
    assert await ledger_state(meter.client, meter.keyspace) == (0, 0, 0)
    assert await restarted.drain_own_pending() == 0
    assert (await Device.get(did=a)).state is DeviceState.ACTIVE


MONTH_START_MS = 1_701_388_800_000  # 2023-12-01 00:00:00 UTC, the month after NOW_MS's


async def test_a_batch_across_a_month_boundary_is_redelivered_without_doubling(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    a, b, _ = dids
    await make_writer("w1").ensure_groups()
    await meter.send(
        [(a, telemetry(1, total=100)), (b, telemetry(1, total=70))], MONTH_START_MS - 1
    )
    await meter.send([(a, event(2, total=180)), (b, telemetry(2, total=95))], MONTH_START_MS)
    reply = await read_as(meter.client, meter.keyspace, "w1")  # then the process died ...
    entries = [entry for _stream, stream_entries in reply for entry in stream_entries]
    batch = decode_entries(entries)
    await store_ledger_batch(
        batch.usage, snapshot_rows(batch.reports.values())[0], []
    )  # ... before XACK

    restarted = make_writer("w1")
    assert await restarted.drain_own_pending() == 4  # written again ...
    rows = await usage_rows()
    assert len(rows) == 4  # ... stored once: each row's receive time is its entry's, again
    november = dt.datetime.fromtimestamp((MONTH_START_MS - 1) / 1000, dt.UTC)
    december = dt.datetime.fromtimestamp(MONTH_START_MS / 1000, dt.UTC)
    assert [r.received_at for r in rows] == [november, december, november, december]
    await assert_rows_match_the_meter(meter, [a, b])
    assert await ledger_state(meter.client, meter.keyspace) == (0, 0, 0)
    if dialect() == "postgres":  # two monthly partitions, and the day rollups not doubled
        homes = await connection().execute_query_dict(
            "SELECT tableoid::regclass::text AS name, count(*) AS n FROM usage_record GROUP BY 1"
        )
        assert {r["name"]: r["n"] for r in homes} == {
            "usage_record_y2023m11": 2,
            "usage_record_y2023m12": 2,
        }
        days = await UsageDaily.all().order_by("did", "day").values_list("day", "water_ml")
        nov, dec = november.date(), december.date()
        assert days == [(nov, 100), (dec, 80), (nov, 70), (dec, 25)]  # a's days, then b's


async def test_a_starting_writer_makes_this_month_and_the_next(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    now = dt.datetime.now(dt.UTC)
    this_month = month_of(now)
    if dialect() == "postgres":  # as if the writer had not run for months
        await drop_months_before(month_bounds(next_month(this_month))[1])
        assert [p.month for p in await attached_partitions() if p.month >= this_month] == []
    await meter.send([(dids[0], telemetry(1, total=100))], int(now.timestamp() * 1000))
    writer = make_writer()
    task = asyncio.create_task(writer.run())
    try:
        for _ in range(200):  # bounded: 10 s
            if await usage_rows():
                break
            await asyncio.sleep(0.05)
    finally:
        writer.request_stop()
        await asyncio.wait_for(task, 10)
    assert len(await usage_rows()) == 1
    if dialect() == "postgres":
        months = [p.month for p in await attached_partitions()]
        assert [this_month, next_month(this_month)] == [m for m in months if m >= this_month]


async def test_a_live_writer_claims_the_entries_of_a_dead_one(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    a, b, _ = dids
    idle_ms = 300
    live = make_writer("w2", claim_idle_ms=idle_ms)
    # The same group, claiming only after a minute: entries idle for less are not claimed (a
    # fixed bound of its own, so the check holds however slowly this test runs).
    patient = make_writer("w3", claim_idle_ms=60_000)
    await live.ensure_groups()
    await meter.send([(a, telemetry(1, total=100)), (b, telemetry(1, total=70))])
    reply = await read_as(meter.client, meter.keyspace, "dead")
    dead_entries = [(stream, entry) for stream, entries in reply for entry in entries]
    assert dead_entries
    await meter.send([(a, telemetry(2, total=150))])  # a new entry, not read by anyone

    assert await live.drain_own_pending() == 0  # not its own
    assert await live.write_once(block_ms=None) == 1  # only the new entry
    assert await patient.claim_abandoned() == 0  # not idle long enough yet
    assert patient.metrics.ledger_claimed == 0
    assert len(await usage_rows()) == 1

    await asyncio.sleep(idle_ms / 1000 + 0.05)
    assert await live.claim_abandoned() == len(dead_entries)
    assert live.metrics.ledger_claimed == len(dead_entries)
    assert len(await usage_rows()) == 3
    await assert_rows_match_the_meter(meter, [a, b])
    assert await ledger_state(meter.client, meter.keyspace) == (0, 0, 0)

    # The dead writer was only slow: it commits its batch again and acknowledges late.
    batch = decode_entries([entry for _stream, entry in dead_entries])
    await store_ledger_batch(batch.usage, snapshot_rows(batch.reports.values())[0], [])
    scripts = Scripts()
    keyspace = meter.keyspace
    backlog_of = {
        keyspace.ledger_stream(s).encode(): keyspace.ledger_backlog(s)
        for s in keyspace.all_shards()
    }
    for stream, (entry_id, fields_) in dead_entries:
        keys = (stream, backlog_of[stream])
        acked = await scripts.call(
            meter.client, "ledger_ack", keys, (GROUP, 1, entry_id, fields_[b"n"])
        )
        assert acked == 0  # no longer pending: the backlog is not lowered twice
    assert len(await usage_rows()) == 3
    assert await ledger_state(meter.client, meter.keyspace) == (0, 0, 0)


async def test_the_same_records_in_two_entries_make_one_row_each(
    dids: list[str], meter: MeterDriver, writer: LedgerWriter
) -> None:
    a, b, _ = dids
    await meter.send([(a, telemetry(1, total=100)), (a, event(2, total=130)), (b, event(1))])
    # Replay every entry (e.g. from a backup of the stream) as meter.lua would append it.
    client, keyspace = meter.client, meter.keyspace
    for shard in keyspace.all_shards():
        stream = keyspace.ledger_stream(shard)
        for _entry_id, fields_ in await client.xrange(stream):
            await client.xadd(stream, fields_)
            await client.incrby(keyspace.ledger_backlog(shard), int(fields_[b"n"]))

    assert await writer.write_once(block_ms=None) == 6  # decoded twice ...
    assert len(await usage_rows()) == 3  # ... written once
    assert await metered_ml_by_device([a, b]) == {a: 130, b: 0}
    assert await ledger_state(client, keyspace) == (0, 0, 0)


# ----------------------------------------------------------------------------- bad data


def _poison(kind: str) -> dict[bytes, bytes]:
    good_item = [b"ACME00000001XXXX", 0x20, 1, 1, 0, 5, 5, 0, 0, 0, b""]
    pack = msgpack.Packer(use_bin_type=False).pack
    at = str(NOW_MS).encode()
    if kind == "garbage":
        return {b"at": at, b"n": b"3", b"records": b"\xc1\xc1\xc1 not msgpack"}
    if kind == "short-item":
        return {b"at": at, b"n": b"3", b"records": pack([[b"ACME00000001XXXX", 0x20, 1]])}
    if kind == "not-a-list":
        return {b"at": at, b"n": b"3", b"records": pack(42)}
    if kind == "no-records":
        return {b"at": at, b"n": b"3"}
    if kind == "bad-did":
        return {b"at": at, b"n": b"3", b"records": pack([[b"\xff\xfe", *good_item[1:]]])}
    if kind == "infinite-total":  # a float no integer holds (int() raises OverflowError)
        return {b"at": at, b"n": b"3", b"records": pack([[*good_item[:6], float("inf"),
                                                          *good_item[7:]]])}  # fmt: skip
    assert kind == "bad-at"
    return {b"at": b"yesterday", b"n": b"3", b"records": pack([good_item])}


@pytest.mark.parametrize(
    "kind",
    ["garbage", "short-item", "not-a-list", "no-records", "bad-did", "infinite-total", "bad-at"],
)
async def test_a_poisoned_entry_is_buried_and_blocks_nothing(
    dids: list[str], meter: MeterDriver, writer: LedgerWriter, kind: str
) -> None:
    a, b, _ = dids
    client, keyspace = meter.client, meter.keyspace
    shard = keyspace.shard_of(a)
    await meter.one(a, telemetry(1, total=100))
    poison = _poison(kind)
    poison_id = await client.xadd(keyspace.ledger_stream(shard), poison)  # type: ignore[arg-type]
    await client.incrby(keyspace.ledger_backlog(shard), 3)  # as meter.lua would have
    await meter.send([(a, telemetry(2, total=160)), (b, telemetry(1, total=30))])

    assert await writer.write_once(block_ms=None) == 3

    assert await metered_ml_by_device([a, b]) == {a: 160, b: 30}
    dead = await client.xrange(keyspace.ledger_dead)
    assert len(dead) == 1
    assert dead[0][1] == {**poison, b"id": poison_id}
    assert writer.metrics.ledger_records_dead == 3
    assert writer.metrics.ledger_records_written == 3
    assert await ledger_state(client, keyspace) == (0, 0, 0)  # acknowledged, backlog settled
    assert await writer.drain_own_pending() == 0


def bad_telemetry(rec: int, total: int) -> Record:
    """A telemetry whose header and counter are valid but whose TDS is text."""
    payload = {0: rec, 1: 1, 2: telemetry(rec).ts, 10: total, 16: 0, 11: "180 ppm"}
    return record_from_payload(FrameType.TELEMETRY, payload)


async def test_telemetry_with_invalid_fields_is_billed_but_makes_no_snapshot(
    dids: list[str], meter: MeterDriver, writer: LedgerWriter
) -> None:
    a, b, _ = dids
    assert (await meter.one(a, bad_telemetry(1, 500))).rc == 0  # the hot path meters it
    await writer.write_once(block_ms=None)

    assert [(r.rec, r.delta_ml) for r in await usage_rows(a)] == [(1, 500)]
    assert await DeviceSnapshot.get_or_none(did=a) is None
    assert writer.metrics.ledger_records_dead == 1
    assert writer.metrics.ledger_records_written == 1

    # A device with a good snapshot keeps it when a newer report does not parse.
    await meter.one(b, telemetry(1, total=40, tds_in_ppm=150))
    await writer.write_once(block_ms=None)
    await meter.one(b, bad_telemetry(2, 90))
    await writer.write_once(block_ms=None)
    snap = await DeviceSnapshot.get(did=b)
    assert (snap.rec, snap.tds_in_ppm, snap.flow_total_ml) == (1, 150, 40)
    assert await metered_ml_by_device([b]) == {b: 90}
    assert writer.metrics.ledger_records_dead == 2


# ----------------------------------------------------------------------------- reporting


async def test_metered_ml_by_device_can_skip_older_boots(
    dids: list[str], meter: MeterDriver, writer: LedgerWriter
) -> None:
    a, b, c = dids
    await meter.send(
        [
            (a, telemetry(1, boot=1, total=100)),
            (a, telemetry(2, boot=1, total=300)),
            (a, telemetry(1, boot=2, total=350)),
            (a, event(2, boot=2, total=500)),
            (b, telemetry(1, boot=7, total=42)),
        ]
    )
    await writer.write_once(block_ms=None)

    assert await metered_ml_by_device([a, b, c]) == {a: 500, b: 42, c: 0}
    assert await metered_ml_by_device([a, b, c], min_boot=2) == {a: 200, b: 42, c: 0}
    assert await metered_ml_by_device([a, b, c], min_boot=8) == {a: 0, b: 0, c: 0}
    assert await metered_ml_by_device([]) == {}


async def test_seeded_traffic_bills_exactly_what_was_metered(
    dids: list[str], meter: MeterDriver, make_writer: MakeWriter
) -> None:
    """Rounds of resends and reordering, drained while metering goes on, by two writers."""
    rng = random.Random(20240611)
    writers = [make_writer("w1", batch_entries=3), make_writer("w2", batch_entries=5)]
    await writers[0].ensure_groups()
    totals = dict.fromkeys(dids, 0)
    made: list[tuple[str, Record]] = []
    for rec in range(1, 41):
        for did in dids:
            totals[did] += rng.randrange(0, 300)
            if rng.random() < 0.3:
                made.append((did, event(rec, total=totals[did], ml=5)))
            else:
                made.append((did, telemetry(rec, total=totals[did], epoch=0)))
    pending = list(made)
    sent: list[tuple[str, Record]] = []
    written = 0
    while pending:
        take = pending[: rng.randrange(1, 12)]
        del pending[: len(take)]
        batch = take + rng.sample(sent, min(len(sent), rng.randrange(0, 4)))  # resends
        rng.shuffle(batch)
        await meter.send(batch)
        sent += take
        written += await rng.choice(writers).write_once(block_ms=None)
    for w in writers:
        while count := await w.write_once(block_ms=None):
            written += count

    assert written == len(made)
    assert len(await usage_rows()) == len(made)
    assert await metered_ml_by_device(dids) == totals
    await assert_rows_match_the_meter(meter, dids)
    assert await ledger_state(meter.client, meter.keyspace) == (0, 0, 0)


def test_the_snapshot_pacer_keeps_the_newest_report_of_a_held_device() -> None:
    """A late report (an older position, a claimed or redelivered entry) never replaces a newer
    held one; a new boot is newer than any rec of the old one, as the database's upsert says."""
    from aquafleet.gateway.ledger import Payloaded, SnapshotPacer
    from aquafleet.models.usage import UsageRow

    def row(did: str, boot: int, rec: int) -> Payloaded:
        usage = UsageRow(did, boot, rec, 0x20, 0, 0, RECEIVED_AT, 0, None, None)
        return usage, 0, b""

    now = [0.0]
    pacer = SnapshotPacer(1.0, clock=lambda: now[0])
    first = pacer.due({"A": row("A", 1, 5), "B": row("B", 1, 1)})
    assert first == [row("A", 1, 5), row("B", 1, 1)]
    pacer.written(first)
    now[0] = 0.5
    assert pacer.due({"A": row("A", 1, 9)}) == []
    assert pacer.due({"A": row("A", 1, 7)}) == []  # late: rec 9 stays held
    assert pacer.due({"A": row("A", 2, 1)}) == []  # a new boot replaces it
    assert pacer.due({}, everything=True) == [row("A", 2, 1)]
    assert pacer.held == 1  # until written
    now[0] = 1.5
    due = pacer.due({"A": row("A", 1, 10)})  # interval passed: the held newer one goes
    assert due == [row("A", 2, 1)]
    pacer.written(due)
    assert pacer.held == 0
    assert SnapshotPacer(0.0).due({"A": row("A", 1, 1)}) == [row("A", 1, 1)]  # 0: no pacing
