"""Routes served on the node's HTTP port: health, metrics and the /api/v1 resources."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from aquafleet.api import (
    agents,
    auth,
    broker_auth,
    commands,
    commissions,
    devices,
    members,
    orders,
    products,
    technicians,
    tickets,
    vendors,
)
from aquafleet.api.auth import ApiAuthenticator
from aquafleet.api.openapi import setup_openapi
from aquafleet.api.routing import (
    API_PREFIX,
    AUTHENTICATOR,
    Route,
    RouteTable,
    add_routes,
    check_metrics_access,
    envelope_middleware,
)
from aquafleet.api.tokens import TOKENS, TokenService
from aquafleet.gateway.appkeys import DEVICE_GATEWAY, METRICS, REDIS, SETTINGS
from aquafleet.gateway.errors import GatewayError
from aquafleet.models.accounts import reload_admin
from aquafleet.models.tenancy import ADMIN_ROLES, TECHNICIAN_ONLY

# Every resource module exposes `routes: RouteTable`; its routes are served and documented.
RESOURCE_MODULES = (
    auth,
    vendors,
    agents,
    devices,
    commands,
    members,
    products,
    orders,
    commissions,
    tickets,
    technicians,
)


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
    """`/` leads a person to the API's docs page (the console, once it exists)."""
    # A plain 302 response: a raised HTTPFound would be answered as an error envelope.
    return web.Response(status=302, headers={"Location": f"{API_PREFIX}/docs"})


async def metrics(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    check_metrics_access(request, token.get_secret_value() if token else None)
    return web.Response(
        text=request.app[METRICS].render(), content_type="text/plain", charset="utf-8"
    )


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
    )
    tokens.register_loader(ADMIN_ROLES | TECHNICIAN_ONLY, reload_admin)
    app[TOKENS] = tokens
    app[AUTHENTICATOR] = ApiAuthenticator(
        tokens, app[REDIS], settings, settings.master_secret_bytes()
    )
    for table in route_tables():
        for hook in table.startup:
            hook(app)
    yield


def setup_api(app: web.Application) -> None:
    app.router.add_get("/", front_door)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    broker_auth.setup_broker_auth(app)  # MQTT broker auth/ACL
    app.middlewares.append(envelope_middleware)
    app.cleanup_ctx.append(api_ctx)
    app.cleanup_ctx.append(members.members_ctx)  # SMS, WeChat
    tables = route_tables()
    for table in tables:
        app.cleanup_ctx.extend(table.contexts)
    routes = [route for table in tables for route in table.routes]
    add_routes(app, routes)
    setup_openapi(app, routes, [(t.tag, t.description) for t in tables])
