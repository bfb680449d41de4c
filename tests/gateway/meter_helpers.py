"""Records as the gateway builds them, and a thin driver of meter.lua that reads back its state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.meter import MeterOutcome, MeterScript, meter_fields
from aquafleet.gateway.redis_io import Scripts, is_cluster
from aquafleet.protocol import Encoding, EventKind, FrameType
from aquafleet.protocol.frames import Frame
from aquafleet.protocol.message_types import Event, FilterReading, Payload, Record, Telemetry
from aquafleet.protocol.messages import encode_payload, message_map, parse_record

# The meter state's fields about counting (the rest is the newest telemetry report).
COUNTING_FIELDS = frozenset(("b0", "w0", "o0", "b1", "w1", "o1", "le", "lt", "pe", "pt", "mt", "n"))

NOW_MS = 1_700_000_000_123  # received-at of a metering round (the milliseconds matter)
DEVICE_TS = 1_699_999_000
STORED, DUPLICATE, STALE = 0, 1, 2


def record_from_payload(frame_type: int, payload: Payload, seq: int = 0) -> Record:
    """The Record the gateway's hot path makes of a frame carrying `payload` (msgpack)."""
    frame = Frame(frame_type, Encoding.MSGPACK << 4, seq, encode_payload(payload, Encoding.MSGPACK))
    return parse_record(frame)


def telemetry(
    rec: int,
    boot: int = 1,
    *,
    total: int | None = None,
    epoch: int | None = None,
    ts: int | None = None,
    seq: int = 0,
    **values: Any,
) -> Record:
    """A TELEMETRY record; `values` are further Telemetry fields (tds_in_ppm=..., filters=...)."""
    message = Telemetry(
        rec=rec,
        boot=boot,
        ts=DEVICE_TS + rec if ts is None else ts,
        flow_total_ml=total,
        cnt_epoch=epoch,
        **values,
    )
    return record_from_payload(FrameType.TELEMETRY, message_map(message), seq)


def event(
    rec: int,
    boot: int = 1,
    *,
    total: int | None = None,
    kind: int = EventKind.DISPENSE_DONE,
    ml: int | None = None,
    cid: int | None = None,
    ts: int | None = None,
    seq: int = 0,
) -> Record:
    """An EVENT record; `total` is key 23 (the counter after a dispense)."""
    message = Event(
        rec=rec,
        boot=boot,
        ts=DEVICE_TS + rec if ts is None else ts,
        kind=kind,
        cid=cid,
        ml=ml,
        flow_total_ml=total,
    )
    return record_from_payload(FrameType.EVENT, message_map(message), seq)


FULL_TELEMETRY: dict[str, Any] = {
    "tds_in_ppm": 180,
    "tds_out_ppm": 12,
    "temperature_dc": 253,
    "filters": (FilterReading(1, 1200, 3000, 2), FilterReading(2, 800, 3000, 0)),
    "fault_bits": 0x04,
    "signal": 23,
    "state_bits": 0x03,
}


@dataclass(frozen=True, slots=True)
class Answer:
    """meter.lua's answer for one record: ack code and watermark."""

    rc: int
    watermark: tuple[int, int]


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One record of a ledger stream entry, as meter.lua packed it."""

    did: str
    frame_type: int
    boot: int
    rec: int
    ts: int
    delta: int
    total: int  # -1: none
    epoch: int  # -1: none
    event_kind: int
    encoding: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: bytes
    at: int
    n: int
    records: list[LedgerRecord]


def _entry_order(entry_id: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition(b"-")
    return int(milliseconds), int(sequence)


class MeterDriver:
    """Sends batches through MeterScript and reads back what meter.lua left in Redis."""

    def __init__(self, client: aioredis.Redis, keyspace: Keyspace) -> None:
        self.client = client
        self.keyspace = keyspace
        self.script = MeterScript(Scripts(), keyspace)
        self.last = MeterOutcome({}, {})
        # Every ledger record appended through this driver, read back right after its call
        # (a ledger writer deletes entries once they are in the database).
        self.journal: list[LedgerRecord] = []
        self.journal_complete = True

    async def send(self, items: Sequence[tuple[str, Record]], now_ms: int = NOW_MS) -> list[Answer]:
        """One metering round as the gateway makes it; answers in the order of `items`."""
        rows: dict[int, list[tuple[str, Record]]] = {}
        where: list[tuple[int, int]] = []
        for did, record in items:
            shard = self.keyspace.shard_of(did)
            shard_rows = rows.setdefault(shard, [])
            where.append((shard, len(shard_rows)))
            shard_rows.append((did, record))
        outcome = await self.script.run(self.client, rows, now_ms)
        self.last = outcome
        assert set(outcome.codes) == set(rows)
        for shard, shard_rows in rows.items():
            assert len(outcome.codes[shard]) == 3 * len(shard_rows)
        answers = []
        for shard, index in where:
            rc, wm_boot, wm_rec = outcome.codes[shard][3 * index : 3 * index + 3]
            answers.append(Answer(rc, (wm_boot, wm_rec)))
        # Each stream the round wrote to got one entry: its calls' records, in shard order.
        by_stream: dict[int, list[tuple[str, int, int]]] = {}
        stream_of = dict.fromkeys(rows, min(rows, default=0))
        if is_cluster(self.client):  # one call and entry per shard
            stream_of = {shard: shard for shard in rows}
        for shard in sorted(rows):
            by_stream.setdefault(stream_of[shard], []).extend(
                (did, r.boot, r.rec)
                for i, (did, r) in enumerate(rows[shard])
                if outcome.codes[shard][3 * i] == 0
            )
        for stream_shard, stored in by_stream.items():
            if stored:
                await self._journal(stream_shard, stored)
        return answers

    async def _journal(self, shard: int, stored: list[tuple[str, int, int]]) -> None:
        newest = await self.client.xrevrange(self.keyspace.ledger_stream(shard), count=1)
        if newest:
            entry = self._decode(*newest[0])
            if [(r.did, r.boot, r.rec) for r in entry.records] == stored:
                self.journal += entry.records
                return
        self.journal_complete = False  # a writer took the entry first

    def journal_of(self, did: str) -> list[LedgerRecord]:
        assert self.journal_complete
        return [r for r in self.journal if r.did == did]

    @staticmethod
    def _decode(entry_id: bytes, fields_: dict[bytes, bytes]) -> LedgerEntry:
        assert set(fields_) == {b"at", b"n", b"records"}
        records = [
            LedgerRecord(item[0].decode(), *item[1:])
            for item in msgpack.unpackb(fields_[b"records"], raw=True)
        ]
        return LedgerEntry(entry_id, int(fields_[b"at"]), int(fields_[b"n"]), records)

    async def one(self, did: str, record: Record, now_ms: int = NOW_MS) -> Answer:
        return (await self.send([(did, record)], now_ms))[0]

    async def _state(self, did: str) -> dict[str, Any]:
        return meter_fields(await self.client.get(self.keyspace.meter(did)))

    async def state(self, did: str) -> dict[str, str]:
        """The meter state's counting fields, as text."""
        state = await self._state(did)
        return {k: str(v) for k, v in state.items() if k in COUNTING_FIELDS}

    async def metered(self, did: str) -> int:
        """The meter state's total (field mt)."""
        return int((await self._state(did)).get("mt", 0))

    async def latest(self, did: str) -> dict[str, bytes]:
        """The newest telemetry the meter state keeps (boot, rec, ts, enc, payload, at)."""
        state = await self._state(did)
        if "tb" not in state:
            return {}
        latest = {
            "boot": state["tb"], "rec": state["tr"], "ts": state["ts"], "enc": state["enc"],
            "at": state["at"],
        }  # fmt: skip
        shown = {k: str(v).encode() for k, v in latest.items()}
        shown["payload"] = state["payload"]
        return shown

    async def backlog(self, shard: int | None = None) -> int:
        """One stream's backlog counter, or (None) the sum over every shard."""
        shards = self.keyspace.all_shards() if shard is None else [shard]
        values = [await self.client.get(self.keyspace.ledger_backlog(s)) for s in shards]
        return sum(int(v or 0) for v in values)

    async def ledger(self, shard: int | None = None) -> list[LedgerEntry]:
        """One shard's ledger stream, or (None) every shard's, stream after stream."""
        shards = self.keyspace.all_shards() if shard is None else [shard]
        entries = []
        for s in shards:
            stream = self.keyspace.ledger_stream(s)
            entries += [self._decode(*item) for item in await self.client.xrange(stream)]
        return entries

    async def ledger_records(self, did: str) -> list[LedgerRecord]:
        """The device's records in the ledger streams, in the order they were appended."""
        entries = sorted(await self.ledger(), key=lambda e: _entry_order(e.entry_id))
        return [r for e in entries for r in e.records if r.did == did]

    async def ledger_delta(self, did: str) -> int:
        return sum(r.delta for r in await self.ledger_records(did))

    def keys_of(self, dids: Sequence[str]) -> list[str]:
        """Every key metering these devices can touch (for cleaning up without SCAN)."""
        keys = [self.keyspace.meter(did) for did in dids]
        for shard in self.keyspace.all_shards():
            keys += [self.keyspace.ledger_stream(shard), self.keyspace.ledger_backlog(shard)]
        return keys


def dids_on_distinct_shards(keyspace: Keyspace, count: int, prefix: str = "DEV") -> list[str]:
    """`count` device ids that land on `count` different shards."""
    found: dict[int, str] = {}
    serial = 0
    while len(found) < count:
        serial += 1
        did = f"{prefix}{serial:013d}"[:16]
        found.setdefault(keyspace.shard_of(did), did)
    return list(found.values())[:count]


def dids_on_one_shard(keyspace: Keyspace, count: int, prefix: str = "DEV") -> list[str]:
    """`count` device ids that share a shard (so one script call carries them all)."""
    by_shard: dict[int, list[str]] = {}
    serial = 0
    while True:
        serial += 1
        did = f"{prefix}{serial:013d}"[:16]
        group = by_shard.setdefault(keyspace.shard_of(did), [])
        group.append(did)
        if len(group) == count:
            return group


@pytest.fixture(name="meter")
async def meter_fixture(redis_client: aioredis.Redis, keyspace: Keyspace) -> MeterDriver:
    """meter.lua on the real Redis, under this test's key prefix."""
    await Scripts().load(redis_client)
    return MeterDriver(redis_client, keyspace)
