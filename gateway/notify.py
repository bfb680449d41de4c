"""The notification sender (消息推送): delivers the outbox (models/outbox.py) at least once.

Each node may run one (setting `notify_sender`); they share the work safely: a row is claimed by
a conditional update (state pending, due, no live claim) before it is sent, and a claim lapses
after `CLAIM_S` so a node that died mid-send leaves nothing stuck. After a send the row is
marked sent; a failure schedules the next try with exponential backoff (models.outbox.backoff_s)
until MAX_ATTEMPTS, or at once for good when the provider refuses the recipient. Every attempt is
recorded (`NotificationAttempt`). A crash between a provider's acceptance and the mark re-sends:
at least once, never silently lost.

Channels:
- WeChat official-account template messages (POST /cgi-bin/message/template/send) with the
  vendor's mp app id and secret. Access tokens (GET /cgi-bin/token, 2 h) are cached in Redis per
  app id and refreshed by one node at a time (a lock key); a token WeChat calls invalid (40001,
  42001) is dropped (only if it is still the cached one) and fetched again once.
- SMS through the configured provider (gateway/providers/sms.py) with the vendor's template.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from tortoise.exceptions import BaseORMException
from tortoise.expressions import Q

from aquafleet.gateway.errors import RedisUnavailable
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.providers.wechat import wechat_json
from aquafleet.gateway.redis_io import redis_errors
from aquafleet.models.errors import DomainError
from aquafleet.models.members import WechatError, WechatMisconfigured, WechatUnavailable
from aquafleet.models.merchants import open_vendor_secret
from aquafleet.models.outbox import (
    MAX_ATTEMPTS,
    Channel,
    Notification,
    NotificationAttempt,
    NotificationKind,
    NotificationState,
    backoff_s,
    template_values,
)
from aquafleet.models.sealed import SecretBox
from aquafleet.models.sms_codes import SmsError, SmsRecipientRejected
from aquafleet.models.vendors import Vendor

log = get_logger("aquafleet.notify")

CLAIM_S = 60
TOKEN_MARGIN_S = 300  # a cached token is dropped this long before WeChat's expiry
LOCK_MS = 10_000
WAIT_STEP_S = 0.05
WAIT_STEPS = 100  # a node waiting for another's token refresh waits at most 5 s
INVALID_TOKEN = frozenset({40001, 40014, 42001})
REFUSED_RECIPIENT = frozenset({40003, 43004, 43101})  # bad openid, unfollowed, refused


class RecipientRefused(WechatError):
    """WeChat will never deliver this message (the openid, or the person's choice)."""

    code = "wechat_recipient_refused"


_DROP_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WechatTemplates:
    """Template messages of official accounts, with tokens shared by every node."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        redis: aioredis.Redis,
        prefix: str,
        *,
        base_url: str = "https://api.weixin.qq.com",
        timeout_s: float = 5.0,
    ) -> None:
        self.session = session
        self.redis = redis
        self.prefix = prefix
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.token_fetches = 0  # tokens this node fetched from WeChat
        self._drop = redis.register_script(_DROP_IF_SAME)

    def _token_key(self, appid: str) -> str:
        return f"{self.prefix}:wx:token:{appid}"

    async def token(self, appid: str, secret: str) -> str:
        """The app's access token: cached, or fetched by exactly one node while others wait."""
        key = self._token_key(appid)
        with redis_errors("wechat token"):
            cached = await self.redis.get(key)
            if cached is not None:
                return cached.decode() if isinstance(cached, bytes) else str(cached)
            lock = f"{key}:lock"
            mine = secrets.token_hex(8)
            if await self.redis.set(lock, mine, nx=True, px=LOCK_MS):
                try:
                    # Read again under the lock: a node that fetched between our first read
                    # and our lock has stored its token and let the lock go. Fetching again
                    # would make WeChat retire the token that node is already using.
                    cached = await self.redis.get(key)
                    if cached is not None:
                        return cached.decode() if isinstance(cached, bytes) else str(cached)
                    token, expires_in = await self._fetch(appid, secret)
                    ttl = max(60, expires_in - TOKEN_MARGIN_S)
                    await self.redis.set(key, token, ex=ttl)
                    return token
                finally:
                    await self._drop(keys=[lock], args=[mine])
            for _ in range(WAIT_STEPS):  # another node is fetching it
                await asyncio.sleep(WAIT_STEP_S)
                cached = await self.redis.get(key)
                if cached is not None:
                    return cached.decode() if isinstance(cached, bytes) else str(cached)
        raise WechatUnavailable("wechat: another node's token refresh did not finish")

    async def _fetch(self, appid: str, secret: str) -> tuple[str, int]:
        self.token_fetches += 1
        answer = await self._call(
            "GET",
            "/cgi-bin/token",
            params={"grant_type": "client_credential", "appid": appid, "secret": secret},
        )
        token, expires_in = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not isinstance(expires_in, int):
            raise WechatUnavailable("wechat: no access token in the answer")
        return token, expires_in

    async def send(
        self, appid: str, secret: str, openid: str, template_id: str, values: dict[str, str]
    ) -> str:
        """Send one template message; WeChat's msgid."""
        body = {
            "touser": openid,
            "template_id": template_id,
            "data": {name: {"value": value} for name, value in values.items()},
        }
        for attempt in (1, 2):
            token = await self.token(appid, secret)
            try:
                answer = await self._call(
                    "POST", "/cgi-bin/message/template/send", params={"access_token": token},
                    body=body,
                )  # fmt: skip
            except _InvalidToken:
                with redis_errors("wechat token"):
                    await self._drop(keys=[self._token_key(appid)], args=[token])
                if attempt == 2:
                    raise WechatUnavailable("wechat: a fresh token was refused too") from None
                continue
            return str(answer.get("msgid", ""))
        raise AssertionError("unreachable")

    async def _call(
        self, method: str, path: str, *, params: dict[str, str], body: Any = None
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        answer = await wechat_json(
            self.session, method, self.base_url + path, timeout_s=self.timeout_s,
            params=params, data=data,
        )  # fmt: skip
        errcode = answer.get("errcode", 0)
        if errcode in (0, None):
            return answer
        errmsg = str(answer.get("errmsg", "")).split(", rid:", 1)[0][:120]
        text = f"wechat {errcode}: {errmsg}"
        if errcode in INVALID_TOKEN and path != "/cgi-bin/token":
            raise _InvalidToken(text)
        if errcode in REFUSED_RECIPIENT:
            raise RecipientRefused(text)
        if errcode in (40001, 40013, 40125, 40037, 41002, 41004):
            raise WechatMisconfigured(text)
        raise WechatUnavailable(text)


class _InvalidToken(Exception):
    pass


class TemplateSms(Protocol):
    async def send_template(
        self, mobile: str, template_code: str, params: dict[str, str]
    ) -> str: ...


@dataclass
class SenderStats:
    sent: int = 0
    failed: int = 0
    dead: int = 0


class NotificationSender:
    """Claims due outbox rows and delivers them (see the module's docstring)."""

    def __init__(
        self,
        *,
        wechat: WechatTemplates,
        sms: TemplateSms,
        secrets: SecretBox,
        node_id: str,
        batch: int = 50,
        poll_s: float = 1.0,
    ) -> None:
        self.wechat = wechat
        self.secrets = secrets  # opens the vendors' sealed mp_secret
        self.sms = sms
        self.node_id = node_id[:64]
        self.batch = batch
        self.poll_s = poll_s
        self.stats = SenderStats()

    async def run(self) -> None:
        """Deliver until cancelled; database or Redis trouble waits and tries again."""
        delay = self.poll_s
        while True:
            try:
                handled = await self.run_once()
                delay = self.poll_s
            except (BaseORMException, RedisUnavailable, DomainError, OSError) as exc:
                log.error("notify_sender_error", error=f"{type(exc).__name__}: {exc}")
                handled, delay = 0, min(delay * 2, 30.0)
            if handled < self.batch:
                await asyncio.sleep(delay)

    async def run_once(self, now: dt.datetime | None = None) -> int:
        """Claim and deliver the rows due now; returns how many were attempted."""
        now = now or dt.datetime.now(dt.UTC)
        free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
        due = list(
            await Notification.filter(free, state=NotificationState.PENDING, next_at__lte=now)
            .order_by("next_at", "id")
            .limit(self.batch)
            .values_list("id", flat=True)
        )
        attempted = 0
        for notification_id in due:
            claimed = await Notification.filter(
                free, id=notification_id, state=NotificationState.PENDING
            ).update(claimed_by=self.node_id, claimed_until=now + dt.timedelta(seconds=CLAIM_S))
            if not claimed:  # another node took it
                continue
            row = await Notification.get(id=notification_id)
            await self._deliver(row)
            attempted += 1
        return attempted

    async def _deliver(self, row: Notification) -> None:
        number = row.attempts + 1
        try:
            detail = await self._send(row)
        except (WechatError, SmsError, DomainError) as exc:
            permanent = isinstance(exc, RecipientRefused | SmsRecipientRejected)
            await self._failed(row, number, f"{type(exc).__name__}: {exc}", permanent)
            return
        at = dt.datetime.now(dt.UTC)
        await NotificationAttempt.create(
            notification_id=row.id, number=number, node=self.node_id, ok=True,
            detail=detail[:255], at=at,
        )  # fmt: skip
        await Notification.filter(id=row.id).update(
            state=NotificationState.SENT, attempts=number, sent_at=at, claimed_until=None,
            last_error="",
        )  # fmt: skip
        self.stats.sent += 1
        log.info("notification_sent", id=row.id, kind=str(row.kind), channel=str(row.channel))

    async def _failed(self, row: Notification, number: int, error: str, permanent: bool) -> None:
        at = dt.datetime.now(dt.UTC)
        await NotificationAttempt.create(
            notification_id=row.id, number=number, node=self.node_id, ok=False,
            detail=error[:255], at=at,
        )  # fmt: skip
        dead = permanent or number >= MAX_ATTEMPTS
        await Notification.filter(id=row.id).update(
            state=NotificationState.DEAD if dead else NotificationState.PENDING,
            attempts=number, claimed_until=None, last_error=error[:255],
            next_at=at + dt.timedelta(seconds=backoff_s(number)),
        )  # fmt: skip
        if dead:
            self.stats.dead += 1
        else:
            self.stats.failed += 1
        log.warning("notification_failed", id=row.id, attempt=number, dead=dead, error=error)

    async def _send(self, row: Notification) -> str:
        vendor = await Vendor.get_or_none(code=row.vendor_id)
        config = (vendor.config if vendor is not None else None) or {}
        kind = NotificationKind(row.kind)
        values = template_values(kind, json.loads(row.payload))
        if row.channel is Channel.WECHAT:
            template = config.get("wechat_templates", {}).get(kind.value)
            if vendor is None or not template or not vendor.mp_appid:
                raise WechatMisconfigured(f"vendor {row.vendor_id}: no mp app or template")
            mp_secret = open_vendor_secret(vendor, "mp_secret", self.secrets)
            msgid = await self.wechat.send(
                vendor.mp_appid, mp_secret, row.address, template, values
            )
            return f"msgid {msgid}"
        template = config.get("sms_templates", {}).get(kind.value)
        if not template:
            raise SmsRecipientRejected(f"vendor {row.vendor_id}: no SMS template for {kind}")
        return f"biz_id {await self.sms.send_template(row.address, template, values)}"


async def notify_ctx(app: web.Application) -> AsyncIterator[None]:
    """The notification sender of this node (when `notify_sender` is on): an owned task."""
    from aquafleet.gateway.appkeys import REDIS, SETTINGS, TASKS
    from aquafleet.gateway.providers.sms import build_sms_sender

    settings = app[SETTINGS]
    if not settings.notify_sender:
        yield
        return
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10.0), connector=aiohttp.TCPConnector(limit=16)
    ) as session:
        sender = NotificationSender(
            wechat=WechatTemplates(
                session, app[REDIS], settings.redis_prefix, base_url=settings.wechat_api_url
            ),
            sms=build_sms_sender(settings, session),
            secrets=SecretBox.from_master(settings.master_secret_bytes()),
            node_id=settings.resolved_node_id,
        )
        app[NOTIFY_SENDER] = sender
        app[TASKS].start("notify-sender", sender.run)
        try:
            yield
        finally:
            await app[TASKS].stop("notify-sender")


NOTIFY_SENDER: web.AppKey[NotificationSender] = web.AppKey("notify_sender", NotificationSender)
