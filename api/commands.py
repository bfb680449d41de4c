"""Remote control: commands to a device, their state and outcome (issue 5).

`POST /devices/{did}/commands` answers at once with the command id and its state, or, with
`wait_ms`, once the device has answered (bounded). The command reaches the device on whichever
gateway node holds its connection (gateway/commands.py); its log lives in Redis next to the
device's other state, so any node answers `GET .../commands/{cid}`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from aquafleet.api.devices import usable_device
from aquafleet.api.errors import ConflictError, NotFoundError
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import (
    MAX_LIMIT,
    UNSET,
    PathParams,
    Query,
    RequestModel,
    ResponseModel,
    text,
)
from aquafleet.gateway.appkeys import DEVICE_GATEWAY
from aquafleet.gateway.commands import KEEP_LISTED, CommandKind, CommandRecord, CommandState
from aquafleet.gateway.service_state import ServiceState
from aquafleet.models.command_target import CommandTarget, command_target
from aquafleet.models.commands import (
    NAME_OF_OP,
    OP_ARGUMENT,
    OP_NAMES,
    check_command_allowed,
    needs_service_mode,
    wire_args,
)
from aquafleet.models.devices import check_usable_state
from aquafleet.models.errors import DomainError
from aquafleet.models.service import ServiceMode
from aquafleet.models.tenancy import ANY_ROLE, Principal, Role
from aquafleet.models.vending import MAX_DISPENSE_ML

routes = RouteTable(
    "commands",
    "Remote control (远程控制): dispense, lock, unlock, reset a filter, sync the clock, reboot, "
    "announce firmware. A command is routed to the gateway node holding the device; its state "
    "goes queued -> sent -> delivered -> succeeded | failed | rejected | timed_out | expired.",
)

WAIT_MAX_MS = 30_000
DEFAULT_TIMEOUT_S = 60
OpName = Literal[
    "dispense", "lock", "unlock", "reset_filter", "time_sync", "firmware_notice", "reboot"
]
ARGUMENT_FIELDS = ("ml", "filter", "version_code")


class DevicePath(PathParams):
    did: str = Field(pattern=r"^[A-Z0-9]{4,16}$", description="device id")


class CommandPath(DevicePath):
    cid: int = Field(ge=1, le=2**32 - 1, description="command id")


class CommandIn(RequestModel):
    """One command; `ml` for dispense, `filter` for reset_filter, `version_code` for
    firmware_notice, nothing else for the other ops."""

    op: OpName
    ml: int = Field(UNSET, ge=1, le=MAX_DISPENSE_ML, description="dispense: millilitres")
    filter: int = Field(UNSET, ge=0, le=255, description="reset_filter: the filter stage")
    version_code: int = Field(
        UNSET, ge=1, le=2**31 - 1, description="firmware_notice: the version on offer"
    )
    timeout_s: int = Field(
        DEFAULT_TIMEOUT_S, ge=5, le=600, description="deadline: the device refuses it after this"
    )
    wait_ms: int = Field(
        0, ge=0, le=WAIT_MAX_MS, description="wait this long for the outcome before answering"
    )
    reason: str = text(255, default="", description="why (kept in the service log for lock/unlock)")

    @model_validator(mode="after")
    def _fields_fit_the_op(self) -> CommandIn:
        wanted = {OP_ARGUMENT[self.op]} if self.op in OP_ARGUMENT else set()
        given = {name for name in ARGUMENT_FIELDS if name in self.model_fields_set}
        missing, extra = wanted - given, given - wanted
        if missing:
            raise ValueError(f"{self.op} needs {', '.join(sorted(missing))}")
        if extra:
            raise ValueError(f"{self.op} takes no {', '.join(sorted(extra))}")
        return self

    def arguments(self) -> dict[str, int]:
        """The op's argument fields that were given, by name."""
        return {
            name: getattr(self, name) for name in ARGUMENT_FIELDS if name in self.model_fields_set
        }


class WaitQuery(Query):
    wait_ms: int = Field(
        0, ge=0, le=WAIT_MAX_MS, description="wait this long for a final state before answering"
    )


class CommandListQuery(Query):
    """Newest first; no sorting."""

    limit: int = Field(20, ge=1, le=MAX_LIMIT, description=f"records to return (1..{MAX_LIMIT})")
    offset: int = Field(0, ge=0, le=KEEP_LISTED - 1, description="records to skip")


class CommandOut(ResponseModel):
    cid: int = Field(description="command id (unique per platform)")
    did: str
    op: str = Field(description="dispense, lock, unlock, reset_filter, time_sync, ...")
    args: dict[str, int] = Field(description="the command's arguments on the wire (key: value)")
    state: str = Field(
        description="queued, sent, delivered, succeeded, failed, rejected, timed_out, expired"
    )
    final: bool = Field(description="true once the state can no longer change")
    rc: int | None = Field(
        description="the device's RESULT code (0 ok, 1 failed, 2 rejected, 3 expired)"
    )
    out: int | None = Field(description="the device's RESULT value (dispense: ml actually poured)")
    poured_ml: int | None = Field(
        description="dispense: ml actually poured (its RESULT, or its dispense_done EVENT when "
        "that came instead: a timed_out dispense that poured)"
    )
    pour_record: str | None = Field(
        description="dispense: the usage-ledger record of its dispense_done EVENT, boot:rec"
    )
    error: str | None = Field(
        description="why it failed without a device answer (device_offline, ...)"
    )
    target_version: int | None = Field(
        description="lock/unlock: the desired-state version; succeeded when the device holds it"
    )
    deadline: str | None = Field(description="one-shot commands: the device refuses it after this")
    issuer: str
    origin_node: str = Field(description="the gateway node that took the request")
    device_node: str | None = Field(description="the gateway node it was routed to")
    created_at: str
    sent_at: str | None
    delivered_at: str | None
    done_at: str | None


# ----------------------------------------------------------------------------- helpers


def _iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def command_out(record: CommandRecord) -> CommandOut:
    op_name = NAME_OF_OP.get(record.op, str(record.op))
    one_shot = record.kind is CommandKind.ONCE
    return CommandOut(
        cid=record.cid,
        did=record.did,
        op=op_name,
        args={str(k): v for k, v in sorted(record.args.items())},
        state=record.state.value,
        final=record.final,
        rc=record.rc,
        out=record.out,
        poured_ml=record.out if op_name == "dispense" and record.state is CommandState.SUCCEEDED
        else record.poured_ml,
        pour_record=record.pour_record,
        error=record.error,
        target_version=record.target_version,
        deadline=_iso_ms(record.exp * 1000) if one_shot else None,
        issuer=record.issuer,
        origin_node=record.origin,
        device_node=record.node,
        created_at=_iso_ms(record.created_ms) or "",
        sent_at=_iso_ms(record.sent_ms),
        delivered_at=_iso_ms(record.delivered_ms),
        done_at=_iso_ms(record.done_ms),
    )  # fmt: skip


def issuer_of(principal: Principal) -> str:
    return f"{principal.role.value}:{principal.subject}"


async def _target(principal: Principal, did: str, op: str) -> CommandTarget:
    """The device if the caller may command it (as `usable_device`) and, when the op's rules
    need it, its service mode: one query."""
    with_mode = needs_service_mode(op, member=principal.role is Role.MEMBER)
    target = await command_target(principal, did, with_mode=with_mode)
    if target is None:
        raise NotFoundError(f"device {did} not found")
    try:
        check_usable_state(target.did, target.state)
    except DomainError as exc:
        raise ConflictError(exc.message, code=exc.code) from None
    return target


async def _target_and_state(
    call: Call, did: str, op: str
) -> tuple[CommandTarget, ServiceState | None]:
    """`_target`, and for a dispense the device's live state (its locks), read from Redis
    while the database answers: one wait instead of two on every dispense's path. The read
    is never cancelled half-way (it shares a Redis connection); when the device is not the
    caller's, its answer is dropped unseen."""
    if op != "dispense":
        return await _target(call.principal, did, op), None
    read = asyncio.ensure_future(call.app[DEVICE_GATEWAY].read_service(did))
    try:
        target = await _target(call.principal, did, op)
    except BaseException:
        await asyncio.wait([read])
        if not read.cancelled():
            read.exception()  # retrieved: the caller's error is the one that matters
        raise
    return target, await read


async def _issue(
    call: Call,
    did: str,
    mode: ServiceMode | None,
    body: CommandIn,
    service_state: ServiceState | None = None,
) -> CommandRecord | None:
    """Send the command; the record once final, or as it stands after body.wait_ms."""
    check_command_allowed(body.op, mode, member=call.principal.role is Role.MEMBER)
    args = wire_args(body.op, body.arguments(), now_s=int(dt.datetime.now(dt.UTC).timestamp()))
    return await call.app[DEVICE_GATEWAY].send_command(
        did, OP_NAMES[body.op], args, mode=mode, issuer=issuer_of(call.principal),
        reason=body.reason, timeout_s=body.timeout_s, wait_s=body.wait_ms / 1000,
        service_state=service_state,
    )  # fmt: skip


async def _answer(call: Call, did: str, cid: int, wait_ms: int) -> CommandOut:
    record = await call.app[DEVICE_GATEWAY].command(did, cid, wait_ms / 1000)
    if record is None:
        raise NotFoundError(f"command {cid} of device {did} not found")
    return command_out(record)


# ----------------------------------------------------------------------------- routes


@routes.post(
    "/devices/{did}/commands",
    summary="Send a command to a device",
    roles=ANY_ROLE,
    params=DevicePath,
    body=CommandIn,
    response=CommandOut,
    status=202,
    errors=(403, 409),
    description="远程控制. Answers 202 with the command's state at once, or after up to `wait_ms` "
    "when the device answers sooner. A one-shot command (dispense, reset_filter, time_sync, "
    "firmware_notice, reboot) to an offline device is `failed` at once with error "
    "`device_offline`; a dispense to a locked device is refused with 409 `device_locked`, naming "
    "the lock's reason; lock and unlock change the desired state, which an offline device gets "
    "when it returns (`queued` until then). Members command devices bound or shared to them; "
    "admins, devices in their subtree.",
)
async def send_command(call: Call) -> CommandOut:
    params: DevicePath = call.params
    body: CommandIn = call.body
    device, service_state = await _target_and_state(call, params.did, body.op)
    record = await _issue(call, device.did, device.mode, body, service_state)
    if record is None:  # its log entry expired at once: only a Redis flush does that
        raise NotFoundError(f"the command to device {device.did} was lost")
    if record.state is CommandState.FAILED and record.error == "device_offline":
        raise ConflictError(  # said at once, with the logged command
            f"device {device.did} is offline: the command was not sent",
            code="device_offline",
            data=command_out(record).model_dump(),
        )
    return command_out(record)


@routes.get(
    "/devices/{did}/commands/{cid}",
    summary="Read a command's state and outcome",
    roles=ANY_ROLE,
    params=CommandPath,
    query=WaitQuery,
    response=CommandOut,
    description="With `wait_ms`, answers as soon as the command is final, or when the wait ends.",
)
async def read_command(call: Call) -> CommandOut:
    params: CommandPath = call.params
    device = await usable_device(call.principal, params.did)
    return await _answer(call, device.did, params.cid, call.query.wait_ms)


@routes.get(
    "/devices/{did}/commands",
    summary="List a device's latest commands, newest first",
    roles=ANY_ROLE,
    params=DevicePath,
    query=CommandListQuery,
    response=CommandOut,
    many=True,
    description=f"The latest {KEEP_LISTED} commands of the device are kept listed (each for "
    "30 days).",
)
async def list_commands(call: Call) -> Page:
    params: DevicePath = call.params
    query: CommandListQuery = call.query
    device = await usable_device(call.principal, params.did)
    records, total = await call.app[DEVICE_GATEWAY].recent_commands(
        device.did, limit=query.limit, offset=query.offset
    )
    return Page([command_out(r) for r in records], total)
