"""The reference load.py measures aquafleet against: Mosquitto relaying QoS 1 messages.

`N` publisher connections each keep `window` QoS 1 PUBLISHes in flight (the next one goes when
the broker's PUBACK for one comes back, like a device waiting for its record's ACK) to one
subscriber that holds a QoS 1 subscription to all of them and PUBACKs what it receives. The
messages are as long as a telemetry frame. It is the job aquafleet's gateway does for a record,
minus what makes a record durable (deduplication, metering, the ledger): a floor for the CPU a
relay of small acknowledged messages needs on this machine, measured in the same run.

The client is the benchmark's own: raw MQTT 3.1.1 packets (`protocol/mqtt_wire.py`, the
simulator's sans-IO packets) over uvloop Protocols, one process per `--workers`, the first one
also holding the subscriber. Each process connects its publishers, says `ready` and waits for
`go` on its stdin: `run()` sends it once every process is ready, so all publishers start
together with every connection made (its `on_start` callback runs at that moment: load.py
reads the broker's CPU there, the start of the steady state). Each process then prints one
JSON line; `run()` gathers them.

    python benchmarks/mqtt_reference.py --port 1883 --connections 2000 --window 1 --duration 30

(load.py --reference mosquitto runs it against a private Mosquitto and measures the broker.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop

try:
    from aquafleet.protocol import mqtt_wire as wire
except ImportError:  # a tree before the codec moved (lets this harness measure older commits)
    from aquafleet.simulators import mqtt_wire as wire  # type: ignore[no-redef]

PAYLOAD = bytes(range(76))  # the length of one telemetry frame (benchmarks/test_hot_paths.py)
TOPIC = "ref"


class Publisher(asyncio.Protocol):
    """One connection keeping `window` QoS 1 messages in flight until `stop_at`."""

    def __init__(self, index: int, window: int, counts: dict[str, int], stop_at: float) -> None:
        self.window = window
        self.counts = counts
        self.stop_at = stop_at
        self.reader = wire.PacketReader()
        self.ids = wire.PacketIds()
        self.topic = f"{TOPIC}/{index}"
        self.in_flight = 0
        self.transport: asyncio.Transport | None = None
        self.connected = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        for packet in self.reader.feed(data):
            if isinstance(packet, wire.PubAck):
                self.in_flight -= 1
                self.counts["acked"] += 1
            elif isinstance(packet, wire.ConnAck):
                self.connected.set_result(None)
                return
        if time.monotonic() < self.stop_at:
            while self.in_flight < self.window:
                out.append(wire.publish(self.topic, PAYLOAD, 1, self.ids.take()))
                self.in_flight += 1
            assert self.transport is not None
            self.transport.write(b"".join(out))
            self.counts["published"] += len(out)
        elif self.in_flight == 0 and not self.done.done():
            self.done.set_result(None)

    def start(self) -> None:
        assert self.transport is not None
        self.data_received(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Subscriber(asyncio.Protocol):
    """Receives every message at QoS 1 and PUBACKs them, one write per read."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.reader = wire.PacketReader()
        self.transport: asyncio.Transport | None = None
        self.subscribed = asyncio.get_running_loop().create_future()
        self.quiet = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        acks: list[bytes] = []
        for packet in self.reader.feed(data):
            if isinstance(packet, wire.Publish):
                if packet.qos:
                    acks.append(wire.puback(packet.packet_id))
                self.counts["received"] += 1
            elif isinstance(packet, wire.SubAck):
                self.subscribed.set_result(packet.codes)
            elif isinstance(packet, wire.ConnAck):
                assert self.transport is not None
                self.transport.write(wire.subscribe(1, [(f"{TOPIC}/#", 1)]))
        if acks:
            assert self.transport is not None
            self.transport.write(b"".join(acks))


async def client(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counts = {"published": 0, "acked": 0, "received": 0}
    subscriber = None
    if args.subscriber:
        _, subscriber = await loop.create_connection(
            lambda: Subscriber(counts), "127.0.0.1", args.port
        )
        subscriber.transport.write(wire.connect(f"ref-sub-{os.getpid()}", keepalive_s=600))  # type: ignore[union-attr]
        await asyncio.wait_for(subscriber.subscribed, 10)
    stop_at = time.monotonic() + 3600  # set for real once every publisher is connected
    publishers: list[Publisher] = []
    for index in range(args.first, args.first + args.connections):
        _, publisher = await loop.create_connection(
            lambda i=index: Publisher(i, args.window, counts, stop_at),  # type: ignore[misc]
            "127.0.0.1",
            args.port,
        )
        publisher.transport.write(wire.connect(f"ref-pub-{index}", keepalive_s=600))  # type: ignore[union-attr]
        publishers.append(publisher)
    await asyncio.wait_for(asyncio.gather(*(p.connected for p in publishers)), 60)
    # Start together: every worker waits for run()'s `go`, sent once all of them are ready.
    print("ready", flush=True)
    go = await loop.run_in_executor(None, sys.stdin.readline)
    if go.strip() != "go":
        raise SystemExit(f"expected go, got {go!r}")
    started = time.monotonic()
    for publisher in publishers:
        publisher.stop_at = started + args.duration
        publisher.start()
    await asyncio.wait_for(asyncio.gather(*(p.done for p in publishers)), args.duration + 60)
    elapsed = time.monotonic() - started
    if subscriber is not None:
        # Drain: wait (bounded) until the subscriber has what every worker published.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            before = counts["received"]
            await asyncio.sleep(0.5)
            if counts["received"] == before:
                break
    for publisher in publishers:
        if publisher.transport is not None:
            publisher.transport.write(wire.DISCONNECT)
            publisher.transport.close()
    if subscriber is not None and subscriber.transport is not None:
        subscriber.transport.close()
    return {**counts, "elapsed_s": elapsed}


def run(
    port: int,
    connections: int,
    window: int,
    duration: float,
    workers: int,
    on_start: Callable[[], None] | None = None,
    nice: int = 0,
) -> dict[str, Any]:
    """Run the reference load in `workers` processes; totals plus the clients' CPU seconds.
    `on_start` runs once every publisher is connected, right before they all start; `nice`
    is the client processes' nice value."""
    share = [
        connections // workers + (1 if n < connections % workers else 0) for n in range(workers)
    ]
    firsts = [sum(share[:n]) for n in range(workers)]
    reaped_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = [
        subprocess.Popen(
            [
                *(["nice", "-n", str(nice)] if nice else []),
                sys.executable,
                __file__,
                "--port",
                str(port),
                "--connections",
                str(share[n]),
                "--first",
                str(firsts[n]),
                "--window",
                str(window),
                "--duration",
                str(duration),
                "--worker",
                *(["--subscriber"] if n == 0 else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(workers)
    ]
    assert all(p.stdin is not None and p.stdout is not None for p in processes)
    ready = [p.stdout.readline().strip() for p in processes]  # type: ignore[union-attr]
    if ready != ["ready"] * workers:
        for process in processes:
            process.kill()
            process.wait()
        raise SystemExit(f"the reference client failed to connect: {ready}")
    if on_start is not None:
        on_start()
    for process in processes:
        process.stdin.write("go\n")  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
    results = [json.loads(p.communicate()[0]) for p in processes]
    reaped_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if any(p.returncode for p in processes):
        raise SystemExit("the reference client failed")
    total = {key: sum(r[key] for r in results) for key in ("published", "acked", "received")}
    elapsed = max(r["elapsed_s"] for r in results)
    return {
        **total,
        "elapsed_s": round(elapsed, 2),
        "relayed_per_s": round(total["received"] / elapsed, 1),
        "client_cpu_s": round(
            reaped_after.ru_utime
            + reaped_after.ru_stime
            - reaped_before.ru_utime
            - reaped_before.ru_stime,
            2,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first publisher")
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--subscriber", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(uvloop.run(client(args))))
    else:
        print(
            json.dumps(run(args.port, args.connections, args.window, args.duration, args.workers))
        )


if __name__ == "__main__":
    main()
