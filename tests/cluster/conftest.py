"""The gateway's end-to-end cases on a real Redis Cluster (3 masters, 3 replicas on loopback):
these fixtures override the suite's Redis ones, so the cases imported into this package run
unchanged against the cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.redis_io import open_redis

# The API's fixtures, for its cases run on the cluster (test_api_on_cluster.py).
from tests.api.conftest import api, api_node, tenants  # noqa: F401
from tests.conftest import TEST_SHARDS
from tests.redis_cluster import (
    NODES,
    SESSION_BOUND_S,
    RedisClusterProcess,
    _free_port,
    redis_server_missing,
)
from tests.setup_deadline import one_time_setup


@pytest.fixture(scope="session")
def redis_cluster_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcess]:
    """One cluster per test session (per xdist worker), every node stopped at the end."""
    missing = redis_server_missing()
    if missing is not None:
        pytest.skip(f"no Redis Cluster: {missing}")
    # One-time setup with a timeout of its own (the start's deadline raises first, naming the
    # step): not charged to the first test that uses the cluster, nor its stop to the last.
    cluster = RedisClusterProcess(
        tmp_path_factory.mktemp("redis-cluster"), [_free_port() for _ in range(NODES)]
    )
    try:
        with one_time_setup("the Redis Cluster's start", SESSION_BOUND_S):
            cluster.start()
        yield cluster
    finally:
        with one_time_setup("the Redis Cluster's stop", SESSION_BOUND_S):
            cluster.stop()


@pytest.fixture
def keyspace(redis_prefix: str) -> Keyspace:
    return Keyspace(redis_prefix, TEST_SHARDS, sharded_pubsub=True)


@pytest.fixture
async def redis_client(redis_cluster_proc: RedisClusterProcess) -> AsyncIterator[aioredis.Redis]:
    """A cluster client (keys need no cleanup: each test has its prefix, the cluster its
    session)."""
    client = open_redis(redis_cluster_proc.url)
    await client.initialize()  # type: ignore[attr-defined]  # a RedisCluster: read the slots
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(make_settings: Any, redis_cluster_proc: RedisClusterProcess) -> Any:
    """The suite's test settings, with the cluster's URL."""

    def make(**overrides: Any) -> Any:
        overrides.setdefault("redis_url", redis_cluster_proc.url)
        return make_settings(**overrides)

    return make


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    return tmp_path
