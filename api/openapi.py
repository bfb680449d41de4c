"""The OpenAPI 3.1 document, generated from the route declarations, and the offline docs page.

Nothing here is written by hand per endpoint: paths, parameters, bodies, answers, roles and seed
ids all come from `api.routing.Route`. Swagger UI's files come from the `swagger-ui-bundle`
wheel and are served by the node itself, so /api/v1/docs works with no Internet access.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from aquafleet.api.errors import ERROR_CODES
from aquafleet.api.routing import API_PREFIX, Route

REF = "#/components/schemas/{model}"
ERROR_ENVELOPE = "ErrorEnvelope"

_STATUS_TEXT = {
    200: "OK",
    201: "Created or changed",
    204: "Deleted (no body)",
    400: "Bad request (not JSON, or a body where none belongs)",
    401: "Not authenticated",
    403: "The caller's role may not call this endpoint",
    404: "No such record in the caller's tenant subtree",
    406: "The Accept header admits none of the answer's media types",
    409: "Conflict with the record's state",
    413: "Body too large",
    415: "Body is not application/json",
    422: "Validation failed",
    429: "Rate limited (see Retry-After)",
}


class _Schemas:
    """Collects component schemas; two different models may not share a name."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def add(
        self, model: type[BaseModel], mode: Literal["validation", "serialization"]
    ) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            self._put(name, definition)
        name = model.__name__
        if self.components.get(name, schema) != schema:
            name = f"{name}{'In' if mode == 'validation' else 'Out'}"
        self._put(name, schema)
        return {"$ref": REF.format(model=name)}

    def _put(self, name: str, schema: dict[str, Any]) -> None:
        existing = self.components.get(name)
        if existing is not None and existing != schema:
            raise RuntimeError(f"two different schemas are both named {name!r}")
        self.components[name] = schema

    def parameters(self, model: type[BaseModel], where: str) -> list[dict[str, Any]]:
        schema = model.model_json_schema(ref_template=REF, mode="validation")
        for name, definition in schema.pop("$defs", {}).items():
            self._put(name, definition)
        required = set(schema.get("required", []))
        params = []
        for name, prop in schema.get("properties", {}).items():
            prop = dict(prop)
            description = prop.pop("description", "")
            prop.pop("title", None)
            param: dict[str, Any] = {
                "name": name,
                "in": where,
                "required": where == "path" or name in required,
                "schema": prop,
            }
            if description:
                param["description"] = description
            params.append(param)
        return params


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["total", "data", "status", "code", "message"],
        "additionalProperties": False,
        "properties": {
            "total": {"type": "integer", "minimum": 0},
            "data": data,
            "status": {"type": "boolean", "const": True},
            "code": {"type": "string", "const": "ok"},
            "message": {"type": "string"},
        },
    }


def _error_envelope() -> dict[str, Any]:
    field_error = {
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    }
    return {
        "type": "object",
        "description": "Every failure. `code` is stable (docs/api.md); `data` lists the fields "
        "that failed validation (422), else null.",
        "required": ["total", "data", "status", "code", "message"],
        "additionalProperties": False,
        "properties": {
            "total": {"type": "integer", "const": 0},
            "data": {"anyOf": [{"type": "null"}, {"type": "array", "items": field_error}]},
            "status": {"type": "boolean", "const": False},
            "code": {"type": "string", "examples": sorted(ERROR_CODES)},
            "message": {"type": "string"},
        },
    }


def _roles_text(route: Route) -> str:
    if route.roles is None:
        return "public"
    return ", ".join(sorted(str(r) for r in route.roles))


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    summary = f"{route.seed} {route.summary}" if route.seed else route.summary
    description = route.description
    description += f"\n\nRoles: {_roles_text(route)}."
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": summary,
        "description": description.strip(),
        "tags": [route.tag],
        "x-roles": None if route.roles is None else sorted(str(r) for r in route.roles),
    }
    if route.seed:
        operation["x-seed-id"] = route.seed
    parameters: list[dict[str, Any]] = []
    if route.params is not None:
        parameters += schemas.parameters(route.params, "path")
    if route.query is not None:
        parameters += schemas.parameters(route.query, "query")
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded" if route.form else "application/json": {
                    "schema": schemas.add(route.body, "validation")
                }
            },
        }
    operation["security"] = [] if route.roles is None else [{"bearer": []}, {"signed": []}]
    responses: dict[str, Any] = {}
    if route.status == 204:
        responses["204"] = {"description": _STATUS_TEXT[204]}
    else:
        data: dict[str, Any] = {"type": "null"}
        if route.response is not None:
            item = schemas.add(route.response, "serialization")
            data = {"type": "array", "items": item} if route.many else item
        content: dict[str, Any] = {"application/json": {"schema": _envelope(data)}}
        if route.stream is not None:  # each event's data is the same envelope
            content[route.stream] = {"schema": {"type": "string"}}
        responses[str(route.status)] = {
            "description": _STATUS_TEXT.get(route.status, "OK"),
            "content": content,
        }
    errors = {406, 422, 404, *route.errors}
    if route.body is not None:
        errors |= {400, 413, 415}
    if route.roles is not None:
        errors |= {401, 403}
    error_ref = {"$ref": REF.format(model=ERROR_ENVELOPE)}
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": error_ref}},
        }
    responses["default"] = {
        "description": "Any other failure, in the envelope",
        "content": {"application/json": {"schema": error_ref}},
    }
    operation["responses"] = responses
    return operation


def build_document(routes: Sequence[Route], tags: Sequence[tuple[str, str]]) -> dict[str, Any]:
    schemas = _Schemas()
    schemas.components[ERROR_ENVELOPE] = _error_envelope()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.full_path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aquafleet REST API",
            "version": "1",
            "description": "Every answer is the envelope {total, data, status, code, message} "
            "(a 204 has no body). Timestamps are ISO 8601 UTC, YYYY-MM-DDTHH:MM:SSZ. "
            "Error codes, pagination and the choices made where the seed specification is "
            "silent: docs/api.md. Authentication: docs/api-auth.md.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": name, "description": text} for name, text in tags],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An access token from POST /api/v1/auth/login (admins) or "
                    "a member login; refresh with POST /api/v1/auth/refresh.",
                },
                "signed": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Aq-Signature",
                    "description": "A vendor's own servers: X-Aq-Key, X-Aq-Timestamp, "
                    "X-Aq-Nonce and X-Aq-Signature (HMAC-SHA256), see docs/api-auth.md. "
                    "Accepted where the vendor role is.",
                },
            },
        },
    }


# ----------------------------------------------------------------------------- serving

OPENAPI_DOCUMENT: web.AppKey[bytes] = web.AppKey("api_openapi_document", bytes)

_DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>aquafleet REST API</title>
  <link rel="stylesheet" href="{static}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{static}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{static}/swagger-ui-bundle.js"></script>
  <script src="{static}/swagger-ui-standalone-preset.js"></script>
  <script src="{static}/docs-init.js"></script>
</body>
</html>
"""

_DOCS_INIT_JS = f"""window.onload = function () {{
  window.ui = SwaggerUIBundle({{
    url: "{API_PREFIX}/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    validatorUrl: null
  }});
}};
"""

STATIC_PREFIX = f"{API_PREFIX}/docs/static"
_STATIC_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def swagger_ui_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=_DOCS_HTML.format(static=STATIC_PREFIX), content_type="text/html")


async def docs_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name == "docs-init.js":
        return web.Response(text=_DOCS_INIT_JS, content_type="application/javascript")
    path = swagger_ui_dir() / name
    if not _STATIC_NAME_RE.match(name) or name.endswith(".map") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


def setup_openapi(
    app: web.Application, routes: Sequence[Route], tags: Sequence[tuple[str, str]]
) -> None:
    document = build_document(routes, tags)
    app[OPENAPI_DOCUMENT] = json.dumps(document, ensure_ascii=False).encode()
    app.router.add_get(f"{API_PREFIX}/openapi.json", openapi_json)
    app.router.add_get(f"{API_PREFIX}/docs", docs_page)
    app.router.add_get(STATIC_PREFIX + "/{name}", docs_static)
