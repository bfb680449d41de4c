"""A scriptable test device over real TCP (protocol.DeviceSession behind asyncio streams)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from aquafleet.protocol import (
    DeviceSession,
    Encoding,
    LoggedIn,
    LoginFailed,
    SessionClosed,
    Telemetry,
)
from aquafleet.protocol.crypto import derive_device_key
from aquafleet.protocol.message_types import Ack, Error, Event

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Registered:
    did: str
    key: bytes


async def register_devices(node: Any, count: int, *, vendor: str = "TEST") -> list[Registered]:
    """Create devices in the node's database and its Redis registry copy at once."""
    from aquafleet.gateway.appkeys import KEYSPACE, REDIS
    from aquafleet.gateway.registry_cache import write_entries
    from aquafleet.models.registry import create_vendor
    from aquafleet.models.registry import register_devices as register
    from aquafleet.models.vendors import Vendor

    master = node.settings.master_secret_bytes()
    if not await Vendor.exists(code=vendor):
        await create_vendor(vendor, f"{vendor} test vendor")
    issued = await register(vendor, count, lambda did, v: derive_device_key(master, did, v))
    await write_entries(
        node.app[REDIS], node.app[KEYSPACE], [(d.did, 1, d.key_version) for d in issued]
    )
    return [Registered(d.did, d.key) for d in issued]


class TestDevice:
    """Connect, log in, send records, read acks and errors; every wait is bounded."""

    __test__ = False  # not a pytest class

    def __init__(
        self, did: str, key: bytes, port: int, *, encoding: int = Encoding.MSGPACK
    ) -> None:
        self.did = did
        self.key = key
        self.port = port
        self.session = DeviceSession(did, key, fw="test-1", encoding=encoding)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.events: list[Any] = []
        self.eof = False
        self.sent: dict[int, tuple[int, int]] = {}  # seq -> (boot, rec) awaiting an ack
        self.outcome: dict[tuple[int, int], int] = {}  # (boot, rec) -> ack code
        self.ack_frames: list[Ack] = []

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def write_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            await self.write_raw(out)

    async def _read_once(self, timeout: float) -> bool:
        assert self.reader is not None
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            await self.close()
            return False
        for event in self.session.receive_data(data, time.time()):
            if isinstance(event, Ack):
                self._settle(event)
            self.events.append(event)
        await self.flush()
        return True

    def _settle(self, ack: Ack) -> None:
        """An ACK settles its own record and, by its watermark, every earlier one of its boot."""
        self.ack_frames.append(ack)
        position = self.sent.pop(ack.seq, None)
        if position is not None:
            self.outcome[position] = ack.rc
        if ack.watermark is not None and ack.rc in (0, 1):
            boot, upto = ack.watermark
            for seq, (b, rec) in list(self.sent.items()):
                if b == boot and rec <= upto:
                    del self.sent[seq]
                    self.outcome[(b, rec)] = 0

    async def wait_for(self, kind: type, *, timeout: float = TIMEOUT_S) -> Any:
        """The first queued event of `kind` (removed from the queue)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if isinstance(event, kind):
                    return self.events.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise TimeoutError(f"no {kind.__name__}; events: {self.events}, eof: {self.eof}")
            await self._read_once(remaining)

    async def login(self) -> LoggedIn:
        await self.connect()
        self.session.start()
        await self.flush()
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            for event in self.events:
                if isinstance(event, LoggedIn):
                    self.events.remove(event)
                    return event
                if isinstance(event, LoginFailed):
                    raise LoginRefused(event.code, event.reason)
            if not await self._read_once(deadline - time.monotonic()):
                raise LoginRefused(-1, "connection closed during login")
        raise TimeoutError("login did not finish")

    async def send(self, record: Telemetry | Event, *, dup: bool = False) -> int:
        seq = self.session.send_record(record, dup=dup)
        self.sent[seq] = (record.boot, record.rec)
        await self.flush()
        return seq

    async def settled(self, *, timeout: float = TIMEOUT_S) -> dict[tuple[int, int], int]:
        """Wait until every record sent is acked (alone or by a watermark); their ack codes."""
        deadline = time.monotonic() + timeout
        while self.sent:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise TimeoutError(f"unacked: {sorted(self.sent.values())[:10]}, eof {self.eof}")
            try:
                await self._read_once(remaining)
            except TimeoutError:
                continue
        self.events = [e for e in self.events if not isinstance(e, Ack)]
        return dict(self.outcome)

    async def acks(self, count: int, *, timeout: float = TIMEOUT_S) -> list[Ack]:
        return [await self.wait_for(Ack, timeout=timeout) for _ in range(count)]

    async def closed_by_server(self, *, timeout: float = TIMEOUT_S) -> list[Any]:
        """Read until the server closes the connection; returns the ERRORs it sent."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("server did not close the connection")
            try:
                await self._read_once(remaining)
            except TimeoutError:
                raise TimeoutError("server did not close the connection") from None
        return [e for e in self.events if isinstance(e, Error | SessionClosed)]

    async def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    def abort(self) -> None:
        """Vanish like a lost GPRS link."""
        if self.writer is not None:
            self.writer.transport.abort()


class LoginRefused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"login refused: {code} {reason}")
        self.code = code
        self.reason = reason


def telemetry(
    rec: int, boot: int, total: int | None, *, epoch: int | None = 1, **fields: Any
) -> Telemetry:
    return Telemetry(
        rec=rec, boot=boot, ts=int(time.time()), flow_total_ml=total, cnt_epoch=epoch, **fields
    )
