"""A device's service state in Redis: mode, quota, rental expiry, locks, version.

The live state sits in the device's meter state (fields 19-26 of `m:<did>`), so meter.lua can
take metered water off the quota in the same atomic step that meters it; `service.lua` makes
every other change. Each change bumps the version and is published to the node holding the
device (gateway/command_sender.py sends it). The database keeps the settings and the history of
changes (models/service.py); this module is the Redis half.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import Scripts, redis_errors
from aquafleet.protocol import DesiredState

log = get_logger("aquafleet.service")

QUOTA_LOCK, EXPIRED_LOCK, MANUAL_LOCK = 1, 2, 4
RENTAL_SCHEDULES = ("expiry", "remind", "grace")  # KEYS[3..5] of service.lua, in this order
LOCK_REASONS = {
    QUOTA_LOCK: "quota_exhausted",
    EXPIRED_LOCK: "rental_expired",
    MANUAL_LOCK: "manual",
}


class Applied(IntEnum):
    CHANGED = 1
    UNCHANGED = 0
    ALREADY_APPLIED = -1  # the request id was applied before (a retry)
    REFUSED = -2  # e.g. a top-up for a device that is not metered against a quota
    HANDED_BACK = -3  # a hand-over retried after its ticket's cancel began giving it back
    MARKER_EXPIRED = -4  # the database recorded the hand-over; its marker expired: refused


@dataclass(frozen=True, slots=True)
class ServiceState:
    version: int
    lock_bits: int
    mode: int | None
    remaining_ml: int | None
    rental_expires_at: int | None
    low_balance_ml: int | None

    @property
    def locked(self) -> bool:
        return self.lock_bits != 0

    @property
    def lock_reasons(self) -> list[str]:
        return [name for bit, name in LOCK_REASONS.items() if self.lock_bits & bit]

    def desired(self) -> DesiredState:
        return DesiredState(
            version=self.version,
            locked=self.locked,
            remaining_ml=self.remaining_ml,
            rental_expires_at=self.rental_expires_at,
        )


@dataclass(frozen=True, slots=True)
class HandoverAnswer:
    """service.lua's answer to a hand-over: `given_ml` the quota handed over (None: none);
    `received_by` the recipient it went to, set when a retry naming another was REFUSED (or
    HANDED_BACK). The same for a hand-back (the ml given back) and a take-back."""

    applied: Applied
    state: ServiceState
    given_ml: int | None
    received_by: str | None


@dataclass(frozen=True, slots=True)
class MarkedChange:
    """What a request marker recorded of the change its request id made (service.lua's
    record): the op, its arguments as asked, and the state right after it."""

    op: str
    args: tuple[int | None, ...]
    state: ServiceState


class Recalled(NamedTuple):
    """What Redis knows of a request id's change without applying it: `applied`, and the
    change's record (None: none kept, a marker written before records were)."""

    applied: bool
    marked: MarkedChange | None


class DueRecord(NamedTuple):
    """An unrecorded record the shard's index lists: whose change and when it was applied."""

    did: str
    request_id: str
    applied_ms: int


@dataclass(frozen=True, slots=True)
class Carried:
    """What the upgrade's one-off step did (ServiceStore.carry_old_records)."""

    indexed: int = 0  # unrecorded records of the release before, entered in the index
    carried: int = 0  # markers without a record and without a row, kept past their week


# How long service.lua keeps a request marker ('EX', 604800 there): a marker's age is this
# less its remaining time to live.
MARKER_TTL_MS = 604_800_000
CARRY_BATCH = 500


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_recordless(value: Any) -> bool:
    """A request marker of a change of models/service.py written before markers kept the
    change's record: "1", "0" or "configured|mt|rx" (an exchange's own steps, "amount|did",
    "taken|ml", are none)."""
    text = _text(value)
    return "#" not in text and (text in ("0", "1") or text.startswith("configured|"))


RowsOf = Callable[[list[tuple[str, str]]], Awaitable[set[tuple[str, str]]]]


class ChangeAnswer(NamedTuple):
    """service.lua's answer to a change: `marked` is set when the request id was applied
    before (ALREADY_APPLIED) and its marker keeps the record of that first change."""

    applied: Applied
    state: ServiceState
    marked: MarkedChange | None = None


def _dash_int(text: str) -> int | None:
    return None if text in ("", "-") else int(text)


def parse_record(record: Any) -> MarkedChange | None:
    """A marker's record ("op|arg,..|version,locks,mode,remaining,expiry,low"); None when
    there is none (a marker written before records were kept) or it does not parse."""
    if isinstance(record, bytes):
        record = record.decode()
    if not isinstance(record, str):
        return None
    try:
        op, args, after = record.split("|")
        version, lock_bits, mode, remaining, expires, low = after.split(",")
        return MarkedChange(
            op=op,
            args=tuple(_dash_int(a) for a in args.split(",")) if args else (),
            state=ServiceState(
                version=int(version),
                lock_bits=int(lock_bits),
                mode=_dash_int(mode),
                remaining_ml=_dash_int(remaining),
                rental_expires_at=_dash_int(expires),
                low_balance_ml=_dash_int(low),
            ),
        )
    except ValueError:
        return None


def _opt(value: Any) -> int | None:
    return None if value is None or value is False else int(value)


def _arg(value: int | None) -> str | int:
    return "-" if value is None else value


def parse_answer(reply: list[Any]) -> tuple[Applied, ServiceState]:
    applied, version, lock_bits, mode, remaining, expires, low = reply[:7]
    return Applied(int(applied)), ServiceState(
        version=int(version),
        lock_bits=int(lock_bits),
        mode=_opt(mode),
        remaining_ml=_opt(remaining),
        rental_expires_at=_opt(expires),
        low_balance_ml=_opt(low),
    )


def _handover_answer(reply: list[Any]) -> HandoverAnswer:
    applied, state = parse_answer(reply)
    given = _opt(reply[7]) if len(reply) > 7 else None
    holder = reply[8] if len(reply) > 8 else None
    if isinstance(holder, bytes):
        holder = holder.decode()
    return HandoverAnswer(applied, state, given, holder)


class ServiceStore:
    """service.lua for one device at a time (changes are rare: people and schedules)."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts, keyspace: Keyspace) -> None:
        self.client = client
        self.scripts = scripts
        self.keyspace = keyspace
        self._channel_prefix = keyspace.script_channels

    def _keys(self, did: str, request_id: str | None, *markers: str) -> list[str]:
        """service.lua's KEYS for `did` (the request marker, then other markers or the
        unrecorded hash, last)."""
        keyspace = self.keyspace
        shard = keyspace.shard_of(did)
        keys = [
            keyspace.meter(did),
            keyspace.presence(did),
            *(keyspace.rental_schedule(kind, shard) for kind in RENTAL_SCHEDULES),
        ]
        if request_id is not None:
            keys.append(keyspace.service_request(did, request_id))
            keys.extend(keyspace.service_request(did, marker) for marker in markers)
        return keys

    def _unrecorded_keys(self, did: str) -> list[str]:
        """service.lua's KEYS[7] and KEYS[8] of a change with a pending row: the device's
        unrecorded hash and its shard's index of them."""
        keyspace = self.keyspace
        return [
            keyspace.service_unrecorded(did),
            keyspace.service_unrecorded_index(keyspace.shard_of(did)),
        ]

    async def change(
        self,
        did: str,
        op: str,
        *args: int | None,
        request_id: str | None = None,
        now_ms: int | None = None,
        pending: bool = False,
    ) -> ChangeAnswer:
        """`pending`: the database holds a pending row for `request_id`; the change's record
        is kept in the device's unrecorded hash too, until `settle` (docs/metering.md)."""
        unrecorded = self._unrecorded_keys(did) if pending and request_id else []
        keys = [*self._keys(did, request_id), *unrecorded]
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        argv = [op, now_ms, self._channel_prefix, did, *(_arg(a) for a in args)]
        (reply,) = await self.scripts.run(self.client, [("service", keys, argv)], f"service {op}")
        applied, state = parse_answer(reply)
        marked = None
        if applied is Applied.ALREADY_APPLIED and len(reply) > 7:
            marked = parse_record(reply[7])
        return ChangeAnswer(applied, state, marked)

    async def recall(self, did: str, request_id: str) -> Recalled:
        """What the live store knows of the change under `request_id`, changing nothing."""
        marker = self.keyspace.service_request(did, request_id)
        with redis_errors(f"service recall {did}"):  # the marker first: the change lands
            value = await self.client.get(marker)  # with both, and the hash outlives it
            kept = await self.client.hget(self.keyspace.service_unrecorded(did), marker)
        if kept is not None:
            return Recalled(True, parse_record(kept))
        if value is None:
            return Recalled(False, None)
        if isinstance(value, bytes):
            value = value.decode()
        own, _, record = value.partition("#")
        if own.startswith("taken|"):  # an exchange's take-back: its configure never landed
            return Recalled(False, None)
        return Recalled(True, parse_record(record) if record else None)

    async def settle(self, did: str, request_id: str) -> bool:
        """Forget the record the unrecorded hash keeps of `request_id` (its database row is
        complete now); False when Redis could not be told (a later pass retries)."""
        marker = self.keyspace.service_request(did, request_id)
        hash_key, index = self._unrecorded_keys(did)
        try:
            with redis_errors(f"service settle {did}"):
                pipe = self.client.pipeline(transaction=False)  # one slot: the device's
                pipe.hdel(hash_key, marker)
                pipe.zrem(index, marker)
                await pipe.execute()
        except GatewayError as exc:
            log.warning("service_settle_failed", did=did, request_id=request_id, error=str(exc))
            return False
        return True

    async def unrecorded_due(self, upto_ms: int, limit: int) -> list[DueRecord]:
        """The unrecorded records applied at or before `upto_ms`, oldest first, at most
        `limit` of each shard."""
        keyspace = self.keyspace
        with redis_errors("service unrecorded due"):
            pipe = self.client.pipeline(transaction=False)
            for shard in keyspace.all_shards():
                index = keyspace.service_unrecorded_index(shard)
                pipe.zrangebyscore(index, "-inf", upto_ms, start=0, num=limit, withscores=True)
            replies = await pipe.execute()
        due = []
        for reply in replies:
            for member, score in reply:
                named = keyspace.service_request_of(_text(member))
                if named is not None:
                    due.append(DueRecord(named[0], named[1], int(score)))
        return due

    async def unindex(self, did: str, request_id: str) -> None:
        """Take `request_id` out of the index, leaving the device's record (one that cannot
        be recorded: the recovery pass does not look at it again)."""
        marker = self.keyspace.service_request(did, request_id)
        with redis_errors(f"service unindex {did}"):
            await self.client.zrem(self._unrecorded_keys(did)[1], marker)

    async def carry_old_records(self, rows_of: RowsOf) -> Carried:
        """The upgrade's one-off step, once per Redis (a flag key): enter the unrecorded
        records of the release before (no index then) in the index, and keep a marker written
        before markers kept records whose change has no row (`rows_of`: the (did, request
        id) pairs the database has a row of) in the device's unrecorded hash, with no expiry,
        so a retry after its week is answered applied, not applied again."""
        flag = self.keyspace.service_carried
        with redis_errors("service carry old records"):
            if await self.client.exists(flag):
                return Carried()
            indexed = await self._index_old_records()
            carried = 0
            batch: list[str] = []
            async for key in self.client.scan_iter(
                match=f"{self.keyspace.prefix}:{{*}}:r:*", count=1000
            ):
                batch.append(_text(key))
                if len(batch) >= CARRY_BATCH:
                    carried += await self._carry_markers(batch, rows_of)
                    batch = []
            carried += await self._carry_markers(batch, rows_of)
            await self.client.set(flag, int(time.time()))
        return Carried(indexed, carried)

    async def _index_old_records(self) -> int:
        keyspace = self.keyspace
        now_ms = int(time.time() * 1000)
        indexed = 0
        async for key in self.client.scan_iter(match=f"{keyspace.prefix}:{{*}}:sa:*", count=1000):
            did = _text(key).rpartition(":sa:")[2]
            markers = [_text(field) for field in await self.client.hkeys(key)]
            if not markers:
                continue
            pipe = self.client.pipeline(transaction=False)
            for marker in markers:
                pipe.pttl(marker)
            ttls = await pipe.execute()
            applied = {  # when the marker was set: its week less what is left of it
                marker: now_ms - MARKER_TTL_MS + ttl if ttl > 0 else 0
                for marker, ttl in zip(markers, ttls, strict=True)
            }
            index = keyspace.service_unrecorded_index(keyspace.shard_of(did))
            indexed += int(await self.client.zadd(index, applied, nx=True))  # type: ignore[arg-type]
        return indexed

    async def _carry_markers(self, keys: list[str], rows_of: RowsOf) -> int:
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values = await pipe.execute()
        named = [
            (key, found)
            for key, value in zip(keys, values, strict=True)
            if value is not None and is_recordless(value)
            and (found := self.keyspace.service_request_of(key)) is not None
        ]  # fmt: skip
        recorded = await rows_of([found for _key, found in named]) if named else set()
        pipe = self.client.pipeline(transaction=False)
        for key, (did, request_id) in named:
            if (did, request_id) not in recorded:
                pipe.hsetnx(self.keyspace.service_unrecorded(did), key, "carried")
        return sum(await pipe.execute())

    async def hand_over(
        self,
        did: str,
        *,
        request_id: str,
        recipient: str,
        recorded: bool = False,
        now_ms: int | None = None,
    ) -> HandoverAnswer:
        """An exchange takes the quota left (None: the device has none) for `recipient`; it
        drops to 0 here in the same step. A retry with the same request id and recipient
        answers the amount handed over then; one naming another recipient is REFUSED, with
        the did that received it. `recorded`: the database says this hand-over began longer
        ago than markers live; without its marker it is MARKER_EXPIRED and nothing moves."""
        keys = self._keys(did, request_id)
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        flag = "recorded" if recorded else "-"
        argv = ["handover", now_ms, self._channel_prefix, did, recipient, flag]
        (reply,) = await self.scripts.run(
            self.client, [("service", keys, argv)], "service handover"
        )
        return _handover_answer(reply)

    async def hand_back(
        self,
        did: str,
        *,
        request_id: str,
        phase: str,
        ml: int | None = None,
        lock_request_id: str | None = None,
        recorded: bool = False,
        now_ms: int | None = None,
    ) -> HandoverAnswer:
        """A cancelled exchange gives the quota back to `did`, the device that handed it over
        under `request_id`: `begin` refuses the hand-over from then on and answers where it
        went (`received_by`, None: nothing was handed over) and how much; `credit` adds `ml`
        once and lifts the person's lock the exchange's lock (`lock_request_id`) set.
        `recorded` as for hand_over: no marker then is MARKER_EXPIRED, not "nothing"."""
        keys = self._keys(did, request_id, *([lock_request_id] if lock_request_id else []))
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        flag = "recorded" if recorded else "-"
        argv = ["handback", now_ms, self._channel_prefix, did, phase, _arg(ml), flag]
        (reply,) = await self.scripts.run(
            self.client, [("service", keys, argv)], "service handback"
        )
        return _handover_answer(reply)

    async def take_back(
        self, did: str, *, request_id: str, handed_ml: int | None, now_ms: int | None = None
    ) -> HandoverAnswer:
        """The recipient's side of a hand-back: `given_ml` is what goes back (what is left of
        `handed_ml` when the exchange configured it: less the water metered since, never more
        than it holds; else `handed_ml`), taken off it once; of the rental expiry the exchange
        gave, the part still to run comes off and what others added beyond it stays."""
        keys = self._keys(did, request_id)
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        argv = ["takeback", now_ms, self._channel_prefix, did, _arg(handed_ml)]
        (reply,) = await self.scripts.run(
            self.client, [("service", keys, argv)], "service takeback"
        )
        return _handover_answer(reply)

    async def read(self, did: str) -> ServiceState:
        return (await self.change(did, "read"))[1]

    async def configure(
        self,
        did: str,
        *,
        mode: int,
        remaining_ml: int | None,
        rental_expires_at: int | None,
        low_balance_ml: int | None,
        request_id: str | None = None,
        now_ms: int | None = None,
    ) -> ChangeAnswer:
        return await self.change(
            did, "configure", mode, remaining_ml, rental_expires_at, low_balance_ml,
            request_id=request_id, now_ms=now_ms,
        )  # fmt: skip
