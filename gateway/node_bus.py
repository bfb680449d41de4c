"""The node channel: what the platform tells one gateway node about the devices it holds.

Each node follows its own Redis channel (`Keyspace.node_channel(node_id)`); the MQTT bridges
also follow the channel of the presence name their devices share (`mqtt`). Four messages travel
on it, as text, most of them written by Lua scripts in the same step as the change they announce:

- `Kick`: `kick|disable|revoke <did> <conn_id or *>`, from claim.lua (a newer login), registry
  changes and the MQTT bridges: close the device's connection here.
- `DesiredStateChanged`: `state <did> <version> <lock 0|1> <remaining_ml or -> <expires_at or
  ->`, from meter.lua and service.lua: send it as SET_STATE.
- `RoutedCommand`: `cmd <did> <cid> <op> <exp> <k>=<v>,... or - [dup]`, from command.lua: send
  the command (with DUP when it is a copy).
- `CommandSettled`: `res <did> <cid> <msgpack of the record's fields>`, from command.lua, on the
  channel of the node that issued the command: wake whoever waits for it.

This module is the channel's one home: a sans-IO codec (`decode_node_message`,
`encode_node_message`: bytes <-> frozen dataclasses) and `NodeBus`, which follows a channel and
hands each message to the subscriber of its type. What each message makes the node do lives
with its subscriber (the hub, the command sender, the command service); gateway/node.py wires
them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from aquafleet.gateway.commands import CommandRecord, record_from_hash
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.metrics import Metrics
from aquafleet.protocol import Command, DesiredState, ErrorCode

log = get_logger("aquafleet.node_bus")

RECONNECT_S = 1.0
POLL_S = 5.0
SHARDED_POLL_S = 0.05

# A kick's verb: the close code and reason the device is told (and the offline reason shown).
KICK_CODES: dict[str, tuple[ErrorCode, str]] = {
    "kick": (ErrorCode.REPLACED, "a newer login of this device took over"),
    "disable": (ErrorCode.AUTH_DISABLED, "device disabled"),
    # A re-issued key: the device is told its proof no longer holds (its next login fails).
    "revoke": (ErrorCode.AUTH_BAD_PROOF, "device key revoked"),
}
ANY_CONNECTION = "*"


class NodeMessageError(ValueError):
    """A node-channel message that does not parse; the text says which and why."""


@dataclass(frozen=True, slots=True)
class Kick:
    """Close the device's connection here if it is `conn_id` (any, for "*")."""

    verb: str  # kick, disable or revoke (KICK_CODES)
    did: str
    conn_id: str = ANY_CONNECTION

    @property
    def code(self) -> ErrorCode:
        return KICK_CODES[self.verb][0]

    @property
    def reason(self) -> str:
        return KICK_CODES[self.verb][1]


@dataclass(frozen=True, slots=True)
class DesiredStateChanged:
    """The device's desired state is now `desired`: send it if the device is here."""

    did: str
    desired: DesiredState


@dataclass(frozen=True, slots=True)
class RoutedCommand:
    """A one-shot command for a device connected here (`command.dup`: a copy of one sent)."""

    did: str
    command: Command


@dataclass(frozen=True, slots=True)
class CommandSettled:
    """A command issued on this node is final; `record` is None when it did not decode (the
    waiter reads it from Redis then)."""

    did: str
    cid: int
    record: CommandRecord | None


NodeMessage = Kick | DesiredStateChanged | RoutedCommand | CommandSettled
M = TypeVar("M", Kick, DesiredStateChanged, RoutedCommand, CommandSettled)


# ----------------------------------------------------------------------------- codec


def _optional(text: str) -> int | None:
    return None if text == "-" else int(text)


def _decode_state(fields: list[str]) -> DesiredStateChanged:
    did, version, lock, remaining, expires = fields
    if lock not in ("0", "1"):
        raise ValueError(f"lock {lock!r}")
    desired = DesiredState(
        version=int(version),
        locked=lock == "1",
        remaining_ml=_optional(remaining),
        rental_expires_at=_optional(expires),
    )
    return DesiredStateChanged(did, desired)


def _decode_command(fields: list[str]) -> RoutedCommand:
    did, cid, op, exp, raw_args, *flags = fields
    if flags not in ([], ["dup"]):
        raise ValueError(f"unknown flags {flags!r}")
    args = {} if raw_args == "-" else {
        int(k): int(v) for k, v in (item.split("=") for item in raw_args.split(","))
    }  # fmt: skip
    command = Command(cid=int(cid), op=int(op), exp=int(exp), args=args, dup=bool(flags))
    return RoutedCommand(did, command)


def _decode_settled(data: bytes) -> CommandSettled:
    _verb, did, cid, packed = data.split(b" ", 3)
    try:
        flat = msgpack.unpackb(packed, raw=True)
        record = record_from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        record = None
    return CommandSettled(did.decode(), int(cid), record)


def decode_node_message(data: bytes) -> NodeMessage:
    """One message of the node channel; NodeMessageError for anything else."""
    try:
        if data.startswith(b"res "):
            return _decode_settled(data)
        verb, *fields = data.decode().split(" ")
        if verb == "state":
            return _decode_state(fields)
        if verb == "cmd":
            return _decode_command(fields)
        if verb in KICK_CODES:
            did, conn_id = fields
            return Kick(verb, did, conn_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NodeMessageError(f"malformed node message {data[:96]!r}: {exc}") from exc
    raise NodeMessageError(f"unknown node message {data[:96]!r}")


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def encode_node_message(message: NodeMessage) -> bytes:
    """The bytes of a message as the Lua scripts write it (Python publishers and tests)."""
    match message:
        case Kick(verb=verb, did=did, conn_id=conn_id):
            return f"{verb} {did} {conn_id}".encode()
        case DesiredStateChanged(did=did, desired=d):
            lock = "1" if d.locked else "0"
            text = f"state {did} {d.version} {lock} {_text(d.remaining_ml)}"
            return f"{text} {_text(d.rental_expires_at)}".encode()
        case RoutedCommand(did=did, command=c):
            args = ",".join(f"{k}={v}" for k, v in sorted(c.args.items())) or "-"
            dup = " dup" if c.dup else ""
            return f"cmd {did} {c.cid} {int(c.op)} {c.exp} {args}{dup}".encode()
        case CommandSettled():
            raise ValueError("command.lua writes CommandSettled: it carries the record's hash")


# ----------------------------------------------------------------------------- the bus


class NodeBus:
    """Follows one node channel and hands each message to the subscriber of its type.

    Subscribers run in the listener's task, one message at a time, and must not block: each
    does a little local work (close a connection, queue a command, wake a waiter)."""

    def __init__(
        self,
        client: aioredis.Redis,
        channel: str | list[str],
        metrics: Metrics,
        *,
        sharded: bool = False,
    ) -> None:
        self.client = client
        self.channels = [channel] if isinstance(channel, str) else channel
        self.channel = self.channels[0]
        self.sharded = sharded  # SSUBSCRIBE (Redis Cluster: one channel per shard)
        self.metrics = metrics
        self._handlers: dict[type, Callable[[Any], object]] = {}

    def subscribe(self, kind: type[M], handler: Callable[[M], object]) -> None:
        """`handler` gets every message of type `kind` (one subscriber per type; what it
        returns is ignored)."""
        if kind in self._handlers:
            raise ValueError(f"{kind.__name__} already has a subscriber")
        self._handlers[kind] = handler

    def dispatch(self, data: bytes) -> NodeMessage | None:
        """Decode one message and hand it on; a malformed or unsubscribed one is counted and
        logged, never raised (the channel is shared by scripts and other nodes)."""
        try:
            message = decode_node_message(data)
        except NodeMessageError as exc:
            self.metrics.node_messages_malformed += 1
            log.warning("node_message_malformed", channel=self.channel, error=str(exc))
            return None
        handler = self._handlers.get(type(message))
        if handler is None:
            self.metrics.node_messages_unhandled += 1
            log.debug("node_message_unhandled", kind=type(message).__name__)
            return None
        handler(message)
        return message

    async def run(self) -> None:
        """Follow the channel until cancelled, resubscribing after a Redis failure."""
        if self.sharded:
            await self._run_sharded()
            return
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.channels)
                while True:
                    message = await pubsub.get_message(timeout=POLL_S)
                    if message is not None:
                        self.dispatch(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("node_bus_reconnecting", channel=self.channel, error=str(exc))
                await asyncio.sleep(RECONNECT_S)
            finally:
                await pubsub.aclose()

    async def _run_sharded(self) -> None:
        """The cluster's sharded channels: redis-py's cluster pub/sub keeps one connection per
        master holding them and moves a channel to its slot's new master after a failover.
        Its wait is split over the masters it polls, so it is kept short (SHARDED_POLL_S)."""
        cluster = cast(RedisCluster, self.client)
        while True:
            pubsub = cluster.pubsub()
            try:
                await pubsub.ssubscribe(*self.channels)
                while True:
                    message = await pubsub.get_sharded_message(
                        ignore_subscribe_messages=True, timeout=SHARDED_POLL_S
                    )
                    if message is not None and message.get("type") == "smessage":
                        self.dispatch(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("node_bus_reconnecting", channel=self.channel, error=str(exc))
                await asyncio.sleep(RECONNECT_S)
            finally:
                await pubsub.aclose()
