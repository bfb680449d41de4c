"""pytest-benchmark figures for the per-record work of the gateway and the simulator.

Run: .venv/bin/pytest benchmarks --benchmark-only   (figures: docs/benchmarks.md)
"""

from __future__ import annotations

import time

import msgpack
import pytest

from aquafleet.protocol import DeviceSession, FilterReading, ServerSession, Telemetry
from aquafleet.protocol.crc import crc16_modbus
from aquafleet.protocol.crypto import derive_device_key

DID = "BNCH00000001AAAA"
KEY = derive_device_key(b"\x42" * 32, DID, 1)


def logged_in_pair() -> tuple[DeviceSession, ServerSession]:
    device = DeviceSession(DID, KEY)
    server = ServerSession(time.time())
    device.start()
    server.receive_data(device.data_to_send(), time.time())
    device.receive_data(server.data_to_send(), time.time())
    server.receive_data(device.data_to_send(), time.time())
    assert server.verify_login(KEY)
    server.accept_login(now=time.time())
    device.receive_data(server.data_to_send(), time.time())
    return device, server


def sample(rec: int) -> Telemetry:
    return Telemetry(
        rec=rec, boot=7, ts=1_790_000_000, flow_total_ml=12_345 + rec, tds_in_ppm=300,
        tds_out_ppm=12, temperature_dc=250, cnt_epoch=3, signal=21, state_bits=1, fault_bits=0,
        filters=(FilterReading(1, 100, 900, 0), FilterReading(2, 100, 900, 0),
                 FilterReading(3, 400, 2000, 1)),
    )  # fmt: skip


def test_crc16_of_a_telemetry_frame(benchmark):
    data = bytes(range(80))
    benchmark(crc16_modbus, data)


def test_device_encodes_a_telemetry_frame(benchmark):
    device, _ = logged_in_pair()
    record = sample(1)

    def encode() -> bytes:
        device.send_record(record)
        return device.data_to_send()

    assert benchmark(encode)


def test_server_decodes_and_acks_a_telemetry_frame(benchmark):
    device, server = logged_in_pair()
    device.send_record(sample(1))
    frame = device.data_to_send()

    def receive_and_ack() -> bytes:
        (record,) = server.receive_data(frame, 0.0)
        server.ack(record.seq, 0, (record.boot, record.rec))  # type: ignore[union-attr]
        return server.data_to_send()

    assert benchmark(receive_and_ack)


def test_server_decodes_sixteen_frames_in_one_read(benchmark):
    device, server = logged_in_pair()
    for rec in range(1, 17):
        device.send_record(sample(rec))
    burst = device.data_to_send()

    def receive() -> int:
        return len(server.receive_data(burst, 0.0))

    assert benchmark(receive) == 16


def test_pack_a_metering_round_of_1000_records(benchmark):
    packer = msgpack.Packer(use_bin_type=False)
    rows = [[DID, 0x20, 7, rec, 1_790_000_000, rec * 10, 3, 0, 0, b"x" * 60] for rec in range(1000)]
    benchmark(packer.pack, rows)


@pytest.mark.parametrize("twin", ["compiled", "python"])
def test_meter_script_packs_a_window_1_round_of_1000_devices(benchmark, twin):
    """MeterScript._pack as the gateway calls it: 1,000 records, each another device's, over
    16 shards; the compiled twin (`pack_meter_group`) against the Python reference."""
    from aquafleet.gateway import meter
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.protocol.message_types import Record

    if twin == "compiled" and meter._compiled_pack_group is None:
        pytest.skip("extension switched off")
    script = meter.MeterScript(None, Keyspace("bench", 16))  # type: ignore[arg-type]
    rows: dict[int, list] = {}
    for n in range(1000):
        record = Record(0x20, n, False, 1000 + n, 7, 1_790_000_000, 12_345 + n, 3, 0, b"x" * 40, 1)
        rows.setdefault(n % 16, []).append((f"BNCH{n:08d}AAAA", record))
    saved = meter._compiled_pack_group
    meter._compiled_pack_group = saved if twin == "compiled" else None
    try:
        assert benchmark(script._pack, sorted(rows), rows)
    finally:
        meter._compiled_pack_group = saved


def test_maintenance_check_of_a_ledger_batch_of_1000_devices(benchmark):
    """The filter-life rules the ledger writer runs after each commit (pure part, 3 stages)."""
    from aquafleet.models.filters import DeviceFilters, maintenance_requests, parse_filter_spec

    stages = parse_filter_spec(
        [{"order": i, "name": "", "timer_mode": 0, "lifetime": 4320, "worklife": 540}
         for i in (1, 2, 3)]
    )  # fmt: skip
    dids = [f"BNCH{n:08d}AAAA" for n in range(1000)]
    specs = {did: DeviceFilters("BNCH", stages, (7, 1)) for did in dids}
    # One device in a hundred has a worn stage 3.
    readings = [
        (
            did,
            7,
            1,
            [[1, 100, 900, 0], [2, 100, 900, 0], [3, 530 if n % 100 == 0 else 400, 2000, 1]],
        )
        for n, did in enumerate(dids)
    ]
    assert len(benchmark(maintenance_requests, readings, specs, 10)) == 10


def ledger_entry(records: int) -> tuple[bytes, dict[bytes, bytes]]:
    """One ledger stream entry as meter.lua writes it: a metering round of `records` telemetry
    records, each of another device (so each becomes a snapshot)."""
    from aquafleet.protocol.messages import encode_payload, message_map

    payload = encode_payload(message_map(sample(1)), 0)
    items = [
        [f"BNCH{n:08d}AAAA".encode(), 0x20, 7, 1, 1_790_000_000, 10, 12_346, 3, 0, 0, payload]
        for n in range(records)
    ]
    fields = {
        b"at": b"1790000000000",
        b"n": str(records).encode(),
        b"records": msgpack.packb(items),
    }
    return b"1-0", fields


def test_ledger_writer_decodes_a_round_of_1000_records(benchmark):
    """Usage rows of one round and each device's newest report (the writer's Python work before
    the INSERTs; a report's payload is read only when its snapshot is written)."""
    from aquafleet.gateway.ledger import decode_entries

    entry = ledger_entry(1000)
    batch = benchmark(decode_entries, [entry])
    assert len(batch.usage) == 1000 and len(batch.reports) == 1000


def test_bridge_takes_one_telemetry_message(benchmark):
    """The MQTT bridge's per-message work once the device is online: take the message apart,
    check its tag, clock and replay memory, and read its record (each round a new message: the
    replay memory refuses a copy)."""
    from aquafleet.protocol import mqtt_envelope
    from aquafleet.protocol.mqtt import MqttDeviceSession, MqttServerSession
    from aquafleet.protocol.mqtt_envelope import open_envelope

    # The bridge's topic cache where the code has one (the same file measures older code).
    cache = mqtt_envelope.TopicCache("aq") if hasattr(mqtt_envelope, "TopicCache") else None
    extra = () if cache is None else (cache,)

    now = 1_790_000_000.0
    device = MqttDeviceSession("aq", DID, KEY, clock=lambda: now)
    device.connected(int(now * 1000))
    server = MqttServerSession(
        "aq", DID, now, clock=lambda: now, heartbeat_s=60, login_timeout_s=15
    )
    for name, payload, _ in device.data_to_send():
        server.hold(open_envelope("aq", name, payload))
    assert server.verify_login(KEY)
    server.accept_login(now=now)
    server.take_held()
    recs = iter(range(1, 10**6))

    def next_message() -> tuple[tuple[str, bytes], dict[str, object]]:
        device.send_record(sample(next(recs)))
        ((name, payload, _),) = device.data_to_send()
        return (name, payload), {}

    def receive(name: str, payload: bytes) -> object:
        (record,) = server.receive_data(open_envelope("aq", name, payload, *extra), now)
        return record

    record = benchmark.pedantic(receive, setup=next_message, rounds=3000)
    assert record.rec > 0


class _Link:
    """Just what the metering round touches of a device connection (no socket, no frames)."""

    __slots__ = ("acks", "closed", "did", "session", "shard")

    def __init__(self, did: str) -> None:
        self.did, self.shard, self.closed, self.acks = did, 0, False, 0
        self.session = self

    def ack(self, seq: int, rc: int, watermark: object = None) -> None:
        self.acks += 1

    def flush(self) -> None:
        pass


class _Rec:
    __slots__ = ("boot", "rec", "seq")

    def __init__(self, seq: int) -> None:
        self.seq, self.boot, self.rec = seq, 7, seq


class _Hub:
    def pause_reading(self, reason: str) -> None:
        pass

    def resume_reading(self, reason: str) -> None:
        pass


def test_gateway_submits_meters_and_acks_a_round_of_1000_records(benchmark):
    """The gateway's own Python work for one metering round, Redis answered by a stub: each
    record submitted (per frame), grouped, acked (window 10: 100 links, one ack each), and the
    metrics kept on the way (per-frame counters, per-round histograms)."""
    import asyncio

    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.meter import MeterBatcher, MeterOutcome
    from aquafleet.gateway.metrics import Metrics
    from aquafleet.gateway.redis_io import Scripts

    keyspace = Keyspace("bench", 1)
    meter = MeterBatcher(
        hub=_Hub(), client=None, scripts=Scripts(), keyspace=keyspace,  # type: ignore[arg-type]
        metrics=Metrics(), batch_max=5000, pause_pending=10**9, pause_backlog=10**9,
    )  # fmt: skip
    links = [_Link(f"BNCH{n:08d}AAAA") for n in range(100)]
    records = [(links[n % 100], _Rec(n // 100 + 1)) for n in range(1000)]
    codes = [c for _, r in records for c in (0, 7, r.rec)]

    async def stub(
        client: object, rows: dict, now_ms: int, replication: object = None
    ) -> MeterOutcome:
        return MeterOutcome(codes={0: codes}, backlogs={0: 0})

    meter.script.run = stub  # type: ignore[method-assign]
    loop = asyncio.new_event_loop()

    def round_() -> int:
        for link, record in records:
            meter.submit(link, record)  # type: ignore[arg-type]
        batch = meter.pending[:]
        meter.pending.clear()
        loop.run_until_complete(meter.meter(batch))  # type: ignore[arg-type]
        return meter.metrics.records_stored

    try:
        assert benchmark(round_) >= 1000
    finally:
        loop.close()


def test_render_the_metrics_page(benchmark):
    """What one scrape of /metrics costs the node (every counter, gauge and histogram)."""
    from aquafleet.gateway.metrics import Metrics

    metrics = Metrics()
    render = getattr(metrics, "exposition", None) or metrics.render
    assert benchmark(render)


def test_bridge_reads_a_socket_read_of_100_publishes(benchmark):
    """The bridge's MQTT client: one read holding 100 QoS 0 PUBLISH packets (~120 bytes
    each) cut into (topic, payload) messages."""
    from aquafleet.protocol import mqtt_wire as wire

    payload = bytes(range(90))
    data = b"".join(wire.publish(f"aq/BNCH{n:08d}AAAA/up/tele", payload) for n in range(100))
    packets = benchmark(wire.PacketReader().feed, data)
    assert len(packets) == 100


def test_bridge_acks_a_record(benchmark):
    """A metering round's ACK of one MQTT record: the sealed map queued for the broker, then
    its PUBLISH packet."""
    from aquafleet.protocol import mqtt_wire as wire
    from aquafleet.protocol.mqtt import MqttDeviceSession, MqttServerSession
    from aquafleet.protocol.mqtt_envelope import open_envelope

    now = 1_790_000_000.0
    device = MqttDeviceSession("aq", DID, KEY, clock=lambda: now)
    device.connected(int(now * 1000))
    server = MqttServerSession(
        "aq", DID, now, clock=lambda: now, heartbeat_s=60, login_timeout_s=15
    )
    for name, payload, _ in device.data_to_send():
        server.hold(open_envelope("aq", name, payload))
    assert server.verify_login(KEY)
    server.accept_login(now=now)

    def ack() -> bytes:
        server.ack(7, 0, (7, 1234))
        return b"".join(wire.publish(n, p, q) for n, p, q in server.data_to_send())

    assert benchmark(ack)


def test_bridge_handles_a_socket_read_of_100_telemetry_messages(benchmark):
    """The MQTT bridge's per-read path, as `BrokerConnection.data_received` calls it: one read's
    100 QoS 0 PUBLISHes (one telemetry message of each of 100 online devices) taken apart,
    checked (tag, clock, replay memory), their records read and handed to the real meter.
    Everything real but the broker and Redis (the meter's round is not run: its records are
    taken off between rounds)."""
    import asyncio

    from aquafleet.gateway.config import Settings
    from aquafleet.gateway.hub import FailedLoginLimiter, Hub
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.meter import MeterBatcher
    from aquafleet.gateway.metrics import Metrics
    from aquafleet.gateway.mqtt.bridge import MqttBridge
    from aquafleet.gateway.redis_io import Scripts
    from aquafleet.protocol.mqtt import MqttDeviceSession
    from aquafleet.protocol.mqtt_wire import Publish

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    secret = b"\x42" * 32
    settings = Settings(mqtt_url="mqtt://127.0.0.1:1883", mqtt_topic_prefix="aq")  # type: ignore[call-arg]
    metrics = Metrics()
    hub = Hub(
        node_id="bench", metrics=metrics, heartbeat_s=60, login_timeout_s=15,
        max_connections=10_000, limiter=FailedLoginLimiter(10, 60.0),
    )  # fmt: skip
    keyspace = Keyspace("bench", 1)
    meter = hub.meter = MeterBatcher(
        hub=hub, client=None, scripts=Scripts(), keyspace=keyspace,  # type: ignore[arg-type]
        metrics=metrics, batch_max=5000, pause_pending=10**9, pause_backlog=10**9,
    )  # fmt: skip
    bridge = MqttBridge(
        hub=hub, settings=settings, client=None, scripts=Scripts(),  # type: ignore[arg-type]
        keyspace=keyspace, metrics=metrics, master_secret=secret, presence_ttl_ms=150_000,
    )  # fmt: skip
    now = time.time()
    devices = []
    for n in range(100):
        did = f"BNCH{n:08d}AAAA"
        key = derive_device_key(secret, did, 1)
        device = MqttDeviceSession("aq", did, key, clock=time.time)
        device.connected(int(now * 1000))
        bridge._on_messages([Publish(t, p, 0, 0) for t, p, _ in device.data_to_send()])
        link = bridge.devices[did]  # its key looked up and its presence claimed, as a login does
        assert link.session.verify_login(key)
        link.session.accept_login(now=now)
        link.did = did
        hub.online[did] = link
        link.flush()
        devices.append(device)
    bridge.logins.pending.clear()
    recs = iter(range(1, 10**6))

    def next_read() -> tuple[tuple[list[Publish]], dict[str, object]]:
        meter.pending.clear()
        rec = next(recs)
        messages = []
        for device in devices:
            device.send_record(sample(rec))
            ((name, payload, _),) = device.data_to_send()
            messages.append(Publish(name, payload, 0, 0))
        return (messages,), {}

    try:
        benchmark.pedantic(bridge._on_messages, setup=next_read, rounds=2000)
        assert len(meter.pending) == 100
        assert metrics.mqtt_uplinks_received >= 100 * 2000
    finally:
        loop.close()
        asyncio.set_event_loop(None)


class _Transport:
    """What DeviceConnection touches of a uvloop transport: the acks' bytes are counted."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def test_gateway_reads_meters_and_acks_a_window_1_round_of_1000_devices(benchmark):
    """All of the gateway's Python for a window-1 round, the system calls and Redis left out:
    1,000 logged-in device connections (16 shards) each read one telemetry frame
    (`data_received`: decode, MAC, submit), then the round (group, pack, the reply's codes
    taken as meter.lua's for 1,000 new records) and each device's ACK frame written."""
    import asyncio

    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.meter import MeterBatcher, MeterOutcome
    from aquafleet.gateway.metrics import Metrics
    from aquafleet.gateway.redis_io import Scripts
    from aquafleet.gateway.tcp import DeviceConnection

    keyspace = Keyspace("bench", 16)
    hub = _Hub()
    meter = MeterBatcher(
        hub=hub, client=None, scripts=Scripts(), keyspace=keyspace,  # type: ignore[arg-type]
        metrics=Metrics(), batch_max=5000, pause_pending=10**9, pause_backlog=10**9,
    )  # fmt: skip
    hub.meter = meter  # type: ignore[attr-defined]
    devices, connections = [], []
    for n in range(1000):
        device, server = logged_in_pair()
        connection = DeviceConnection(hub)  # type: ignore[arg-type]
        connection.transport = _Transport()  # type: ignore[assignment]
        connection.session = server
        connection.did, connection.shard = f"BNCH{n:08d}AAAA", n % 16
        devices.append(device)
        connections.append(connection)
    rec = iter(range(1, 10**9))

    async def stub(
        client: object, rows: dict, now_ms: int, replication: object = None
    ) -> MeterOutcome:
        codes = {
            shard: [c for _, record in items for c in (0, record.boot, record.rec)]
            for shard, items in rows.items()
        }
        return MeterOutcome(codes=codes, backlogs={0: 0})

    meter.script.run = stub  # type: ignore[method-assign]
    loop = asyncio.new_event_loop()

    def frames() -> tuple[tuple[list[bytes]], dict[str, object]]:
        out = []
        for device in devices:
            device.send_record(sample(next(rec)))
            out.append(device.data_to_send())
        return (out,), {}

    def round_(frames: list[bytes]) -> int:
        for connection, frame in zip(connections, frames, strict=True):
            connection.data_received(frame)
        batch = meter.pending[:]
        meter.pending.clear()
        loop.run_until_complete(meter.meter(batch))  # type: ignore[arg-type]
        return meter.metrics.records_stored

    try:
        assert benchmark.pedantic(round_, setup=frames, rounds=60) >= 60_000
        assert all(c.transport.written > 0 for c in connections)  # type: ignore[union-attr]
    finally:
        loop.close()
