"""One MQTT device as the hub sees it: a DeviceLink whose session is an MqttServerSession.

The hub, the login batcher, the meter and presence treat it like a TCP connection: the same
calls (verify, claim, meter, ack, timers, kicks) reach it; what differs is where its outbound
messages go (the bridge's publish queue) and that it has no socket of its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aquafleet.protocol import ErrorCode
from aquafleet.protocol.mqtt import MqttServerSession

if TYPE_CHECKING:
    from aquafleet.gateway.mqtt.bridge import MqttBridge

# Ends of a local MQTT session that say nothing about the device: it may be talking to
# another node, so its presence stays (and expires on its own after the idle timeout).
KEEPS_PRESENCE = frozenset({ErrorCode.IDLE_TIMEOUT, ErrorCode.SHUTDOWN, ErrorCode.REPLACED})


class MqttDevice:
    """This node's view of one MQTT device, from its first message until it goes quiet."""

    __slots__ = (
        "bridge", "closed", "conn_id", "did", "peer_ip", "session", "shard", "touched_rx",
        "transport",
    )  # fmt: skip

    def __init__(self, bridge: MqttBridge, did: str, conn_id: str, now: float) -> None:
        hub = bridge.hub
        self.bridge = bridge
        self.session = MqttServerSession(
            bridge.prefix,
            did,
            now,
            clock=time.time,
            heartbeat_s=hub.heartbeat_s,
            login_timeout_s=hub.login_timeout_s,
        )
        self.did = ""  # set by the hub once the device's key held (as on TCP)
        self.shard = 0
        self.touched_rx: float | None = None
        self.conn_id = conn_id
        self.peer_ip = ""  # the broker authenticated the client; we never see its address
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def flush(self) -> None:
        """Count what the session dropped, send the desired state a login found, read what
        waited for the key, publish what is queued (acks, commands)."""
        session = self.session
        if session.drops:
            self.bridge.count_drops(session.drops)
            session.drops.clear()
        if session.is_online and not self.closed:
            sender = self.bridge.hub.sender
            if session.has_desired and sender is not None and sender.can_push():
                # MQTT's AUTH_OK: the state goes as a SET_STATE command, resent until answered.
                # Without a command id at hand (a login storm used the node's block up), it
                # waits for one of the device's next messages.
                desired = session.take_desired()
                assert desired is not None
                sender.push(self.did, desired)
            for envelope in session.take_held():
                self.bridge.handle(self, envelope, time.time())
        out = session.data_to_send()
        if out:
            self.bridge.send(out)

    def close(self, code: ErrorCode, reason: str, *, release: bool | None = None) -> None:
        """End the local session; the presence is released unless `code` keeps it."""
        if self.closed:
            return
        self.session.close(code, reason)
        self.flush()
        self.closed = True
        self.bridge.device_closed(
            self, release=code not in KEEPS_PRESENCE if release is None else release
        )

    def pause_reading(self) -> None:
        """Nothing per device: the bridge stops taking messages while the hub pauses reads."""

    def resume_reading(self) -> None:
        """See pause_reading."""
