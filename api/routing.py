"""Declarative routes: one declaration authenticates, enforces roles, validates, answers in the
seed's envelope and feeds the OpenAPI document.

    routes = RouteTable("vendors")

    @routes.get("/vendors/{vid}", seed="AX-03", summary="Read a vendor", roles=PLATFORM_ONLY,
                params=VendorPath, response=VendorOut)
    async def read_vendor(call: Call) -> VendorOut: ...

A handler gets a `Call` (the validated body, query and path models and the caller's
`Principal`) and returns a response model, a list of them, a `Page`, or None. Errors are raised
(`api.errors.ApiError`, or a `models.errors.DomainError` translated at the boundary); the
middleware answers every failure under /api/v1 in the envelope.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ValidationError
from tortoise.exceptions import BaseORMException, DBConnectionError, IntegrityError

from aquafleet.api.errors import (
    ApiError,
    BadRequest,
    ConflictError,
    Forbidden,
    MethodNotAllowed,
    NotAcceptable,
    NotFoundError,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
    from_domain,
)
from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.logs import get_logger
from aquafleet.models.errors import DomainError
from aquafleet.models.tenancy import Principal, Role

log = get_logger("aquafleet.api")

API_PREFIX = "/api/v1"
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_BODY_BYTES = 64 * 1024  # every request body of the API is a small JSON object
# Our bodies nest two or three levels; deeper ones are refused before any model sees them (the
# stdlib decoder and pydantic recurse per level: a 2 KB body of `[` would exhaust the stack).
MAX_JSON_DEPTH = 32

PUBLIC: None = None  # roles=PUBLIC: no authentication


class Authenticator(Protocol):
    """Turns a request's credentials into a Principal (api.auth provides the real one)."""

    async def authenticate(self, request: web.Request, body: bytes) -> Principal:
        """The caller; raises Unauthorized (401) without valid credentials."""
        ...


AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("api_authenticator")
# The request's body as it came (a channel's signed notification is verified over its bytes).
RAW_BODY: web.RequestKey[bytes] = web.RequestKey("raw_body", bytes)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list and the number of records matching the filters (the envelope's total)."""

    items: Sequence[Any]
    total: int


@dataclass(slots=True)
class Call:
    """One request as a handler sees it: validated inputs and the authenticated caller."""

    request: web.Request
    principal_or_none: Principal | None
    body: Any = None
    query: Any = None
    params: Any = None

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def principal(self) -> Principal:
        if self.principal_or_none is None:  # only public routes have none
            raise Unauthorized()
        return self.principal_or_none

    @property
    def client_ip(self) -> str:
        return self.request.remote or "unknown"


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # under API_PREFIX, aiohttp/OpenAPI style: /vendors/{vid}
    handler: Handler
    roles: frozenset[Role] | None  # None: public
    summary: str
    tag: str
    seed: str | None = None
    description: str = ""
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    params: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    many: bool = False  # the answer's data is a list of `response`
    status: int = 200
    errors: tuple[int, ...] = ()  # extra error statuses worth documenting (409, 429, ...)
    stream: str | None = None  # a second media type the handler answers itself (an event stream)
    form: bool = False  # the body is application/x-www-form-urlencoded (an acquirer's notice)

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def media_types(self) -> tuple[str, ...]:
        """What the route answers: JSON, and CSV too where its query offers `format=csv`."""
        fmt = self.query.model_fields.get("format") if self.query is not None else None
        if fmt is not None and "csv" in str(fmt.annotation):
            return (JSON_TYPE, "text/csv")
        if self.stream is not None:
            return (JSON_TYPE, self.stream)
        return (JSON_TYPE,)


DEFAULT_STATUS = {"GET": 200, "POST": 201, "PUT": 201, "DELETE": 204}


@dataclass
class RouteTable:
    """The routes of one resource module (`routes = RouteTable("vendors")`)."""

    tag: str
    description: str = ""
    routes: list[Route] = field(default_factory=list)
    # Called with the app once the API's services (api.tokens.TOKENS, ...) exist, e.g. to
    # register a token loader for the module's role.
    startup: list[Callable[[web.Application], None]] = field(default_factory=list)
    # aiohttp cleanup contexts of the module's own resources (an SMS client, ...); they run
    # after the API's services exist and are torn down before them.
    contexts: list[Callable[[web.Application], AsyncIterator[None]]] = field(default_factory=list)

    def include(self, *parts: RouteTable) -> RouteTable:
        """Serve the routes, hooks and contexts of `parts` under this table's tag: one resource
        whose handlers are split over several modules."""
        for part in parts:
            self.routes.extend(part.routes)
            self.startup.extend(part.startup)
            self.contexts.extend(part.contexts)
        return self

    def on_startup(
        self, hook: Callable[[web.Application], None]
    ) -> Callable[[web.Application], None]:
        self.startup.append(hook)
        return hook

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        roles: frozenset[Role] | None,
        seed: str | None = None,
        description: str = "",
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        params: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        many: bool = False,
        status: int | None = None,
        errors: tuple[int, ...] = (),
        stream: str | None = None,
        form: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    method=method,
                    path=path,
                    handler=handler,
                    roles=roles,
                    summary=summary,
                    tag=self.tag,
                    seed=seed,
                    description=description or (handler.__doc__ or "").strip(),
                    body=body,
                    query=query,
                    params=params,
                    response=response,
                    many=many,
                    status=status or DEFAULT_STATUS[method],
                    errors=errors,
                    stream=stream,
                    form=form,
                )
            )
            return handler

        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kwargs)


# ----------------------------------------------------------------------------- the envelope


def envelope(
    data: Any = None,
    *,
    total: int | None = None,
    ok: bool = True,
    code: str = "ok",
    message: str = "",
) -> dict[str, Any]:
    """The seed's answer: {total, data, status, code, message}."""
    if total is None:
        total = len(data) if isinstance(data, list) else (0 if data is None else 1)
    return {"total": total, "data": data, "status": ok, "code": code, "message": message}


def _json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def answer(data: Any = None, *, status: int = 200, total: int | None = None) -> web.Response:
    return web.json_response(envelope(data, total=total), status=status, dumps=_json_dumps)


def error_answer(exc: ApiError) -> web.Response:
    body = envelope(exc.data, total=0, ok=False, code=exc.code, message=exc.message)
    return web.json_response(body, status=exc.status, headers=exc.headers, dumps=_json_dumps)


# ----------------------------------------------------------------------------- inputs


def accepts(header: str, media_type: str) -> bool:
    """Whether an Accept header admits `media_type`; no header admits everything.

    The most specific range naming the type decides (RFC 9110 12.5.1): `application/json;q=0`
    refuses JSON even beside `*/*`. Media type parameters other than q are not compared.
    """
    if not header.strip():
        return True
    kind, _, subtype = media_type.partition("/")
    best_specificity, best_q = -1, 0.0
    for item in header.split(","):
        media_range, *params = item.split(";")
        range_kind, _, range_subtype = media_range.strip().lower().partition("/")
        if (range_kind, range_subtype) == (kind, subtype):
            specificity = 2
        elif range_kind == kind and range_subtype == "*":
            specificity = 1
        elif range_kind == "*" and range_subtype in ("*", ""):
            specificity = 0
        else:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # a malformed weight admits nothing
        if specificity > best_specificity:
            best_specificity, best_q = specificity, q
        elif specificity == best_specificity:
            best_q = max(best_q, q)
    return 0.0 < best_q <= 1.0 if best_specificity >= 0 else False


def check_acceptable(route: Route, request: web.Request) -> None:
    header = ",".join(request.headers.getall("Accept", []))
    if not any(accepts(header, media_type) for media_type in route.media_types):
        answers = " or ".join(route.media_types)
        raise NotAcceptable(f"this endpoint answers {answers}, which the Accept header refuses")


def check_metrics_access(request: web.Request, token: str | None) -> None:
    """/metrics: the configured bearer token, or (without one) a loopback client only.

    Metrics name the node and count devices, logins and failures: not for the whole Internet.
    """
    if token is None:
        try:
            local = ipaddress.ip_address(request.remote or "").is_loopback
        except ValueError:  # a unix socket, or no address at all
            local = False
        if not local:
            raise Forbidden("/metrics answers loopback clients; set metrics_token to scrape it")
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Unauthorized("/metrics needs Authorization: Bearer <metrics_token>")


async def read_body(request: web.Request) -> bytes:
    """The raw body, refused past MAX_BODY_BYTES without reading the rest."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not request.can_read_body:
        return b""
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    # A body that arrived in several chunks: read until EOF, still bounded.
    while not request.content.at_eof():
        more = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not more:
            break
        raw += more
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return raw


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    errors = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "(body)"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        errors.append({"field": where, "message": message})
    return errors


def _validation_failed(exc: ValidationError, where: str) -> ValidationFailed:
    errors = _field_errors(exc)
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ValidationFailed(f"{where} {first['field']}: {first['message']}{more}", data=errors)


def parse_form(model: type[BaseModel], request: web.Request, raw: bytes) -> Any:
    """A form-encoded body (one value per field), validated by `model`."""
    if request.content_type != FORM_TYPE:
        raise UnsupportedMediaType(f"the body must be {FORM_TYPE}")
    try:
        pairs = urllib.parse.parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw.strip())
        )
        return model.model_validate(dict(pairs))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the form is malformed: {str(exc)[:200]}") from None


def parse_body(route: Route, request: web.Request, raw: bytes) -> Any:
    stripped = raw.strip()
    if route.body is None:
        # Clients that always send an object may send an empty one; anything else is refused.
        if stripped and stripped != b"{}":
            raise BadRequest("this endpoint takes no body")
        return None
    if route.form:
        return parse_form(route.body, request, raw)
    if not stripped:
        raise BadRequest("a JSON object body is required")
    if request.content_type != "application/json":
        raise UnsupportedMediaType("the body must be application/json")
    try:
        decoded = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError):
        _log_refused_body(request, "not JSON")
        raise BadRequest("Problems parsing JSON") from None
    except RecursionError:  # nested deeper than the interpreter's stack allows
        _log_refused_body(request, "nested too deep")
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    # Counting brackets clears every usual body in microseconds; the walk costs up to ~3 ms
    # for a 64 KB body of 30,000 items (measured; json.loads itself ~1 ms).
    few_brackets = raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH
    if not few_brackets and _nested_deeper_than(decoded, MAX_JSON_DEPTH):
        _log_refused_body(request, "nested too deep")
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return route.body.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise _validation_failed(exc, "body") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects in a decoded JSON value nest more than `limit` levels."""
    level = [value] if isinstance(value, list | dict) else []
    depth = 1
    while level:
        if depth > limit:
            return True
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, list | dict)
        ]
        depth += 1
    return False


def _log_refused_body(request: web.Request, reason: str) -> None:
    log.info("api_body_refused", method=request.method, path=request.path, reason=reason)


def parse_query(route: Route, request: web.Request) -> Any:
    values: dict[str, str] = {}
    for key, value in request.query.items():
        if key in values:
            raise ValidationFailed(
                f"query {key}: given more than once",
                data=[{"field": key, "message": "given more than once"}],
            )
        values[key] = value
    if route.query is None:
        if values:
            key = next(iter(values))
            raise ValidationFailed(
                f"query {key}: unknown parameter",
                data=[{"field": k, "message": "unknown parameter"} for k in values],
            )
        return None
    try:
        return route.query.model_validate(values)
    except ValidationError as exc:
        raise _validation_failed(exc, "query") from None


def parse_params(route: Route, request: web.Request) -> Any:
    if route.params is None:
        return None
    try:
        return route.params.model_validate(dict(request.match_info))
    except ValidationError:
        # An id that cannot exist names no record.
        raise NotFoundError("no such record") from None


# ----------------------------------------------------------------------------- outputs


def _dump(value: Any, model: type[BaseModel] | None) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if model is not None and isinstance(value, dict):
        return model.model_validate(value).model_dump(mode="json")
    return value


def render(route: Route, result: Any) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):  # the handler's own answer (AB-02's CSV)
        return result
    if route.status == 204:
        return web.Response(status=204)
    if isinstance(result, Page):
        items = [_dump(item, route.response) for item in result.items]
        return answer(items, status=route.status, total=result.total)
    if isinstance(result, list):
        return answer([_dump(item, route.response) for item in result], status=route.status)
    return answer(_dump(result, route.response), status=route.status)


# ----------------------------------------------------------------------------- wiring


def make_handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        check_acceptable(route, request)
        raw = await read_body(request)
        request[RAW_BODY] = raw  # a signed notification is verified over its exact bytes
        principal: Principal | None = None
        if route.roles is not None:
            principal = await request.app[AUTHENTICATOR].authenticate(request, raw)
            if principal.role not in route.roles:
                raise Forbidden(f"a {principal.role} account may not call this endpoint")
        params = parse_params(route, request)
        query = parse_query(route, request)
        body = parse_body(route, request, raw)
        call = Call(request, principal, body=body, query=query, params=params)
        return render(route, await route.handler(call))

    handle.__name__ = route.operation_id
    return handle


def add_routes(app: web.Application, routes: Sequence[Route]) -> None:
    for route in routes:
        path = router_path(route.full_path, [r.full_path for r in routes])
        app.router.add_route(route.method, path, make_handler(route))


def router_path(path: str, all_paths: Sequence[str]) -> str:
    """`path` for aiohttp's router, where a fixed segment beats a parameter in its place.

    aiohttp takes the first resource matching path and method, so PUT /users/login would reach
    /users/{uid} (404) rather than answer 405 for /users/login. A parameter therefore excludes
    the fixed segments other paths have in its place after the same prefix.
    """
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if not (segment.startswith("{") and segment.endswith("}")) or ":" in segment:
            continue
        fixed = sorted(
            {
                other[index]
                for other in (p.split("/") for p in all_paths)
                if len(other) > index
                and other[:index] == segments[:index]
                and not other[index].startswith("{")
            }
        )
        if fixed:
            words = "|".join(re.escape(word) for word in fixed)
            segments[index] = f"{{{segment[1:-1]}:(?!(?:{words})(?:/|$))[^/]+}}"
    return "/".join(segments)


def to_api_error(exc: BaseException) -> ApiError | None:
    """The ApiError a failure is answered with; None for a bug (answered 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DomainError):
        return from_domain(exc)
    if isinstance(exc, web.HTTPException):
        return _from_http(exc)
    if isinstance(exc, RedisUnavailable):
        return Unavailable("a backing service did not answer; try again")
    if isinstance(exc, IntegrityError):
        return ConflictError("the change conflicts with another record")
    if isinstance(exc, DBConnectionError):
        return Unavailable("the database did not answer; try again")
    if isinstance(exc, BaseORMException):
        return None
    return None


def _from_http(exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return NotFoundError("no such path")
    if exc.status == 405:
        return MethodNotAllowed(f"{exc.reason}", headers={"Allow": exc.headers.get("Allow", "")})
    if exc.status == 413:
        return PayloadTooLarge("the body is too large")
    if exc.status == 400:
        return BadRequest(exc.reason or "bad request")
    return ApiError(exc.reason or "error", code=f"http_{exc.status}", status=exc.status)


@web.middleware
async def envelope_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every answer under /api/v1 is the envelope: failures too, bugs too (without details).

    Outside it (/healthz, /metrics, the broker's /mqtt/...) answers are the handlers' own, but
    an unknown path or method and an ApiError are answered in the envelope too.
    """
    if not request.path.startswith(API_PREFIX):
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed, ApiError) as exc:
            error = to_api_error(exc)
            assert error is not None  # both kinds always translate
            return error_answer(error)
    try:
        return await handler(request)
    except Exception as exc:
        error = to_api_error(exc)
        if error is None:
            log.exception("api_internal_error", method=request.method, path=request.path)
            error = ApiError("internal error: the request may or may not have taken effect")
        elif error.status >= 500:
            log.warning("api_unavailable", path=request.path, error=str(exc))
        return error_answer(error)
