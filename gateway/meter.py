"""Durable metering: every record of a loop tick goes to Redis in one round trip.

Records from all connections collect in `pending`. One owner task takes them in rounds: one
`meter.lua` call for the whole round (on a Redis Cluster one per shard, in one round trip per
master), the records as one msgpack argument. The script deduplicates, meters the counter,
appends the round to a ledger stream as one entry and answers each record's ack code and
watermark; only then are the devices acked.
While a round is in flight the next one collects, so batches grow with load.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import redis.asyncio as aioredis

from aquafleet.gateway.errors import RedisUnavailable, ScriptFailed
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.redis_io import (
    NO_WAIT,
    Replication,
    Scripts,
    is_cluster,
    mget_any,
    redis_errors,
)
from aquafleet.protocol import AckCode, speedups
from aquafleet.protocol.message_types import Record

if TYPE_CHECKING:
    from aquafleet.gateway.hub import DeviceLink, Hub

log = get_logger("aquafleet.meter")

OOO_LIMIT = 64  # out-of-order recs remembered per boot before a gap is given up
RETRY_MIN_S, RETRY_MAX_S = 0.05, 2.0
PAUSE_PENDING = "pending"
PAUSE_BACKLOG = "ledger_backlog"
PAUSE_REDIS = "redis_unavailable"
BACKLOG_POLL_S = 0.5


METER_STATE_FIELDS = (
    "b0", "w0", "o0", "b1", "w1", "o1", "le", "lt", "pe", "pt", "mt", "n",
    "tb", "tr", "ts", "enc", "payload", "at",
    "mode", "rm", "ver", "lk", "rx", "lo", "lf", "rp",
)  # fmt: skip
RECONCILE_MS = 30_000  # least time between two re-sends of the desired state to a device


def meter_fields(raw: bytes | None) -> dict[str, Any]:
    """meter.lua's per-device state (a msgpack array) by its short field names, as the script
    lays it out (see gateway/lua/meter.lua); unknown fields absent. For the script's tests and
    for MeterState; everything else reads MeterState."""
    if raw is None:
        return {}
    values = msgpack.unpackb(raw, raw=True)
    state = {
        name: value
        for name, value in zip(METER_STATE_FIELDS, values, strict=False)
        if value is not False
    }
    for name in ("o0", "o1"):
        if isinstance(state.get(name), bytes):
            state[name] = state[name].decode()
    return state


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class MeterState:
    """What meter.lua keeps of one device, by name (None: not known yet)."""

    known: bool = False  # the device has a meter state at all
    metered_ml: int = 0  # mt: the water metered so far
    records: int = 0  # n: records stored
    counter_epoch: int | None = None  # le: the counter's current epoch (None: none named)
    counter_top_ml: int | None = None  # lt: the counter's highest reading in that epoch
    watermark: tuple[int, int] | None = None  # b0, w0: boot and rec acked in order up to
    telemetry_payload: bytes | None = None  # payload: the newest telemetry, as received
    telemetry_encoding: int | None = None  # enc: its payload encoding
    telemetry_received_ms: int | None = None  # at: when it was received (unix ms)

    @classmethod
    def decode(cls, raw: bytes | None) -> MeterState:
        fields_ = meter_fields(raw)
        epoch = _int_or_none(fields_.get("le"))
        boot, rec = _int_or_none(fields_.get("b0")), _int_or_none(fields_.get("w0"))
        payload = fields_.get("payload")
        return cls(
            known=bool(fields_),
            metered_ml=_int_or_none(fields_.get("mt")) or 0,
            records=_int_or_none(fields_.get("n")) or 0,
            counter_epoch=None if epoch is None or epoch < 0 else epoch,
            counter_top_ml=_int_or_none(fields_.get("lt")),
            watermark=None if boot is None or rec is None else (boot, rec),
            telemetry_payload=payload if isinstance(payload, bytes) else None,
            telemetry_encoding=_int_or_none(fields_.get("enc")),
            telemetry_received_ms=_int_or_none(fields_.get("at")),
        )


@dataclass(frozen=True, slots=True)
class MeterOutcome:
    """What meter.lua answered for a round: per shard, (rc, wm_boot, wm_rec) per record in the
    order sent, flattened; and the backlog counter of each ledger stream the round wrote to."""

    codes: dict[int, list[int]]
    backlogs: dict[int, int]


# py_pack_group's common case in C where the extension is in use (protocol/speedups.py; held
# to it by tests/protocol/test_speedups.py): the records' lists, built a record at a time and
# walked again by msgpack, were the round's largest Python cost at window 1 (py-spy, session
# 15: 8% of the gateway's CPU; docs/benchmarks.md).
_compiled_pack_group = speedups.compiled.pack_meter_group if speedups.compiled else None


def py_pack_group(packer: msgpack.Packer, prefix: str, items: list[tuple[str, Record]]) -> bytes:
    """One shard's group of a round as meter.lua reads ARGV[1]'s groups: {prefix, records},
    a record {did, frame_type, boot, rec, ts, flow_total (-1: none), cnt_epoch (-1: none),
    event_kind, encoding, payload, state_bits}. The reference of the compiled twin
    (`pack_meter_group`), which packs the common case byte for byte alike."""
    return packer.pack(  # type: ignore[no-any-return]
        [
            prefix,
            [
                [
                    did,
                    r.frame_type,
                    r.boot,
                    r.rec,
                    r.ts,
                    -1 if r.flow_total_ml is None else r.flow_total_ml,
                    -1 if r.cnt_epoch is None else r.cnt_epoch,
                    r.event_kind,
                    r.encoding,
                    r.payload,
                    r.state_bits,
                ]
                for did, r in items
            ],
        ]
    )


class MeterScript:
    """meter.lua for a round's records of many shards.

    On one Redis a round is one script call and one ledger stream entry, whatever the shards:
    a script call and a stream entry cost Redis and the ledger writer about as much for 6
    records as for 100, and at window 1 a round of ~100 records touches all 16 shards. On a
    Redis Cluster a call may only touch keys of one slot, so there it is one call per shard
    (each appending to its own shard's stream), all in one round trip per master.
    """

    def __init__(self, scripts: Scripts, keyspace: Keyspace) -> None:
        self.scripts = scripts
        # Redis' Lua cmsgpack predates msgpack's bin types: bytes go as raw strings.
        self._packer = msgpack.Packer(use_bin_type=False)
        self._prefix = [keyspace.shard_prefix(s) for s in keyspace.all_shards()]
        self._stream = [keyspace.ledger_stream(s) for s in keyspace.all_shards()]
        self._backlog = [keyspace.ledger_backlog(s) for s in keyspace.all_shards()]
        self._channel_prefix = keyspace.script_channels

    def _pack(self, shards: list[int], rows: dict[int, list[tuple[str, Record]]]) -> bytes:
        """A call's groups as one msgpack array, packed a shard at a time: the records' lists
        of the whole round alive at once made the gateway's garbage collector run full
        collections often enough to cost 1-2 us per record at window 16 (py-spy)."""
        parts = [self._packer.pack_array_header(len(shards))]
        for shard in shards:
            prefix, items = self._prefix[shard], rows[shard]
            packed = None if _compiled_pack_group is None else _compiled_pack_group(prefix, items)
            parts.append(py_pack_group(self._packer, prefix, items) if packed is None else packed)
        return b"".join(parts)

    async def run(
        self,
        client: aioredis.Redis,
        rows: dict[int, list[tuple[str, Record]]],
        now_ms: int,
        replication: Replication = NO_WAIT,
    ) -> MeterOutcome:
        shards = sorted(rows)
        # Calls, each a list of shards; a call's entry goes to its first shard's stream.
        calls = [[s] for s in shards] if is_cluster(client) else [shards] if shards else []
        replies = await self.scripts.run(
            client,
            [
                ("meter", (self._stream[call[0]], self._backlog[call[0]]),
                 (self._pack(call, rows), now_ms, OOO_LIMIT, RECONCILE_MS,
                  self._channel_prefix))
                for call in calls
            ],
            "metering records",
            replication,
        )  # fmt: skip
        codes: dict[int, list[int]] = {}
        backlogs: dict[int, int] = {}
        for call, reply in zip(calls, replies, strict=True):
            out = msgpack.unpackb(reply)
            start = 0
            for shard in call:
                end = start + 3 * len(rows[shard])
                codes[shard] = out[start:end]
                start = end
            backlogs[call[0]] = out[-1]
        return MeterOutcome(codes, backlogs)


class MeterBatcher:
    def __init__(
        self,
        *,
        hub: Hub,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        metrics: Metrics,
        batch_max: int,
        pause_pending: int,
        pause_backlog: int,
        coalesce_acks: bool = True,
        replication: Replication = NO_WAIT,
        linger_s: float = 0.0,
    ) -> None:
        self.hub = hub
        self.replication = replication  # WAIT for replicas before acking a round
        self.coalesce_acks = coalesce_acks
        self.linger_s = linger_s
        self.client = client
        self.scripts = scripts
        self.keyspace = keyspace
        self.metrics = metrics
        self.batch_max = batch_max
        self.pause_pending = pause_pending
        self.pause_backlog = pause_backlog
        self.pending: list[tuple[DeviceLink, Record]] = []
        # When pending[0] arrived (monotonic s): the ack latency of each round is its oldest
        # record's wait, one observation per round rather than a clock read per record.
        self.oldest_at = 0.0
        self._round_oldest_at = 0.0
        self.in_flight = 0
        self.backlog = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.script = MeterScript(scripts, keyspace)
        self._backlog_key = [keyspace.ledger_backlog(s) for s in keyspace.all_shards()]
        self._shard_backlog = [0] * keyspace.shards
        metrics.gauge("meter_pending", "Records waiting to be metered", lambda: len(self.pending))
        metrics.gauge(
            "ledger_backlog",
            "Records in the ledger streams not yet in the database (every shard)",
            lambda: self.backlog,
            across="max",  # every worker reads the same streams
        )

    def submit(self, conn: DeviceLink, record: Record) -> None:
        self.pending.append((conn, record))
        self.metrics.records_received += 1
        if not self._wake.is_set():  # set exactly while records are pending (see run)
            self.oldest_at = time.monotonic()
            self._wake.set()
            self._idle.clear()
        if len(self.pending) >= self.pause_pending:
            self.hub.pause_reading(PAUSE_PENDING)

    async def drained(self) -> None:
        """Return once every submitted record is metered and acked (graceful shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            if self.linger_s and len(self.pending) < self.batch_max // 4:
                # A small round costs Redis and the ledger writer nearly what a large one does
                # (a script call and a stream entry per shard): let more records arrive first.
                await asyncio.sleep(self.linger_s)
            while self.pending:
                batch = self.pending[: self.batch_max]
                del self.pending[: self.batch_max]
                self._round_oldest_at = self.oldest_at
                if self.pending:  # they arrived before now: their wait is counted from here
                    self.oldest_at = time.monotonic()
                else:  # the next record submitted starts the next round's wait
                    self._wake.clear()
                await self._meter_with_retry(batch)
                if len(self.pending) < self.pause_pending // 2:
                    self.hub.resume_reading(PAUSE_PENDING)
            if not self.pending:
                self._wake.clear()
                self._idle.set()

    async def _meter_with_retry(self, batch: list[tuple[DeviceLink, Record]]) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                await self.meter(batch)
            except ScriptFailed as exc:
                # Not an outage: retrying would fail again. The devices keep these records
                # (UNAVAILABLE) and resend them after their next login.
                self.metrics.redis_errors += 1
                log.error("meter_script_failed", error=str(exc), records=len(batch))
                self._refuse(batch)
                self.metrics.histograms.ack_latency.observe(
                    time.monotonic() - self._round_oldest_at
                )
                return
            except RedisUnavailable as exc:
                self.metrics.redis_errors += 1
                self.hub.pause_reading(PAUSE_REDIS)
                log.error("meter_redis_error", error=str(exc), records=len(batch), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self.hub.resume_reading(PAUSE_REDIS)
            return

    async def meter(self, batch: list[tuple[DeviceLink, Record]]) -> None:
        """One round: meter `batch` in Redis (one script call; per shard on a cluster), then ack
        every record."""
        by_shard: dict[int, list[tuple[DeviceLink, Record]]] = {}
        for item in batch:
            shard_items = by_shard.get(item[0].shard)
            if shard_items is None:
                by_shard[item[0].shard] = [item]
            else:
                shard_items.append(item)
        rows = {
            shard: [(conn.did, record) for conn, record in items]
            for shard, items in by_shard.items()
        }
        self.in_flight += len(batch)
        started = time.monotonic()
        try:
            outcome = await self.script.run(
                self.client, rows, int(time.time() * 1000), self.replication
            )
        finally:
            self.in_flight -= len(batch)
        self._ack(by_shard, outcome)
        acked = time.monotonic()
        histograms = self.metrics.histograms
        histograms.meter_round.observe(acked - started)
        histograms.ack_latency.observe(acked - self._round_oldest_at)

    def _refuse(self, batch: list[tuple[DeviceLink, Record]]) -> None:
        touched = set()
        for conn, record in batch:
            if not conn.closed and conn.session is not None:
                conn.session.ack(record.seq, AckCode.UNAVAILABLE)
                touched.add(conn)
        for conn in touched:
            conn.flush()

    def _ack(
        self,
        by_shard: dict[int, list[tuple[DeviceLink, Record]]],
        outcome: MeterOutcome,
    ) -> None:
        metrics = self.metrics
        touched: set[DeviceLink] = set()
        # Stored records that their watermark covers need no ACK of their own when a later
        # record of the same boot is acked in this round (its watermark covers them too).
        last_covered: dict[tuple[DeviceLink, int], tuple[int, int]] = {}
        coalesce = self.coalesce_acks
        stored = duplicate = stale = 0
        for shard, backlog in outcome.backlogs.items():
            self._shard_backlog[shard] = backlog
        # A plain int, not the IntEnum member: the compiled ACK encoder takes exact ints only
        # (a bool, also an int, would be packed otherwise by msgpack) and left every coalesced
        # ACK, most of them, to the Python encoder (issue 20, found in a native profile).
        stored_rc = int(AckCode.STORED)
        for shard, items in by_shard.items():
            codes = iter(outcome.codes[shard])  # (rc, wm_boot, wm_rec) per record, flattened
            for (conn, record), rc, wm_boot, wm_rec in zip(items, codes, codes, codes, strict=True):
                if rc == stored_rc:
                    stored += 1
                    if coalesce and record.boot == wm_boot and record.rec <= wm_rec:
                        last_covered[(conn, wm_boot)] = (record.seq, wm_rec)
                        continue
                elif rc == AckCode.DUPLICATE:
                    duplicate += 1  # always acked alone: resends converge for any firmware
                else:
                    stale += 1
                session = conn.session
                if session is not None and not conn.closed:
                    session.ack(record.seq, rc, (wm_boot, wm_rec))
                    touched.add(conn)
        for (conn, boot), (seq, wm_rec) in last_covered.items():
            session = conn.session
            if session is not None and not conn.closed:
                session.ack(seq, stored_rc, (boot, wm_rec))
                touched.add(conn)
        for conn in touched:
            conn.flush()
        metrics.records_stored += stored
        metrics.records_duplicate += duplicate
        metrics.records_stale += stale
        metrics.meter_rounds += 1
        size = stored + duplicate + stale
        if size > metrics.meter_round_records_max:
            metrics.meter_round_records_max = size
        self.backlog = sum(self._shard_backlog)
        if self.backlog >= self.pause_backlog:
            self.hub.pause_reading(PAUSE_BACKLOG)

    async def total_backlog(self) -> int:
        """Records in the ledger streams not yet in the database (all shards)."""
        with redis_errors("reading the ledger backlog"):
            values = await mget_any(self.client, self._backlog_key)
        self._shard_backlog = [int(v or 0) for v in values]
        return sum(self._shard_backlog)

    async def watch_backlog(self) -> None:
        """Resume reading once the ledger writers have caught up (below half the pause mark)."""
        while True:
            await asyncio.sleep(BACKLOG_POLL_S)
            try:
                self.backlog = await self.total_backlog()
            except RedisUnavailable as exc:  # transient: keep the last value
                log.warning("backlog_poll_failed", error=str(exc))
                continue
            if self.backlog < self.pause_backlog // 2:
                self.hub.resume_reading(PAUSE_BACKLOG)
            elif self.backlog >= self.pause_backlog:
                self.hub.pause_reading(PAUSE_BACKLOG)
