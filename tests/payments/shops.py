"""What the payment tests of every channel share: a node paying through a channel's fake (and
notified by it at its own port), one vendor's shop with one product and one member, and the
ledger check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aquafleet.models.money import GUARDED_PREFIXES, check_ledger
from aquafleet.models.payments import check_payments
from tests.api.shop import Shopper

RECEIVER = {"name": "张三", "phone": "13900000000", "area": "珠海", "address": "南方软件园A123"}


async def channel_node(node_factory: Any, database_url: str, **settings: Any) -> Any:
    """A node whose channel is the fake named in `settings`, which notifies it at its port."""
    from aquafleet.api.payments import PAYMENTS

    node = await node_factory(
        database_url=database_url,
        payments_sweep_interval_s=3600,  # the tests sweep when they choose (one pass at start)
        **settings,
    )
    node.app[PAYMENTS].notify_base_url = f"http://127.0.0.1:{node.http_port}"
    return node


@dataclass
class ChannelShop:
    vid: str
    shopper: Shopper
    node: Any
    fake: Any
    pid: str

    async def new_order(self) -> dict[str, Any]:
        """The member orders the product: the order as the API answers it."""
        body = {"content": [{"product_id": self.pid}], "receiver": RECEIVER}
        answer = await self.shopper.client.call("POST", "/orders", body, expect=201)
        return dict(answer.data)

    async def state(self, oid: str) -> str:
        answer = await self.shopper.client.call("GET", f"/orders/{oid}")
        return str(answer.data["state_name"])

    async def sweep(self, limit: int | None = None) -> Any:
        from aquafleet.api.payments import PAYMENTS

        service = self.node.app[PAYMENTS]
        return await (service.sweep() if limit is None else service.sweep(limit=limit))


async def assert_ledger_clean() -> None:
    """What `aquafleet money check` verifies: the ledger, and the bills against it."""
    assert await check_ledger(guarded_prefixes=GUARDED_PREFIXES) == []
    assert await check_payments() == []


async def moved_before_closing(bill_no: str, channel: str = "wallet") -> None:
    """The bill moved to `channel` here only, its WeChat Pay order left open: how a bill moved
    before moves closed it at WeChat Pay first (such orders can still be paid there, and are
    then paid twice: booked and refunded). The API no longer moves a bill so."""
    from aquafleet.models.payments import Payment

    await Payment.filter(bill_no=bill_no).update(channel=channel, prepay_id="")
