"""/metrics, and the HTTP request histogram every answer of the node feeds."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from aquafleet.api.routing import check_metrics_access
from aquafleet.gateway.appkeys import METRICS, SETTINGS
from aquafleet.gateway.metrics import CONTENT_TYPE

UNMATCHED_ROUTE = "other"  # unknown paths: one label value, whatever the scanners try


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus text: the bearer token when one is set, else loopback clients only."""
    token = request.app[SETTINGS].metrics_token
    check_metrics_access(request, token.get_secret_value() if token else None)
    response = web.Response(body=request.app[METRICS].exposition())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def route_template(request: web.Request) -> str:
    """The route's template (`/api/v1/devices/{did}`), never the path: bounded label values."""
    resource = request.match_info.route.resource
    return UNMATCHED_ROUTE if resource is None else resource.canonical


@web.middleware
async def request_timing(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Time every request by method, route template and status class (outermost middleware:
    it sees the status the envelope middleware answered)."""
    started = time.perf_counter()
    status = 500  # a handler that raises past the envelope (a client gone, a bug)
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[METRICS].histograms.http_request.labels(
            request.method, route_template(request), f"{status // 100}xx"
        ).observe(time.perf_counter() - started)
