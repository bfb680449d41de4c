"""Notifications (消息推送) on SQLite and PostgreSQL against faithful fakes of WeChat and Aliyun
SMS: the outbox row is written with its event, once per (event, recipient, channel); senders on
two nodes deliver each once; failures retry with backoff and every attempt is recorded; access
tokens are fetched once across nodes and refreshed when WeChat calls them expired; members turn
off what is not essential."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from aquafleet.gateway.notify import NotificationSender, WechatTemplates
from aquafleet.gateway.providers.sms import AliyunSmsConfig, AliyunSmsSender
from aquafleet.models.members import Member
from aquafleet.models.order_payment import mark_paid
from aquafleet.models.outbox import (
    Notification,
    NotificationAttempt,
    NotificationKind,
    NotificationState,
    backoff_s,
)
from aquafleet.models.sealed import SecretBox
from tests.api.conftest import PLATFORM_USER, ApiClient, Tenant
from tests.api.shop import add_product, make_member
from tests.api.test_orders_api import order_body
from tests.api.test_tickets_api import held_device, technician
from tests.conftest import MASTER_SECRET
from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.wechat import FakeWechat, FakeWechatUser

APPID, SECRET = "wx0123456789abcdef", "wx-secret"
KINDS = [k.value for k in NotificationKind]


async def configure_push(
    api: ApiClient, vid: str, fake: FakeWechat, sms: FakeAliyunSms | None = None
) -> None:
    """The vendor's official account and a template per kind (WeChat) and SMS templates."""
    await api.call("PUT", f"/vendors/{vid}/mxx", {"mp_appid": APPID, "mp_secret": SECRET})
    templates = {kind: f"tpl-{kind}" for kind in KINDS}
    if sms is not None:
        sms.templates["SMS_200001"] = "${first}: 工单${keyword1}, ${keyword3}"
    fake.templates[APPID] = set(templates.values())
    await api.call(
        "PUT",
        f"/vendors/{vid}/cfg",
        {"wechat_templates": templates, "sms_templates": {"ticket_dispatched": "SMS_200001"}},
    )


def sender_for(
    session: aiohttp.ClientSession,
    redis: aioredis.Redis,
    prefix: str,
    wechat: FakeWechat,
    sms: FakeAliyunSms,
    node: str,
) -> NotificationSender:
    return NotificationSender(
        wechat=WechatTemplates(session, redis, prefix, base_url=wechat.url),
        sms=AliyunSmsSender(
            session,
            AliyunSmsConfig(
                access_key_id="LTAIfake0001",
                access_key_secret="fake-secret",
                sign_name="净水云",
                template_code="SMS_100001",
                endpoint=sms.url,
            ),
        ),
        secrets=SecretBox.from_master(bytes.fromhex(MASTER_SECRET)),
        node_id=node,
    )


async def test_order_messages_are_written_with_the_move_and_sent_once_by_two_nodes(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], redis_client: Any,
    redis_prefix: str,
):  # fmt: skip
    a, _ = tenants
    async with FakeWechat() as wechat, FakeAliyunSms() as sms, aiohttp.ClientSession() as session:
        await configure_push(api, a.vid, wechat)
        shopper = await make_member(api_node, api, a.vid)
        openid = wechat.follow(APPID, FakeWechatUser("buyer"))
        await Member.filter(uid=shopper.uid).update(wx_openid=openid)
        pid = await add_product(a.vendor)
        order = (await shopper.client.call("POST", "/orders", order_body({"product_id": pid}))).data
        oid = order["order_id"]
        assert not await Notification.exists(event_key=f"order:{oid}:pay")
        await mark_paid(oid, admin=PLATFORM_USER, reason="test")
        await mark_paid(oid, admin=PLATFORM_USER, reason="test again")  # paid once
        (row,) = await Notification.filter(event_key=f"order:{oid}:pay")
        assert (row.kind, row.channel, row.address) == ("order_paid", "wechat", openid)

        nodes = [
            sender_for(session, redis_client, redis_prefix, wechat, sms, name)
            for name in ("node-1", "node-2")
        ]
        results = await asyncio.gather(*(node.run_once() for node in nodes))
        assert sum(results) == 1  # one node claimed it
        assert [m.template_id for m in wechat.messages_to(openid)] == ["tpl-order_paid"]
        message = wechat.messages_to(openid)[0]
        assert (message.data["first"], message.data["keyword1"]) == ("订单已支付", oid)
        assert sum(await asyncio.gather(*(node.run_once() for node in nodes))) == 0
        await row.refresh_from_db()
        assert (row.state, row.attempts) == (NotificationState.SENT, 1)
        (attempt,) = await NotificationAttempt.filter(notification_id=row.id)
        assert attempt.ok and attempt.detail.startswith("msgid ")
        assert wechat.token_requests == 1  # one token for both nodes


async def test_failures_retry_with_backoff_and_every_attempt_is_recorded(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant], redis_client: Any,
    redis_prefix: str,
):  # fmt: skip
    a, _ = tenants
    async with FakeWechat() as wechat, FakeAliyunSms() as sms, aiohttp.ClientSession() as session:
        await configure_push(api, a.vid, wechat, sms)
        shopper = await make_member(api_node, api, a.vid)
        did = await held_device(api, shopper, a.vid)
        tech_id, tech = await technician(a.vendor, "sms-tech", skills=[4], mobile="13900000009")
        opened = await a.vendor.call("POST", "/tickets", {"type": 4, "device_id": did})
        tid = opened.data["ticket_id"]
        await a.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
        await a.vendor.call("POST", f"/tickets/{tid}/dispatch", {"technician_id": tech_id})
        (row,) = await Notification.filter(kind=NotificationKind.TICKET_DISPATCHED)
        assert (row.channel, row.address, row.recipient_id) == ("sms", "13900000009", str(tech_id))

        sender = sender_for(session, redis_client, redis_prefix, wechat, sms, "node-1")
        sms.scripted.append((500, '{"Code":"ServiceUnavailable","Message":"busy"}'))
        now = dt.datetime.now(dt.UTC)
        assert await sender.run_once(now) == 1
        await row.refresh_from_db()
        assert (row.state, row.attempts) == (NotificationState.PENDING, 1)
        assert row.next_at >= now + dt.timedelta(seconds=backoff_s(1))
        assert await sender.run_once(now) == 0  # not due yet
        assert sms.sent == []
        later = now + dt.timedelta(seconds=backoff_s(1) + 1)
        assert await sender.run_once(later) == 1
        assert [s.template_code for s in sms.sent] == ["SMS_200001"]
        assert sms.sent[0].params["PhoneNumbers"] == "13900000009"
        attempts = await NotificationAttempt.filter(notification_id=row.id).order_by("number")
        assert [(x.number, x.ok) for x in attempts] == [(1, False), (2, True)]
        assert "Sms" in attempts[0].detail
        del tech


async def test_an_expired_token_is_refreshed_once_and_a_refused_recipient_is_not_retried(
    redis_client: Any, redis_prefix: str
):
    async with FakeWechat() as wechat, aiohttp.ClientSession() as session:
        wechat.templates[APPID] = {"tpl"}
        openid = wechat.follow(APPID, FakeWechatUser("p"))
        clients = [
            WechatTemplates(session, redis_client, redis_prefix, base_url=wechat.url)
            for _ in range(4)
        ]
        tokens = await asyncio.gather(*(c.token(APPID, SECRET) for c in clients))
        assert len(set(tokens)) == 1 and wechat.token_requests == 1  # fetched once
        wechat.expire_tokens()
        await clients[0].send(APPID, SECRET, openid, "tpl", {"first": "x"})
        assert wechat.token_requests == 2 and len(wechat.messages) == 1
        await clients[1].send(APPID, SECRET, openid, "tpl", {"first": "y"})
        assert wechat.token_requests == 2  # the refreshed token is shared
        from aquafleet.gateway.notify import RecipientRefused

        stranger = wechat.openid(APPID, FakeWechatUser("never-followed"))
        try:
            await clients[2].send(APPID, SECRET, stranger, "tpl", {})
        except RecipientRefused as exc:
            assert "40003" in str(exc)
        else:
            raise AssertionError("an unknown openid must be refused")


class _FirstReadTooEarly:
    """The node's Redis, but its first GET answers as it would have a moment before another
    node stored the token (the race: read, the other node stores and unlocks, then lock)."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._early = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def get(self, key: str) -> Any:
        if self._early:
            self._early = False
            return None
        return await self._redis.get(key)


async def test_a_node_that_locks_after_another_fetched_uses_that_token(
    redis_client: Any, redis_prefix: str
):
    """Fetching again would make WeChat retire the token the other node just started using."""
    async with FakeWechat() as wechat, aiohttp.ClientSession() as session:
        first = WechatTemplates(session, redis_client, redis_prefix, base_url=wechat.url)
        token = await first.token(APPID, SECRET)
        late = WechatTemplates(
            session, _FirstReadTooEarly(redis_client), redis_prefix, base_url=wechat.url
        )
        assert await late.token(APPID, SECRET) == token
        assert wechat.token_requests == 1 and late.token_fetches == 0


async def test_members_turn_off_what_is_not_essential(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    async with FakeWechat() as wechat:
        await configure_push(api, a.vid, wechat)
        shopper = await make_member(api_node, api, a.vid)
        openid = wechat.follow(APPID, FakeWechatUser("quiet"))
        await Member.filter(uid=shopper.uid).update(wx_openid=openid)
        prefs = (await shopper.client.call("GET", "/notifications/preferences")).data
        assert prefs["off"] == [] and "order_paid" in prefs["essential"]
        await shopper.client.call(
            "PUT", "/notifications/preferences", {"off": ["order_paid"]}, expect=422
        )
        await shopper.client.call(
            "PUT", "/notifications/preferences", {"off": ["ticket_done", "technician_on_way"]}
        )
        assert (await shopper.client.call("GET", "/notifications/preferences")).data["off"] == [
            "technician_on_way", "ticket_done",
        ]  # fmt: skip
        await a.vendor.call("GET", "/notifications/preferences", expect=403)
        did = await held_device(api, shopper, a.vid)
        tech_id, tech = await technician(a.vendor, "quiet-tech", skills=[4])
        tid = (await shopper.client.call("POST", "/tickets", {"type": 4, "device_id": did})).data[
            "ticket_id"
        ]
        await a.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
        await a.vendor.call("POST", f"/tickets/{tid}/dispatch", {"technician_id": tech_id})
        await tech.call("POST", f"/tickets/{tid}/start", {})
        await tech.call("POST", f"/tickets/{tid}/complete", {})
        kinds = await Notification.filter(recipient_id=shopper.uid).values_list("kind", flat=True)
        assert list(kinds) == []  # on the way and done: both turned off
