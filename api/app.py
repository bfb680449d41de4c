"""Routes served on the node's HTTP port: health, metrics and (later) /api/v1 resources."""

from __future__ import annotations

from aiohttp import web


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
    from gateway.node import METRICS

    return web.Response(
        text=request.app[METRICS].render(), content_type="text/plain", charset="utf-8"
    )


def setup_api(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
