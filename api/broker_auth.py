"""Broker authentication and ACL over HTTP, for ESP8266 devices on MQTT (docs/mqtt.md).

The broker calls these on every CONNECT (`/mqtt/auth`), before a client subscribes or
publishes (`/mqtt/acl`), and, for mosquitto-go-auth, to ask whether a user is the superuser
(`/mqtt/superuser`). Requests are JSON or form bodies with the broker's placeholders:
EMQX 5 (`clientid`, `username`, `password`, `topic`, `action` publish|subscribe) or
mosquitto-go-auth's HTTP backend (`acc` 1 read, 2 write, 3 readwrite, 4 subscribe).

Every answer is 200 with `{"result": "allow"|"deny", "ok": bool, "error": str}` (plus
`is_superuser` on /mqtt/auth): EMQX reads `result`, go-auth (response mode json) reads `ok`.
Malformed requests are denied, never ignored: an ignored ACL check could fall through to a
permissive default.

A device logs in with client id = user name = its did and the password of PROTOCOL.md,
`<ts>.hex(HMAC(K_dev, "mqtt" | did | ts))`, accepted within 10 minutes of our clock and once
per (did, ts). It may only publish its own uplink and status topics and subscribe to its own
downlink. The gateway's bridge logs in with `mqtt_username`/`mqtt_password` and may do anything.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aquafleet.gateway.appkeys import KEYSPACE, REDIS, SETTINGS
from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import redis_errors
from aquafleet.gateway.registry_cache import parse_registry_entry
from aquafleet.protocol.constants import MAX_DID_LEN
from aquafleet.protocol.crypto import derive_device_key, mqtt_password
from aquafleet.protocol.mqtt_envelope import Channel

log = get_logger("aquafleet.broker_auth")

MAX_BODY = 4096
PASSWORD_WINDOW_S = 600
USED_PASSWORD_TTL_MS = 2 * PASSWORD_WINDOW_S * 1000 + 60_000
DEVICE_PUBLISHES = (
    Channel.UP_TELE,
    Channel.UP_EVENT,
    Channel.UP_RESULT,
    Channel.UP_ACK,
    Channel.UP_PING,
    Channel.STATUS,
)
DEVICE_SUBSCRIBES = ("down/#", "down/+", Channel.DOWN_CMD, Channel.DOWN_ACK)
DEVICE_READS = (Channel.DOWN_CMD, Channel.DOWN_ACK)
GO_AUTH_ACCESS = {"1": "read", "2": "write", "3": "readwrite", "4": "subscribe"}
_BAD_DID_CHARS = frozenset("/+#$\x00")
# ASCII only: str.isdigit() takes "²" and other scripts' digits, which int() or
# hmac.compare_digest() then refused with an exception (a 500, not a deny).
PASSWORD_RE = re.compile(r"[0-9]{1,12}\.[0-9a-fA-F]{64}", re.ASCII)


@dataclass(frozen=True, slots=True)
class BrokerAuthState:
    master_secret: bytes


BROKER_AUTH = web.AppKey("broker_auth", BrokerAuthState)


def _answer(allow: bool, error: str = "", **extra: Any) -> web.Response:
    body = {"result": "allow" if allow else "deny", "ok": allow, "error": error, **extra}
    return web.json_response(body)


class BadRequest(Exception):
    """The broker's request cannot be read; it is denied with this reason."""


async def _params(request: web.Request) -> dict[str, str]:
    """The request's fields (JSON object or form), all text; BadRequest otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest("request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest("request body too large")
    if request.content_type == "application/x-www-form-urlencoded":
        from urllib.parse import parse_qsl

        try:
            pairs = parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest("form body is not UTF-8") from None
        return dict(pairs)
    try:
        data = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError, RecursionError):  # 4 KB of `[` is deep enough
        raise BadRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("body is not a JSON object")
    fields: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise BadRequest(f"field {name!r} must be text")
        fields[str(name)] = str(value)
    return fields


def _is_bridge(request: web.Request, username: str) -> bool:
    return username == request.app[SETTINGS].mqtt_username


def _valid_did(did: str) -> bool:
    return 1 <= len(did) <= MAX_DID_LEN and not _BAD_DID_CHARS.intersection(did)


async def mqtt_auth(request: web.Request) -> web.Response:
    """CONNECT: the bridge's own credentials, or a device's time-bound HMAC password."""
    try:
        params = await _params(request)
    except BadRequest as exc:
        return _answer(False, str(exc), is_superuser=False)
    username = params.get("username", "")
    password = params.get("password", "")
    clientid = params.get("clientid", username)
    settings = request.app[SETTINGS]
    if _is_bridge(request, username):
        configured = settings.mqtt_password
        if configured is not None and hmac.compare_digest(
            password.encode(), configured.get_secret_value().encode()
        ):
            return _answer(True, is_superuser=True)
        return _answer(False, "bad credentials", is_superuser=False)
    did = username
    if not _valid_did(did) or clientid != did:
        return _answer(
            False, "client id and user name must both be the device id", is_superuser=False
        )
    if not PASSWORD_RE.fullmatch(password):
        return _answer(False, "password is not <ts>.<64 hex digits>", is_superuser=False)
    ts = int(password.partition(".")[0])
    if abs(time.time() - ts) > PASSWORD_WINDOW_S:
        return _answer(False, "password timestamp outside +-10 min", is_superuser=False)
    keyspace, client = request.app[KEYSPACE], request.app[REDIS]
    shard_prefix = keyspace.shard_prefix(keyspace.shard_of(did))
    try:
        with redis_errors("checking a broker login"):
            entry = parse_registry_entry(
                await client.hget(keyspace.registry(keyspace.shard_of(did)), did)
            )
            if entry is None or not entry.login_allowed:
                return _answer(False, "unknown or disabled device", is_superuser=False)
            key = derive_device_key(request.app[BROKER_AUTH].master_secret, did, entry.key_version)
            if not hmac.compare_digest(mqtt_password(key, did, ts), password):
                return _answer(False, "bad credentials", is_superuser=False)
            fresh = await client.set(
                f"{shard_prefix}mqttpw:{did}:{ts}", b"1", nx=True, px=USED_PASSWORD_TTL_MS
            )
    except RedisUnavailable as exc:
        log.warning("broker_auth_unavailable", error=str(exc))
        return _answer(False, "registry unavailable, retry", is_superuser=False)
    if not fresh:
        return _answer(False, "password already used: make a new one", is_superuser=False)
    return _answer(True, is_superuser=False)


async def mqtt_superuser(request: web.Request) -> web.Response:
    """mosquitto-go-auth: only the bridge is the superuser."""
    try:
        params = await _params(request)
    except BadRequest as exc:
        return _answer(False, str(exc))
    return _answer(_is_bridge(request, params.get("username", "")))


def device_may(prefix: str, did: str, topic: str, access: str) -> bool:
    """May device `did` do `access` (publish, subscribe, read) on `topic`?"""
    own = f"{prefix}/{did}/"
    if not topic.startswith(own):
        return False
    rest = topic[len(own) :]
    if access == "publish":
        return rest in DEVICE_PUBLISHES
    if access == "subscribe":
        return rest in DEVICE_SUBSCRIBES
    if access == "read":
        return rest in DEVICE_READS
    return False


async def mqtt_acl(request: web.Request) -> web.Response:
    """PUBLISH/SUBSCRIBE (and go-auth's read): a device only on its own topics."""
    try:
        params = await _params(request)
    except BadRequest as exc:
        return _answer(False, str(exc))
    username = params.get("username", "")
    if _is_bridge(request, username):
        return _answer(True)
    clientid = params.get("clientid", username)
    topic = params.get("topic", "")
    action = params.get("action") or GO_AUTH_ACCESS.get(params.get("acc", ""), "")
    access = {"write": "publish"}.get(action, action)
    if not _valid_did(username) or clientid != username:
        return _answer(False, "client id and user name must both be the device id")
    if access not in ("publish", "subscribe", "read"):
        return _answer(False, f"unknown action {action[:16]!r}")
    if not device_may(request.app[SETTINGS].mqtt_topic_prefix, username, topic, access):
        return _answer(False, "a device may only use its own topics")
    # As /mqtt/auth: a device that is unknown, disabled or deregistered (after its CONNECT,
    # or on a broker that skipped it) may do nothing, not even on its own topics.
    try:
        if not await _login_allowed(request, username):
            return _answer(False, "unknown or disabled device")
    except RedisUnavailable as exc:
        log.warning("broker_acl_unavailable", error=str(exc))
        return _answer(False, "registry unavailable, retry")
    return _answer(True)


async def _login_allowed(request: web.Request, did: str) -> bool:
    """Whether the registry knows `did` and lets it log in (one Redis read)."""
    keyspace = request.app[KEYSPACE]
    with redis_errors("checking a broker ACL"):
        raw = await request.app[REDIS].hget(keyspace.registry(keyspace.shard_of(did)), did)
    entry = parse_registry_entry(raw)
    return entry is not None and entry.login_allowed


async def broker_auth_ctx(app: web.Application) -> AsyncIterator[None]:
    app[BROKER_AUTH] = BrokerAuthState(app[SETTINGS].master_secret_bytes())
    yield


def setup_broker_auth(app: web.Application) -> None:
    """Routes the broker calls (see the module docstring)."""
    app.cleanup_ctx.append(broker_auth_ctx)
    app.router.add_post("/mqtt/auth", mqtt_auth)
    app.router.add_post("/mqtt/acl", mqtt_acl)
    app.router.add_post("/mqtt/superuser", mqtt_superuser)
