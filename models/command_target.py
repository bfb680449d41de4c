"""A command's device lookup: the device if the caller may see it, with its state and service
mode, in one statement written once per caller's scope (on the path of every command)."""

from __future__ import annotations

from typing import Any, NamedTuple

from tortoise.expressions import Subquery
from tortoise.filters import escape_like

from aquafleet.models.devices import Device, DeviceState, visible_devices
from aquafleet.models.ids import is_valid_device_id
from aquafleet.models.service import DeviceService, ServiceMode
from aquafleet.models.tenancy import Principal, Role


class CommandTarget(NamedTuple):
    """What a command needs of its device: that the caller may see it, its state, its mode."""

    did: str
    state: DeviceState
    mode: ServiceMode | None  # None: not asked for, or the device has no service row


# command_target's statements, one per (dialect, scope, with_mode): the visibility rules of
# `visible_devices` written out once, so a command's lookup builds no query. Each scope says
# how the caller's rows are named: PLATFORM every device, MEMBER those bound or shared to the
# member, VENDOR the vendor's, SUBTREE the vendor's devices under the caller's agent node.
# tests/api/test_command_target.py holds them to `visible_devices` for every role.
_SCOPE_SQL = {
    "platform": ("", ""),
    "member": ("", ' AND (d."owner_id"={p} OR d."did" IN '
               '(SELECT "device_id" FROM "device_share" WHERE "member_id"={p}))'),
    "vendor": ("", ' AND d."vendor_id"={p}'),
    "subtree": (' JOIN "agent" a ON a."id"=d."agent_id"',
                ' AND d."vendor_id"={p} AND a."path" LIKE {p} ESCAPE \'\\\''),
}  # fmt: skip
_MODE_SQL = ',(SELECT s."mode" FROM "device_service" s WHERE s."did"=d."did")'
_TARGET_SQL: dict[tuple[str, str, bool], str] = {}


def _target_scope(principal: Principal) -> tuple[str, list[str]] | None:
    """The caller's scope and its parameters (as `visible_devices`); None: sees no device."""
    if principal.role is Role.PLATFORM:
        return "platform", []
    if principal.role is Role.MEMBER:
        return "member", [principal.subject, principal.subject]
    if principal.vendor_code is None:
        return None
    if principal.role is Role.VENDOR:
        return "vendor", [principal.vendor_code]
    if principal.agent_path:
        return "subtree", [principal.vendor_code, escape_like(principal.agent_path) + "%"]
    return None


def _target_sql(dialect: str, scope: str, with_mode: bool) -> str:
    key = (dialect, scope, with_mode)
    sql = _TARGET_SQL.get(key)
    if sql is None:
        join, where = _SCOPE_SQL[scope]
        count = 1 + where.count("{p}")
        marks = [f"${n}" for n in range(1, count + 1)] if dialect == "postgres" else ["?"] * count
        where = where.replace("{p}", "{}").format(*marks[1:])
        sql = _TARGET_SQL[key] = (
            f'SELECT d."did",d."state"{_MODE_SQL if with_mode else ""} FROM "device" d{join} '
            f'WHERE d."did"={marks[0]}{where} LIMIT 1'
        )
    return sql


async def command_target(
    principal: Principal, did: str, *, with_mode: bool
) -> CommandTarget | None:
    """The device if the caller may see it (as `find_visible`), with its service mode when
    `with_mode`: one statement, written once per scope (no query built, no model), on the path
    of every command."""
    if not is_valid_device_id(did):
        return None
    scope = _target_scope(principal)
    if scope is None:
        return None
    name, params = scope
    client = Device._meta.db
    dialect = client.capabilities.dialect
    if dialect not in ("postgres", "sqlite"):  # no statement written for it: build the query
        return await _built_target(principal, did, with_mode=with_mode)
    _, rows = await client.execute_query(_target_sql(dialect, name, with_mode), [did, *params])
    return _target_of(rows[0], with_mode) if rows else None


async def _built_target(principal: Principal, did: str, *, with_mode: bool) -> CommandTarget | None:
    """`command_target` through the ORM's query builder (any database)."""
    query = visible_devices(principal).filter(did=did).limit(1)
    if with_mode:
        mode = Subquery(DeviceService.filter(did=did).values("mode"))
        rows = await query.annotate(mode=mode).values_list("did", "state", "mode")
    else:
        rows = await query.values_list("did", "state")
    return _target_of(rows[0], with_mode) if rows else None


def _target_of(row: Any, with_mode: bool) -> CommandTarget:
    """A CommandTarget from a (did, state[, mode]) row."""
    mode_value = row[2] if with_mode else None
    return CommandTarget(
        str(row[0]),
        DeviceState(row[1]),
        None if mode_value is None else ServiceMode(int(mode_value)),
    )
