"""Issue 15 end to end, on SQLite and PostgreSQL: a device's filter runs low through real
metering (a device session on the node's TCP gateway, the ledger writer's maintenance check) ->
a maintenance ticket -> dispatched to the nearest technician (Redis GEOSEARCH, real coordinates)
-> completed -> the filter is reset on the device (reset_filter command; the device's next
report starts a new cycle) -> the member rates it; the member received each notification once
through the WeChat fake, the technician its dispatch by SMS through the Aliyun fake, both from
the node's own sender."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aquafleet.models.devices import Device
from aquafleet.models.filters import set_device_filter_spec
from aquafleet.models.members import Member
from aquafleet.models.outbox import Notification, NotificationState
from aquafleet.models.tickets import Ticket, TicketType
from aquafleet.models.usage import DeviceSnapshot
from aquafleet.protocol import Command, CommandOp
from aquafleet.protocol.message_types import FilterReading, Result
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import make_member
from tests.api.test_notifications import APPID, SECRET
from tests.api.test_tickets_api import GONGBEI, GUANGZHOU, XIANGZHOU, at, technician
from tests.devices import register_devices, telemetry
from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.wechat import FakeWechat, FakeWechatUser
from tests.metering.support import SEED_FILTERS

MEMBER_KINDS = ("filter_low", "technician_on_way", "ticket_done")


@pytest.fixture
async def wechat() -> AsyncIterator[FakeWechat]:
    async with FakeWechat() as fake:
        yield fake


@pytest.fixture
async def sms() -> AsyncIterator[FakeAliyunSms]:
    async with FakeAliyunSms() as fake:
        fake.templates["SMS_200001"] = "${first}: 工单${keyword1} ${keyword3}"
        yield fake


@pytest.fixture
async def api_node(
    database_url: str, node_factory: Any, wechat: FakeWechat, sms: FakeAliyunSms
) -> Any:
    """The node of the `api` fixture, with its notification sender on, talking to the fakes."""
    return await node_factory(
        database_url=database_url, filter_threshold_pct=10, notify_sender=True,
        wechat_api_url=wechat.url, sms_provider="aliyun", sms_endpoint=sms.url,
        sms_access_key_id="LTAIfake0001", sms_access_key_secret="fake-secret",
        sms_sign_name="净水云", sms_template_code="SMS_100001",
    )  # fmt: skip


async def eventually(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_worn_filter_is_replaced_by_the_nearest_technician_and_rated(
    api: ApiClient,
    api_node: Any,
    tenants: tuple[Tenant, Tenant],
    device_factory: Any,
    wechat: FakeWechat,
    sms: FakeAliyunSms,
):
    a, b = tenants
    # The vendor's official account, a template per member message, SMS for dispatches.
    await api.call("PUT", f"/vendors/{a.vid}/mxx", {"mp_appid": APPID, "mp_secret": SECRET})
    templates = {kind: f"tpl-{kind}" for kind in MEMBER_KINDS}
    wechat.templates[APPID] = set(templates.values())
    await api.call(
        "PUT",
        f"/vendors/{a.vid}/cfg",
        {"wechat_templates": templates, "sms_templates": {"ticket_dispatched": "SMS_200001"}},
    )
    shopper = await make_member(api_node, api, a.vid)
    openid = wechat.follow(APPID, FakeWechatUser("household"))
    await Member.filter(uid=shopper.uid).update(wx_openid=openid)

    (dev,) = await register_devices(api_node, 1, vendor=a.vid)
    await Device.filter(did=dev.did).update(
        owner_id=shopper.uid, lbs_lat_e6=XIANGZHOU[0], lbs_lng_e6=XIANGZHOU[1]
    )
    await set_device_filter_spec(dev.did, SEED_FILTERS)
    near_id, near = await technician(a.vendor, "near", skills=[5], mobile="13900000021")
    _far_id, far = await technician(a.vendor, "far", skills=[5], mobile="13900000022")
    _other_id, other = await technician(b.vendor, "other", skills=[5])
    await at(near, GONGBEI)
    await at(far, GUANGZHOU)
    await at(other, XIANGZHOU)  # nearest of all, but another vendor's

    # The filter wears through real metering.
    device = device_factory(dev.did, dev.key, api_node.tcp_port)
    await device.login()
    boot, rec = int(time.time()), 0

    async def report(*stages: tuple[int, int, int, int]) -> None:
        nonlocal rec
        rec += 1
        readings = tuple(FilterReading(*s) for s in stages)
        await device.send(telemetry(rec, boot, 1000 * rec, filters=readings))
        await device.settled()
        stored = rec
        await eventually(
            lambda: DeviceSnapshot.filter(did=dev.did, boot=boot, rec=stored).exists(),
            f"the ledger to store record {stored}",
        )

    await report((1, 100, 400, 0), (2, 100, 400, 0))
    await report((1, 490, 910, 0), (2, 100, 400, 0))  # stage 1: 9% left
    await eventually(
        lambda: Ticket.filter(device_id=dev.did, type=TicketType.MAINTENANCE).exists(),
        "the maintenance ticket",
    )
    ticket = await Ticket.get(device_id=dev.did, type=TicketType.MAINTENANCE)
    tid = ticket.ticket_id
    assert ticket.member_uid == shopper.uid and "stage 1" in ticket.detail

    # Approved, dispatched to the nearest available technician with the skill.
    await a.vendor.call("POST", f"/tickets/{tid}/approve", {"check_result": True})
    dispatched = await a.vendor.call("POST", f"/tickets/{tid}/dispatch", {"mode": "distance"})
    assert dispatched.data["technician_id"] == near_id
    assert 5_000 < dispatched.data["distance_m"] < 8_000
    await far.call("GET", f"/tickets/{tid}", expect=404)
    await near.call("POST", f"/tickets/{tid}/start", {"note": "出发"})

    # Completed: the device is told to reset stage 1, and its next report starts a new cycle.
    done = await near.call("POST", f"/tickets/{tid}/complete", {"note": "PPC 滤芯已更换"})
    assert done.data["status"] == 6
    command = await device.wait_for(Command)
    assert (command.op, dict(command.args)) == (CommandOp.RESET_FILTER, {1: 1})
    device.session.send_result(Result(cid=command.cid, rc=0))
    await device.flush()
    await report((1, 0, 0, 1), (2, 100, 400, 0))
    snapshot = await DeviceSnapshot.get(did=dev.did)
    assert snapshot.filters is not None and snapshot.filters[0] == [1, 0, 0, 1]
    await report((1, 1, 1, 1), (2, 100, 400, 0))  # a barrier: the check ran on the reset
    assert await Ticket.filter(device_id=dev.did, type=TicketType.MAINTENANCE).count() == 1

    rated = await shopper.client.call(
        "POST", f"/tickets/{tid}/rating", {"rate_value": 5, "rate_detail": "很专业"}
    )
    assert rated.data["ratings"]["rate_value"] == 5

    # Each message delivered once by the node's sender.
    async def all_sent() -> bool:
        return not await Notification.filter(state=NotificationState.PENDING).exists()

    await eventually(all_sent, "the outbox to drain")
    got = [m.template_id for m in wechat.messages_to(openid)]
    assert sorted(got) == sorted(templates.values()), got
    assert [s.params["PhoneNumbers"] for s in sms.sent] == ["13900000021"]
    assert tid in sms.sent[0].text
    rows = await Notification.all()
    assert all((r.state, r.attempts) == (NotificationState.SENT, 1) for r in rows)
    assert wechat.token_requests == 1
