"""Notifications (消息推送): an outbox written in the same transaction as the event causing it.

Each row is one message to one recipient over one channel, unique per (event, recipient,
channel): the event's key names the occasion (`ticket:<tid>:dispatched:<n>`), so an event
recorded twice, or two nodes racing, enqueue it once. The sender (gateway/notify.py) claims due
rows, delivers at least once with retries and backoff, and records every attempt.

Channels: WeChat official-account template messages (to a member's openid, with the vendor's
mp app and the template id the vendor configured for the kind) and SMS (to a mobile, with the
vendor's SMS template code for the kind). A channel is used when the recipient has the address
and the vendor configured a template for the kind. Members may turn off the kinds that are not
essential (`NotificationOptOut`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model

if TYPE_CHECKING:
    from aquafleet.models.tickets import Ticket

MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 5
BACKOFF_MAX_S = 3600


class NotificationKind(StrEnum):
    ORDER_PAID = "order_paid"
    ORDER_DELIVERED = "order_delivered"
    TICKET_DISPATCHED = "ticket_dispatched"  # to the technician
    TECHNICIAN_ON_WAY = "technician_on_way"  # to the member
    TICKET_DONE = "ticket_done"  # to the member
    RENTAL_REMINDER = "rental_reminder"
    RENTAL_EXPIRED = "rental_expired"
    BALANCE_LOW = "balance_low"
    BALANCE_EXHAUSTED = "balance_exhausted"
    FILTER_LOW = "filter_low"


K = NotificationKind
# Kinds a member cannot turn off: money taken, work assigned, water stopped.
ESSENTIAL = frozenset({K.ORDER_PAID, K.TICKET_DISPATCHED, K.RENTAL_EXPIRED, K.BALANCE_EXHAUSTED})


class Channel(StrEnum):
    WECHAT = "wechat"
    SMS = "sms"


class RecipientType(StrEnum):
    MEMBER = "member"
    TECHNICIAN = "technician"


class NotificationState(IntEnum):
    PENDING = 0
    SENT = 1
    DEAD = 2  # gave up after MAX_ATTEMPTS, or refused for good (no template, bad number)


class Notification(Model):
    id = fields.BigIntField(primary_key=True)
    event_key = fields.CharField(max_length=128)
    kind = fields.CharEnumField(NotificationKind, max_length=32)
    vendor_id = fields.CharField(max_length=4)
    recipient_type = fields.CharEnumField(RecipientType, max_length=16)
    recipient_id = fields.CharField(max_length=32)
    channel = fields.CharEnumField(Channel, max_length=16)
    address = fields.CharField(max_length=64)  # openid or mobile
    payload = fields.TextField()  # JSON: the template's values
    state = fields.IntEnumField(NotificationState, default=NotificationState.PENDING)
    attempts = fields.IntField(default=0)
    next_at = fields.DatetimeField()
    claimed_by = fields.CharField(max_length=64, null=True)
    claimed_until = fields.DatetimeField(null=True)
    sent_at = fields.DatetimeField(null=True)
    last_error = fields.CharField(max_length=255, default="")
    created_at = fields.DatetimeField()

    class Meta:
        table = "notification"
        unique_together = (("event_key", "recipient_type", "recipient_id", "channel"),)
        indexes = (("state", "next_at"),)


class NotificationAttempt(Model):
    """One delivery attempt: when, whether the provider took it, its answer or error."""

    id = fields.BigIntField(primary_key=True)
    notification: fields.ForeignKeyRelation[Notification] = fields.ForeignKeyField(
        "models.Notification", related_name="attempt_rows", on_delete=fields.RESTRICT
    )
    number = fields.IntField()
    node = fields.CharField(max_length=64)
    ok = fields.BooleanField()
    detail = fields.CharField(max_length=255, default="")
    at = fields.DatetimeField()

    notification_id: int

    class Meta:
        table = "notification_attempt"


class NotificationOptOut(Model):
    """A kind a member turned off."""

    id = fields.IntField(primary_key=True)
    member_uid = fields.CharField(max_length=20)
    kind = fields.CharEnumField(NotificationKind, max_length=32)

    class Meta:
        table = "notification_optout"
        unique_together = (("member_uid", "kind"),)


# ----------------------------------------------------------------------------- pure rules


def backoff_s(attempts: int) -> int:
    """Seconds before the next try after `attempts` failed ones: 5, 10, 20 ... at most 1 h."""
    return int(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1)))


def may_send(kind: NotificationKind, opted_out: frozenset[str]) -> bool:
    return kind in ESSENTIAL or kind.value not in opted_out


@dataclass(frozen=True, slots=True)
class Recipient:
    type: RecipientType
    id: str
    openid: str | None = None
    mobile: str | None = None


def channels_for(
    recipient: Recipient, kind: NotificationKind, templates: Mapping[str, Mapping[str, str]]
) -> list[tuple[Channel, str]]:
    """(channel, address) the message goes by: WeChat when the recipient has an openid and
    the vendor a template for the kind, SMS likewise with a mobile."""
    found = []
    if recipient.openid and kind.value in templates.get("wechat_templates", {}):
        found.append((Channel.WECHAT, recipient.openid))
    if recipient.mobile and kind.value in templates.get("sms_templates", {}):
        found.append((Channel.SMS, recipient.mobile))
    return found


# ----------------------------------------------------------------------------- enqueue


async def member_recipient(conn: BaseDBAsyncClient, uid: str | None) -> Recipient | None:
    from aquafleet.models.members import Member

    if uid is None:
        return None
    member = await Member.filter(uid=uid).using_db(conn).first()
    if member is None:
        return None
    return Recipient(RecipientType.MEMBER, uid, member.wx_openid, member.mobile)


async def enqueue(
    conn: BaseDBAsyncClient,
    *,
    event_key: str,
    kind: NotificationKind,
    vendor_code: str,
    recipients: Sequence[Recipient | None],
    data: Mapping[str, Any],
    now: dt.datetime | None = None,
) -> int:
    """Write the messages of one event in the caller's transaction; returns rows written."""
    from aquafleet.models.vendors import Vendor

    now = now or dt.datetime.now(dt.UTC)
    vendor = await Vendor.filter(code=vendor_code).using_db(conn).first()
    config = (vendor.config if vendor is not None else None) or {}
    payload = json.dumps(dict(data), ensure_ascii=False, separators=(",", ":"), default=str)
    rows: list[Notification] = []
    for recipient in recipients:
        if recipient is None:
            continue
        if recipient.type is RecipientType.MEMBER and kind not in ESSENTIAL:
            off = await NotificationOptOut.filter(member_uid=recipient.id, kind=kind).using_db(conn)
            if off:
                continue
        for channel, address in channels_for(recipient, kind, config):
            rows.append(
                Notification(
                    event_key=event_key[:128],
                    kind=kind,
                    vendor_id=vendor_code,
                    recipient_type=recipient.type,
                    recipient_id=recipient.id,
                    channel=channel,
                    address=address,
                    payload=payload,
                    next_at=now,
                    created_at=now,
                )
            )
    if rows:  # INSERT .. ON CONFLICT DO NOTHING: an event enqueued twice sends once
        await Notification.bulk_create(rows, ignore_conflicts=True, using_db=conn)
    return len(rows)


async def enqueue_ticket_opened(conn: BaseDBAsyncClient, ticket: Ticket) -> int:
    """A maintenance ticket opening is the member's "filter low" message."""
    from aquafleet.models.tickets import TicketType

    if ticket.type is not TicketType.MAINTENANCE:
        return 0
    return await enqueue(
        conn,
        event_key=f"ticket:{ticket.ticket_id}:opened",
        kind=NotificationKind.FILTER_LOW,
        vendor_code=ticket.vendor_id,
        recipients=[await member_recipient(conn, ticket.member_uid)],
        data={
            "ticket_id": ticket.ticket_id,
            "device_id": ticket.device_id,
            "detail": ticket.detail,
        },
    )


async def set_opt_outs(member_uid: str, off: Sequence[NotificationKind]) -> list[str]:
    """Replace the kinds a member turned off (essential kinds cannot be)."""
    from tortoise.transactions import in_transaction

    from aquafleet.models.errors import InvalidInput

    essential = [k for k in off if k in ESSENTIAL]
    if essential:
        raise InvalidInput(f"{essential[0].value} is essential: it cannot be turned off")
    async with in_transaction("default"):
        await NotificationOptOut.filter(member_uid=member_uid).delete()
        for kind in sorted(set(off)):
            await NotificationOptOut.create(member_uid=member_uid, kind=kind)
    return sorted(k.value for k in set(off))


async def opt_outs(member_uid: str) -> list[str]:
    rows = await NotificationOptOut.filter(member_uid=member_uid).values_list("kind", flat=True)
    return sorted(str(k) for k in rows)


TITLES = {
    K.ORDER_PAID: "订单已支付",
    K.ORDER_DELIVERED: "订单已发货",
    K.TICKET_DISPATCHED: "您有新的工单",
    K.TECHNICIAN_ON_WAY: "工程师已出发",
    K.TICKET_DONE: "工单已完成",
    K.RENTAL_REMINDER: "租期即将到期",
    K.RENTAL_EXPIRED: "租期已到期",
    K.BALANCE_LOW: "水量余额不足",
    K.BALANCE_EXHAUSTED: "水量已用完",
    K.FILTER_LOW: "滤芯即将到期",
}


def template_values(kind: NotificationKind, payload: Mapping[str, Any]) -> dict[str, str]:
    """The values a template gets (WeChat's first/keyword1../remark; SMS the same names):
    the title, the subject's id (ticket, order or device), the device, and the detail."""
    subject = payload.get("ticket_id") or payload.get("order_id") or payload.get("device_id")
    return {
        "first": TITLES[kind],
        "keyword1": str(subject or ""),
        "keyword2": str(payload.get("device_id") or ""),
        "keyword3": str(payload.get("detail") or "")[:100],
        "remark": str(payload.get("remark") or ""),
    }


async def enqueue_device_event(
    conn: BaseDBAsyncClient,
    did: str,
    kind: NotificationKind,
    event_key: str,
    data: Mapping[str, Any],
) -> int:
    """A device's event to its owner (rental reminder and expiry, balance low and exhausted)."""
    from aquafleet.models.devices import Device

    device = await Device.filter(did=did).using_db(conn).first()
    if device is None or device.owner_id is None:
        return 0
    return await enqueue(
        conn, event_key=event_key, kind=kind, vendor_code=device.vendor_id,
        recipients=[await member_recipient(conn, device.owner_id)],
        data={"device_id": did, **data},
    )  # fmt: skip


# Meter events (models/usage.py ServiceEvent kinds) -> what the owner hears.
SERVICE_EVENT_KINDS = {"low_balance": K.BALANCE_LOW, "quota_lock": K.BALANCE_EXHAUSTED}


async def enqueue_service_events(conn: BaseDBAsyncClient, events: Sequence[Any]) -> int:
    """Low balance and quota exhausted, once per event (its did, kind and version)."""
    written = 0
    for event in events:
        kind = SERVICE_EVENT_KINDS.get(event.kind)
        if kind is not None:
            key = f"svc:{event.did}:{event.kind}:v{event.version}"
            detail = f"{event.remaining_ml} ml left"
            written += await enqueue_device_event(conn, event.did, kind, key, {"detail": detail})
    return written


async def enqueue_order_event(conn: BaseDBAsyncClient, order: Any, event: str) -> int:
    """An order paid or delivered, to its member."""
    kinds = {"pay": K.ORDER_PAID, "deliver": K.ORDER_DELIVERED}
    kind = kinds.get(event)
    if kind is None:
        return 0
    return await enqueue(
        conn, event_key=f"order:{order.oid}:{event}", kind=kind, vendor_code=order.vendor_id,
        recipients=[await member_recipient(conn, order.member_id)],
        data={"order_id": order.oid, "detail": f"{order.total_fen} fen"},
    )  # fmt: skip
