"""Helpers of the shop tests: members with a session, and the seed's AC-02 product."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from aquafleet.api.tokens import TOKENS
from aquafleet.models.members import Member, MemberState, member_uid
from aquafleet.models.tenancy import Principal, Role
from tests.api.conftest import ApiClient

_serials = itertools.count(1)


@dataclass
class Shopper:
    uid: str
    client: ApiClient


async def make_member(node: Any, api: ApiClient, vid: str, **fields: Any) -> Shopper:
    """A member of `vid` with a session (the login endpoints have their own tests)."""
    serial = next(_serials)
    uid = member_uid(vid, serial)
    values = {"name": f"Member {serial}", "mobile": f"138{serial:08d}", "state": MemberState.ACTIVE}
    await Member.create(uid=uid, vendor_id=vid, **{**values, **fields})
    pair = await node.app[TOKENS].issue(Principal(Role.MEMBER, uid, vendor_code=vid))
    return Shopper(uid, api.as_(pair["access_token"]))


# The seed's AC-02 example, with amounts read as fen, and packages that say what they buy.
SEED_PRODUCT: dict[str, Any] = {
    "state": 1,
    "type": 1,
    "prod_id": "",
    "billing": 3,
    "name": "智能净水机",
    "desc": "免安装移动水吧",
    "tags": "智能, 净水机, 水吧",
    "sequence": 1,
    "bonus": True,
    "price": 298000,
    "freight": 1000,
    "install": True,
    "maintain": True,
    "install_cost": 5000,
    "maintain_cost": 3000,
    "orig_price": 499900,
    "resource": {
        "prev_res": "https://cdn.example.com/p.png",
        "intro_res": ["https://cdn.example.com/i1.png"],
        "detail_res": "https://cdn.example.com/d.html",
    },
    "notify_url": "",
    "rent": {
        "deposit": 50000,
        "config": [
            {"name": "30天", "key": "30d", "value": 6000, "days": 30},
            {"name": "60天", "key": "60d", "value": 12000, "days": 60},
            {"name": "90天", "key": "90d", "value": 18000, "days": 90},
            {"name": "180天", "key": "180d", "value": 36000, "days": 180},
            {"name": "360天", "key": "360d", "value": 72000, "days": 360},
        ],
    },
    "commis": {"enabled": True, "config": [21, 9, 0]},
    "specification": {
        "mode": 0,
        "filters": [
            {"order": 1, "name": "PPC复合滤芯", "timer_mode": 0, "lifetime": 4320, "worklife": 540},
            {"order": 2, "name": "CPP复合滤芯", "timer_mode": 0, "lifetime": 4320, "worklife": 540},
            {
                "order": 3,
                "name": "RO反渗透滤芯",
                "timer_mode": 0,
                "lifetime": 17280,
                "worklife": 2160,
            },
        ],
        "flowmeter": {
            "measure_mode": 0,
            "config": [
                {"name": "常温", "key": "normal", "value": 30},
                {"name": "冰水", "key": "cold", "value": 30},
                {"name": "温水", "key": "warm", "value": 30},
                {"name": "热水", "key": "hot", "value": 30},
            ],
        },
    },
}


def seed_product(**changes: Any) -> dict[str, Any]:
    product = copy.deepcopy(SEED_PRODUCT)
    product.update(changes)
    return product


async def add_product(client: ApiClient, **changes: Any) -> str:
    answer = await client.call("POST", "/products", seed_product(**changes), expect=201)
    return str(answer.data["prod_id"])
