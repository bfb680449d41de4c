"""The node's typed application keys, in a leaf module: the composition root (`aquafleet.node`)
fills them; `gateway/` reads its own; `api/` reads the platform's resources (settings, Redis,
metrics) and reaches the device side only through `DEVICE_GATEWAY` (gateway/facade.py).

Nothing here is imported at run time but aiohttp, so any module may import these keys.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from aquafleet.gateway.command_sender import CommandSender
    from aquafleet.gateway.commands import CommandService
    from aquafleet.gateway.config import Settings
    from aquafleet.gateway.facade import DeviceGateway
    from aquafleet.gateway.fleet_history import FleetSampler
    from aquafleet.gateway.hub import Hub
    from aquafleet.gateway.keys import Keyspace
    from aquafleet.gateway.metrics import Metrics
    from aquafleet.gateway.mqtt import MqttBridge
    from aquafleet.gateway.order_timers import OrderTimerLoop
    from aquafleet.gateway.redis_io import Scripts
    from aquafleet.gateway.rental import RentalScheduler
    from aquafleet.gateway.service_state import ServiceStore
    from aquafleet.gateway.startup import Listeners
    from aquafleet.gateway.tasks import TaskGroup

# The platform's resources: every layer may read these.
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis")
KEYSPACE: web.AppKey[Keyspace] = web.AppKey("keyspace")
TASKS: web.AppKey[TaskGroup] = web.AppKey("tasks")

# What the REST API may ask of the device side (presence, status, commands, service changes).
DEVICE_GATEWAY: web.AppKey[DeviceGateway] = web.AppKey("device_gateway")

# The gateway's own parts: for the gateway, the composition root and tests, not for api/.
SCRIPTS: web.AppKey[Scripts] = web.AppKey("scripts")
HUB: web.AppKey[Hub] = web.AppKey("hub")
TCP_SERVER: web.AppKey[asyncio.Server] = web.AppKey("tcp_server")
# The sockets `serve` bound before starting (absent: the gateway binds its own, e.g. in tests).
LISTENERS: web.AppKey[Listeners] = web.AppKey("listeners")
SERVICE_STORE: web.AppKey[ServiceStore] = web.AppKey("service_store")
COMMANDS: web.AppKey[CommandService] = web.AppKey("commands")
COMMAND_SENDER: web.AppKey[CommandSender] = web.AppKey("command_sender")
RENTAL_SCHEDULER: web.AppKey[RentalScheduler] = web.AppKey("rental_scheduler")
ORDER_TIMERS: web.AppKey[OrderTimerLoop] = web.AppKey("order_timers")
FLEET_SAMPLER: web.AppKey[FleetSampler] = web.AppKey("fleet_sampler")
MQTT_BRIDGE: web.AppKey[MqttBridge] = web.AppKey("mqtt_bridge")
