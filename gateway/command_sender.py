"""Sending commands to the devices connected to this node: desired states and one-shot commands.

A change of a device's service state (meter.lua locking an exhausted quota, service.lua applying
a top-up, the rental scheduler locking an expired rental) reaches the node holding the device
as a `DesiredStateChanged` on its node channel (gateway/node_bus.py). That node sends it as one
SET_STATE command (the whole state at one version, so replays and
reordering are harmless) and resends it with the same cid until the device answers RESULT,
at most RESEND_TRIES times. A device that is offline gets the state in AUTH_OK at its next login,
so nothing here needs to survive a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import redis.asyncio as aioredis

from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.hub import DeviceLink, Hub
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.redis_io import redis_errors
from aquafleet.protocol import Command, CommandOp, DesiredState, desired_state_args
from aquafleet.protocol.constants import DesiredKey
from aquafleet.protocol.message_types import Result

log = get_logger("aquafleet.command_sender")

CID_BLOCK = 4096  # command ids a node takes from Redis at a time
CID_SPACE = 1 << 32  # cids are u32 on the wire; 0 is never used
RESEND_AFTER_S = 10.0  # PROTOCOL.md: resend after 10 s, doubling, 3 tries
RESEND_TRIES = 3
REROUTE_EVERY_S = 1.0  # a one-shot command whose device left: look where it is now
COMMAND_TTL_S = 300  # `exp` of a SET_STATE: a newer state will have replaced it by then


class CommandIds:
    """Server-unique command ids: each node takes blocks of CID_BLOCK from one Redis counter.

    A spare block is fetched when the current one is half used (`low` wakes the node's
    reserve task at once), so a burst of commands or of MQTT logins that each need a SET_STATE
    does not run dry between two ticks.
    """

    def __init__(self, client: aioredis.Redis, keyspace: Keyspace) -> None:
        self.client = client
        self.key = keyspace.command_ids
        self._next = 0
        self._end = 0
        self._spare: tuple[int, int] | None = None
        self.low = asyncio.Event()  # set when a spare block is wanted

    def _needs_spare(self) -> bool:
        return self._spare is None and self._end - self._next < CID_BLOCK // 2

    async def reserve(self) -> None:
        """Make sure the next `take()` needs no Redis round trip, with a spare block ready."""
        if self._needs_spare():
            with redis_errors("reserving command ids"):
                end = int(await self.client.incrby(self.key, CID_BLOCK))
            if self._next >= self._end:
                self._next, self._end = end - CID_BLOCK, end
            else:
                self._spare = (end - CID_BLOCK, end)
        if not self._needs_spare():
            self.low.clear()

    def available(self) -> bool:
        return self._next < self._end or self._spare is not None

    def take(self) -> int:
        if self._next >= self._end:
            if self._spare is None:
                self.low.set()
                raise RedisUnavailable("no command ids reserved")
            (self._next, self._end), self._spare = self._spare, None
        cid = self._next % (CID_SPACE - 1) + 1
        self._next += 1
        if self._needs_spare():
            self.low.set()
        return cid


@dataclass(slots=True)
class _InFlight:
    command: Command
    link: DeviceLink
    tries: int
    resend_at: float
    seq: int  # of the latest copy sent: the device's delivery ACK echoes it
    ask_at: float = 0.0  # its device left: when to ask the command log where it is again


class CopyAnswer(IntEnum):
    """What the command log says to a node that wants to send a one-shot command again
    (command.lua `reroute` / `resend`)."""

    NOWHERE = 0  # the device is not online anywhere: ask again later
    ROUTED = 1  # a copy (DUP) went to the node that holds the device now
    OVER = 2  # final, unknown or past its deadline: never send it again
    RESEND = 3  # still open, and the device is on the link it was sent on: resend it here


AnswerTo = Callable[[str, int, CopyAnswer], None]


class CommandEventSink(Protocol):
    """Where the pusher reports what happens to commands (gateway.commands.CommandEvents)."""

    def sent(self, did: str, cid: int) -> None: ...

    def delivered(self, did: str, cid: int) -> None: ...

    def result(self, did: str, cid: int, rc: int, out: int | None) -> None: ...

    def settle(self, did: str, version: int) -> None: ...

    def reroute(
        self, did: str, cid: int, old_node: str, *, answer: AnswerTo | None = None
    ) -> None: ...

    def resend(self, did: str, cid: int, node: str, *, answer: AnswerTo) -> None: ...


class CommandSender:
    """Sends commands to this node's devices (desired states and one-shot commands routed here
    by the command service) and resends each, same cid, until the device answers; reports sent,
    delivered and results to the command log (`events`)."""

    def __init__(
        self, *, hub: Hub, ids: CommandIds, metrics: Metrics,
        events: CommandEventSink | None = None,
    ) -> None:  # fmt: skip
        self.hub = hub
        self.ids = ids
        self.metrics = metrics
        self.events = events
        self._in_flight: dict[tuple[str, int], _InFlight] = {}  # (did, cid) -> unanswered
        self._by_seq: dict[tuple[str, int], int] = {}  # (did, seq) -> cid, for delivery ACKs
        self._state_cid: dict[str, int] = {}  # did -> cid of its newest SET_STATE in flight

    def can_push(self) -> bool:
        """Whether a desired state can go out now: a command id is at hand."""
        return self.ids.available()

    def push(self, did: str, desired: DesiredState, *, now: float | None = None) -> bool:
        """Send `desired` to the device if it is connected here; False when it is not."""
        if not self.ids.available():
            # The reserve task refills the block within a tick; AUTH_OK or the next change
            # carries the state if this one cannot go now.
            self.metrics.desired_push_failed += 1
            log.warning("desired_push_without_cid", did=did)
            return False
        now = time.time() if now is None else now
        command = Command(
            cid=self.ids.take(),
            op=CommandOp.SET_STATE,
            exp=int(now) + COMMAND_TTL_S,
            args=desired_state_args(desired),
        )
        if not self.send(did, command, now=now):
            return False
        older = self._state_cid.pop(did, None)
        if older is not None:  # overtaken: the newer state is all the device needs
            self._forget(did, older)
        self._state_cid[did] = command.cid
        self.metrics.desired_pushed += 1
        log.info("desired_pushed", did=did, version=desired.version, locked=desired.locked)
        return True

    def send(self, did: str, command: Command, *, now: float | None = None) -> bool:
        """Send a command to the device if it is connected here (False when it is not)."""
        link = self.hub.online.get(did)
        if link is None or link.closed or link.session is None:
            return False
        now = time.time() if now is None else now
        seq = link.session.send_command(command)
        link.flush()
        key = (did, command.cid)
        previous = self._in_flight.get(key)
        if previous is not None:  # routed here again: one entry, newest copy
            self._by_seq.pop((did, previous.seq), None)
        if previous is not None and previous.link is link:  # a timed resend: its count goes on
            previous.seq = seq
        else:
            self._in_flight[key] = _InFlight(command, link, 1, now + RESEND_AFTER_S, seq)
        self._by_seq[(did, seq)] = command.cid
        if self.events is not None and command.op != CommandOp.SET_STATE:
            self.events.sent(did, command.cid)
        return True

    def routed(self, did: str, command: Command) -> None:
        """A one-shot command the command service routed here (a `RoutedCommand`): send it; if
        the device left between routing and now, ask the command log to route it to the node
        it is on now (if none, it times out by its deadline: nothing was run)."""
        if self.send(did, command):
            return
        log.info("command_for_absent_device", did=did, cid=command.cid)
        if self.events is not None:
            self.events.reroute(did, command.cid, self.hub.node_id)

    def _forget(self, did: str, cid: int) -> _InFlight | None:
        entry = self._in_flight.pop((did, cid), None)
        if entry is not None:
            self._by_seq.pop((did, entry.seq), None)
        return entry

    def delivered(self, did: str, seq: int) -> bool:
        """The device acked a frame we sent: if it was a command, that command is delivered."""
        cid = self._by_seq.pop((did, seq), None)
        if cid is None:
            return False
        entry = self._in_flight.get((did, cid))
        events = self.events
        if entry is not None and events is not None and entry.command.op != CommandOp.SET_STATE:
            events.delivered(did, cid)
        return True

    def applied_at_login(self, did: str, version: int) -> None:
        """AUTH_OK carried the desired state at `version`: the device holds it now."""
        if self.events is not None:
            self.events.settle(did, version)

    def result(self, did: str, result: Result) -> bool:
        """The device answered a command; True when it was one this node has in flight.

        Every RESULT goes to the command log, ours or not: one that arrives after its node
        restarted, or after the command was rerouted, still settles it.
        """
        entry = self._forget(did, result.cid)
        if self._state_cid.get(did) == result.cid:
            del self._state_cid[did]
        events = self.events
        if entry is not None and entry.command.op == CommandOp.SET_STATE:
            version = entry.command.args.get(DesiredKey.VERSION)
            if events is not None and version is not None and result.rc == 0:
                events.settle(did, version)
        elif events is not None:
            events.result(did, result.cid, result.rc, result.out)
        if entry is None:
            return False
        self.metrics.desired_answered += 1
        return True

    def _live_link(self, did: str) -> DeviceLink | None:
        link = self.hub.online.get(did)
        if link is None or link.closed or link.session is None:
            return None
        return link

    def resend_due(self, now: float) -> int:
        """Resend unanswered commands whose time has come (same cid, DUP); give up after 3.

        A one-shot command is never resent from this node's memory alone: the command log
        (command.lua) is asked first, since the device may have answered it on another node
        meanwhile, and a final command must never reach the device again. A device still on
        the link the command went out on gets it again from here (`CopyAnswer.RESEND`); one that
        left has it routed to the node it logs in on, this one included (a reconnect), asked
        every REROUTE_EVERY_S until the deadline. A SET_STATE is resent directly (it carries
        the whole state at one version: a repeat is harmless) and is not chased when its
        device leaves: AUTH_OK carries the desired state at the next login.
        """
        resent = 0
        events = self.events
        for key, entry in list(self._in_flight.items()):
            did, cid = key
            current = self._live_link(did)
            moved = current is not entry.link
            if not moved and entry.resend_at > now:
                continue
            command = entry.command
            if command.exp < now or (not moved and entry.tries >= RESEND_TRIES):
                self._give_up(did, cid, answered_elsewhere=moved)
                continue
            if command.op == CommandOp.SET_STATE or events is None:
                if current is None:
                    self._give_up(did, cid, answered_elsewhere=True)
                    continue
                self._resend_on(current, did, entry)
                entry.tries += 1
                entry.resend_at = now + RESEND_AFTER_S * (2 ** (entry.tries - 1))
                resent += 1
            elif moved:
                if entry.ask_at <= now:
                    events.reroute(did, cid, self.hub.node_id, answer=self.copy_answered)
                    self.metrics.commands_reroute_attempts += 1
                    entry.ask_at = now + REROUTE_EVERY_S
            else:
                events.resend(did, cid, self.hub.node_id, answer=self.copy_answered)
                entry.tries += 1
                entry.resend_at = now + RESEND_AFTER_S * (2 ** (entry.tries - 1))
                resent += 1
        self.metrics.desired_resent += resent
        return resent

    def _resend_on(self, link: DeviceLink, did: str, entry: _InFlight) -> None:
        """Write the command again (same cid, DUP) on `link`."""
        assert link.session is not None
        command = entry.command
        self._by_seq.pop((did, entry.seq), None)
        entry.seq = link.session.send_command(
            Command(cid=command.cid, op=command.op, exp=command.exp, args=command.args, dup=True)
        )
        self._by_seq[(did, entry.seq)] = command.cid
        link.flush()
        entry.link = link

    def copy_answered(self, did: str, cid: int, answer: CopyAnswer) -> None:
        """The command log's answer to `resend_due` asking to send a one-shot command again."""
        entry = self._in_flight.get((did, cid))
        if entry is None:
            return
        current = self._live_link(did)
        if answer is CopyAnswer.OVER:
            self._forget(did, cid)  # answered elsewhere, or past its deadline
        elif answer is CopyAnswer.ROUTED and entry.link is not current:
            self._forget(did, cid)  # the node holding the device has it now (maybe this one)
        elif answer is CopyAnswer.RESEND and current is not None and entry.link is current:
            self._resend_on(current, did, entry)

    def _give_up(self, did: str, cid: int, *, answered_elsewhere: bool) -> None:
        # A one-shot command past its deadline is timed out by the scheduler's owner.
        self._forget(did, cid)
        if self._state_cid.get(did) == cid:
            del self._state_cid[did]
        if not answered_elsewhere:
            self.metrics.desired_unanswered += 1
            log.warning("command_unanswered", did=did, cid=cid)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)
