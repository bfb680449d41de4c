"""The broker's HTTP authentication and ACL endpoints (EMQX 5 and mosquitto-go-auth forms),
called directly on a running node (the local Mosquitto runs without auth)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from aquafleet.gateway.appkeys import KEYSPACE, REDIS
from aquafleet.gateway.registry_cache import write_entries
from aquafleet.models.devices import DeviceState
from aquafleet.protocol.crypto import mqtt_password
from tests.devices import register_devices

BRIDGE_PASSWORD = "bridge-secret-1"


@pytest.fixture
async def auth_node(node_factory: Any) -> Any:
    return await node_factory(mqtt_password=BRIDGE_PASSWORD, mqtt_topic_prefix="aq")


async def call(node: Any, path: str, body: Any, *, form: bool = False) -> dict[str, Any]:
    url = f"http://127.0.0.1:{node.http_port}{path}"
    async with aiohttp.ClientSession() as http:
        if form:
            response = await http.post(url, data=body)
        elif isinstance(body, bytes | str):
            response = await http.post(url, data=body, headers={"Content-Type": "application/json"})
        else:
            response = await http.post(url, json=body)
        async with response:
            assert response.status == 200
            assert response.content_type == "application/json"
            answer: dict[str, Any] = await response.json()
    assert answer["ok"] == (answer["result"] == "allow")
    return answer


def login(did: str, key: bytes, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return {"clientid": did, "username": did, "password": mqtt_password(key, did, ts)}


async def test_a_device_logs_in_once_per_password(auth_node: Any) -> None:
    (dev,) = await register_devices(auth_node, 1)
    body = login(dev.did, dev.key)
    assert await call(auth_node, "/mqtt/auth", body) == {
        "result": "allow", "ok": True, "error": "", "is_superuser": False,
    }  # fmt: skip
    again = await call(auth_node, "/mqtt/auth", body)  # a captured password, replayed
    assert again["result"] == "deny" and "already used" in again["error"]
    fresh = await call(auth_node, "/mqtt/auth", login(dev.did, dev.key, int(time.time()) + 1))
    assert fresh["result"] == "allow"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"password": "not-a-password"}, "password is not"),
        ({"clientid": "someone-else"}, "client id and user name"),
        ({"username": "aq/+/#"}, "client id and user name"),
    ],
)
async def test_malformed_logins_are_denied(auth_node: Any, change: dict, reason: str) -> None:
    (dev,) = await register_devices(auth_node, 1)
    answer = await call(auth_node, "/mqtt/auth", {**login(dev.did, dev.key), **change})
    assert answer["result"] == "deny" and reason in answer["error"]


async def test_passwords_with_non_ascii_digits_are_denied_not_a_server_error(
    auth_node: Any,
) -> None:
    """str.isdigit() takes "²" and Arabic-Indic digits; int() and compare_digest() then raised,
    so the broker got a 500 (which EMQX reads as "ignore") instead of a deny."""
    (dev,) = await register_devices(auth_node, 1)
    good = login(dev.did, dev.key)["password"]
    ts, _, digest = good.partition(".")
    arabic_ts = "".join(chr(0x660 + int(c)) for c in ts)
    for password in (f"²2.{digest}", f"{arabic_ts}.{digest}", f"{ts}.{'é' * 64}"):
        answer = await call(
            auth_node, "/mqtt/auth", {**login(dev.did, dev.key), "password": password}
        )
        assert answer["result"] == "deny" and "password is not" in answer["error"], password
    assert (await call(auth_node, "/mqtt/auth", login(dev.did, dev.key)))["result"] == "allow"


async def test_wrong_key_old_timestamp_unknown_and_disabled_devices_are_denied(
    auth_node: Any,
) -> None:
    first, second = await register_devices(auth_node, 2)
    wrong_key = await call(auth_node, "/mqtt/auth", login(first.did, second.key))
    assert wrong_key["error"] == "bad credentials"
    old = await call(auth_node, "/mqtt/auth", login(first.did, first.key, int(time.time()) - 660))
    assert "outside" in old["error"]
    unknown = await call(auth_node, "/mqtt/auth", login("NOSUCH00000001AB", first.key))
    assert unknown["error"] == "unknown or disabled device"
    await write_entries(
        auth_node.app[REDIS], auth_node.app[KEYSPACE], [(second.did, int(DeviceState.DISABLED), 1)]
    )
    disabled = await call(auth_node, "/mqtt/auth", login(second.did, second.key))
    assert disabled["error"] == "unknown or disabled device"


async def test_the_bridge_logs_in_with_its_own_credentials(auth_node: Any) -> None:
    bridge = {"clientid": "aquafleet-node-1", "username": "aquafleet-gateway"}
    allowed = await call(auth_node, "/mqtt/auth", {**bridge, "password": BRIDGE_PASSWORD})
    assert allowed["result"] == "allow" and allowed["is_superuser"] is True
    denied = await call(auth_node, "/mqtt/auth", {**bridge, "password": "guess"})
    assert denied["result"] == "deny" and denied["is_superuser"] is False
    assert (await call(auth_node, "/mqtt/superuser", {"username": "aquafleet-gateway"}))["ok"]
    assert not (await call(auth_node, "/mqtt/superuser", {"username": "TEST00000001B580"}))["ok"]


async def test_without_a_bridge_password_the_bridge_user_is_refused(node_factory: Any) -> None:
    node = await node_factory()
    answer = await call(node, "/mqtt/auth", {"username": "aquafleet-gateway", "password": ""})
    assert answer["result"] == "deny"


@pytest.mark.parametrize(
    ("topic", "action", "allowed"),
    [
        ("aq/{did}/up/tele", "publish", True),
        ("aq/{did}/up/event", "publish", True),
        ("aq/{did}/up/result", "publish", True),
        ("aq/{did}/up/ack", "publish", True),
        ("aq/{did}/status", "publish", True),
        ("aq/{did}/down/#", "subscribe", True),
        ("aq/{did}/down/cmd", "subscribe", True),
        ("aq/{did}/down/ack", "publish", False),  # only the gateway speaks for the gateway
        ("aq/{did}/up/tele", "subscribe", False),
        ("aq/OTHER0000001AB/up/tele", "publish", False),
        ("aq/OTHER0000001AB/down/#", "subscribe", False),
        ("aq/+/down/#", "subscribe", False),
        ("aq/#", "subscribe", False),
        ("$share/g/aq/+/up/#", "subscribe", False),
        ("aq/{did}/up/tele", "all", False),
    ],
)
async def test_emqx_acl_a_device_only_uses_its_own_topics(
    auth_node: Any, topic: str, action: str, allowed: bool
) -> None:
    (dev,) = await register_devices(auth_node, 1)
    did = dev.did
    body = {"clientid": did, "username": did, "topic": topic.format(did=did), "action": action}
    answer = await call(auth_node, "/mqtt/acl", body)
    assert answer["result"] == ("allow" if allowed else "deny")


@pytest.mark.parametrize(
    ("topic", "acc", "allowed"),
    [
        ("aq/{did}/up/tele", "2", True),
        ("aq/{did}/down/#", "4", True),
        ("aq/{did}/down/ack", "1", True),
        ("aq/{did}/up/tele", "1", False),
        ("aq/{did}/down/ack", "3", False),
        ("aq/{did}/up/tele", "9", False),
    ],
)
async def test_go_auth_acl_with_form_bodies(
    auth_node: Any, topic: str, acc: str, allowed: bool
) -> None:
    (dev,) = await register_devices(auth_node, 1)
    did = dev.did
    body = {"clientid": did, "username": did, "topic": topic.format(did=did), "acc": acc}
    assert (await call(auth_node, "/mqtt/acl", body, form=True))["ok"] is allowed


async def test_acl_refuses_unknown_and_disabled_devices_even_on_their_own_topics(
    auth_node: Any,
) -> None:
    """/mqtt/auth refuses them at CONNECT; the ACL must too (a device disabled while
    connected, or a broker that lets a client publish without an auth call)."""
    (dev,) = await register_devices(auth_node, 1)

    async def publish_tele(did: str) -> dict[str, Any]:
        body = {"clientid": did, "username": did, "topic": f"aq/{did}/up/tele",
                "action": "publish"}  # fmt: skip
        return await call(auth_node, "/mqtt/acl", body)

    assert (await publish_tele(dev.did))["result"] == "allow"
    unknown = await publish_tele("NOSUCH00000001AB")
    assert (unknown["result"], unknown["error"]) == ("deny", "unknown or disabled device")
    await write_entries(
        auth_node.app[REDIS], auth_node.app[KEYSPACE], [(dev.did, int(DeviceState.DISABLED), 1)]
    )
    disabled = await publish_tele(dev.did)
    assert (disabled["result"], disabled["error"]) == ("deny", "unknown or disabled device")


async def test_the_bridge_may_use_any_topic(auth_node: Any) -> None:
    body = {"username": "aquafleet-gateway", "topic": "$share/g/aq/+/up/#", "action": "subscribe"}
    assert (await call(auth_node, "/mqtt/acl", body))["result"] == "allow"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"username": ["a"]}', b'{"username": true}', b"x" * 5000],
)
async def test_unreadable_requests_are_denied_not_ignored(auth_node: Any, body: bytes) -> None:
    for path in ("/mqtt/auth", "/mqtt/acl", "/mqtt/superuser"):
        answer = await call(auth_node, path, body)
        assert answer["result"] == "deny" and answer["error"]
