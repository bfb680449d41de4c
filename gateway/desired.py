"""Pushing the desired state (lock, quota, rental expiry) to connected devices.

A change of a device's service state (meter.lua locking an exhausted quota, service.lua applying
a top-up, the rental scheduler locking an expired rental) is published on the node channel of
the node holding the device as "state <did> <version> <lock> <remaining_ml|-> <expires_at|->".
That node sends it as one SET_STATE command (the whole state at one version, so replays and
reordering are harmless) and resends it with the same cid until the device answers RESULT,
at most RESEND_TRIES times. A device that is offline gets the state in AUTH_OK at its next login,
so nothing here needs to survive a restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.errors import RedisUnavailable
from gateway.hub import DeviceLink, Hub
from gateway.keys import Keyspace
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.redis_io import redis_errors
from protocol import Command, CommandOp, DesiredState, desired_state_args
from protocol.messages import Result

log = get_logger("aquafleet.desired")

CID_BLOCK = 4096  # command ids a node takes from Redis at a time
CID_SPACE = 1 << 32  # cids are u32 on the wire; 0 is never used
RESEND_AFTER_S = 10.0  # PROTOCOL.md: resend after 10 s, doubling, 3 tries
RESEND_TRIES = 3
COMMAND_TTL_S = 300  # `exp` of a SET_STATE: a newer state will have replaced it by then


class StateMessageError(ValueError):
    """A node-channel "state" message that does not parse."""


def parse_state_message(fields: list[str]) -> tuple[str, DesiredState]:
    """["<did>", "<version>", "<lock>", "<remaining_ml>|-", "<expires_at>|-"] -> (did, state)."""
    try:
        did, version, lock, remaining, expires = fields
        return did, DesiredState(
            version=int(version),
            locked=lock == "1",
            remaining_ml=None if remaining == "-" else int(remaining),
            rental_expires_at=None if expires == "-" else int(expires),
        )
    except ValueError as exc:
        raise StateMessageError(f"bad state message {fields!r}") from exc


class CommandIds:
    """Server-unique command ids: each node takes blocks of CID_BLOCK from one Redis counter."""

    def __init__(self, client: aioredis.Redis, keyspace: Keyspace) -> None:
        self.client = client
        self.key = keyspace.command_ids
        self._next = 0
        self._end = 0

    async def reserve(self) -> None:
        """Make sure the next `take()` needs no Redis round trip."""
        if self._next < self._end:
            return
        with redis_errors("reserving command ids"):
            end = int(await self.client.incrby(self.key, CID_BLOCK))
        self._next, self._end = end - CID_BLOCK, end

    def available(self) -> bool:
        return self._next < self._end

    def take(self) -> int:
        if self._next >= self._end:
            raise RedisUnavailable("no command ids reserved")
        cid = self._next % (CID_SPACE - 1) + 1
        self._next += 1
        return cid


@dataclass(slots=True)
class _InFlight:
    command: Command
    link: DeviceLink
    tries: int
    resend_at: float


class DesiredStatePusher:
    """Sends commands to this node's devices (desired states and one-shot commands routed here
    by `CommandRouter`) and resends each, same cid, until the device answers."""

    def __init__(self, *, hub: Hub, ids: CommandIds, metrics: Metrics) -> None:
        self.hub = hub
        self.ids = ids
        self.metrics = metrics
        self._in_flight: dict[tuple[str, int], _InFlight] = {}  # (did, cid) -> unanswered
        self._state_cid: dict[str, int] = {}  # did -> cid of its newest SET_STATE in flight

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
            self._in_flight.pop((did, older), None)
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
        link.session.send_command(command)
        link.flush()
        self._in_flight[(did, command.cid)] = _InFlight(command, link, 1, now + RESEND_AFTER_S)
        return True

    def result(self, did: str, result: Result) -> bool:
        """The device answered a command we sent; True when it was one of ours."""
        entry = self._in_flight.pop((did, result.cid), None)
        if entry is None:
            return False
        if self._state_cid.get(did) == result.cid:
            del self._state_cid[did]
        self.metrics.desired_answered += 1
        return True

    def resend_due(self, now: float) -> int:
        """Resend unanswered commands whose time has come (same cid, DUP); give up after 3."""
        resent = 0
        for key, entry in list(self._in_flight.items()):
            if entry.resend_at > now:
                continue
            did = key[0]
            link = entry.link
            gone = link.closed or link.session is None or self.hub.online.get(did) is not link
            if gone or entry.tries >= RESEND_TRIES or entry.command.exp < now:
                # Gone: AUTH_OK carries the desired state at the next login; a one-shot
                # command's owner times it out by its deadline.
                del self._in_flight[key]
                if self._state_cid.get(did) == key[1]:
                    del self._state_cid[did]
                if not gone:
                    self.metrics.desired_unanswered += 1
                    log.warning("command_unanswered", did=did, cid=key[1])
                continue
            command = entry.command
            assert link.session is not None
            link.session.send_command(
                Command(cid=command.cid, op=command.op, exp=command.exp, args=command.args,
                        dup=True)
            )  # fmt: skip
            link.flush()
            entry.tries += 1
            entry.resend_at = now + RESEND_AFTER_S * (2 ** (entry.tries - 1))
            resent += 1
        self.metrics.desired_resent += resent
        return resent

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)


def command_message(did: str, command: Command) -> str:
    """A one-shot command on a node channel: "cmd <did> <cid> <op> <exp> <k>=<v>,..."."""
    args = ",".join(f"{k}={v}" for k, v in command.args.items()) or "-"
    return f"cmd {did} {command.cid} {command.op} {command.exp} {args}"


def parse_command_message(fields: list[str]) -> tuple[str, Command]:
    try:
        did, cid, op, exp, raw_args = fields
        args = {} if raw_args == "-" else {
            int(k): int(v) for k, v in (item.split("=") for item in raw_args.split(","))
        }  # fmt: skip
        return did, Command(cid=int(cid), op=int(op), exp=int(exp), args=args)
    except ValueError as exc:
        raise StateMessageError(f"bad command message {fields!r}") from exc


class CommandRouter:
    """Gets a one-shot command to the node holding the device (issue 5 builds the full command
    service on it): command ids, and delivery through that node's channel."""

    def __init__(self, client: aioredis.Redis, keyspace: Keyspace, ids: CommandIds) -> None:
        self.client = client
        self.keyspace = keyspace
        self.ids = ids

    async def next_cid(self) -> int:
        await self.ids.reserve()
        return self.ids.take()

    async def deliver(self, did: str, command: Command) -> bool:
        """False when the device is offline (no node holds it, or that node is gone)."""
        with redis_errors("routing a command"):
            node = await self.client.hget(self.keyspace.presence(did), "node")
            if node is None:
                return False
            name = node.decode() if isinstance(node, bytes) else node
            receivers = await self.client.publish(
                self.keyspace.node_channel(name), command_message(did, command)
            )
        return int(receivers) > 0
