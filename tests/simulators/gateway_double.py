"""An in-memory gateway end (protocol.ServerSession) to drive one VirtualPurifier in unit tests."""

from __future__ import annotations

import random

from aquafleet.protocol import AckCode, LoginRequested, ServerSession
from aquafleet.protocol.message_types import Command, Record, Result
from aquafleet.simulators.device import FleetHooks, VirtualPurifier
from aquafleet.simulators.stats import WorkerStats

DID = "SIMT00000001"
KEY = bytes(range(32))
WALL = 1_800_000_000
BOOT = 1_790_000_000


def make_device(
    *,
    window: int = 1,
    max_rate: bool = False,
    draw_gap_s: float = 30.0,
    use_watermark: bool = False,
    hooks: FleetHooks | None = None,
    seed: int = 1,
) -> VirtualPurifier:
    return VirtualPurifier(
        DID,
        KEY,
        boot=BOOT,
        now=0.0,
        stats=WorkerStats(),
        rng=random.Random(seed),
        window=window,
        max_rate=max_rate,
        draw_gap_s=draw_gap_s,
        use_watermark=use_watermark,
        hooks=hooks,
    )


class GatewayDouble:
    """One connection at a time: the server's side of the sans-IO protocol, in memory."""

    def __init__(self, device: VirtualPurifier) -> None:
        self.device = device
        self.server: ServerSession | None = None
        self.records: list[Record] = []  # everything the gateway received, in order
        self.results: list[Result] = []
        self.now = 0.0

    def _receive(self, data: bytes) -> list[Record]:
        assert self.server is not None
        new = []
        for event in self.server.receive_data(data, WALL):
            if isinstance(event, Record):
                new.append(event)
            elif isinstance(event, Result):
                self.results.append(event)
        self.records.extend(new)
        return new

    def _to_device(self) -> list[Record]:
        assert self.server is not None
        out = self.device.receive(self.server.data_to_send(), self.now, int(self.now * 1e9), WALL)
        return self._receive(out)

    def login(self, last_acked: tuple[int, int] | None = None) -> list[Record]:
        """Connect and log in; returns the records the device sent right after (resends...)."""
        self.server = ServerSession(WALL)
        hello = self.device.connect(self.now, int(self.now * 1e9))
        assert self._receive(hello) == []
        auth = self.device.receive(self.server.data_to_send(), self.now, 0, WALL)
        events = self.server.receive_data(auth, WALL)
        assert events == [LoginRequested(DID, "sim-1.0")]
        assert self.server.verify_login(KEY)
        self.server.accept_login(now=WALL, last_acked=last_acked)
        return self._to_device()

    def lose_link(self) -> None:
        """The connection vanishes (nothing in flight arrives anywhere)."""
        self.device.close_reason = "drop"
        self.device.link_lost(error=False)
        self.server = None

    def tick(self, at: float) -> list[Record]:
        """An interval-mode report tick at time `at`."""
        self.now = at
        return self._receive(self.device.produce(at, int(at * 1e9), WALL))

    def ack(
        self,
        record: Record,
        rc: int = AckCode.STORED,
        watermark: tuple[int, int] | None = None,
    ) -> list[Record]:
        """Ack one record (watermark: its own position by default); returns the device's reply."""
        assert self.server is not None
        self.server.ack(record.seq, rc, watermark or (record.boot, record.rec))
        return self._to_device()

    def command(self, command: Command) -> list[Record]:
        assert self.server is not None
        self.server.send_command(command)
        return self._to_device()
