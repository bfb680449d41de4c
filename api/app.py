"""Routes served on the node's HTTP port: health, metrics and the /api/v1 resources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from aquafleet.api import (
    agents,
    alipay,
    auth,
    broker_auth,
    cards,
    commands,
    commissions,
    devices,
    fleet,
    members,
    orders,
    payments,
    products,
    technicians,
    tickets,
    vendors,
)
from aquafleet.api.auth import ApiAuthenticator
from aquafleet.api.console import CONSOLE_PATH, setup_console
from aquafleet.api.observability import metrics_page, request_timing
from aquafleet.api.openapi import setup_openapi
from aquafleet.api.routing import (
    AUTHENTICATOR,
    Route,
    RouteTable,
    add_routes,
    envelope_middleware,
)
from aquafleet.api.tokens import TOKENS, TokenService
from aquafleet.gateway.appkeys import DEVICE_GATEWAY, REDIS, SETTINGS
from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.tasks import cancel_and_wait
from aquafleet.models.accounts import reload_admin
from aquafleet.models.tenancy import ADMIN_ROLES, TECHNICIAN_ONLY

# Every resource module exposes `routes: RouteTable`; its routes are served and documented.
RESOURCE_MODULES = (
    auth, vendors, agents, devices, commands, members, products, orders, payments, cards,
    alipay, commissions, tickets, technicians, fleet,
)  # fmt: skip


async def healthz(request: web.Request) -> web.Response:
    """200 when the node's Redis answers; 503 otherwise (for load balancers)."""
    try:
        health = await request.app[DEVICE_GATEWAY].health()
    except GatewayError as exc:  # "not healthy"; the reason goes in the body
        return web.json_response(
            {"status": False, "code": "redis_unavailable", "message": str(exc)}, status=503
        )
    return web.json_response(
        {
            "status": True,
            "code": "ok",
            "message": "",
            "data": {
                "node": health.node_id,
                "connections": health.connections,
                "online": health.online,
                "reads_paused": health.reads_paused,
            },
        }
    )


async def front_door(request: web.Request) -> web.Response:
    """`/` leads a person to the operator console (the API's docs are at /api/v1/docs)."""
    # A plain 302 response: a raised HTTPFound would be answered as an error envelope.
    return web.Response(status=302, headers={"Location": f"{CONSOLE_PATH}/"})


def route_tables() -> list[RouteTable]:
    return [module.routes for module in RESOURCE_MODULES]


def all_routes() -> list[Route]:
    return [route for table in route_tables() for route in table.routes]


async def api_ctx(app: web.Application) -> AsyncIterator[None]:
    """The token service and the authenticator, on the node's Redis."""
    settings = app[SETTINGS]
    tokens = TokenService(
        app[REDIS],
        settings.redis_prefix,
        access_ttl_s=settings.api_access_token_ttl_s,
        refresh_ttl_s=settings.api_refresh_token_ttl_s,
        cache_s=settings.api_token_cache_s,
    )
    tokens.register_loader(ADMIN_ROLES | TECHNICIAN_ONLY, reload_admin)
    app[TOKENS] = tokens
    app[AUTHENTICATOR] = ApiAuthenticator(
        tokens, app[REDIS], settings, settings.master_secret_bytes()
    )
    for table in route_tables():
        for hook in table.startup:
            hook(app)
    revocations = asyncio.create_task(tokens.follow_revocations(), name="api-token-revocations")
    try:
        yield
    finally:
        await cancel_and_wait([revocations])


def setup_api(app: web.Application) -> None:
    app.router.add_get("/", front_door)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    broker_auth.setup_broker_auth(app)  # MQTT broker auth/ACL
    app.middlewares.append(request_timing)  # outermost: times the envelope's answers too
    app.middlewares.append(envelope_middleware)
    app.cleanup_ctx.append(api_ctx)
    app.cleanup_ctx.append(members.members_ctx)  # SMS, WeChat
    tables = route_tables()
    for table in tables:
        app.cleanup_ctx.extend(table.contexts)
    routes = [route for table in tables for route in table.routes]
    add_routes(app, routes)
    fleet.setup_feed(app)
    setup_console(app)
    setup_openapi(app, routes, [(t.tag, t.description) for t in tables])
