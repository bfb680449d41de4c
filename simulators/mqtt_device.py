"""A virtual ESP8266 purifier: the same purifier as `simulators.device`, over MQTT.

Everything a purifier does (water, records in flight, acks and watermarks, commands, reboots,
the drain) is VirtualPurifier's; only the link differs. The MqttDeviceSession lives as long as
the purifier, so its seq counter runs on across broker connections (an ACK of a copy sent
before a reconnect never matches a record sent after it). Being connected to the broker is
being logged in: there is no HELLO/AUTH, the broker checked the password at CONNECT. What MQTT
adds: a connect notice and a last will (presence), and resending a record whose ACK did not
come within RESEND_S, doubling while none comes (the broker drops what nobody was subscribed
to receive, e.g. while the gateway's bridge reconnects).
"""

from __future__ import annotations

import random
import time
from typing import Any

from aquafleet.protocol import LoggedIn
from aquafleet.protocol.mqtt import MqttDeviceSession
from aquafleet.simulators.device import MAX_SETTLED_SEQS, FleetHooks, VirtualPurifier
from aquafleet.simulators.stats import WorkerStats

RESEND_S = 5.0  # a record unacked this long on a live connection is published again,
RESEND_MAX_S = 60.0  # the wait doubling to this while no ACK comes (no resend storm)
Outgoing = list[tuple[str, bytes, int]]


class MqttPurifier(VirtualPurifier):
    __slots__ = ("client_id", "connected_ms", "mqtt", "resend_s")

    def __init__(
        self,
        did: str,
        key: bytes,
        *,
        boot: int,
        now: float,
        stats: WorkerStats,
        rng: random.Random,
        prefix: str = "aq",
        client_id_prefix: str = "",
        hooks: FleetHooks | None = None,
        **options: Any,
    ) -> None:
        super().__init__(did, key, boot=boot, now=now, stats=stats, rng=rng, hooks=hooks, **options)
        self.mqtt = MqttDeviceSession(prefix, did, key, clock=time.time)
        self.client_id = client_id_prefix + did
        self.connected_ms = 0
        self.resend_s = RESEND_S

    def receive(self, data: Any, now: float, now_ns: int, wall: int) -> Any:
        unacked = len(self.unacked)
        out = super().receive(data, now, now_ns, wall)
        if len(self.unacked) < unacked:
            self.resend_s = RESEND_S  # acks flow again
        return out

    def will(self) -> tuple[str, bytes]:
        """The last will for the next CONNECT (offline, about that connection)."""
        self.connected_ms = max(int(time.time() * 1000), self.connected_ms + 1)
        return self.mqtt.will(self.connected_ms)

    def connect(self, now: float, now_ns: int) -> bytes:
        """A CONNECT is going out (the TCP HELLO's place in the timeline)."""
        self.session = None
        self.online = False
        self.close_reason = None
        self.last_error = None
        self.result_seqs.clear()  # settled_seqs is kept: late acks of earlier copies may come
        self.hello_ns = now_ns
        self.last_tx = now
        return b""

    def broker_connected(self, now: float, now_ns: int) -> Outgoing:
        """CONNACK and SUBACK: online. Resend what is unacked, announce the connection."""
        mqtt = self.mqtt
        mqtt.connected(self.connected_ms)
        self.session = mqtt  # type: ignore[assignment]  # the MQTT session, same calls
        for seq in self.unacked:
            self.settled_seqs[seq] = None  # its ACK may still come for the earlier copy
        self._trim_settled()
        event = LoggedIn(self.heartbeat_s, int(time.time()), None, None)
        self._on_logged_in(event, now, now_ns)
        if self.max_rate and not self.draining:
            self.fill_window(now, now_ns, int(time.time()))
        elif self.draining and self.final_pending and self.room():
            self._send_new(now, now_ns, int(time.time()), final=True)
        self.last_tx = now
        return mqtt.data_to_send()

    def link_lost(self, error: bool) -> None:
        self.mqtt.disconnected()
        super().link_lost(error)

    def ping_due(self, now: float) -> Outgoing:  # type: ignore[override]
        """Once a second: resend records whose ACK is overdue; PING after a heartbeat of
        silence (the gateway forgets a device idle for 2.5 heartbeats)."""
        mqtt = self.mqtt
        if not self.online or self.session is None or mqtt.is_closed:
            return []
        now_ns = int(now * 1e9)
        overdue = [
            (seq, item)
            for seq, item in self.unacked.items()
            if now_ns - item.sent_ns > self.resend_s * 1e9 and not item.unavailable
        ]
        if overdue:
            self.resend_s = min(self.resend_s * 2, RESEND_MAX_S)
        for seq, item in overdue:
            del self.unacked[seq]
            self.settled_seqs[seq] = None
            item.seq = new_seq = mqtt.send_record(item.record, dup=True)
            item.sent_ns = now_ns
            self.unacked[new_seq] = item
            self.stats.records_resent += 1
        self._trim_settled()
        if now - self.last_tx >= self.heartbeat_s:
            mqtt.ping()
            self.stats.pings_sent += 1
        out = mqtt.data_to_send()
        if out:
            self.last_tx = now
        return out

    def _trim_settled(self) -> None:
        settled = self.settled_seqs
        while len(settled) > MAX_SETTLED_SEQS:
            del settled[next(iter(settled))]
