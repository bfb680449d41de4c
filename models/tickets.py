"""Work orders (工单): the seed's ticket types and states, ids, and automatic tickets opened once.

Ticket id (TID), per the seed (section 1.2): `YYYYMMDD` (UTC date of creation) + the vendor's
4-character code + a 12-digit serial of that vendor, e.g. 20261129ACME000000000042 (24
characters; the front end shows it with a `T` in front, the database never stores the `T`).

Automatic tickets (maintenance when a filter runs low, dismantle when a time rental lapsed) carry
a `dedup_key` that is unique in the database: whoever opens the same key twice, one after the
other or at the same moment in two processes, gets the one ticket back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.models import Model
from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device
from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.ids import check_vendor_code
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.vendors import Vendor

TICKET_ID_LENGTH = 24
MAX_TICKET_SERIAL = 999_999_999_999
MAX_DEDUP_KEY = 128
MAX_DETAIL = 500


class TicketConflict(Conflict):
    """A conflict with a ticket (a 退租's, open or done), which the API names in `data`."""

    def __init__(self, message: str, ticket: Ticket) -> None:
        super().__init__(message)
        self.ticket = ticket

    @property
    def data(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket.ticket_id,
            "device_id": self.ticket.device_id,
            "status": int(self.ticket.state),
        }


class TicketType(IntEnum):
    """The seed's ticket types (工单类型), in the seed's order."""

    INSTALL = 1  # 安装工单: opened from an order
    EXCHANGE = 2  # 换货工单: the member asks
    RETURN = 3  # 退货工单: the member asks
    FAULT = 4  # 故障工单: the member asks or the device reports
    MAINTENANCE = 5  # 维护工单: a filter runs low (automatic)
    DISMANTLE = 6  # 拆机工单: a time rental lapsed without renewal (automatic)


class TicketState(IntEnum):
    """The seed's workflow: 创建 审核 派单 正在处理 等待回应 完成, and cancelled."""

    CREATED = 1  # 创建
    APPROVED = 2  # 审核
    DISPATCHED = 3  # 派单
    IN_PROGRESS = 4  # 正在处理
    WAITING_REPLY = 5  # 等待回应
    DONE = 6  # 完成
    CANCELLED = 7  # 取消


S = TicketState
# Every allowed move, in one place. DONE and CANCELLED are final.
TRANSITIONS: dict[TicketState, frozenset[TicketState]] = {
    S.CREATED: frozenset({S.APPROVED, S.CANCELLED}),
    S.APPROVED: frozenset({S.DISPATCHED, S.CANCELLED}),
    S.DISPATCHED: frozenset({S.DISPATCHED, S.IN_PROGRESS, S.CANCELLED}),  # re-dispatch allowed
    S.IN_PROGRESS: frozenset({S.WAITING_REPLY, S.DONE, S.CANCELLED}),
    S.WAITING_REPLY: frozenset({S.IN_PROGRESS, S.DONE, S.CANCELLED}),
    S.DONE: frozenset(),
    S.CANCELLED: frozenset(),
}
OPEN_STATES = frozenset(s for s, targets in TRANSITIONS.items() if targets)


def can_transition(current: TicketState, target: TicketState) -> bool:
    return target in TRANSITIONS[current]


class Ticket(Model):
    """One work order. `member_uid` is the member's UID (no foreign key yet)."""

    id = fields.BigIntField(primary_key=True)
    ticket_id = fields.CharField(max_length=TICKET_ID_LENGTH, unique=True)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="tickets", on_delete=fields.RESTRICT
    )
    type = fields.IntEnumField(TicketType)
    state = fields.IntEnumField(TicketState, default=TicketState.CREATED)
    device: fields.ForeignKeyNullableRelation[Device] = fields.ForeignKeyField(
        "models.Device", related_name="tickets", null=True, on_delete=fields.RESTRICT
    )
    member_uid = fields.CharField(max_length=20, null=True)
    detail = fields.CharField(max_length=MAX_DETAIL, default="")
    dedup_key = fields.CharField(max_length=MAX_DEDUP_KEY, null=True, unique=True)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()
    # Field service (models/ticket_flow.py). Columns added to existing rows need a db_default.
    priority = fields.SmallIntField(default=2, db_default=2)  # 1 urgent, 2 normal, 3 low
    appoint_at = fields.DatetimeField(null=True)  # 预约时间
    address = fields.CharField(max_length=255, default="", db_default="")
    lat_e6 = fields.IntField(null=True)  # where the work is: the device's or the member's
    lng_e6 = fields.IntField(null=True)
    agent: fields.ForeignKeyNullableRelation[Any] = fields.ForeignKeyField(
        "models.Agent", related_name="tickets", null=True, on_delete=fields.RESTRICT
    )  # the node the ticket belongs to (ticket_node: the device's, else its order's, else the
    # member's), set when it opens: agents' scope and dispatch by hierarchy
    order: fields.ForeignKeyNullableRelation[Any] = fields.ForeignKeyField(
        "models.Order", related_name="tickets", null=True, on_delete=fields.RESTRICT
    )  # install tickets of a delivery, dismantle tickets of a rental's end, exchanges
    technician: fields.ForeignKeyNullableRelation[Any] = fields.ForeignKeyField(
        "models.Technician", related_name="tickets", null=True, on_delete=fields.RESTRICT
    )
    new_device_id = fields.CharField(max_length=16, null=True)  # exchange: the replacement
    # exchange: the device its completion began handing the old device's service to, and when
    # (committed before the live store moves it, so it outlives a failed completion and the
    # store's markers: models/ticket_work.py)
    handed_over_to = fields.CharField(max_length=16, null=True)
    handed_over_at = fields.DatetimeField(null=True)
    check_result = fields.BooleanField(null=True)  # the seed's approval block
    check_at = fields.DatetimeField(null=True)
    check_usr = fields.CharField(max_length=64, null=True)
    rate_value = fields.SmallIntField(null=True)  # the seed's ratings block, 1..5
    rate_at = fields.DatetimeField(null=True)
    rate_detail = fields.CharField(max_length=MAX_DETAIL, default="", db_default="")
    dispatched_at = fields.DatetimeField(null=True)
    done_at = fields.DatetimeField(null=True)

    vendor_id: str
    device_id: str | None
    agent_id: int | None
    order_id: int | None
    technician_id: int | None

    class Meta:
        table = "ticket"
        indexes = (("vendor_id", "state"), ("device_id",), ("technician_id", "state"))


class TicketRequestKey(Model):
    """A member's Idempotency-Key for a request that opened or answered a ticket (a 退租 ask),
    with the digest of that request: the key sent again answers that ticket."""

    id = fields.BigIntField(primary_key=True)
    member_uid = fields.CharField(max_length=20)
    idempotency_key = fields.CharField(max_length=64)  # models/orders.py MAX_IDEMPOTENCY_KEY
    request_hash = fields.CharField(max_length=64)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="request_keys", on_delete=fields.RESTRICT
    )
    created_at = fields.DatetimeField()

    ticket_id: int

    class Meta:
        table = "ticket_request_key"
        unique_together = (("member_uid", "idempotency_key"),)


class TicketSerial(Model):
    """The last ticket serial issued to a vendor (serials are never reused)."""

    vendor_code = fields.CharField(primary_key=True, max_length=4)
    last_serial = fields.BigIntField()

    class Meta:
        table = "ticket_serial"


# ----------------------------------------------------------------------------- pure rules


def format_ticket_id(created_at: dt.datetime, vendor_code: str, serial: int) -> str:
    """`YYYYMMDD` (UTC) + vendor code + 12-digit serial."""
    check_vendor_code(vendor_code)
    if not 1 <= serial <= MAX_TICKET_SERIAL:
        raise InvalidInput(f"ticket serial {serial} out of range 1..{MAX_TICKET_SERIAL}")
    return f"{created_at.astimezone(dt.UTC):%Y%m%d}{vendor_code}{serial:012d}"


def maintenance_key(did: str, stage: int, cycle: int) -> str:
    """One maintenance ticket per filter stage per cycle (the stage's reset_count)."""
    return f"maintenance:{did}:{stage}:{cycle}"


def dismantle_key(did: str, rental_expires_at: int) -> str:
    """One dismantle ticket per lapsed rental (identified by its expiry, unix seconds)."""
    return f"dismantle:{did}:{rental_expires_at}"


def rental_end_key(oid: str, did: str) -> str:
    """One dismantle ticket per rental order and device the member ends its rental of (退租,
    models/rental_end.py end_rental)."""
    return f"rental-end:{oid}:{did}"


def closed_key(dedup_key: str, ticket_id: str) -> str:
    """The key a closed ticket keeps once it frees its own for the next occasion (a fault
    ticket done or cancelled, a cancelled 退租): unique still, as it names the ticket."""
    return f"{dedup_key}:closed:{ticket_id}"[:MAX_DEDUP_KEY]


def fault_key(did: str, fault: str) -> str:
    """One fault ticket per device and fault while it is open (the key is released when the
    ticket is done or cancelled, so the same fault later opens a new one)."""
    return f"fault:{did}:{fault}"


# ----------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class AutomaticTicket:
    """What an automatic opener asks for; `dedup_key` names the occasion."""

    dedup_key: str
    type: TicketType
    vendor_code: str
    did: str | None = None
    member_uid: str | None = None
    detail: str = ""
    # The order the ticket belongs to (`ticket.order_id`: a delivery's install, a 退租, an
    # exchange); a dismantle ticket with one is a 退租 (models/rental_end.py).
    order_id: int | None = None
    # The order the ticket is about without belonging to it (the dismantle of a device it
    # shipped and got back with AD-14, which is no 退租): its node is the ticket's (ticket_node).
    about_order_id: int | None = None


_NEXT_SERIAL = {
    "sqlite": (
        "INSERT INTO ticket_serial (vendor_code, last_serial) VALUES (?, 1) "
        "ON CONFLICT (vendor_code) DO UPDATE SET last_serial = ticket_serial.last_serial + 1 "
        "RETURNING last_serial"
    ),
    "postgres": (
        "INSERT INTO ticket_serial (vendor_code, last_serial) VALUES ($1, 1) "
        "ON CONFLICT (vendor_code) DO UPDATE SET last_serial = ticket_serial.last_serial + 1 "
        "RETURNING last_serial"
    ),
}


async def _next_serial(conn: BaseDBAsyncClient, vendor_code: str) -> int:
    """Take the vendor's next serial inside the caller's transaction (a row lock on PG)."""
    from aquafleet.models.db import dialect

    rows = await conn.execute_query_dict(_NEXT_SERIAL[dialect()], [vendor_code])
    return int(rows[0]["last_serial"])


def _check(request: AutomaticTicket) -> None:
    check_vendor_code(request.vendor_code)
    if not request.dedup_key or len(request.dedup_key) > MAX_DEDUP_KEY:
        raise InvalidInput(f"dedup_key must be 1..{MAX_DEDUP_KEY} characters")
    if len(request.detail) > MAX_DETAIL:
        raise InvalidInput(f"detail must be at most {MAX_DETAIL} characters")
    if request.member_uid is not None and not 1 <= len(request.member_uid) <= 20:
        raise InvalidInput("member_uid must be 1..20 characters")


async def _check_references(vendor_code: str, did: str | None) -> Device | None:
    """The vendor exists, and the device (if any) is one of its devices."""
    if did is None:
        if not await Vendor.exists(code=vendor_code):
            raise NotFound(f"vendor {vendor_code} does not exist")
        return None
    device = await Device.get_or_none(did=did)
    if device is None or device.vendor_id != vendor_code:  # another tenant's device: unknown
        raise NotFound(f"device {did} does not exist")
    return device


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What a ticket's node is chosen from (choose_node): the device's own node, whether an
    order accounts for the ticket (the one it is for, else the one that brought the device to
    its member) and that order's node, and the member's node."""

    device_node: int | None = None
    has_order: bool = False
    order_node: int | None = None
    member_node: int | None = None


def choose_node(facts: NodeFacts) -> int | None:
    """The rule of ticket_node on facts gathered: the device's node, else the order's (None
    for an order the vendor sold itself), else the member's. Migration 0031 applies it too."""
    if facts.device_node is not None:
        return facts.device_node
    if facts.has_order:
        return facts.order_node
    return facts.member_node


async def ticket_node(
    vendor_code: str, device: Device | None, member_uid: str | None, order_id: int | None
) -> int | None:
    """The agent or dealer node a ticket belongs to (agents' scope, dispatch by hierarchy):

    1. the device's own node (the node its device is allocated to, which sees and serves it);
    2. else the node of the order the ticket is for (`order_id`: a 退租's, an exchange's, an
       install's delivery, a return's), else of the order that brought the device to its member
       (models/renewals.py `delivering_order`: followed through exchanges, never a renewal nor
       a returned order), as that order recorded it: the node that sold the device, whatever
       node the member is under now; an order sold by the vendor itself has none, and neither
       has its ticket;
    3. else (no device, or no order of the member brought it: bound by hand) the member's node.
    """
    from aquafleet.models.members import Member
    from aquafleet.models.orders import Order
    from aquafleet.models.renewals import delivering_order

    if device is not None and device.agent_id is not None:
        return choose_node(NodeFacts(device_node=device.agent_id))
    order = None
    if order_id is not None:
        order = await Order.get_or_none(id=order_id, vendor_id=vendor_code)
    elif device is not None and member_uid is not None:
        order = await delivering_order(member_uid, device.did)
    if order is not None:
        return choose_node(NodeFacts(has_order=True, order_node=order.agent_id))
    member = None
    if member_uid is not None:
        member = await Member.get_or_none(uid=member_uid, vendor_id=vendor_code)
    return choose_node(NodeFacts(member_node=None if member is None else member.agent_id))


async def sold_by_node(principal: Principal, did: str) -> Device | None:
    """A device of no node that an order of the caller's subtree (an agent or dealer) brought
    to its member (models/renewals.py delivering_order): its tickets are that order's node's
    (ticket_node), so the node opens them as for a device of its own (AE-03). A device another
    node holds is that node's: None, as for any other device."""
    from aquafleet.models.agents import Agent
    from aquafleet.models.renewals import delivering_order

    if principal.role not in (Role.AGENT, Role.DEALER) or principal.vendor_code is None:
        return None
    device = await Device.get_or_none(did=did, vendor_id=principal.vendor_code)
    if device is None or device.agent_id is not None or device.owner_id is None:
        return None
    order = await delivering_order(device.owner_id, did)
    if order is None or order.agent_id is None:
        return None
    node = await Agent.get_or_none(id=order.agent_id)
    if node is None or not principal.may_see_node(principal.vendor_code, node.path):
        return None
    return device


async def _placement(request: AutomaticTicket, device: Device | None) -> dict[str, Any]:
    """Where a ticket belongs and whom it serves: its node (ticket_node), the device's place
    and owner."""
    member_uid = request.member_uid
    if device is None:
        values: dict[str, Any] = {"member_uid": member_uid}
    else:
        member_uid = member_uid or device.owner_id
        values = {
            "member_uid": member_uid, "lat_e6": device.lbs_lat_e6, "lng_e6": device.lbs_lng_e6
        }  # fmt: skip
    order_id = request.order_id if request.order_id is not None else request.about_order_id
    values["agent_id"] = await ticket_node(request.vendor_code, device, member_uid, order_id)
    return values


async def _insert(
    request: AutomaticTicket,
    dedup_key: str | None,
    now: dt.datetime,
    device: Device | None = None,
    **extra: Any,
) -> Ticket:
    """Create a ticket with the vendor's next id; IntegrityError if `dedup_key` is taken."""
    from aquafleet.models.outbox import enqueue_ticket_opened

    values = {**await _placement(request, device), **extra}
    async with in_transaction("default") as conn:
        serial = await _next_serial(conn, request.vendor_code)
        ticket = await Ticket.create(
            ticket_id=format_ticket_id(now, request.vendor_code, serial),
            vendor_id=request.vendor_code,
            type=request.type,
            state=TicketState.CREATED,
            device_id=request.did,
            detail=request.detail,
            dedup_key=dedup_key,
            order_id=request.order_id,
            created_at=now,
            updated_at=now,
            using_db=conn,
            **values,
        )
        await enqueue_ticket_opened(conn, ticket)
        return ticket


def _utc(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)


async def open_ticket(
    vendor_code: str,
    type: TicketType,
    *,
    did: str | None = None,
    member_uid: str | None = None,
    detail: str = "",
    now: dt.datetime | None = None,
    order_id: int | None = None,
    **extra: Any,
) -> Ticket:
    """Open a ticket a person asked for: every call is a new ticket (no dedup_key). `extra`
    sets further columns (priority, appoint_at, address, lat_e6, lng_e6); `order_id` the order
    it is for (an exchange: the order whose goods the device is). Its node: ticket_node."""
    request = AutomaticTicket("manual", type, vendor_code, did, member_uid, detail, order_id)
    _check(request)
    device = await _check_references(vendor_code, did)
    try:
        return await _insert(request, None, _utc(now), device, **extra)
    except IntegrityError:  # the vendor or device went away meanwhile
        raise NotFound(f"vendor {vendor_code} or device {did} does not exist") from None


async def open_automatic_ticket(
    request: AutomaticTicket, *, now: dt.datetime | None = None
) -> tuple[Ticket, bool]:
    """The ticket of `request.dedup_key`, opened if there is none yet; (ticket, created).

    Safe to run twice and to race: the unique dedup_key lets one insert win; the loser's
    transaction (and the serial it took) rolls back and it returns the winner's ticket.
    """
    _check(request)
    existing = await Ticket.get_or_none(dedup_key=request.dedup_key)
    if existing is not None:
        return existing, False
    device = await _check_references(request.vendor_code, request.did)
    try:
        return await _insert(request, request.dedup_key, _utc(now), device), True
    except IntegrityError:
        existing = await Ticket.get_or_none(dedup_key=request.dedup_key)
        if existing is None:  # not a lost race: the vendor or device went away meanwhile
            raise NotFound(
                f"vendor {request.vendor_code} or device {request.did} does not exist"
            ) from None
        return existing, False


async def existing_dedup_keys(keys: list[str]) -> set[str]:
    """Which of `keys` already have a ticket (one query per 500 keys)."""
    found: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows = await Ticket.filter(dedup_key__in=chunk).values_list("dedup_key", flat=True)
        found.update(str(key) for key in rows)
    return found


def _unix_seconds(value: int | dt.datetime) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidInput("rental_expires_at must be timezone-aware")
        return int(value.timestamp())
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("rental_expires_at must be unix seconds or an aware datetime")
    return value


async def open_dismantle_ticket(
    did: str,
    vendor_code: str,
    rental_expires_at: int | dt.datetime,
    *,
    now: dt.datetime | None = None,
) -> tuple[Ticket, bool]:
    """The dismantle ticket (拆机工单) of a rental that expired at `rental_expires_at`, once.

    A renewal followed by another lapse has a new expiry and so opens a new ticket.
    """
    expires = _unix_seconds(rental_expires_at)
    expired_on = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat().replace("+00:00", "Z")
    return await open_automatic_ticket(
        AutomaticTicket(
            dedup_key=dismantle_key(did, expires),
            type=TicketType.DISMANTLE,
            vendor_code=vendor_code,
            did=did,
            detail=f"rental expired at {expired_on} and was not renewed: collect the device",
        ),
        now=now,
    )


async def move_ticket(
    ticket_id: str, target: TicketState, *, now: dt.datetime | None = None
) -> Ticket:
    """Move a ticket along TRANSITIONS; Conflict if the move is not allowed from its state.

    The update is conditional on the state read, so two concurrent moves cannot both win.
    """
    ticket = await Ticket.get_or_none(ticket_id=ticket_id)
    if ticket is None:
        raise NotFound(f"ticket {ticket_id} does not exist")
    current = TicketState(ticket.state)
    if not can_transition(current, target):
        raise Conflict(f"ticket {ticket_id} cannot go from {current.name} to {target.name}")
    now = _utc(now)
    updated = await Ticket.filter(id=ticket.id, state=current).update(state=target, updated_at=now)
    if not updated:
        raise Conflict(f"ticket {ticket_id} changed state meanwhile; reload and retry")
    ticket.state = target
    ticket.updated_at = now
    return ticket
