"""The virtual purifiers of one worker process, on one event loop.

A fleet owns every task it starts (one connect/reconnect loop per device, the report wheel, the
once-a-second housekeeping tick, the stats reporter) and cancels and awaits them when it stops.
Phases: run (report, drop, reboot, storm) until --duration; drain (no new records, every
unacked record acked, bounded by --drain-timeout); close (every link closed, then aborted).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aquafleet.process_gc import freeze_startup_heap
from aquafleet.protocol import mqtt_wire
from aquafleet.simulators.device import VirtualPurifier
from aquafleet.simulators.link import PurifierLink
from aquafleet.simulators.mqtt_device import MqttPurifier
from aquafleet.simulators.mqtt_link import MqttPurifierLink, connect_mqtt
from aquafleet.simulators.options import SimOptions
from aquafleet.simulators.stats import WorkerStats

TICK_S = 0.1  # report wheel resolution (interval mode)
HOUSEKEEPING_S = 1.0
SNAPSHOT_S = 1.0
CLOSE_GRACE_S = 2.0
INTERRUPT_DRAIN_S = 2.0
DRAIN_POLL_S = 0.05
# The drain waits for devices to report and be acked; it cannot while none can connect. With
# no device connected and no connect succeeding for this long, it ends: a run with no gateway
# listening took its --drain-timeout (30 s) more, a 2 s run 32 s. Longer than a failed
# device's longest retry delay (CONNECT_RETRY_MAX_S), so each device tries again within it.
DRAIN_UNREACHABLE_S = 6.0
STORM_JITTER_S = 0.05
STORM_BUCKET_S = 0.1  # the storm's recovery curve: devices back per 0.1 s
# Reconnect delays after each kind of disconnect (seconds, uniform between the two).
RECONNECT_DELAY_S: dict[str | None, tuple[float, float]] = {
    "drop": (0.2, 2.0),
    "reboot": (0.5, 2.0),
    "storm": (0.0, STORM_JITTER_S),
    "unavailable": (0.5, 2.0),
    "login_failed": (2.0, 5.0),
    "login_timeout": (1.0, 3.0),
    "protocol_error": (1.0, 3.0),
    None: (1.0, 3.0),  # the gateway closed the connection
}
CONNECT_RETRY_MIN_S, CONNECT_RETRY_MAX_S = 0.5, 5.0
# Young collections once this many more objects are alive than at the last one (the gateway:
# every 10,000, aquafleet/process_gc.py). Once its devices are made a simulator process makes no
# cyclic garbage (measured, 15,000 devices, a storm: 0 objects collected in the run's 80 s):
# reference counting frees all of it, and each collection only visits the live connections'
# objects, ~25 a reconnect, 210 ms of CPU in a 15,000-device storm (14 us a reconnect, 9% of
# the simulator's CPU there). So collect only after a million: two rounds of a process's
# connections (its first logins and a storm, ~750,000 objects for 15,000 devices) stay under
# it; a cycle made by a bug waits for at most that many objects, then goes.
SIM_GEN0_THRESHOLD = 1_000_000
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_CONNECT_PENDING = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY})
_CONNECTED = frozenset({0, errno.EISCONN})

RUN, DRAIN, CLOSE = "run", "drain", "close"

Emit = Callable[[dict[str, Any]], None]


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (each connection is a descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class Pacer:
    """Spaces connection starts `1/rate` apart (rate 0: no pacing); each wait is bounded."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = self._next if self._next > now else now
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass
class FleetTimes:
    """Wall-clock moments of the run (unix seconds), None when they did not happen."""

    started_at: float = 0.0
    all_logged_in_at: float | None = None
    storm_at: float | None = None
    storm_recovered_at: float | None = None
    storm_failed: int | None = None
    # Devices back after the storm, per STORM_BUCKET_S since this worker's storm_at.
    storm_back_buckets: dict[int, int] = field(default_factory=dict)
    run_ended_at: float | None = None
    drain_ended_at: float | None = None
    # The drain ended because no device could connect (DRAIN_UNREACHABLE_S), not by its timeout.
    drain_unreachable: bool = False
    ended_at: float | None = None
    interrupted_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Fleet:
    """N virtual purifiers of one process and everything that drives them."""

    def __init__(
        self,
        options: SimOptions,
        *,
        boot: int,
        start_wall: float,
        first_index: int = 0,
        workers: int = 1,
        emit: Emit | None = None,
        worker_index: int = 0,
        freeze_heap: bool = False,
    ) -> None:
        """`freeze_heap`: the process runs nothing but this fleet (the CLI, a worker): once the
        devices are made, keep them and everything else alive then out of the garbage
        collector's sight (aquafleet/process_gc.py)."""
        self.options = options
        self.freeze_heap = freeze_heap
        self.boot = boot
        self.start_wall = start_wall
        self.first_index = first_index
        self.worker_index = worker_index
        self.emit = emit
        seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(seed * 1009 + worker_index)
        self.stats = WorkerStats()
        self.times = FleetTimes()
        self.devices: list[VirtualPurifier] = []
        self.links: list[PurifierLink | None] = []
        self.connect_at: list[float] = []
        self.skip_pacing: list[bool] = []
        self.drained_flags = bytearray()
        self.undrained = 0
        self.storm_gen = 0
        self.storm_back = 0
        self.phase = RUN
        self.pacer = Pacer(options.connect_rate / max(1, workers))
        self.sources = options.source_addresses()
        self._interrupt = asyncio.Event()
        self._drained = asyncio.Event()
        self.link_seen_at = 0.0  # loop time: a device last had a link (or the run's start)
        self._tasks: set[asyncio.Task[None]] = set()
        self._device_tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ hooks from devices

    def logged_in(self, device: VirtualPurifier, first: bool) -> None:
        if first:
            self.stats.first_logins += 1
            if self.stats.first_logins == len(self.devices):
                self.times.all_logged_in_at = time.time()
        if self.storm_gen and device.login_gen < self.storm_gen:
            device.login_gen = self.storm_gen
            self.storm_back += 1
            now = time.time()
            buckets = self.times.storm_back_buckets
            bucket = int((now - (self.times.storm_at or now)) / STORM_BUCKET_S)
            buckets[bucket] = buckets.get(bucket, 0) + 1
            if self.storm_back == len(self.devices):
                self.times.storm_recovered_at = now

    def drained(self, device: VirtualPurifier) -> None:
        index = device.index - self.first_index
        if self.phase == DRAIN and not self.drained_flags[index]:
            self.drained_flags[index] = 1
            self.undrained -= 1
            if self.undrained <= 0:
                self._drained.set()

    # ------------------------------------------------------------------ control

    def interrupt(self) -> None:
        """Ctrl-C: end the run now (a short drain, then close) and report what was done."""
        if self.times.interrupted_at is None:
            self.times.interrupted_at = time.time()
        self._interrupt.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ the run

    async def run(self) -> dict[str, Any]:
        """Run every phase; returns the worker's final result (stats, times, per-device totals)."""
        loop = asyncio.get_running_loop()
        options = self.options
        early = self.start_wall - time.time()
        if early > 0:
            await asyncio.sleep(min(early, 5.0))  # workers start together
        mono_start = time.monotonic() - (time.time() - self.start_wall)
        self.times.started_at = self.start_wall
        self._make_devices(mono_start)
        if self.freeze_heap:
            freeze_startup_heap(SIM_GEN0_THRESHOLD)
        run_end = loop.time() + (mono_start + options.duration_s - time.monotonic())
        self.link_seen_at = loop.time()
        try:
            for device in self.devices:
                self._device_tasks.append(
                    self._spawn(self._lifecycle(device), f"device-{device.index}")
                )
            if not options.max_rate:
                self._spawn(self._report_wheel(), "report-wheel")
            self._spawn(self._housekeeping(), "housekeeping")
            if self.emit is not None:
                self._spawn(self._reporter(), "reporter")
            if options.storm_at_s is not None:
                storm_at = loop.time() + (mono_start + options.storm_at_s - time.monotonic())
                if await self._sleep_until(storm_at):
                    self._storm()
            await self._sleep_until(run_end)
            self.times.run_ended_at = time.time()
            if self.storm_gen:
                self.times.storm_failed = len(self.devices) - self.storm_back
            await self._drain()
        finally:
            await self._close()
        return self._result()

    async def _sleep_until(self, deadline: float) -> bool:
        """Sleep until `deadline` (loop time); False when interrupted first."""
        delay = deadline - asyncio.get_running_loop().time()
        if self._interrupt.is_set():
            return False
        if delay <= 0:
            return True
        try:
            async with asyncio.timeout(delay):
                await self._interrupt.wait()
        except TimeoutError:
            return True
        return False

    def _make_devices(self, now: float) -> None:
        options = self.options
        for offset, creds in enumerate(options.devices):
            index = self.first_index + offset
            if options.is_mqtt(index):
                self.devices.append(self._mqtt_purifier(creds.did, creds.key, now, index))
                continue
            self.devices.append(
                VirtualPurifier(
                    creds.did,
                    creds.key,
                    boot=self.boot,
                    now=now,
                    stats=self.stats,
                    rng=self.rng,
                    window=options.window,
                    max_rate=options.max_rate,
                    draw_gap_s=options.draw_gap_s,
                    use_watermark=options.use_watermark,
                    fw=options.fw,
                    index=self.first_index + offset,
                    hooks=self,
                )
            )
        count = len(self.devices)
        self.links = [None] * count
        self.connect_at = [0.0] * count
        self.skip_pacing = [False] * count
        self.drained_flags = bytearray(count)

    # ------------------------------------------------------------------ connections

    async def _lifecycle(self, device: VirtualPurifier) -> None:
        """Connect, live until the link goes, wait a little, reconnect; until the fleet closes."""
        slot = device.index - self.first_index
        delay = 0.0
        failures = 0
        while self.phase != CLOSE:
            if delay > 0:
                await asyncio.sleep(delay)
            if self.phase == CLOSE or (self.phase == DRAIN and device.drained):
                return
            if self.skip_pacing[slot]:
                self.skip_pacing[slot] = False
            else:
                await self.pacer.wait()
            link = await self._connect(device, slot)
            if link is None:
                failures += 1
                delay = min(CONNECT_RETRY_MAX_S, CONNECT_RETRY_MIN_S * 2 ** min(failures, 8))
                delay *= self.rng.uniform(0.5, 1.0)
                continue
            failures = 0
            await link.closed  # bounded: drops, login watchdog, drain and close all end it
            self.links[slot] = None
            self.link_seen_at = asyncio.get_running_loop().time()
            reason = device.close_reason
            if reason in ("drained", "stop"):
                return
            low, high = RECONNECT_DELAY_S.get(reason, RECONNECT_DELAY_S[None])
            delay = self.rng.uniform(low, high)
            if reason == "storm":
                self.skip_pacing[slot] = True  # a storm reconnects at once, unpaced

    def _mqtt_purifier(self, did: str, key: bytes, now: float, index: int) -> MqttPurifier:
        options = self.options
        return MqttPurifier(
            did,
            key,
            boot=self.boot,
            now=now,
            stats=self.stats,
            rng=self.rng,
            prefix=options.mqtt_prefix,
            client_id_prefix=options.mqtt_client_id_prefix,
            window=options.window,
            max_rate=options.max_rate,
            draw_gap_s=options.draw_gap_s,
            use_watermark=options.use_watermark,
            fw=options.fw,
            index=index,
            hooks=self,
        )

    async def _connect_mqtt(self, device: MqttPurifier, slot: int) -> MqttPurifierLink | None:
        """A broker connection; its pump runs as a task of the fleet until the link closes."""
        options = self.options
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.connects_started += 1
        closed: asyncio.Future[None] = loop.create_future()
        started = time.monotonic_ns()
        device.connect(time.monotonic(), started)
        try:
            link = await connect_mqtt(
                device, options.mqtt_host, options.mqtt_port, options.connect_timeout_s, closed
            )
        except (mqtt_wire.ConnectRefused, mqtt_wire.MqttWireError, OSError, TimeoutError) as exc:
            stats.connect_failures += 1
            stats.connect_fail_codes[_mqtt_error_name(exc)] += 1
            return None
        stats.connects_ok += 1
        stats.connect_latency.record((time.monotonic_ns() - started) // 1000)
        self.links[slot] = link  # type: ignore[call-overload]
        self.connect_at[slot] = self.link_seen_at = loop.time()
        self._spawn(link.run(), f"mqtt-link-{device.index}")
        if self.phase == CLOSE:
            link.abort("stop")
        return link

    async def _connect(self, device: VirtualPurifier, slot: int) -> PurifierLink | None:
        if isinstance(device, MqttPurifier):
            return await self._connect_mqtt(device, slot)  # type: ignore[return-value]
        options = self.options
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.connects_started += 1
        closed: asyncio.Future[None] = loop.create_future()
        started = time.monotonic_ns()
        sock: socket.socket | None = None
        try:
            if self.sources:
                sock = _bound_socket(self.sources[device.index % len(self.sources)])
                address = (options.connect_host, options.port)
                if not _connected_at_once(sock, address):
                    async with asyncio.timeout(options.connect_timeout_s):
                        await _connect_completed(loop, sock)
                # Connected: wrapping it in a transport waits for nothing but our own loop.
                _, link = await loop.create_connection(
                    lambda: PurifierLink(device, closed), sock=sock
                )
            else:
                async with asyncio.timeout(options.connect_timeout_s):
                    _, link = await loop.create_connection(
                        lambda: PurifierLink(device, closed), options.connect_host, options.port
                    )
        except (OSError, TimeoutError) as exc:
            if sock is not None:
                sock.close()
            stats.connect_failures += 1
            stats.connect_fail_codes[_error_name(exc)] += 1
            return None
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        stats.connects_ok += 1
        stats.connect_latency.record((time.monotonic_ns() - started) // 1000)
        self.links[slot] = link
        self.connect_at[slot] = self.link_seen_at = loop.time()
        if self.phase == CLOSE:
            link.abort("stop")
        return link

    # ------------------------------------------------------------------ timers

    async def _report_wheel(self) -> None:
        """Interval mode: each device reports once per interval, from its slot of the wheel."""
        loop = asyncio.get_running_loop()
        interval = self.options.interval_s
        slots = max(1, round(interval / TICK_S))
        tick = interval / slots
        wheel: list[list[int]] = [[] for _ in range(slots)]
        for slot in range(len(self.devices)):
            wheel[self.rng.randrange(slots)].append(slot)
        devices, links = self.devices, self.links
        position = 0
        next_at = loop.time()
        while self.phase == RUN:
            next_at += tick
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                next_at = loop.time()  # far behind (CPU starved): skip rather than burst
            else:
                await asyncio.sleep(0)
            if self.phase != RUN:
                return
            now, now_ns, wall = time.monotonic(), time.monotonic_ns(), int(time.time())
            for slot in wheel[position]:
                link = links[slot]
                if link is not None:
                    out = devices[slot].produce(now, now_ns, wall)
                    if out:
                        link.write(out)
            position = (position + 1) % slots

    async def _housekeeping(self) -> None:
        """Once a second: planned drops and reboots, heartbeats, the login watchdog."""
        loop = asyncio.get_running_loop()
        options = self.options
        drop_p = options.drop_rate / 60.0 * HOUSEKEEPING_S
        reboot_p = options.reboot_rate / 60.0 * HOUSEKEEPING_S
        rng, devices, links, stats = self.rng, self.devices, self.links, self.stats
        while self.phase != CLOSE:
            await asyncio.sleep(HOUSEKEEPING_S)
            now, loop_now = time.monotonic(), loop.time()
            chaos = self.phase == RUN and not self._interrupt.is_set()
            for slot, device in enumerate(devices):
                link = links[slot]
                if chaos and reboot_p and rng.random() < reboot_p:
                    device.reboot()
                    if link is not None:
                        link.abort("reboot")
                    continue
                if link is None or link.transport is None:  # gone; its task reconnects soon
                    continue
                if chaos and drop_p and rng.random() < drop_p:
                    stats.drops_planned += 1
                    link.abort("drop")
                elif device.online:
                    out = device.ping_due(now)
                    if out:
                        link.write(out)
                elif loop_now - self.connect_at[slot] > options.login_timeout_s:
                    stats.login_timeouts += 1
                    link.abort("login_timeout")

    async def _reporter(self) -> None:
        assert self.emit is not None
        while True:
            await asyncio.sleep(SNAPSHOT_S)
            self.emit(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        return {"at": time.time(), "phase": self.phase, "counters": self.stats.counters()}

    # ------------------------------------------------------------------ storm, drain, close

    def _storm(self) -> None:
        """Every device loses its link at once and reconnects within STORM_JITTER_S."""
        self.times.storm_at = time.time()
        self.storm_gen += 1
        self.storm_back = 0
        for link in self.links:
            if link is not None:
                self.stats.storm_drops += 1
                link.abort("storm")

    async def _drain(self) -> None:
        self.phase = DRAIN
        now, now_ns, wall = time.monotonic(), time.monotonic_ns(), int(time.time())
        undrained = 0
        for slot, device in enumerate(self.devices):
            device.finish(now)
            link = self.links[slot]
            if link is not None:
                link.write(device.final_bytes(now, now_ns, wall))
            if device.drained:
                self.drained_flags[slot] = 1
                if link is not None:
                    link.close("drained")
            else:
                undrained += 1
        self.undrained = undrained
        if undrained == 0:
            self._drained.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.drain_timeout_s
        shortened = False
        while not self._drained.is_set():
            if self._interrupt.is_set() and not shortened:
                # Ctrl-C: a short grace for acks already on their way, not the full timeout.
                deadline = min(deadline, loop.time() + INTERRUPT_DRAIN_S)
                shortened = True
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if self._unreachable(loop.time()):
                self.times.drain_unreachable = True
                break
            await asyncio.sleep(min(DRAIN_POLL_S, remaining))
        self.times.drain_ended_at = time.time()

    def _unreachable(self, now: float) -> bool:
        """No device has been connected, nor has any connect succeeded, for
        DRAIN_UNREACHABLE_S: what is left to drain cannot be delivered."""
        if now - self.link_seen_at < DRAIN_UNREACHABLE_S:
            return False
        return all(link is None for link in self.links)

    async def _close(self) -> None:
        self.phase = CLOSE
        waiting = []
        for link in self.links:
            if link is not None:
                link.close("stop")
                waiting.append(link.closed)
        if waiting:
            await asyncio.wait(waiting, timeout=CLOSE_GRACE_S)
        for link in self.links:
            if link is not None and not link.closed.done():
                link.abort("stop")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
        # Aborted transports report connection_lost on the next loop iterations.
        for _ in range(3):
            await asyncio.sleep(0)
        self.times.ended_at = time.time()

    # ------------------------------------------------------------------ result

    def _result(self) -> dict[str, Any]:
        results = [
            (d.did, d.poured_ml, d.acked_total_ml, d.drained, len(d.unacked), d.ever_logged_in)
            for d in self.devices
        ]
        times = self.times
        return {
            "worker": self.worker_index,
            "devices": len(self.devices),
            "stats": self.stats.to_dict(),
            "times": {
                "started_at": times.started_at,
                "all_logged_in_at": times.all_logged_in_at,
                "storm_at": times.storm_at,
                "storm_recovered_at": times.storm_recovered_at,
                "storm_failed": times.storm_failed,
                "storm_back_buckets": {str(k): v for k, v in times.storm_back_buckets.items()},
                "run_ended_at": times.run_ended_at,
                "drain_ended_at": times.drain_ended_at,
                "drain_unreachable": times.drain_unreachable,
                "ended_at": times.ended_at,
                "interrupted_at": times.interrupted_at,
            },
            "results": results,
        }


def _bound_socket(source: str) -> socket.socket:
    """A non-blocking TCP socket bound to `source`; the port is picked at connect time, per
    destination (IP_BIND_ADDRESS_NO_PORT), so many sources share no ephemeral-port pool.
    Non-blocking from its creation (SOCK_NONBLOCK): no separate system call to make it so."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _connected_at_once(sock: socket.socket, address: tuple[str, int]) -> bool:
    """Start a non-blocking connect; True when it is already complete.

    On loopback the kernel runs the whole handshake inside connect() whenever the listener's
    queue has room, yet a non-blocking connect() still answers EINPROGRESS. Asking again
    says so: a second connect() returns 0 once the handshake is done (EISCONN after that),
    EALREADY while it is not, or the connect's error. Knowing it at once spares the event loop
    a writer registration, a wake-up and its removal per connection (a quarter of the
    simulator's CPU per connect, measured), and asking with connect() takes one system call
    where poll() and SO_ERROR took two and a poll object. Otherwise (a full queue, a remote
    gateway) False: the caller waits for it with _connect_completed, under its timeout.
    A refused connect raises its OSError here, as loop.sock_connect would.
    """
    err = sock.connect_ex(address)
    if err == 0:
        return True
    if err not in _CONNECT_PENDING:
        raise OSError(err, os.strerror(err))
    err = sock.connect_ex(address)
    if err in _CONNECTED:
        return True
    if err in _CONNECT_PENDING:
        return False
    raise OSError(err, os.strerror(err))


async def _connect_completed(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until the connect started by _connected_at_once ends (what loop.sock_connect
    does, without calling connect() again, which fails with EISCONN if it completed meanwhile)."""
    done: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def writable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_writer(fd, writable)
    try:
        await done
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _mqtt_error_name(exc: BaseException) -> str:
    if isinstance(exc, mqtt_wire.ConnectRefused):
        return f"mqtt_{exc.rc}"
    if isinstance(exc, mqtt_wire.MqttWireError):
        return "mqtt_malformed"
    return _error_name(exc)


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__
