"""Technicians (工程师): field-service accounts under a vendor, an agent or a dealer.

A technician has a login (an `AdminAccount` of role TECHNICIAN: it sees only the tickets
dispatched to it), skills (the ticket types it may work), a working state and a position. The
position is kept in the database and, for dispatch by distance, in one Redis GEO set per vendor
(`{prefix}:geo:tech:{vid}`, member = technician id); a lost set is rebuilt from the database.

A node's default technicians (`is_default`) are its team for dispatch by hierarchy: a ticket
goes to the team of the device's dealer, else its agent, else the vendor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

import redis.asyncio as aioredis
from tortoise import fields
from tortoise.functions import Count
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.accounts import AdminAccount, create_account
from aquafleet.models.agents import Agent, path_ids
from aquafleet.models.errors import InvalidInput, NotFound
from aquafleet.models.redis_boundary import redis_errors
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.tickets import OPEN_STATES, Ticket, TicketType
from aquafleet.models.vendors import Vendor

MAX_CANDIDATES = 50  # technicians GEOSEARCH returns per dispatch (nearest first)
E6 = 1_000_000


class WorkState(IntEnum):
    """工作状态: only an available technician is chosen by automatic dispatch."""

    OFF = 0  # 休息
    AVAILABLE = 1  # 空闲
    BUSY = 2  # 忙碌


class Technician(Model):
    id = fields.IntField(primary_key=True)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="technicians", on_delete=fields.RESTRICT
    )
    agent: fields.ForeignKeyNullableRelation[Agent] = fields.ForeignKeyField(
        "models.Agent", related_name="technicians", null=True, on_delete=fields.RESTRICT
    )
    account: fields.OneToOneRelation[AdminAccount] = fields.OneToOneField(
        "models.AdminAccount", related_name="technician", on_delete=fields.RESTRICT
    )
    name = fields.CharField(max_length=64)
    mobile = fields.CharField(max_length=20, default="")
    skills: list[int] = fields.JSONField(default=list)  # ticket types (TicketType values)
    work_state = fields.IntEnumField(WorkState, default=WorkState.OFF)
    is_default = fields.BooleanField(default=False)  # in its node's dispatch team
    lat_e6 = fields.IntField(null=True)
    lng_e6 = fields.IntField(null=True)
    position_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    vendor_id: str
    agent_id: int | None
    account_id: int

    class Meta:
        table = "technician"
        indexes = (("vendor_id", "agent_id"),)


# ----------------------------------------------------------------------------- pure rules


def check_skills(skills: Iterable[int]) -> list[int]:
    values = sorted(set(skills))
    for value in values:
        if value not in {int(t) for t in TicketType}:
            raise InvalidInput(f"skill {value} is not a ticket type (1..6)")
    return values


def check_position(lat_e6: int, lng_e6: int) -> tuple[int, int]:
    """Millionths of a degree; Redis GEO takes latitudes within +-85.05112878."""
    if not -85_051_128 <= lat_e6 <= 85_051_128 or not -180 * E6 <= lng_e6 <= 180 * E6:
        raise InvalidInput("position out of range (lat +-85.05, lng +-180 degrees)")
    return lat_e6, lng_e6


def hierarchy_levels(agent_path: str | None) -> list[int | None]:
    """Nodes whose team may take a ticket of this node, nearest first: dealer, agent, vendor."""
    return [*reversed(path_ids(agent_path or "")), None]


def geo_key(prefix: str, vendor_code: str) -> str:
    return f"{prefix}:geo:tech:{vendor_code}"


# ----------------------------------------------------------------------------- scoping


def visible_technicians(principal: Principal) -> QuerySet[Technician]:
    """The platform all; a vendor its own; an agent or dealer those of its subtree; a
    technician itself."""
    if principal.role is Role.PLATFORM:
        return Technician.all()
    if principal.vendor_code is None:
        return Technician.filter(id__in=[])
    qs = Technician.filter(vendor_id=principal.vendor_code)
    if principal.role is Role.VENDOR:
        return qs
    if principal.role is Role.TECHNICIAN and principal.subject.isdigit():
        return qs.filter(account_id=int(principal.subject))
    if principal.role in (Role.AGENT, Role.DEALER) and principal.agent_path:
        return qs.filter(agent__path__startswith=principal.agent_path)
    return Technician.filter(id__in=[])


async def find_technician(principal: Principal, technician_id: int) -> Technician:
    found = await visible_technicians(principal).filter(id=technician_id).first()
    if found is None:
        raise NotFound(f"technician {technician_id} not found")
    return found


async def technician_of(principal: Principal) -> Technician:
    """The technician a TECHNICIAN principal logs in as."""
    found = None
    if principal.role is Role.TECHNICIAN and principal.subject.isdigit():
        found = await Technician.get_or_none(account_id=int(principal.subject))
    if found is None:
        raise NotFound("no technician for this account")
    return found


# ----------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class TechnicianRequest:
    name: str
    username: str
    password_md5: str
    mobile: str = ""
    skills: Sequence[int] = ()
    agent_id: int | None = None
    is_default: bool = False


async def create_technician(vendor_code: str, request: TechnicianRequest) -> Technician:
    """A technician of the vendor (or of one of its nodes) with its login account."""
    if not await Vendor.exists(code=vendor_code):
        raise NotFound(f"vendor {vendor_code} not found")
    if request.agent_id is not None and not await Agent.exists(
        id=request.agent_id, vendor_id=vendor_code
    ):
        raise NotFound(f"agent {request.agent_id} not found")
    skills = check_skills(request.skills)
    async with in_transaction("default"):
        account = await create_account(
            request.username,
            request.password_md5,
            Role.TECHNICIAN,
            vendor_code=vendor_code,
            agent_id=request.agent_id,
        )
        technician = await Technician.create(
            vendor_id=vendor_code,
            agent_id=request.agent_id,
            account=account,
            name=request.name,
            mobile=request.mobile,
            skills=skills,
            is_default=request.is_default,
        )
    return technician


async def update_technician(technician: Technician, changes: dict[str, Any]) -> Technician:
    allowed = {"name", "mobile", "skills", "work_state", "is_default"}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"not a technician setting: {sorted(unknown)[0]}")
    if "skills" in changes:
        changes["skills"] = check_skills(changes["skills"])
    if "work_state" in changes:
        changes["work_state"] = WorkState(changes["work_state"])
    if changes:
        technician.update_from_dict(changes)
        await technician.save(update_fields=[*changes, "updated_at"])
    return technician


async def set_position(
    redis: aioredis.Redis,
    prefix: str,
    technician: Technician,
    lat_e6: int,
    lng_e6: int,
    *,
    now: dt.datetime | None = None,
) -> Technician:
    """Where the technician is now: the database row, then the vendor's GEO set."""
    check_position(lat_e6, lng_e6)
    technician.lat_e6, technician.lng_e6 = lat_e6, lng_e6
    technician.position_at = now or dt.datetime.now(dt.UTC)
    await technician.save(update_fields=["lat_e6", "lng_e6", "position_at", "updated_at"])
    with redis_errors("technician position"):
        await redis.geoadd(
            geo_key(prefix, technician.vendor_id),
            [lng_e6 / E6, lat_e6 / E6, str(technician.id)],
        )
    return technician


async def _rebuild_geo(redis: aioredis.Redis, key: str, vendor_code: str) -> None:
    rows = await Technician.filter(
        vendor_id=vendor_code, lat_e6__isnull=False, lng_e6__isnull=False
    ).values_list("id", "lat_e6", "lng_e6")
    values: list[Any] = []
    for technician_id, lat, lng in rows:
        values += [int(lng) / E6, int(lat) / E6, str(technician_id)]
    if values:
        await redis.geoadd(key, values)


async def nearest_ids(
    redis: aioredis.Redis,
    prefix: str,
    vendor_code: str,
    lat_e6: int,
    lng_e6: int,
    radius_km: int,
) -> list[tuple[int, int]]:
    """(technician id, distance in metres) within `radius_km`, nearest first (GEOSEARCH)."""
    key = geo_key(prefix, vendor_code)
    with redis_errors("technician search"):
        if not await redis.exists(key):  # Redis lost it (or never had it): the rows have it
            await _rebuild_geo(redis, key, vendor_code)
        found = await redis.geosearch(
            key,
            longitude=lng_e6 / E6,
            latitude=lat_e6 / E6,
            radius=radius_km,
            unit="km",
            sort="ASC",
            count=MAX_CANDIDATES,
            withdist=True,
        )
    result = []
    for item in found:
        member, distance = item[0], item[1]
        name = member.decode() if isinstance(member, bytes) else str(member)
        result.append((int(name), round(float(cast(float, distance)) * 1000)))
    return result


async def open_ticket_counts(technician_ids: Sequence[int]) -> dict[int, int]:
    """Open tickets each technician holds (a team's load), in one query."""
    if not technician_ids:
        return {}
    rows = (
        await Ticket.filter(technician_id__in=list(technician_ids), state__in=list(OPEN_STATES))
        .annotate(n=Count("id"))
        .group_by("technician_id")
        .values_list("technician_id", "n")
    )
    return {int(tid): int(n) for tid, n in rows}
