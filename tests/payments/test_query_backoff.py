"""The payments sweep's queries of a bill nobody pays back off, on SQLite and PostgreSQL: an
abandoned Alipay payment URL (the member never opened it) is asked about after 1, 2, 5, 10
and 30 minutes, then hourly, not at every pass for the day it stays payable. The schedule is
on the bill's row (it holds across a restart: another service, the same count), for every
channel (the late-bill step is shared). The clock is the test's: a simulated day of passes."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import types
from typing import Any

import pytest

from aquafleet.api.payments import PAYMENTS
from aquafleet.models import payments
from tests.payments.shops import assert_ledger_clean
from tests.payments.test_alipay import fake_alipay
from tests.payments.test_bill_moves_channels import Channels, api_node, channels
from tests.payments.test_cards import fake_card

__all__ = ["api_node", "channels", "fake_alipay", "fake_card"]

PASS_EVERY = dt.timedelta(minutes=5)
DAY = dt.timedelta(hours=24)


class Clock:
    """models/payments.py's `dt.datetime.now`, moved by the test."""

    def __init__(self) -> None:
        self.at = dt.datetime.now(dt.UTC)

    def module(self) -> Any:
        clock = self

        class Datetime(dt.datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return clock.at if tz is not None else clock.at.replace(tzinfo=None)

        return types.SimpleNamespace(
            datetime=Datetime, UTC=dt.UTC, timedelta=dt.timedelta, timezone=dt.timezone
        )


def trade_queries(channels: Channels, bill_no: str) -> int:
    """How many times Alipay was asked about the trade (alipay.trade.query)."""
    return sum(
        1
        for method, params in channels.alipay.calls
        if method == "alipay.trade.query"
        and json.loads(params["biz_content"]).get("out_trade_no") == bill_no
    )


async def test_an_abandoned_alipay_url_is_asked_about_less_and_less_over_a_day(
    channels: Channels, monkeypatch: pytest.MonkeyPatch
):
    oid, _total = await channels.order()
    await channels.prepay(oid, "alipay")  # the URL the member never opens
    clock = Clock()
    monkeypatch.setattr(payments, "dt", clock.module())
    service = channels.shop.node.app[PAYMENTS]
    asked_at: list[dt.timedelta] = []
    start = clock.at
    while clock.at - start < DAY:
        clock.at += PASS_EVERY
        before = trade_queries(channels, oid)
        report = await service.sweep()
        assert report.errors == [], report.errors
        if trade_queries(channels, oid) > before:
            asked_at.append(clock.at - start)
        if clock.at - start == dt.timedelta(hours=12):
            # A restart: a new service (the node's settings), the schedule is the bill's.
            service = type(service)(
                service.client, service.box, service.metrics,
                notify_base_url=service.notify_base_url, query_after=service.query_after,
                apply_service=service.apply_service,
                unpaid_close_after=service.unpaid_close_after,
            )  # fmt: skip
            service.alipay = channels.shop.node.app[PAYMENTS].alipay
            service.cards = channels.shop.node.app[PAYMENTS].cards
    # Before: at every pass, 288 queries a day (1,440 at a pass a minute). Now at the pass
    # after its first minute, then 1, 2, 5, 10, 30 minutes later (at the next pass), then
    # hourly: 29.
    minutes = [int(t.total_seconds()) // 60 for t in asked_at]
    assert minutes[:6] == [5, 10, 15, 20, 30, 60], minutes
    assert {b - a for a, b in itertools.pairwise(minutes[5:])} == {60}, minutes
    assert len(minutes) == 29, minutes
    assert await channels.shop.state(oid) == "obligation"
    await assert_ledger_clean()
