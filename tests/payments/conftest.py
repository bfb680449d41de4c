"""Payment tests run a whole node (the API's fixtures) against local fakes of the channels."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from aquafleet.gateway.logs import configure_logging
from tests.api.conftest import api, tenants
from tests.fakes.wechatpay import FakeWechatPay
from tests.payments.shops import channel_node

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
    return await channel_node(node_factory, database_url, wechatpay_api_url=fake_pay.url)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Every log line of the test, at debug level."""
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    yield stream
    logging.getLogger().handlers.clear()
