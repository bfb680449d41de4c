"""Devices (AB-01..16): registry, vendor configuration, user profile, service state, runtime
status and statistics, binding and sharing (docs/api-devices.md).

Thin: the rules live in models.devices (ownership, sharing, field groups), models.service
(service state) and models.registry (ids and keys). This module checks who may see which device
(another tenant's did answers 404, as an unknown one does), shapes the answers per role, and
tells the gateway (registry copy in Redis, kicks) when a device's login changes.

`visible_device` (reads) and `usable_device` (commands) are the one place other resource
modules ask whether a caller may touch a device.
"""

from __future__ import annotations

from aquafleet.api.devices import bindings, registry, service
from aquafleet.api.devices.access import usable_device, visible_device
from aquafleet.api.routing import RouteTable

routes = RouteTable(
    "devices",
    "Devices (设备, AB-01..16): registry and keys, vendor configuration, user profile, service "
    "state, runtime status, statistics, binding and sharing (docs/api-devices.md).",
).include(registry.routes, service.routes, bindings.routes)

__all__ = ["routes", "usable_device", "visible_device"]
