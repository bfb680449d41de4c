"""Filter life: remaining hours and percent per filter stage, and maintenance tickets per cycle.

A product's filter spec (seed AC-02 `specification.filters`) names each stage by `order` and says
how its life is measured (`timer_mode`): 1 power-on hours against `lifetime`, 2 working hours
against `worklife`, 0 both, the timer nearer its end wins. Devices report, per stage,
`[index, work_h, power_on_h, reset_count]` (protocol key 14); `index` is the spec's `order`.
A stage's cycle is its `reset_count`: replacing the filter (EVENT filter_replaced, or the
reset_filter command) makes the device bump it, which starts a new cycle and a new life.

Specs are stored per vendor and device model (`FilterSpec`), with an optional whole-spec
override per device (`DeviceFilterSpec`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import structlog
from tortoise import fields
from tortoise.exceptions import BaseORMException
from tortoise.models import Model

from aquafleet.models.devices import Device
from aquafleet.models.errors import DomainError, InvalidInput, NotFound
from aquafleet.models.ids import check_vendor_code
from aquafleet.models.service import checked_text, known_device, record_change, whole
from aquafleet.models.tickets import (
    AutomaticTicket,
    TicketType,
    maintenance_key,
    open_automatic_ticket,
)
from aquafleet.models.usage import SnapshotRow
from aquafleet.models.vending import CommandRouter, DeviceOffline
from aquafleet.models.vendors import Vendor
from aquafleet.protocol import Command, CommandOp

log = structlog.get_logger(__name__)

MAX_STAGES = 16  # the protocol carries at most 16 filters
MAX_LIFE_H = 1_000_000  # ~114 years: anything above is a typo
MAX_NAME = 64
DEFAULT_THRESHOLD_PCT = 10


class TimerMode(IntEnum):
    """The seed's `timer_mode`: 0 双计时, 1 以上电时间为准, 2 以工作时间为准."""

    BOTH = 0
    POWER_ON = 1
    WORK = 2


class Timer(IntEnum):
    """Which timer decided a stage's remaining life."""

    POWER_ON = 1
    WORK = 2


@dataclass(frozen=True, slots=True)
class FilterStage:
    """One stage of a filter spec, with the seed's field names in hours."""

    order: int
    name: str
    timer_mode: TimerMode
    lifetime: int  # power-on life, hours
    worklife: int  # working life, hours

    def as_json(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "name": self.name,
            "timer_mode": int(self.timer_mode),
            "lifetime": self.lifetime,
            "worklife": self.worklife,
        }


@dataclass(frozen=True, slots=True)
class StageLife:
    """The life left in one stage. Percent is floored: it never shows more life than is left."""

    order: int
    name: str
    timer: Timer
    life_h: int
    used_h: int
    remaining_h: int
    remaining_pct: int
    reset_count: int
    below_threshold: bool


# ----------------------------------------------------------------------------- pure rules


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} must be an integer {low}..{high}")
    return value


def parse_filter_spec(raw: Any) -> tuple[FilterStage, ...]:
    """The seed's `specification.filters` list, checked; InvalidInput names the problem."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_STAGES:
        raise InvalidInput(f"filters must be a list of 1..{MAX_STAGES} stages")
    stages: list[FilterStage] = []
    for position, item in enumerate(raw):
        where = f"filters[{position}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object")
        unknown = set(item) - {"order", "name", "timer_mode", "lifetime", "worklife"}
        if unknown:
            raise InvalidInput(f"{where}: unknown field {sorted(unknown)[0]!r}")
        order = _int_in(item.get("order"), 0, 255, f"{where}.order")
        name = item.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise InvalidInput(f"{where}.name must be text of at most {MAX_NAME} characters")
        mode = TimerMode(_int_in(item.get("timer_mode"), 0, 2, f"{where}.timer_mode"))
        lifetime = _int_in(item.get("lifetime", 0), 0, MAX_LIFE_H, f"{where}.lifetime")
        worklife = _int_in(item.get("worklife", 0), 0, MAX_LIFE_H, f"{where}.worklife")
        if mode in (TimerMode.BOTH, TimerMode.POWER_ON) and lifetime == 0:
            raise InvalidInput(f"{where}.lifetime must be > 0 for timer_mode {int(mode)}")
        if mode in (TimerMode.BOTH, TimerMode.WORK) and worklife == 0:
            raise InvalidInput(f"{where}.worklife must be > 0 for timer_mode {int(mode)}")
        stages.append(FilterStage(order, name, mode, lifetime, worklife))
    orders = [s.order for s in stages]
    if len(set(orders)) != len(orders):
        raise InvalidInput("filters: each stage needs its own order")
    return tuple(stages)


def check_threshold(threshold_pct: int) -> int:
    return _int_in(threshold_pct, 0, 100, "threshold_pct")


def stage_life(
    stage: FilterStage, work_h: int, power_on_h: int, reset_count: int, threshold_pct: int
) -> StageLife:
    """Remaining life of one stage from its two timers (integers only).

    remaining_h = max(0, life - used); remaining_pct = floor(remaining_h * 100 / life);
    below the threshold when remaining_h * 100 < threshold_pct * life (the exact fraction,
    so 10% of life left is not below a 10% threshold, 9.99% is). With both timers the one
    with the smaller fraction of life left wins; a tie goes to the power-on timer.
    """
    power = (max(0, stage.lifetime - power_on_h), stage.lifetime, power_on_h, Timer.POWER_ON)
    work = (max(0, stage.worklife - work_h), stage.worklife, work_h, Timer.WORK)
    if stage.timer_mode is TimerMode.POWER_ON:
        chosen = power
    elif stage.timer_mode is TimerMode.WORK:
        chosen = work
    else:  # remaining/life compared without division: a/b < c/d  <=>  a*d < c*b
        chosen = work if work[0] * power[1] < power[0] * work[1] else power
    remaining, life, used, timer = chosen
    return StageLife(
        order=stage.order,
        name=stage.name,
        timer=timer,
        life_h=life,
        used_h=used,
        remaining_h=remaining,
        remaining_pct=remaining * 100 // life,
        reset_count=reset_count,
        below_threshold=remaining * 100 < threshold_pct * life,
    )


def filter_life(
    readings: Iterable[Sequence[int]], stages: Sequence[FilterStage], threshold_pct: int
) -> list[StageLife]:
    """Life of every stage the device reports; readings of stages the spec lacks are ignored.

    `readings` are telemetry key 14 rows `[index, work_h, power_on_h, reset_count]`.
    """
    by_order = {s.order: s for s in stages}
    lives = []
    for index, work_h, power_on_h, reset_count in readings:
        stage = by_order.get(index)
        if stage is not None:
            lives.append(stage_life(stage, work_h, power_on_h, reset_count, threshold_pct))
    return lives


def maintenance_detail(life: StageLife) -> str:
    timer = "power-on" if life.timer is Timer.POWER_ON else "working"
    name = f" {life.name}" if life.name else ""
    return (
        f"filter stage {life.order}{name}: {life.remaining_pct}% life left "
        f"({life.remaining_h} of {life.life_h} {timer} hours), cycle {life.reset_count}"
    )


# ----------------------------------------------------------------------------- storage


class FilterSpec(Model):
    """The filter stages of one device model of a vendor (`model` as on the device)."""

    id = fields.IntField(primary_key=True)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="filter_specs", on_delete=fields.RESTRICT
    )
    model = fields.CharField(max_length=32)
    stages: list[dict[str, Any]] = fields.JSONField()
    updated_at = fields.DatetimeField(auto_now=True)

    vendor_id: str

    class Meta:
        table = "filter_spec"
        unique_together = (("vendor", "model"),)


class DeviceFilterSpec(Model):
    """A device's own filter stages, replacing its model's spec (e.g. a refitted unit)."""

    did = fields.CharField(primary_key=True, max_length=16)
    stages: list[dict[str, Any]] = fields.JSONField()
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "device_filter_spec"


async def set_model_filter_spec(vendor_code: str, model: str, raw: Any) -> tuple[FilterStage, ...]:
    """Store (or replace) the filter spec of a vendor's device model."""
    check_vendor_code(vendor_code)
    if len(model) > 32:
        raise InvalidInput("model must be at most 32 characters")
    stages = parse_filter_spec(raw)
    if not await Vendor.exists(code=vendor_code):
        raise NotFound(f"vendor {vendor_code} does not exist")
    await FilterSpec.update_or_create(
        defaults={"stages": [s.as_json() for s in stages]}, vendor_id=vendor_code, model=model
    )
    return stages


async def set_device_filter_spec(did: str, raw: Any | None) -> tuple[FilterStage, ...] | None:
    """Give a device its own filter spec; None removes it (the model's spec applies again)."""
    if not await Device.exists(did=did):
        raise NotFound(f"device {did} does not exist")
    if raw is None:
        await DeviceFilterSpec.filter(did=did).delete()
        return None
    stages = parse_filter_spec(raw)
    await DeviceFilterSpec.update_or_create(
        defaults={"stages": [s.as_json() for s in stages]}, did=did
    )
    return stages


@dataclass(frozen=True, slots=True)
class DeviceFilters:
    """What the maintenance check needs of one device: its vendor, spec and stored snapshot."""

    vendor_code: str
    stages: tuple[FilterStage, ...]
    snapshot_at: tuple[int, int] | None  # (boot, rec) of the device's stored snapshot


_SPECS_SQL = (
    "SELECT d.did AS did, d.vendor_id AS vendor, "
    "CAST(COALESCE(o.stages, s.stages) AS TEXT) AS stages, ds.boot AS boot, ds.rec AS rec "
    "FROM device d "
    "LEFT JOIN device_filter_spec o ON o.did = d.did "
    "LEFT JOIN filter_spec s ON s.vendor_id = d.vendor_id AND s.model = d.model "
    "LEFT JOIN device_snapshot ds ON ds.did = d.did "
    "WHERE (o.did IS NOT NULL OR s.id IS NOT NULL) AND d.did {dids}"
)
_SPECS_CHUNK = 500
_PARSED_CAP = 4096


class SpecCache(dict[str, tuple[FilterStage, ...]]):
    """Parsed specs by their stored JSON text (few distinct specs, many devices)."""

    def parse(self, text: str) -> tuple[FilterStage, ...]:
        stages = self.get(text)
        if stages is None:
            if len(self) >= _PARSED_CAP:
                self.clear()
            stages = self[text] = parse_filter_spec(json.loads(text))
        return stages


async def filters_of_devices(
    dids: Sequence[str], cache: SpecCache | None = None
) -> dict[str, DeviceFilters]:
    """Specs of the devices that have one: one query per 500 devices, whatever their number."""
    from aquafleet.models.db import connection, dialect

    cache = cache if cache is not None else SpecCache()
    conn = connection()
    found: dict[str, DeviceFilters] = {}
    for start in range(0, len(dids), _SPECS_CHUNK):
        chunk = list(dids[start : start + _SPECS_CHUNK])
        params: list[Any]
        if dialect() == "postgres":
            sql, params = _SPECS_SQL.format(dids="= ANY($1::varchar[])"), [chunk]
        else:
            sql, params = _SPECS_SQL.format(dids=f"IN ({', '.join('?' * len(chunk))})"), chunk
        for row in await conn.execute_query_dict(sql, params):
            boot, rec = row["boot"], row["rec"]
            found[row["did"]] = DeviceFilters(
                vendor_code=row["vendor"],
                stages=cache.parse(row["stages"]),
                snapshot_at=None if boot is None else (int(boot), int(rec)),
            )
    return found


def is_due(lives: Iterable[StageLife]) -> bool:
    """A filter is due when any stage is below the threshold or has no life left (pure)."""
    return any(life.below_threshold or life.remaining_h == 0 for life in lives)


async def filters_due(dids: Sequence[str], threshold_pct: int) -> set[str]:
    """The devices of `dids` with a filter due by their latest reported timers and their spec
    (devices without a spec or a report are not due); one query per 500 devices each."""
    from aquafleet.models.usage import DeviceSnapshot

    check_threshold(threshold_pct)
    specs = await filters_of_devices(dids)
    due: set[str] = set()
    known = [did for did in dids if did in specs]
    for start in range(0, len(known), _SPECS_CHUNK):
        chunk = known[start : start + _SPECS_CHUNK]
        rows = await DeviceSnapshot.filter(did__in=chunk).values_list("did", "filters")
        for did, readings in rows:
            if readings and is_due(filter_life(readings, specs[did].stages, threshold_pct)):
                due.add(str(did))
    return due


# ----------------------------------------------------------------------------- replacing a filter


async def reset_filter(
    router: CommandRouter,
    did: str,
    stage: int,
    *,
    actor: str,
    reason: str = "",
    now: dt.datetime | None = None,
) -> int:
    """Tell the device a filter stage was replaced (reset_filter command); returns the cid.

    The device resets that stage's hours and bumps its reset_count, which its next TELEMETRY
    reports: that starts the stage's next cycle. The command is recorded in the device's
    service history (models/service.py); an offline device cannot be told: DeviceOffline, and
    nothing is recorded.
    """
    stage = whole("stage", stage, 0, 255)
    actor = checked_text("actor", actor, 64)
    await known_device(did)
    now = now or dt.datetime.now(dt.UTC)
    cid = int(await router.next_cid())
    command = Command(
        cid=cid, op=CommandOp.RESET_FILTER, exp=int(now.timestamp()) + 300, args={1: stage}
    )
    if not await router.deliver(did, command):
        raise DeviceOffline(f"device {did} is offline: reset its filter when it is back")
    await record_change(
        did=did, op="reset_filter", actor=actor, reason=f"stage {stage}: {reason}"[:255],
        request_id=f"cid:{cid}", created_at=now,
    )  # fmt: skip
    return cid


# ----------------------------------------------------------------------------- the ledger hook

# (did, boot, rec, filters) of the newest telemetry of a device in one ledger batch.
Reading = tuple[str, int, int, list[list[int]] | None]


def is_worn(stage: FilterStage, work_h: int, power_on_h: int, threshold_pct: int) -> bool:
    """stage_life(...).below_threshold without building it (the hot check, per stage).

    remaining * 100 < threshold * life  <=>  used * 100 > (100 - threshold) * life, for a
    threshold above 0; with both timers, the nearer one is below iff either is.
    """
    if threshold_pct <= 0:
        return False
    keep = 100 - threshold_pct
    mode = stage.timer_mode
    if mode is not TimerMode.WORK and power_on_h * 100 > keep * stage.lifetime:
        return True
    return mode is not TimerMode.POWER_ON and work_h * 100 > keep * stage.worklife


def maintenance_requests(
    readings: Iterable[Reading], specs: Mapping[str, DeviceFilters], threshold_pct: int
) -> list[AutomaticTicket]:
    """The maintenance tickets due for these readings (pure; the caller drops known keys).

    A reading counts only if it is the device's stored snapshot: a late, older report
    (say, from before a filter was replaced) must not open a ticket for a finished cycle.
    """
    due: list[AutomaticTicket] = []
    orders: dict[int, dict[int, FilterStage]] = {}  # per distinct spec, by id
    for did, boot, rec, rows in readings:
        spec = specs.get(did)
        if not rows or spec is None or spec.snapshot_at != (boot, rec):
            continue
        by_order = orders.get(id(spec.stages))
        if by_order is None:
            by_order = orders[id(spec.stages)] = {s.order: s for s in spec.stages}
        for index, work_h, power_on_h, reset_count in rows:
            stage = by_order.get(index)
            if stage is None or not is_worn(stage, work_h, power_on_h, threshold_pct):
                continue
            life = stage_life(stage, work_h, power_on_h, reset_count, threshold_pct)
            due.append(
                AutomaticTicket(
                    dedup_key=maintenance_key(did, life.order, life.reset_count),
                    type=TicketType.MAINTENANCE,
                    vendor_code=spec.vendor_code,
                    did=did,
                    detail=maintenance_detail(life),
                )
            )
    return due


class MaintenanceWatch:
    """Opens maintenance tickets from the snapshots a ledger batch just committed.

    Per batch: one query for the specs (per 500 devices with filter readings), one for the
    ticket keys not known to exist yet, and one short transaction per new ticket, at most
    `max_new_per_batch` (the rest are opened from those devices' next reports). Keys known to
    have a ticket are remembered (bounded) so a worn filter reported every minute costs no
    query. Errors are logged and never reach the ledger writer: the next report retries.
    """

    def __init__(
        self,
        threshold_pct: int = DEFAULT_THRESHOLD_PCT,
        *,
        max_new_per_batch: int = 100,
        known_cap: int = 100_000,
    ) -> None:
        self.threshold_pct = check_threshold(threshold_pct)
        self.max_new_per_batch = max_new_per_batch
        self.known_cap = known_cap
        self.known: dict[str, None] = {}  # dedup keys that have a ticket, oldest first
        self.specs = SpecCache()
        self.opened = 0
        self.errors = 0

    async def after_batch(self, snapshots: Iterable[SnapshotRow]) -> int:
        """Open what is due for these committed snapshots; returns the tickets opened."""
        if self.threshold_pct == 0:
            return 0
        readings: list[Reading] = [
            (s.did, s.boot, s.rec, s.filters) for s in snapshots if s.filters
        ]
        if not readings:
            return 0
        try:
            return await self._open_due(readings)
        except (DomainError, BaseORMException, ValueError) as exc:
            self.errors += 1
            log.error("maintenance_check_failed", error=f"{type(exc).__name__}: {exc}")
            return 0

    async def _open_due(self, readings: Sequence[Reading]) -> int:
        from aquafleet.models.tickets import existing_dedup_keys

        specs = await filters_of_devices([r[0] for r in readings], self.specs)
        due = [
            t
            for t in maintenance_requests(readings, specs, self.threshold_pct)
            if t.dedup_key not in self.known
        ]
        if not due:
            return 0
        existing = await existing_dedup_keys([t.dedup_key for t in due])
        self._remember(existing)
        opened = 0
        for request in [t for t in due if t.dedup_key not in existing][: self.max_new_per_batch]:
            _, created = await open_automatic_ticket(request)
            opened += created
            self._remember([request.dedup_key])
        self.opened += opened
        return opened

    def _remember(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.known[key] = None
        while len(self.known) > self.known_cap:
            self.known.pop(next(iter(self.known)))
