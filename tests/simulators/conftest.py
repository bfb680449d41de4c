"""Fixtures of the simulator tests: devices registered on a running node."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from aquafleet.gateway.keys import Keyspace
from aquafleet.simulators.options import DeviceCredentials, SimOptions

RegisterFleet = Callable[[Any, int], Awaitable[list[DeviceCredentials]]]
StartNode = Callable[..., Awaitable[Any]]


@pytest.fixture
def register_fleet(redis_client: aioredis.Redis, keyspace: Keyspace) -> RegisterFleet:
    """Register `count` devices on a started node: database rows, then the Redis registry copy.

    The node's database context has initialised Tortoise for this process, so the registry
    services run directly; the Redis copy makes the devices able to log in at once.
    """

    async def register(node: Any, count: int) -> list[DeviceCredentials]:
        from aquafleet.gateway.registry_cache import write_entries
        from aquafleet.models.devices import DeviceState
        from aquafleet.models.registry import create_vendor, register_devices
        from aquafleet.models.vendors import Vendor
        from aquafleet.protocol.crypto import derive_device_key

        master = node.settings.master_secret_bytes()
        if not await Vendor.exists(code="SIMT"):
            await create_vendor("SIMT", "Sim test")
        issued = await register_devices(
            "SIMT", count, lambda did, version: derive_device_key(master, did, version)
        )
        await write_entries(
            redis_client,
            keyspace,
            [(d.did, int(DeviceState.INACTIVE), d.key_version) for d in issued],
        )
        return [DeviceCredentials(d.did, d.key) for d in issued]

    return register


def sim_options(node: Any, devices: list[DeviceCredentials], **overrides: Any) -> SimOptions:
    """Options of a short run against `node`, checked against its database."""
    values: dict[str, Any] = {
        "devices": devices,
        "host": "127.0.0.1",
        "port": node.tcp_port,
        "duration_s": 3.0,
        "drain_timeout_s": 10.0,
        "check": "db",
        "check_timeout_s": 15.0,
        "database_url": node.settings.resolved_database_url,
        "workers": 1,
        "seed": 7,
    }
    values.update(overrides)
    return SimOptions(**values)
