"""The node channel's codec and dispatch (gateway/node_bus.py): every message the Lua scripts and
other nodes write decodes to its typed message, bad bytes are counted and never raised, and a
message reaches its one subscriber over the real Redis."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import redis.asyncio as aioredis

from aquafleet.gateway.commands import CommandState
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.node_bus import (
    CommandSettled,
    DesiredStateChanged,
    Kick,
    NodeBus,
    NodeMessageError,
    RoutedCommand,
    decode_node_message,
    encode_node_message,
)
from aquafleet.gateway.tasks import cancel_and_wait
from aquafleet.protocol import Command, DesiredState, ErrorCode

MESSAGES = [
    Kick("kick", "DEV1", "node-a/7"),
    Kick("disable", "DEV1"),
    Kick("revoke", "DEV1"),
    DesiredStateChanged("DEV1", DesiredState(version=4, locked=True, remaining_ml=0)),
    DesiredStateChanged("DEV1", DesiredState(3, False, 1500, 1_800_000_000)),
    RoutedCommand("DEV1", Command(cid=9, op=1, exp=1_800_000_000, args={1: 250})),
    RoutedCommand("DEV1", Command(cid=9, op=9, exp=1_800_000_000, args={}, dup=True)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: object) -> None:
    assert decode_node_message(encode_node_message(message)) == message  # type: ignore[arg-type]


def test_the_bytes_are_what_the_lua_scripts_write() -> None:
    # service.lua / meter.lua, command.lua and claim.lua, as they build them.
    assert decode_node_message(b"state DEV1 5 1 - 1800000000") == DesiredStateChanged(
        "DEV1", DesiredState(5, True, None, 1_800_000_000)
    )
    assert decode_node_message(b"cmd DEV1 12 6 1800000000 1=2 dup") == RoutedCommand(
        "DEV1", Command(cid=12, op=6, exp=1_800_000_000, args={1: 2}, dup=True)
    )
    kick = decode_node_message(b"kick DEV1 node-b/3")
    assert kick == Kick("kick", "DEV1", "node-b/3")
    assert isinstance(kick, Kick) and kick.code is ErrorCode.REPLACED


def test_a_settled_command_carries_its_record_or_none() -> None:
    flat = [b"did", b"DEV1", b"cid", b"12", b"op", b"1", b"state", b"succeeded", b"args", b"1=250",
            b"exp", b"1800000000", b"created", b"1", b"kind", b"once"]  # fmt: skip
    settled = decode_node_message(b"res DEV1 12 " + msgpack.packb(flat))
    assert isinstance(settled, CommandSettled) and (settled.did, settled.cid) == ("DEV1", 12)
    assert settled.record is not None and settled.record.state is CommandState.SUCCEEDED
    garbled = decode_node_message(b"res DEV1 12 \xc1not msgpack")
    assert garbled == CommandSettled("DEV1", 12, None)  # the waiter reads it from Redis


@pytest.mark.parametrize(
    "data",
    [
        b"", b"hello", b"kick DEV1", b"kick DEV1 a b", b"bogus DEV1 *", b"state DEV1 x 1 - -",
        b"state DEV1 1 7 - -", b"cmd DEV1 1 1 1 1=2 again", b"cmd DEV1 1 1 1 1", b"res DEV1",
        b"res DEV1 notanumber x", b"\xff\xfe kick", b"state DEV1 1 1 -",
    ],
)  # fmt: skip
def test_malformed_bytes_raise_only_our_error(data: bytes) -> None:
    with pytest.raises(NodeMessageError):
        decode_node_message(data)


def test_dispatch_counts_what_it_cannot_use_and_hands_on_the_rest() -> None:
    metrics = Metrics()
    bus = NodeBus(None, "chan", metrics)  # type: ignore[arg-type]  # dispatch needs no Redis
    kicks: list[Kick] = []
    bus.subscribe(Kick, kicks.append)
    with pytest.raises(ValueError):
        bus.subscribe(Kick, kicks.append)  # one subscriber per kind
    assert bus.dispatch(b"disable DEV1 *") == Kick("disable", "DEV1")
    assert bus.dispatch(b"kick DEV1") is None
    assert bus.dispatch(b"state DEV1 1 1 - -") is None  # nobody here subscribes to it
    assert kicks == [Kick("disable", "DEV1")]
    assert (metrics.node_messages_malformed, metrics.node_messages_unhandled) == (1, 1)


async def test_a_published_message_reaches_its_subscriber(
    redis_client: aioredis.Redis, keyspace: Keyspace
) -> None:
    channel = keyspace.node_channel("node-under-test")
    bus = NodeBus(redis_client, channel, Metrics())
    got: asyncio.Queue[RoutedCommand] = asyncio.Queue()
    bus.subscribe(RoutedCommand, got.put_nowait)
    task = asyncio.create_task(bus.run())
    try:
        message = RoutedCommand("DEV1", Command(cid=5, op=1, exp=1_800_000_000, args={1: 100}))
        async with asyncio.timeout(10):
            while await redis_client.publish(channel, encode_node_message(message)) == 0:  # noqa: ASYNC110  # Redis tells no event when the bus has subscribed
                await asyncio.sleep(0.02)  # until the bus has subscribed
            assert await got.get() == message
    finally:
        assert not await cancel_and_wait([task]), "the node bus did not stop"
