"""Payment tests run a whole node (the API's fixtures) against local fakes of the channels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.api.conftest import api, tenants
from tests.fakes.wechatpay import FakeWechatPay

__all__ = ["api", "api_node", "fake_pay", "tenants"]


@pytest.fixture
async def fake_pay() -> AsyncIterator[FakeWechatPay]:
    server = FakeWechatPay()
    await server.start()
    server.add_merchant()
    yield server
    await server.stop()


@pytest.fixture
async def api_node(database_url: str, node_factory: Any, fake_pay: FakeWechatPay) -> Any:
    """A node whose WeChat Pay is the fake, and which WeChat Pay notifies at its own port."""
    from aquafleet.api.payments import PAYMENTS

    node = await node_factory(
        database_url=database_url,
        wechatpay_api_url=fake_pay.url,
        payments_sweep_interval_s=3600,  # the tests sweep when they choose (one pass at start)
    )
    node.app[PAYMENTS].notify_base_url = f"http://127.0.0.1:{node.http_port}"
    return node
