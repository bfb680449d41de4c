"""The command service: commands to devices wherever they are connected, with a stored log.

A command is issued on any node (the REST call's node, its *origin*) and lives as a hash in the
device's shard of Redis (`command.lua`), so every node sees the same state and a restart loses
none. Its states follow PROTOCOL.md:

    queued -> sent -> delivered -> succeeded | failed | rejected | expired
                                 \\-> timed_out (no result by the deadline)

One-shot commands (dispense, reset_filter, time_sync, firmware_notice, reboot) are routed in the
same Lua step that records them: "cmd ..." on the channel of the node that holds the device (its
presence says which). That node sends it with the same cid until the device answers
(`CommandSender`), and records sent / delivered (the device's ACK) / the RESULT through
`CommandEvents`, a batcher: one pipelined round trip per event-loop turn, whatever the number of
commands. The RESULT step publishes "res <did> <cid> <state>" on the origin's channel, which wakes
whoever waits for the outcome there. A device with no presence, or whose node is gone, fails a
one-shot command at once (`device_offline`): nobody waits for water that cannot come.

Desired-state commands (lock, unlock) change the service state (service.lua tells the holding
node, which pushes SET_STATE under a cid of its own); their log entry records the version the
change made, stays queued (no node writes it itself) and succeeds when the device holds that
version or a newer one: the RESULT of a SET_STATE, or the desired state in AUTH_OK at its next
login ("settle"). An offline device gets it when it returns.

Deadlines: the rental scheduler's owner (one node per cluster) times out open one-shot commands
`DEADLINE_GRACE_S` after their `exp` (`expire_due`). A device that logs in on another node while
its command is in flight has it rerouted there by the node that sent it (same cid, DUP: the
device answers a repeat from memory); if that node died, the command times out. Every copy after
the first is checked against the log first (command.lua `resend` / `reroute`), so a final
command is never sent again by any node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from aquafleet.gateway.command_sender import AnswerTo, CommandIds, CopyAnswer
from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.redis_io import ScriptCall, Scripts, redis_errors
from aquafleet.protocol import Command, CommandOp

log = get_logger("aquafleet.commands")

KEEP_S = 30 * 86_400  # a command's log entry is kept this long after it was issued
KEEP_LISTED = 100  # a device's latest commands listed (command.lua's RECENT)
DEADLINE_GRACE_S = 5.0  # a RESULT this late after `exp` still counts
TIMEOUT_BATCH = 500  # most commands one sweep times out per shard
ONE_SHOT_OPS = frozenset(
    {
        CommandOp.DISPENSE,
        CommandOp.RESET_FILTER,
        CommandOp.TIME_SYNC,
        CommandOp.FIRMWARE_NOTICE,
        CommandOp.REBOOT,
    }
)
STATE_OPS = frozenset({CommandOp.LOCK, CommandOp.UNLOCK})


class CommandState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        CommandState.SUCCEEDED,
        CommandState.FAILED,
        CommandState.REJECTED,
        CommandState.TIMED_OUT,
        CommandState.EXPIRED,
    }
)

# Final states a device's answer brings (the command round-trip histogram's; a timeout is not).
ANSWERED = frozenset({CommandState.SUCCEEDED, CommandState.FAILED, CommandState.REJECTED})


def op_label(op: int) -> str:
    """A command's operation as a metric label: `dispense`, `lock`, ... (`op<n>` if unknown)."""
    try:
        return CommandOp(op).name.lower()
    except ValueError:
        return f"op{op}"


class CommandKind(StrEnum):
    ONCE = "once"  # runs once on the device; needs it online
    STATE = "state"  # a desired-state change: applied whenever the device is online


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command's log entry as stored."""

    did: str
    cid: int
    op: int
    args: dict[int, int]
    exp: int  # deadline, unix s
    kind: CommandKind
    state: CommandState
    rc: int | None
    out: int | None
    error: str | None
    node: str | None  # the node it was routed to
    origin: str  # the node it was issued on
    issuer: str
    target_version: int | None  # desired-state commands: the version of the change
    created_ms: int
    sent_ms: int | None
    delivered_ms: int | None
    done_ms: int | None
    poured_ml: int | None = None  # dispense: the ml of its dispense_done EVENT, once stored
    pour_record: str | None = None  # that EVENT's ledger record, "<boot>:<rec>"

    @property
    def final(self) -> bool:
        return self.state.final


def format_args(args: Mapping[int, int]) -> str:
    """Args as they travel on a node channel and sit in the log: "1=250,2=7" ("-" for none)."""
    return ",".join(f"{k}={v}" for k, v in sorted(args.items())) or "-"


def parse_args(text: str) -> dict[int, int]:
    if text in ("", "-"):
        return {}
    return {int(k): int(v) for k, v in (item.split("=") for item in text.split(","))}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _str(value: Any) -> str:
    return _text(value) or ""


def _int(value: Any) -> int | None:
    text = _text(value)
    return None if text is None or text in ("", "-") else int(text)


def record_from_hash(raw: Mapping[Any, Any]) -> CommandRecord:
    """The hash command.lua keeps (bytes keys and values) -> a CommandRecord."""
    field = {_str(k): v for k, v in raw.items()}
    return CommandRecord(
        did=_text(field["did"]) or "",
        cid=int(field["cid"]),
        op=int(field["op"]),
        args=parse_args(_text(field.get("args")) or "-"),
        exp=int(field["exp"]),
        kind=CommandKind(_str(field["kind"])),
        state=CommandState(_str(field["state"])),
        rc=_int(field.get("rc")),
        out=_int(field.get("out")),
        error=_text(field.get("error")),
        node=_text(field.get("node")) or None,
        origin=_text(field.get("origin")) or "",
        issuer=_text(field.get("issuer")) or "",
        target_version=_int(field.get("target")),
        created_ms=int(field["created"]),
        sent_ms=_int(field.get("sent")),
        delivered_ms=_int(field.get("delivered")),
        done_ms=_int(field.get("done")),
        poured_ml=_int(field.get("poured")),
        pour_record=_text(field.get("pour")),
    )


_Answer = Callable[[int], None]


def _answer_for(did: str, cid: int, answer: AnswerTo | None) -> _Answer | None:
    if answer is None:
        return None
    return lambda code: answer(did, cid, CopyAnswer(code))


class CommandEvents:
    """What the node holding a device learns about its commands (sent, delivered, result,
    desired state applied), written to the log in batches: one pipelined round trip carries
    everything that happened since the last one, never one per event."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts, keyspace: Keyspace) -> None:
        self.client = client
        self.scripts = scripts
        self.keyspace = keyspace
        self.channels = keyspace.script_channels
        self._queue: list[ScriptCall] = []
        self._answers: list[_Answer | None] = []  # one per queued call: who wants its reply
        self._wake = asyncio.Event()
        self.written = 0

    def _add(self, did: str, op: str, *args: int | str, answer: _Answer | None = None) -> None:
        shard = self.keyspace.shard_prefix(self.keyspace.shard_of(did))
        keys = [f"{shard}c:{did}"]  # names the slot; the script builds its keys from ARGV
        now_ms = int(time.time() * 1000)
        self._queue.append(("command", keys, [op, now_ms, shard, self.channels, did, *args]))
        self._answers.append(answer)
        self._wake.set()

    def sent(self, did: str, cid: int) -> None:
        self._add(did, "sent", cid)

    def delivered(self, did: str, cid: int) -> None:
        self._add(did, "delivered", cid)

    def result(self, did: str, cid: int, rc: int, out: int | None) -> None:
        self._add(did, "result", cid, rc, "-" if out is None else out)

    def settle(self, did: str, version: int) -> None:
        """The device holds desired-state `version` (a SET_STATE answered, or AUTH_OK)."""
        self._add(did, "settle", version)

    def reroute(self, did: str, cid: int, old_node: str, *, answer: AnswerTo | None = None) -> None:
        """The link `old_node` sent the command on is gone: have it sent (DUP) to where the
        device is now, unless it is final (command.lua answers a CopyAnswer)."""
        self._add(did, "reroute", cid, old_node, answer=_answer_for(did, cid, answer))

    def resend(self, did: str, cid: int, node: str, *, answer: AnswerTo) -> None:
        """`node` wants to resend the command on the link it sent it on: unless it is final."""
        self._add(did, "resend", cid, node, answer=_answer_for(did, cid, answer))

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> int:
        calls, self._queue = self._queue, []
        answers, self._answers = self._answers, []
        self._wake.clear()
        if not calls:
            return 0
        try:
            replies = await self.scripts.run(self.client, calls, "recording command events")
        except GatewayError as exc:
            # The device already has the command, its outcome is in its memory (a resend of
            # the same cid answers it again): put the events back and try again.
            self._queue[:0] = calls
            self._answers[:0] = answers
            raise exc
        self.written += len(calls)
        for answer, reply in zip(answers, replies, strict=True):
            if answer is not None:
                answer(int(reply[0]))
        return len(calls)

    async def run(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            try:
                await self.flush()
                delay = 0.1
            except GatewayError as exc:
                log.warning("command_events_unwritten", error=str(exc), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class CommandService:
    """Issue commands, read their log, wait for their outcome (any node; see the module doc)."""

    def __init__(
        self,
        *,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: Keyspace,
        ids: CommandIds,
        node_id: str,
        metrics: Metrics,
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.keyspace = keyspace
        self.ids = ids
        self.node_id = node_id
        self.metrics = metrics
        self.channels = keyspace.script_channels
        self._waiters: dict[tuple[str, int], list[asyncio.Future[CommandRecord | None]]] = {}

    # ------------------------------------------------------------------ issuing

    async def next_cid(self) -> int:
        await self.ids.reserve()
        return self.ids.take()

    def _keys(self, did: str) -> tuple[str, list[str]]:
        shard = self.keyspace.shard_prefix(self.keyspace.shard_of(did))
        return shard, [f"{shard}c:{did}"]

    async def create(
        self,
        did: str,
        command: Command,
        *,
        kind: CommandKind,
        issuer: str = "",
        target_version: int | None = None,
        now_ms: int | None = None,
    ) -> tuple[CommandState, str | None]:
        """Record a command and, for a one-shot command, route it to the device's node."""
        shard, keys = self._keys(did)
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        args = [
            "create", now_ms, shard, self.channels, did, command.cid, int(command.op),
            format_args(command.args), command.exp, self.node_id, issuer[:64], kind.value,
            "-" if target_version is None else target_version, KEEP_S,
        ]  # fmt: skip
        state, node = await self.scripts.call(self.client, "command", keys, args)
        self.metrics.commands_issued += 1
        return CommandState(_str(state)), _text(node) if node else None

    async def issue(
        self,
        did: str,
        op: CommandOp,
        args: Mapping[int, int],
        *,
        timeout_s: int,
        issuer: str = "",
    ) -> tuple[int, CommandState]:
        """A one-shot command: (cid, state); state is FAILED at once when the device is offline."""
        if op not in ONE_SHOT_OPS:
            raise ValueError(f"{op!r} is not a one-shot command")
        cid = await self.next_cid()
        command = Command(cid=cid, op=op, exp=int(time.time()) + timeout_s, args=dict(args))
        state, _ = await self.create(did, command, kind=CommandKind.ONCE, issuer=issuer)
        return cid, state

    async def deliver(self, did: str, command: Command, *, issuer: str = "") -> bool:
        """The router interface of models/vending.py and models/filters.py: record and route a
        one-shot command; False when the device is offline (the log says failed)."""
        state, _ = await self.create(did, command, kind=CommandKind.ONCE, issuer=issuer)
        return state is not CommandState.FAILED

    async def record_state_change(
        self, did: str, op: CommandOp, version: int, *, issuer: str = ""
    ) -> tuple[int, CommandState]:
        """Log a desired-state change (already made by service.lua at `version`)."""
        if op not in STATE_OPS:
            raise ValueError(f"{op!r} is not a desired-state command")
        cid = await self.next_cid()
        # No deadline: the device gets it whenever it is back (exp only bounds the log's index).
        command = Command(cid=cid, op=op, exp=int(time.time()) + KEEP_S, args={2: version})
        state, _ = await self.create(
            did, command, kind=CommandKind.STATE, issuer=issuer, target_version=version
        )
        return cid, state

    # ------------------------------------------------------------------ reading

    async def get(self, did: str, cid: int) -> CommandRecord | None:
        shard, _ = self._keys(did)
        with redis_errors("reading a command"):
            raw = await self.client.hgetall(f"{shard}c:{did}:{cid}")
        return record_from_hash(raw) if raw else None

    async def recent(self, did: str, *, limit: int = 20, offset: int = 0) -> list[CommandRecord]:
        """The device's latest commands, newest first (one round trip for the page)."""
        shard, _ = self._keys(did)
        with redis_errors("listing commands"):
            cids = await self.client.lrange(f"{shard}cl:{did}", offset, offset + limit - 1)
            pipe = self.client.pipeline(transaction=False)
            for cid in cids:
                pipe.hgetall(f"{shard}c:{did}:{_text(cid)}")
            rows = await pipe.execute() if cids else []
        return [record_from_hash(raw) for raw in rows if raw]

    async def count(self, did: str) -> int:
        """How many of the device's commands are listed (at most KEEP_LISTED)."""
        shard, _ = self._keys(did)
        with redis_errors("counting commands"):
            return int(await self.client.llen(f"{shard}cl:{did}"))

    @contextlib.contextmanager
    def outcome_of(self, did: str, cid: int) -> Iterator[asyncio.Future[CommandRecord | None]]:
        """A future set when command `cid` is settled (its "res" reaches this node); register
        it before the command can settle, so that no outcome slips past."""
        future: asyncio.Future[CommandRecord | None] = asyncio.get_running_loop().create_future()
        key = (did, cid)
        self._waiters.setdefault(key, []).append(future)
        try:
            yield future
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    del self._waiters[key]

    async def wait(self, did: str, cid: int, timeout_s: float) -> CommandRecord | None:
        """The command once final, or as it stands when `timeout_s` runs out."""
        with self.outcome_of(did, cid) as settled:
            record = await self.get(did, cid)  # after registering: no "res" slips between
            if record is None or record.final or timeout_s <= 0:
                return record
            return await self._after(settled, did, cid, timeout_s)

    async def _after(
        self, settled: asyncio.Future[CommandRecord | None], did: str, cid: int, timeout_s: float
    ) -> CommandRecord | None:
        if timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    record = await settled
                    if record is not None:  # the "res" message carried it
                        return record
        return await self.get(did, cid)

    async def issue_and_wait(
        self,
        did: str,
        op: CommandOp,
        args: Mapping[int, int],
        *,
        timeout_s: int,
        wait_s: float,
        issuer: str = "",
    ) -> CommandRecord | None:
        """`issue`, then the command once final (or as it stands after `wait_s`): the waiter is
        in place before the command leaves, so only one read follows the outcome."""
        if op not in ONE_SHOT_OPS:
            raise ValueError(f"{op!r} is not a one-shot command")
        cid = await self.next_cid()
        with self.outcome_of(did, cid) as settled:
            command = Command(cid=cid, op=op, exp=int(time.time()) + timeout_s, args=dict(args))
            state, _ = await self.create(did, command, kind=CommandKind.ONCE, issuer=issuer)
            if state.final:
                wait_s = 0
            return await self._after(settled, did, cid, wait_s)

    def on_outcome(self, did: str, cid: int, record: CommandRecord | None) -> None:
        """A "res" message on this node's channel: hand the settled command to whoever waits
        for it (None when the message carried no readable record: they read it)."""
        for future in self._waiters.pop((did, cid), ()):
            if not future.done():
                future.set_result(record)
        if record is not None and record.origin == self.node_id and record.state in ANSWERED:
            self.metrics.histograms.command_round_trip.labels(op_label(record.op)).observe(
                max(0.0, time.time() - record.created_ms / 1000)
            )

    # ------------------------------------------------------------------ deadlines

    async def expire_due(self, now: float | None = None) -> int:
        """Time out open one-shot commands past their deadline (the scheduler's owner calls it)."""
        now_ms = int(((time.time() if now is None else now) - DEADLINE_GRACE_S) * 1000)
        calls: list[ScriptCall] = []
        for shard_no in self.keyspace.all_shards():
            shard = self.keyspace.shard_prefix(shard_no)
            due = f"{shard}cmd:due"
            calls.append(
                ("command", [due], ["timeout", now_ms, shard, self.channels, "-", due,
                                    TIMEOUT_BATCH])
            )  # fmt: skip
        replies = await self.scripts.run(self.client, calls, "timing out commands")
        timed_out = sum(int(reply[0]) for reply in replies)
        if timed_out:
            self.metrics.commands_timed_out += timed_out
            log.info("commands_timed_out", count=timed_out)
        return timed_out


class Pour(NamedTuple):
    """A dispense_done EVENT naming its command: what the device poured, and which record."""

    did: str
    cid: int
    poured_ml: int
    boot: int
    rec: int


async def link_pours(
    client: aioredis.Redis, scripts: Scripts, keyspace: Keyspace, pours: list[Pour]
) -> int:
    """Give each dispense command the pour its device reported (a stored dispense_done EVENT
    naming its cid): a caller can tell a `timed_out` dispense that poured. One round trip for
    the ledger batch; returns how many commands got their pour."""
    if not pours:
        return 0
    now_ms = int(time.time() * 1000)
    channels = keyspace.script_channels
    calls: list[ScriptCall] = []
    for did, cid, ml, boot, rec in pours:
        shard = keyspace.shard_prefix(keyspace.shard_of(did))
        calls.append(
            ("command", [f"{shard}c:{did}"],
             ["poured", now_ms, shard, channels, did, cid, ml, f"{boot}:{rec}"])
        )  # fmt: skip
    replies = await scripts.run(client, calls, "linking pours to their commands")
    return sum(int(reply[0]) for reply in replies)
