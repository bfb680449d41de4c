"""The ledger writer: drains the shards' ledger streams into the database, exactly once.

Each stream entry is one metering round (many records; on a Redis Cluster, a round's records of
one shard). Writers of all nodes share
one consumer group; an entry is acknowledged (XACK, then XDEL, and the backlog counter lowered)
only after its records are committed. A writer that crashes leaves its entries pending; on
restart it writes them again, and a live writer claims the entries of a dead one after
`ledger_claim_idle_s`. Inserts ignore rows already present (unique did, boot, rec, and on
PostgreSQL the entry's receive time, the same in a replay), so a replay writes nothing twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from tortoise.exceptions import BaseORMException

from aquafleet.gateway.commands import Pour, link_pours
from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.redis_io import (
    NO_WAIT,
    Replication,
    ScriptCall,
    Scripts,
    is_cluster,
    redis_errors,
    round_trip,
)
from aquafleet.models.faults import FaultWatch
from aquafleet.models.filters import MaintenanceWatch
from aquafleet.models.usage import (
    DispenseDone,
    ServiceEvent,
    SnapshotRow,
    UsageRow,
    prepare_ledger_storage,
    store_ledger_batch,
)
from aquafleet.protocol import EventKind, FrameType, ProtocolError, speedups
from aquafleet.protocol.message_types import Event
from aquafleet.protocol.messages import (
    TelemetryReport,
    parse_record_payload,
    parse_telemetry_report,
)

log = get_logger("aquafleet.ledger")

GROUP = "ledger-writers"
BLOCK_MS = 1000
CLAIM_EVERY_S = 15.0
RETRY_MAX_S = 5.0
CLUSTER_POLL_S = 0.05  # an idle writer on a cluster reads again this often
ACTIVATED_CACHE = 200_000


def _entry_size(fields_: dict[bytes, bytes]) -> int:
    try:
        return int(fields_.get(b"n", 0))
    except ValueError:
        return 0


Entry = tuple[bytes, dict[bytes, bytes]]


def _records_in(reply: Any) -> int:
    """Records in an XREADGROUP reply (per stream: name, entries)."""
    return sum(_entry_size(f) for _s, entries in reply for _id, f in entries if f is not None)


def _fields(raw: list[bytes] | None) -> dict[bytes, bytes] | None:
    """A stream entry's flat field list as redis-py's reader gives it (None: deleted)."""
    if raw is None:
        return None
    return dict(zip(raw[::2], raw[1::2], strict=True))


# A record the writer reads the payload of: (row, encoding, payload).
Payloaded = tuple[UsageRow, int, bytes]


@dataclass(slots=True)
class DecodedBatch:
    usage: list[UsageRow] = field(default_factory=list)
    # each device's newest telemetry, its payload not read yet: `snapshot_rows` reads those a
    # transaction writes (SnapshotPacer holds the rest, so most are never read at all)
    reports: dict[str, Payloaded] = field(default_factory=dict)
    dids: set[str] = field(default_factory=set)
    bad_payloads: int = 0  # dispense_done events whose fields did not parse: stored, no pour
    poisoned: list[Entry] = field(default_factory=list)  # entries that did not decode at all
    service_events: list[ServiceEvent] = field(default_factory=list)  # quota locks, low balance
    dispenses: list[DispenseDone] = field(default_factory=list)  # vending sessions to close
    pours: list[Pour] = field(default_factory=list)  # dispense commands to link to their pour


# Plain ints: an IntEnum member's comparison goes through the enum class (measured: 0.1 us).
_TELEMETRY = int(FrameType.TELEMETRY)
_EVENT = int(FrameType.EVENT)
_DISPENSE_DONE = int(EventKind.DISPENSE_DONE)

# _entry_rows' common case in C where the extension is in use (protocol/speedups.py; held to
# the Python loop below by tests/gateway/test_ledger_writer.py).
_compiled_entry_rows = speedups.compiled.entry_rows if speedups.compiled else None


def _entry_rows(fields_: dict[bytes, bytes]) -> tuple[list[UsageRow], list[Payloaded]]:
    """An entry's usage rows, and beside them its telemetry and dispense_done records with
    their payloads (the only records whose payload the writer reads)."""
    received_at = dt.datetime.fromtimestamp(int(fields_[b"at"]) / 1000, dt.UTC)
    if _compiled_entry_rows is not None:  # meter.lua's exact shape, compiled (None: not that)
        built = _compiled_entry_rows(fields_[b"records"], received_at, UsageRow)
        if built is not None:
            return built  # type: ignore[no-any-return]
    return py_entry_rows(fields_[b"records"], received_at)


def py_entry_rows(
    records: bytes, received_at: dt.datetime
) -> tuple[list[UsageRow], list[Payloaded]]:
    """_entry_rows of the entry's `records`, in Python (the reference of the compiled twin)."""
    rows: list[UsageRow] = []
    payloaded: list[Payloaded] = []
    add_row = rows.append
    add_payloaded = payloaded.append
    for item in msgpack.unpackb(records, raw=True):
        raw_did, frame_type, boot, rec, ts, delta, total, epoch, event_kind, enc, payload = item
        kind, event, encoding = int(frame_type), int(event_kind), int(enc)
        # tuple.__new__ skips the NamedTuple's argument binding: 0.1 us a row (measured).
        row = tuple.__new__(UsageRow, (
            raw_did.decode(), int(boot), int(rec), kind, event, int(ts),
            received_at, int(delta), None if total < 0 else int(total),
            None if epoch < 0 else int(epoch),
        ))  # fmt: skip
        add_row(row)
        if kind == _TELEMETRY or (kind == _EVENT and event == _DISPENSE_DONE):
            add_payloaded((row, encoding, payload))
    return rows, payloaded


def _entry_service_events(fields_: dict[bytes, bytes]) -> list[ServiceEvent]:
    raw = fields_.get(b"svc")
    if raw is None:
        return []
    return [
        ServiceEvent(did.decode(), kind.decode(), int(version), int(remaining), int(at))
        for did, kind, version, remaining, at in msgpack.unpackb(raw, raw=True)
    ]


def _add_dispense(batch: DecodedBatch, item: Payloaded) -> None:
    """A dispense_done event closes its vending session (by cid) with the ml poured."""
    row, enc, payload = item
    try:
        message = parse_record_payload(row.kind, payload, enc)
    except ProtocolError:
        batch.bad_payloads += 1
        return
    if isinstance(message, Event) and message.cid is not None and message.ml is not None:
        batch.dispenses.append(DispenseDone(row.did, message.cid, message.ml, row.received_at))
        batch.pours.append(Pour(row.did, message.cid, message.ml, row.boot, row.rec))


def decode_entries(entries: Sequence[Entry]) -> DecodedBatch:
    """Turn stream entries (as meter.lua wrote them) into database rows."""
    batch = DecodedBatch()
    newest: dict[str, Payloaded] = {}
    for entry in entries:
        try:
            rows, payloaded = _entry_rows(entry[1])
            events = _entry_service_events(entry[1])
        except (
            KeyError, ValueError, TypeError, OverflowError, UnicodeDecodeError,
            msgpack.UnpackException,
        ):  # fmt: skip
            batch.poisoned.append(entry)
            continue
        batch.service_events.extend(events)
        batch.usage.extend(rows)
        for item in payloaded:
            row = item[0]
            if row[3] != _TELEMETRY:  # UsageRow.kind
                _add_dispense(batch, item)
                continue
            previous = newest.get(row[0])  # UsageRow.did; then (boot, rec) below
            if previous is None or (previous[0][1], previous[0][2]) < (row[1], row[2]):
                newest[row[0]] = item
    # Each device's rows together (a stable sort: its own order kept): the dedupe index keeps
    # a device's records side by side, so a batch in arrival order, where devices that send one
    # record at a time interleave, inserts into a different index page at every row. Grouped,
    # a device's rows go into one page after another (measured on SQLite with 2,000 devices,
    # ten rows each a batch: 24 -> 16 us a row; the sort costs ~0.4 us a row).
    batch.usage.sort(key=_did_of)
    batch.dids = set(map(_did_of, batch.usage))
    batch.reports = newest
    return batch


def snapshot_rows(reports: Iterable[Payloaded]) -> tuple[list[SnapshotRow], int]:
    """The snapshot rows of these reports, their payloads read now (only the reports a
    transaction writes: reading one is ~1.5 us, and at window 1 every record is its device's
    newest of its batch), and how many did not parse (metered already: only the snapshot is
    lost, and the device's stored one stays)."""
    rows: list[SnapshotRow] = []
    bad = 0
    for row, enc, payload in reports:
        try:
            report = parse_telemetry_report(payload, enc)
        except ProtocolError:
            bad += 1
            continue
        rows.append(snapshot_row(row.did, report, row.received_at, row.flow_total_ml))
    return rows, bad


_did_of = operator.itemgetter(UsageRow._fields.index("did"))


def snapshot_row(
    did: str, t: TelemetryReport, received_at: dt.datetime, flow_total: int | None
) -> SnapshotRow:
    return tuple.__new__(SnapshotRow, (
        did, t.boot, t.rec, t.ts, received_at, flow_total, t.tds_in_ppm, t.tds_out_ppm,
        t.temperature_dc, t.filters, t.fault_bits, t.signal, t.state_bits,
    ))  # fmt: skip


class SnapshotPacer:
    """Which device snapshots a transaction writes: a device's at most once every `interval_s`.
    It paces reports (a device's newest telemetry, its payload not yet read): only those a
    transaction writes are read into snapshot rows (`snapshot_rows`).

    A snapshot holds a device's newest readings (TDS, temperature, filters, faults); each one
    written costs the writer an upsert (an index lookup, a row rewritten, the filters as JSON):
    ~4 us a record at window 1, where every record of a device reporting faster than the
    linger is its own transaction's snapshot (docs/benchmarks.md). A device whose snapshot was
    written within the interval has its newer one held (the newest only) and written by the
    first transaction after the interval, or, with nothing to read, by the idle writer within
    the read's block time; `flush()` (graceful stop) writes every held one. A device reporting
    less often than the interval (a fleet reporting every minute) is never held.
    What a crash of the writer loses: the held readings of devices that have not reported
    since, at most `interval_s` old (the usage rows, the water and every record are
    unaffected: they are not paced). 0: every transaction writes its snapshots, as before.
    """

    __slots__ = ("_clock", "_held", "_written", "interval_s")

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._written: dict[str, float] = {}  # did -> when its snapshot was written, oldest first
        self._held: dict[str, Payloaded] = {}  # did -> its newest report not yet written

    @property
    def held(self) -> int:
        return len(self._held)

    def due(self, reports: dict[str, Payloaded], *, everything: bool = False) -> list[Payloaded]:
        """The reports to write now: of `reports` (a batch's, one a device) those of devices
        not written within the interval, and the held ones whose interval has passed (all of
        them with `everything`). The rest are held. Nothing counts as written until `written()`
        says the transaction committed: a failed one loses nothing held."""
        if not self.interval_s:
            return list(reports.values())
        written, held = self._written, self._held
        horizon = self._clock() - self.interval_s
        expired = []  # oldest first: stop at the first device still within its interval
        for did, at in written.items():
            if at > horizon:
                break
            expired.append(did)
        for did in expired:  # forgotten: their next snapshot is due
            del written[did]
        out: dict[str, Payloaded] = {}
        for did, row in reports.items():
            kept = held.get(did)
            if kept is not None and _newer(kept, row):
                row = kept
            if did in written and not everything:
                held[did] = row
            else:
                out[did] = row
        for did, row in held.items():  # held ones now due (at most one a fast reporter)
            if did not in out and (everything or did not in written):
                out[did] = row
        return list(out.values())

    def written(self, rows: list[Payloaded]) -> None:
        """These reports' snapshots committed (or did not parse: nothing to write of them):
        their devices' intervals start now."""
        if not self.interval_s:
            return
        now = self._clock()
        written, held = self._written, self._held
        for row in rows:
            did = row[0].did
            kept = held.get(did)
            if kept is not None and not _newer(kept, row):
                del held[did]
            written.pop(did, None)  # to the end: the dict stays oldest first
            written[did] = now


def _newer(a: Payloaded, b: Payloaded) -> bool:
    """Whether `a` is a later report than `b` (the database's upsert keeps the same order)."""
    return (a[0].boot, a[0].rec) > (b[0].boot, b[0].rec)


class LedgerWriter:
    def __init__(
        self,
        *,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        metrics: Metrics,
        consumer: str,
        batch_entries: int,
        claim_idle_ms: int,
        maintenance: MaintenanceWatch | None = None,
        faults: FaultWatch | None = None,
        replication: Replication = NO_WAIT,
        linger_s: float = 0.0,
        linger_records: int = 0,
        snapshot_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.snapshots = SnapshotPacer(snapshot_interval_s, clock)
        self.linger_s = linger_s  # see write_once
        self.linger_records = linger_records
        self.replication = replication
        self.scripts = scripts
        self.keyspace = keyspace
        self.metrics = metrics
        self.consumer = consumer
        self.batch_entries = batch_entries
        self.claim_idle_ms = claim_idle_ms
        self.maintenance = maintenance  # opens maintenance tickets after each commit
        self.faults = faults  # opens fault tickets after each commit
        self.streams = [keyspace.ledger_stream(s) for s in keyspace.all_shards()]
        self.backlog_keys = {
            keyspace.ledger_stream(s): keyspace.ledger_backlog(s) for s in keyspace.all_shards()
        }
        self._activated: dict[str, None] = {}
        self._stop = False
        self.waiting = False  # in a blocking read, holding no batch

    async def ensure_groups(self) -> None:
        with redis_errors("creating ledger consumer groups"):
            for stream in self.streams:
                try:
                    await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    def request_stop(self) -> None:
        """Finish the batch in hand, then return from run() (within BLOCK_MS).

        While `waiting` is true the writer holds no batch, only a blocking read: cancelling it
        then loses nothing (what the read took is in this consumer's pending list, which
        flush() drains), and saves waiting out the block.
        """
        self._stop = True

    async def run(self) -> None:
        """Write until request_stop(); a batch is never abandoned half way by a stop."""
        delay = 0.1
        while not self._stop:
            try:
                await self.ensure_groups()
                await prepare_ledger_storage(dt.datetime.now(dt.UTC))  # partitions ahead
                await self.drain_own_pending()
                loop = asyncio.get_running_loop()
                next_claim = loop.time() + CLAIM_EVERY_S
                while not self._stop:
                    await self.write_once(block_ms=BLOCK_MS)
                    if loop.time() >= next_claim:
                        await self.claim_abandoned()
                        next_claim = loop.time() + CLAIM_EVERY_S
                    delay = 0.1
            except (RedisUnavailable, BaseORMException, OSError) as exc:
                self.metrics.ledger_db_errors += isinstance(exc, BaseORMException)
                log.error(
                    "ledger_writer_error", error=f"{type(exc).__name__}: {exc}", retry_s=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def flush(self) -> int:
        """Write everything this consumer has read or can read now, and every device snapshot
        held back (graceful shutdown)."""
        written = await self.drain_own_pending()
        while batch := await self.write_once(block_ms=None):
            written += batch
        await self._store_held(everything=True)
        return written

    async def write_once(self, *, block_ms: int | None = None) -> int:
        """Read new entries of all shards, store them, acknowledge them; returns records written.

        A read that brings fewer than `linger_records` records is followed, after `linger_s`,
        by one more: a transaction costs the writer about as much per device in it and per
        commit as per record, so a few large ones are far cheaper than many small ones (the
        records were acked to the devices already: only the database lags by the linger)."""
        self.waiting = block_ms is not None
        try:
            with redis_errors("reading the ledger"):
                reply = await self._read(">", block_ms)
        finally:
            self.waiting = False
        if (
            reply
            and self.linger_s
            and not self._stop
            and _records_in(reply) < self.linger_records
            and not self._page_full(reply)
        ):
            await asyncio.sleep(self.linger_s)
            with redis_errors("reading the ledger"):
                more = await self._read(">", None)
            reply = [*reply, *(more or [])]
        return await self._store_reply(reply)

    def _page_full(self, reply: Any) -> bool:
        """A stream answered a full page (COUNT entries): more is waiting now, so waiting for
        it would only let the backlog grow (small rounds make many small entries)."""
        return any(len(entries) >= self.batch_entries for _stream, entries in reply)

    async def _read(self, since: str, block_ms: int | None) -> Any:
        """XREADGROUP over every shard's stream. A cluster refuses one read across slots:
        there every stream is read in one round trip per master, polled every CLUSTER_POLL_S
        until an entry comes or block_ms has passed. With `replication`, a WAIT follows the
        read on the same connection: XREADGROUP is a write, so once the replicas hold it they
        hold every entry it returned, and nothing committed to the database can vanish with
        a master that dies before replicating it."""
        if not is_cluster(self.client) and not self.replication.replicas:
            return await self.client.xreadgroup(
                GROUP,
                self.consumer,
                {stream: since for stream in self.streams},
                count=self.batch_entries,
                block=block_ms,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (block_ms or 0) / 1000
        commands = [
            ("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self.batch_entries,
             "STREAMS", stream, since)
            for stream in self.streams
        ]  # fmt: skip
        while True:
            replies = await round_trip(
                self.client, commands, "reading the ledger", self.replication
            )
            failed = next((r for r in replies if isinstance(r, Exception)), None)
            if failed is not None:
                raise RedisUnavailable(f"reading the ledger: {failed}")
            reply = [
                [stream, [(entry_id, _fields(raw)) for entry_id, raw in entries]]
                for r in replies
                if r
                for stream, entries in (r.items() if isinstance(r, dict) else r)  # RESP3: a map
            ]
            left = deadline - loop.time()
            if any(item[1] for item in reply) or left <= 0 or self._stop:
                return reply
            await asyncio.sleep(min(left, CLUSTER_POLL_S))

    async def drain_own_pending(self) -> int:
        """Entries this consumer read before a crash or restart and never acknowledged."""
        written = 0
        while True:
            with redis_errors("reading pending ledger entries"):
                reply = await self._read("0", None)
            pending: Any = reply or []
            if not any(item[1] for item in pending):
                return written
            written += await self._store_reply(reply)

    async def claim_abandoned(self) -> int:
        """Take over entries a dead writer left pending for longer than the claim idle time."""
        claimed = 0
        for stream in self.streams:
            with redis_errors("claiming abandoned ledger entries"):
                result = await self.client.xautoclaim(
                    stream,
                    GROUP,
                    self.consumer,
                    self.claim_idle_ms,
                    "0-0",
                    count=self.batch_entries,
                )
            entries = [e for e in result[1] if e[1] is not None]
            if entries:
                claimed += len(entries)
                await self._store_reply([[stream.encode(), entries]])
        self.metrics.ledger_claimed += claimed
        return claimed

    async def _store_held(self, *, everything: bool = False) -> None:
        """Write the held snapshots whose interval has passed (all with `everything`): what
        a writer with nothing to read still owes."""
        if self.snapshots.held:
            due = self.snapshots.due({}, everything=everything)
            if due:
                snapshots, bad = snapshot_rows(due)
                await store_ledger_batch([], snapshots, [])
                self.snapshots.written(due)
                self.metrics.ledger_records_dead += bad
                if self.maintenance is not None and snapshots:  # never raises; bounded work
                    await self.maintenance.after_batch(snapshots)

    async def _store_reply(self, reply: Any) -> int:
        if not reply:
            await self._store_held()
            return 0
        per_stream: list[tuple[str, list[tuple[bytes, int]]]] = []
        entries: list[Entry] = []
        for stream, stream_entries in reply:
            if not stream_entries:
                continue
            name = stream.decode() if isinstance(stream, bytes) else stream
            counted = [(entry_id, _entry_size(fields_)) for entry_id, fields_ in stream_entries]
            per_stream.append((name, counted))
            entries.extend(stream_entries)
        if not entries:
            await self._store_held()
            return 0
        batch = decode_entries(entries)
        activated = [did for did in batch.dids if did not in self._activated]
        due = self.snapshots.due(batch.reports)
        snapshots, bad_reports = snapshot_rows(due)
        began = time.perf_counter()
        await store_ledger_batch(
            batch.usage,
            snapshots,
            activated,
            batch.service_events,
            batch.dispenses,
        )
        self.metrics.histograms.ledger_transaction.observe(time.perf_counter() - began)
        self.snapshots.written(due)
        self._remember_activated(activated)
        if batch.poisoned:  # after the commit: a retried batch must not bury them twice
            await self._bury(batch.poisoned)
        await link_pours(self.client, self.scripts, self.keyspace, batch.pours)  # idempotent
        await self._acknowledge(per_stream)
        self.metrics.ledger_entries_written += len(entries)
        self.metrics.ledger_records_written += len(batch.usage)
        self.metrics.ledger_records_dead += batch.bad_payloads + bad_reports
        self.metrics.metered_ml += sum(row.delta_ml for row in batch.usage)
        if self.maintenance is not None and snapshots:  # never raises; bounded work
            await self.maintenance.after_batch(snapshots)
        if self.faults is not None:  # never raises; bounded work
            await self.faults.after_batch(batch.usage, {})
        return len(batch.usage)

    async def _bury(self, poisoned: list[Entry]) -> None:
        """Keep undecodable entries in a dead-letter stream for a person to look at."""
        log.error("ledger_entries_poisoned", entries=[e[0] for e in poisoned])
        self.metrics.ledger_records_dead += sum(_entry_size(f) for _, f in poisoned)
        with redis_errors("burying poisoned ledger entries"):
            pipe = self.client.pipeline(transaction=False)
            for entry_id, fields_ in poisoned:
                dead: Any = {**fields_, b"id": entry_id}
                pipe.xadd(self.keyspace.ledger_dead, dead)
            await pipe.execute()

    async def _acknowledge(self, per_stream: list[tuple[str, list[tuple[bytes, int]]]]) -> None:
        """One ledger_ack call for every stream read (on a cluster, one per stream: a call's
        keys must share a slot), all in one round trip."""
        by_stream: dict[str, list[tuple[bytes, int]]] = {}
        for stream, counted in per_stream:
            by_stream.setdefault(stream, []).extend(counted)
        groups = [[s] for s in by_stream] if is_cluster(self.client) else [list(by_stream)]
        calls: list[ScriptCall] = []
        for streams in groups:
            keys: list[str] = []
            args: list[Any] = [GROUP]
            for stream in streams:
                keys += [stream, self.backlog_keys[stream]]
                args.append(len(by_stream[stream]))
                for entry_id, records in by_stream[stream]:
                    args += [entry_id, records]
            calls.append(("ledger_ack", keys, args))
        await self.scripts.run(self.client, calls, "acknowledging ledger entries")

    def _remember_activated(self, dids: list[str]) -> None:
        for did in dids:
            self._activated[did] = None
        while len(self._activated) > ACTIVATED_CACHE:
            self._activated.pop(next(iter(self._activated)))
