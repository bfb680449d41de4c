"""What one simulation run is asked to do, and the device list it runs."""

from __future__ import annotations

import csv
import ipaddress
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

DEVICES_PER_WORKER = 8000
# An MQTT purifier costs about twice the CPU of a TCP one per record (a tag on every message,
# MQTT's framing, the broker's PUBACKs): half as many per worker.
MQTT_DEVICES_PER_WORKER = 4000
TRANSPORTS = ("tcp", "mqtt", "mixed")
MAX_WINDOW = 1024  # far below the 65536 seq space: a seq never names two records in flight
MAX_DEVICES = 1_000_000


class SimError(Exception):
    """A simulation cannot run as asked (bad options, unreadable device list)."""


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    did: str
    key: bytes


@dataclass(frozen=True)
class SimOptions:
    """Every knob of a run; defaults are the CLI's."""

    devices: list[DeviceCredentials] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 7700
    duration_s: float = 60.0
    interval_s: float = 10.0
    max_rate: bool = False
    window: int = 1
    draw_gap_s: float = 30.0  # mean idle time between two draws of one purifier
    drop_rate: float = 0.0  # per device per minute
    reboot_rate: float = 0.0  # per device per minute
    storm_at_s: float | None = None
    workers: int | None = None  # None: ceil(devices / 8000)
    source_ips: int = 4
    connect_rate: float = 5000.0  # connection starts per second overall, 0 unlimited
    drain_timeout_s: float = 30.0
    check: str = "db"  # "db" or "none"
    check_timeout_s: float = 60.0
    database_url: str | None = None
    use_watermark: bool = False  # forget records at or below AUTH_OK's watermark at login
    fw: str = "sim-1.0"
    seed: int | None = None
    connect_timeout_s: float = 10.0
    login_timeout_s: float = 20.0
    transport: str = "tcp"  # tcp, mqtt (ESP8266 through a broker) or mixed
    mqtt_fraction: float = 0.5  # mixed: the share of purifiers on MQTT
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_prefix: str = "aq"  # the gateway's mqtt_topic_prefix
    mqtt_client_id_prefix: str = ""  # client id = this + did (the broker ACL wants the did)

    def is_mqtt(self, index: int) -> bool:
        """Whether purifier `index` speaks MQTT (mixed fleets interleave them evenly)."""
        if self.transport == "tcp":
            return False
        if self.transport == "mqtt":
            return True
        f = self.mqtt_fraction
        return int((index + 1) * f) > int(index * f)

    @property
    def mqtt_device_count(self) -> int:
        return sum(self.is_mqtt(i) for i in range(self.device_count))

    @property
    def device_count(self) -> int:
        return len(self.devices)

    @property
    def resolved_workers(self) -> int:
        if self.workers is not None:
            return max(1, min(self.workers, max(1, self.device_count)))
        mqtt = self.mqtt_device_count
        tcp = self.device_count - mqtt
        return max(1, math.ceil(tcp / DEVICES_PER_WORKER + mqtt / MQTT_DEVICES_PER_WORKER))

    @property
    def connect_host(self) -> str:
        """The address to dial: "localhost" is pinned to IPv4 so source addresses fit it."""
        return "127.0.0.1" if self.host == "localhost" else self.host

    def source_addresses(self) -> list[str]:
        """Local addresses to spread connections over (only towards a loopback host)."""
        if self.source_ips <= 1 or not is_loopback_v4(self.host):
            return []
        return [f"127.0.0.{i}" for i in range(1, self.source_ips + 1)]

    def validate(self) -> None:
        problems = []
        if not self.devices:
            problems.append("no devices to simulate")
        if len(self.devices) > MAX_DEVICES:
            problems.append(f"at most {MAX_DEVICES} devices")
        if not 0 < self.port < 65536:
            problems.append("--tcp-port must be 1..65535")
        if self.duration_s <= 0:
            problems.append("--duration must be positive")
        if not self.max_rate and not 0.1 <= self.interval_s <= 86400:
            problems.append("--interval must be 0.1..86400 s")
        if not 1 <= self.window <= MAX_WINDOW:
            problems.append(f"--window must be 1..{MAX_WINDOW}")
        if self.draw_gap_s <= 0:
            problems.append("--draw-gap must be positive")
        for name, rate in (("--drop-rate", self.drop_rate), ("--reboot-rate", self.reboot_rate)):
            if not 0 <= rate <= 60:
                problems.append(f"{name} must be 0..60 per device per minute")
        if self.storm_at_s is not None and not 0 < self.storm_at_s < self.duration_s:
            problems.append("--storm-at must be inside the run (0 < T < --duration)")
        if self.workers is not None and not 1 <= self.workers <= 64:
            problems.append("--workers must be 1..64")
        if not 1 <= self.source_ips <= 254:
            problems.append("--source-ips must be 1..254")
        if self.connect_rate < 0:
            problems.append("--connect-rate must be >= 0")
        if not 0 < self.connect_timeout_s <= 300:
            problems.append("--connect-timeout must be 0..300 s")
        if self.drain_timeout_s < 0 or self.check_timeout_s < 0:
            problems.append("timeouts must be >= 0")
        if self.check not in ("db", "none"):
            problems.append("--check must be db or none")
        if self.transport not in TRANSPORTS:
            problems.append("--transport must be tcp, mqtt or mixed")
        if self.transport == "mixed" and not 0 < self.mqtt_fraction < 1:
            problems.append("--mqtt-fraction must be between 0 and 1 (exclusive)")
        if not 0 < self.mqtt_port < 65536:
            problems.append("--mqtt-port must be 1..65535")
        if not self.mqtt_prefix or any(c in self.mqtt_prefix for c in "+#"):
            problems.append("--mqtt-prefix must be a topic prefix without wildcards")
        if problems:
            raise SimError("; ".join(problems))

    def for_worker(self, devices: list[DeviceCredentials]) -> SimOptions:
        return replace(self, devices=devices)

    def describe(self) -> dict[str, Any]:
        """The options as plain values for the report (no keys)."""
        shown = asdict(self)
        shown.pop("devices")
        shown["devices"] = self.device_count
        shown["workers"] = self.resolved_workers
        if self.database_url:
            shown["database_url"] = self.database_url.split("@")[-1]
        return shown


def is_loopback_v4(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


def load_devices(path: Path, count: int) -> list[DeviceCredentials]:
    """The first `count` rows of a `did,key` CSV (key: 64 hex digits)."""
    if count < 1:
        raise SimError("--devices must be at least 1")
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise SimError(f"cannot read {path}: {exc.strerror or exc}") from None
    devices: list[DeviceCredentials] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["did", "key"]:
            raise SimError(f"{path}: the first line must be the header did,key")
        for line_number, row in enumerate(reader, start=2):
            if len(devices) >= count:
                break
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < 2:
                raise SimError(f"{path}:{line_number}: expected did,key")
            did, key_hex = row[0].strip(), row[1].strip()
            try:
                key = bytes.fromhex(key_hex)
            except ValueError:
                raise SimError(f"{path}:{line_number}: key is not hexadecimal") from None
            if len(key) != 32 or not did:
                raise SimError(f"{path}:{line_number}: expected a did and a 64-hex-digit key")
            devices.append(DeviceCredentials(did, key))
    if len(devices) < count:
        raise SimError(f"{path} holds {len(devices)} devices, fewer than the {count} asked for")
    return devices
