"""Routes served on the node's HTTP port: health, metrics and the /api/v1 resources."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import AsyncIterator

from aiohttp import web

from api.routing import (
    AUTHENTICATOR,
    Route,
    RouteTable,
    add_routes,
    check_metrics_access,
    envelope_middleware,
)

# Every resource module exposes `routes: RouteTable`; its routes are served and documented.
RESOURCE_MODULES = ["api.auth", "api.vendors", "api.agents", "api.devices", "api.commands"]
# Resource modules that land separately are picked up once they exist.
OPTIONAL_RESOURCE_MODULES = ["api.members"]


async def healthz(request: web.Request) -> web.Response:
    """200 when the node's Redis answers; 503 otherwise (for load balancers)."""
    from gateway.node import HUB, REDIS

    app = request.app
    try:
        await app[REDIS].ping()
    except Exception as exc:  # any failure means "not healthy"; the reason goes in the body
        return web.json_response(
            {"status": False, "code": "redis_unavailable", "message": str(exc)}, status=503
        )
    hub = app[HUB]
    return web.json_response(
        {
            "status": True,
            "code": "ok",
            "message": "",
            "data": {
                "node": hub.node_id,
                "connections": len(hub.connections),
                "online": len(hub.online),
                "reads_paused": hub.reads_paused,
            },
        }
    )


async def metrics(request: web.Request) -> web.Response:
    from gateway.node import METRICS, SETTINGS

    token = request.app[SETTINGS].metrics_token
    check_metrics_access(request, token.get_secret_value() if token else None)
    return web.Response(
        text=request.app[METRICS].render(), content_type="text/plain", charset="utf-8"
    )


def route_tables() -> list[RouteTable]:
    names = RESOURCE_MODULES + [
        name for name in OPTIONAL_RESOURCE_MODULES if importlib.util.find_spec(name) is not None
    ]
    return [importlib.import_module(name).routes for name in names]


def all_routes() -> list[Route]:
    return [route for table in route_tables() for route in table.routes]


async def api_ctx(app: web.Application) -> AsyncIterator[None]:
    """The token service and the authenticator, on the node's Redis."""
    from api.auth import ApiAuthenticator
    from api.tokens import TOKENS, TokenService
    from gateway.node import REDIS, SETTINGS
    from models.accounts import reload_admin
    from models.tenancy import ADMIN_ROLES

    settings = app[SETTINGS]
    tokens = TokenService(
        app[REDIS],
        settings.redis_prefix,
        access_ttl_s=settings.api_access_token_ttl_s,
        refresh_ttl_s=settings.api_refresh_token_ttl_s,
    )
    tokens.register_loader(ADMIN_ROLES, reload_admin)
    app[TOKENS] = tokens
    app[AUTHENTICATOR] = ApiAuthenticator(
        tokens, app[REDIS], settings, settings.master_secret_bytes()
    )
    for table in route_tables():
        for hook in table.startup:
            hook(app)
    yield


def setup_api(app: web.Application) -> None:
    from api.openapi import setup_openapi

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    importlib.import_module("api.broker_auth").setup_broker_auth(app)  # MQTT broker auth/ACL
    app.middlewares.append(envelope_middleware)
    app.cleanup_ctx.append(api_ctx)
    app.cleanup_ctx.append(importlib.import_module("api.members").members_ctx)  # SMS, WeChat
    tables = route_tables()
    for table in tables:
        app.cleanup_ctx.extend(table.contexts)
    routes = [route for table in tables for route in table.routes]
    add_routes(app, routes)
    setup_openapi(app, routes, [(t.tag, t.description) for t in tables])
