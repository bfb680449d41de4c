"""On a Redis Cluster every key of one device, and every key its shard's scripts touch, hash to
one slot (the shard's hash tag), and the node channels are sharded channels of that slot."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.registry_cache import kick_everywhere
from aquafleet.gateway.rental import RENTAL_SCHEDULES


@pytest.mark.parametrize("did", ["TEST000001", "TEST000002", "ABCD999999", "Z"])
async def test_a_device_and_its_shard_live_in_one_slot(
    redis_client: Any, keyspace: Keyspace, did: str
) -> None:
    shard = keyspace.shard_of(did)
    prefix = keyspace.shard_prefix(shard)
    keys = [
        keyspace.meter(did), keyspace.presence(did), keyspace.last_session(did),
        keyspace.presence_history(did),
        keyspace.service_request(did, "order-1"), keyspace.ledger_stream(shard),
        keyspace.ledger_backlog(shard), keyspace.registry(shard),
        *(keyspace.rental_schedule(kind, shard) for kind in RENTAL_SCHEDULES),
        # command.lua's keys and the channel scripts publish on (built in Lua from the prefix)
        f"{prefix}c:{did}:7", f"{prefix}co:{did}", f"{prefix}cl:{did}", f"{prefix}cs:{did}",
        f"{prefix}cmd:due", keyspace.device_node_channel(did, "node-a")[1],
    ]  # fmt: skip
    assert {redis_client.keyslot(key) for key in keys} == {redis_client.keyslot(keys[0])}
    assert keyspace.device_node_channel(did, "node-a") == ("SPUBLISH", f"{prefix}node:node-a")
    assert keyspace.device_node_channel(did, "node-a")[1] in keyspace.node_channels("node-a")


async def test_the_shards_spread_over_every_master(redis_client: Any, redis_cluster_proc) -> None:
    masters = {redis_cluster_proc.master_of(Keyspace("aq", 16).meter(f"D{i}")) for i in range(64)}
    assert len(masters) == 3


async def test_a_kick_reaches_the_node_on_the_sharded_channel_of_the_devices_slot(
    node_factory: Any, device_factory: Any, redis_client: Any
) -> None:
    from aquafleet.gateway.appkeys import KEYSPACE
    from aquafleet.protocol import ErrorCode
    from tests.devices import register_devices

    node = await node_factory()
    keyspace = node.app[KEYSPACE]
    assert keyspace.sharded_pubsub
    (dev,) = await register_devices(node, 1)
    device = device_factory(dev.did, dev.key, node.tcp_port)
    await device.login()  # the node's bus subscribed before the node listened
    channel = keyspace.device_node_channel(dev.did, node.hub.node_id)[1]
    master = redis_client.get_node_from_key(keyspace.meter(dev.did))
    async with aioredis.Redis(host=master.host, port=master.port) as direct:
        reply = await direct.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    assert reply[1] == 1, reply
    assert await kick_everywhere(redis_client, keyspace, [dev.did]) == 1
    errors = await device.closed_by_server(timeout=5)
    assert [e.code for e in errors if hasattr(e, "code")][:1] == [ErrorCode.AUTH_DISABLED]
