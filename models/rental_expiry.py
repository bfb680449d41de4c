"""What the rental scheduler (gateway/rental.py) records around a time rental's expiry: the
reminder before it runs out, the expiry itself, and, a grace period after an expiry nobody
renewed, one dismantle ticket (docs/metering.md, "Time rental"). Each is a row of the device's
service history (models/service.py) and, for the owner, a message through the outbox.

A member ending a rental (退租) is another matter: models/rental_end.py.
"""

from __future__ import annotations

import datetime as dt

from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device
from aquafleet.models.outbox import NotificationKind, enqueue_device_event
from aquafleet.models.service import ServiceChange, taken_back, utc_text
from aquafleet.models.tickets import open_dismantle_ticket


async def record_rental_reminder(did: str, rental_expires_at: int) -> None:
    """The reminder before a rental runs out, and its message to the owner (one transaction)."""
    async with in_transaction("default") as conn:
        await ServiceChange.create(
            did=did, op="rental_reminder", rental_expires_at=rental_expires_at,
            actor="scheduler", reason="rental expires soon", created_at=dt.datetime.now(dt.UTC),
            using_db=conn,
        )  # fmt: skip
        await enqueue_device_event(
            conn, did, NotificationKind.RENTAL_REMINDER,
            f"rental:{did}:{rental_expires_at}:reminder", {"detail": utc_text(rental_expires_at)},
        )  # fmt: skip


async def record_rental_expired(did: str, rental_expires_at: int) -> None:
    """A rental ran out and the device locked: recorded, and the owner told (once)."""
    async with in_transaction("default") as conn:
        await enqueue_device_event(
            conn, did, NotificationKind.RENTAL_EXPIRED,
            f"rental:{did}:{rental_expires_at}:expired", {"detail": utc_text(rental_expires_at)},
        )  # fmt: skip


async def open_dismantle_after_grace(did: str, rental_expires_at: int) -> None:
    """The grace period after an expiry passed without renewal: one dismantle ticket, unless
    the device is back already (taken_back): nobody is sent to collect it."""
    device = await Device.get_or_none(did=did)
    if device is None or await taken_back(device):
        return
    _ticket, created = await open_dismantle_ticket(did, device.vendor_id, rental_expires_at)
    if created:
        await ServiceChange.create(
            did=did, op="dismantle_ticket", rental_expires_at=rental_expires_at,
            actor="scheduler", reason="rental not renewed within the grace period",
            created_at=dt.datetime.now(dt.UTC),
        )  # fmt: skip
