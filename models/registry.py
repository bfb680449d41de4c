"""Device registry services: vendors and device batches (the database side)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from aquafleet.models.devices import Device, DeviceState, DeviceType
from aquafleet.models.errors import Conflict, InvalidInput, NotFound
from aquafleet.models.ids import MAX_DEVICE_SERIAL, check_vendor_code, device_id
from aquafleet.models.vendors import Vendor, VendorState

MAX_BATCH = 100_000

KeyDeriver = Callable[[str, int], bytes]


@dataclass(frozen=True, slots=True)
class IssuedDevice:
    """A registered device and its key, returned once for the factory."""

    did: str
    key: bytes
    key_version: int


async def create_vendor(code: str, name: str) -> Vendor:
    check_vendor_code(code)
    if not name.strip():
        raise InvalidInput("vendor name must not be empty")
    try:
        return await Vendor.create(code=code, name=name.strip())
    except IntegrityError:
        raise Conflict(f"vendor {code} already exists") from None


async def register_devices(
    vendor_code: str,
    count: int,
    derive_key: KeyDeriver,
    *,
    device_type: DeviceType = DeviceType.UNKNOWN,
    model: str = "",
    attributes: Mapping[str, Any] | None = None,
) -> list[IssuedDevice]:
    """Create `count` devices with fresh serials (never reused) and issue their keys.

    `attributes`: further Device columns every device of the batch gets (brand, versions,
    manufacture time, agent node: the API's AB-02), checked by the caller."""
    if not 1 <= count <= MAX_BATCH:
        raise InvalidInput(f"count must be 1..{MAX_BATCH}")
    if len(model) > 32:
        raise InvalidInput("model must be at most 32 characters")
    async with in_transaction("default"):
        vendor = await Vendor.filter(code=vendor_code).select_for_update().first()
        if vendor is None:
            raise NotFound(f"vendor {vendor_code} does not exist")
        if vendor.state in (VendorState.DISABLED, VendorState.DEREGISTERED):
            raise Conflict(f"vendor {vendor_code} is {vendor.state.name.lower()}")
        first = vendor.next_device_serial
        if first + count - 1 > MAX_DEVICE_SERIAL:
            raise Conflict(f"vendor {vendor_code} has no serials left for {count} devices")
        vendor.next_device_serial = first + count
        await vendor.save(update_fields=["next_device_serial"])
        devices = [
            Device(
                did=device_id(vendor_code, serial),
                vendor_id=vendor_code,
                type=device_type,
                model=model,
                key_version=1,
                state=DeviceState.INACTIVE,
                **(attributes or {}),
            )
            for serial in range(first, first + count)
        ]
        await Device.bulk_create(devices, batch_size=1000)
    return [IssuedDevice(d.did, derive_key(d.did, 1), 1) for d in devices]


async def set_device_state(did: str, state: DeviceState) -> Device:
    device = await Device.get_or_none(did=did)
    if device is None:
        raise NotFound(f"device {did} does not exist")
    device.state = state
    await device.save(update_fields=["state", "updated_at"])
    return device
