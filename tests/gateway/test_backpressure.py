"""When Redis or the ledger falls behind, the node stops reading sockets instead of buffering."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aquafleet.gateway.appkeys import KEYSPACE, REDIS, SCRIPTS
from aquafleet.gateway.ledger import LedgerWriter
from aquafleet.gateway.metrics import Metrics
from aquafleet.gateway.tasks import cancel_and_wait
from aquafleet.models.usage import metered_ml_by_device
from tests.conftest import REDIS_URL
from tests.devices import register_devices, telemetry


class StallingProxy:
    """A TCP proxy to Redis that can hold every byte from the gateway until released."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gated: bool) -> None:
            try:
                while data := await src.read(65536):
                    if gated:
                        await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer, True)),
            asyncio.create_task(pipe(up_reader, writer, False)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await cancel_and_wait(list(self.tasks))
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def stalling_proxy() -> AsyncIterator[StallingProxy]:
    proxy = StallingProxy(int(REDIS_URL.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_stalled_redis_pauses_reading_and_loses_nothing(node_factory, device_factory):
    async with stalling_proxy() as proxy:
        node = await node_factory(redis_url=proxy.url, pending_pause_records=100)
        devices = await register_devices(node, 4)
        clients = [device_factory(d.did, d.key, node.tcp_port) for d in devices]
        for client in clients:
            await client.login()
        proxy.flowing.clear()  # Redis stops answering
        boot = int(time.time())
        sent = 0
        for rec in range(1, 61):
            for client in clients:
                await client.send(telemetry(rec, boot, rec * 10))
                sent += 1
        await wait_until(lambda: node.hub.reads_paused)
        paused_pending = len(node.hub.meter.pending)
        assert node.metrics.read_pauses == 1
        # Bounded: no more than a round in flight plus one read per connection past the mark.
        assert paused_pending < 100 + sent
        await asyncio.sleep(0.3)
        assert len(node.hub.meter.pending) == paused_pending  # nothing more is being read
        proxy.flowing.set()
        for client in clients:
            outcome = await client.settled(timeout=20)
            assert outcome == {(boot, rec): 0 for rec in range(1, 61)}
        assert not node.hub.reads_paused
        assert node.metrics.records_stored == sent


async def test_ledger_backlog_pauses_reading_until_the_writer_catches_up(
    node_factory, device_factory
):
    node = await node_factory(ledger_writer=False, backlog_pause_records=1000)
    (dev,) = await register_devices(node, 1)
    client = device_factory(dev.did, dev.key, node.tcp_port)
    await client.login()
    boot = int(time.time())
    for rec in range(1, 1201):
        await client.send(telemetry(rec, boot, rec))
    await client.settled(timeout=20)  # read before the mark was seen: metered and acked
    await wait_until(lambda: node.hub.reads_paused)
    for rec in range(1201, 1501):
        await client.send(telemetry(rec, boot, rec))
    await asyncio.sleep(1.0)
    assert node.metrics.records_received == 1200  # the new records wait in the socket
    assert node.hub.reads_paused
    writer = LedgerWriter(
        client=node.app[REDIS],
        scripts=node.app[SCRIPTS],
        keyspace=node.app[KEYSPACE],
        metrics=Metrics(),
        consumer="catch-up",
        batch_entries=50,
        claim_idle_ms=60_000,
    )
    await writer.ensure_groups()
    task = asyncio.create_task(writer.run())
    try:
        outcome = await client.settled(timeout=20)
        assert outcome == {(boot, rec): 0 for rec in range(1, 1501)}
        await wait_until(lambda: not node.hub.reads_paused)
        for _ in range(100):
            if await metered_ml_by_device([dev.did]) == {dev.did: 1500}:
                break
            await asyncio.sleep(0.1)
        assert await metered_ml_by_device([dev.did]) == {dev.did: 1500}
    finally:
        await stop_task(writer, task)


async def stop_task(writer: LedgerWriter, task: asyncio.Task[None]) -> None:
    """Stop a writer the way the node does: ask, then cancel again while a cancel that
    redis-py swallowed leaves it running (bounded: a hang here would outlive every timeout)."""
    writer.request_stop()
    assert not await cancel_and_wait([task]), "the ledger writer did not stop"


async def test_records_read_before_a_replacement_are_metered_for_their_device(
    node_factory, device_factory
):
    async with stalling_proxy() as proxy:
        node = await node_factory(redis_url=proxy.url)
        (dev,) = await register_devices(node, 1)
        older = device_factory(dev.did, dev.key, node.tcp_port)
        await older.login()
        proxy.flowing.clear()
        boot = int(time.time())
        for rec in range(1, 4):
            await older.send(telemetry(rec, boot, rec * 100))
        await wait_until(lambda: node.metrics.records_received == 3)
        newer = device_factory(dev.did, dev.key, node.tcp_port)
        login = asyncio.create_task(newer.login())
        await asyncio.sleep(0.2)
        proxy.flowing.set()
        await login
        await older.closed_by_server()
        client = node.app[REDIS]
        from aquafleet.gateway.meter import meter_fields

        state = meter_fields(await client.get(node.app[KEYSPACE].meter(dev.did)))
        assert state["mt"] == 300 and state["n"] == 3
        assert await client.get(node.app[KEYSPACE].meter("")) is None
