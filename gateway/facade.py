"""The device side as the REST API sees it: one narrow facade under one app key
(`appkeys.DEVICE_GATEWAY`). The API asks it about presence and runtime status, hands it
commands and service changes, and tells it about login changes; it never reaches into the hub,
the command service or the stores itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from aquafleet.gateway.commands import CommandRecord, CommandService
from aquafleet.gateway.device_status import (
    RuntimeStatus,
    SessionRecord,
    read_runtime,
    read_sessions,
)
from aquafleet.gateway.fleet import FleetCounts, read_fleet, read_services
from aquafleet.gateway.hub import Hub
from aquafleet.gateway.keys import Keyspace
from aquafleet.gateway.redis_io import redis_errors
from aquafleet.gateway.registry_cache import kick_everywhere, write_entries
from aquafleet.gateway.service_state import ServiceState, ServiceStore
from aquafleet.models import filters, handover, service, service_requests
from aquafleet.models.commands import check_not_locked
from aquafleet.models.service import ChangeOutcome, ServiceMode
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.vending import DispenseSession, start_dispense
from aquafleet.protocol import Command, CommandOp


@dataclass(frozen=True, slots=True)
class NodeHealth:
    node_id: str
    connections: int
    online: int
    reads_paused: bool


@dataclass(frozen=True, slots=True)
class LoginEntry:
    """What a device's login needs to know of it: its state and key version."""

    did: str
    state: int
    key_version: int


class DeviceGateway:
    """Presence, runtime status, commands and service changes, for the API."""

    def __init__(
        self,
        *,
        hub: Hub,
        commands: CommandService,
        service_store: ServiceStore,
        client: aioredis.Redis,
        keyspace: Keyspace,
    ) -> None:
        self._hub = hub
        self._commands = commands
        self._store = service_store
        self._client = client
        self._keyspace = keyspace

    # ------------------------------------------------------------------ this node

    async def health(self) -> NodeHealth:
        """This node's connections; raises RedisUnavailable when its Redis does not answer."""
        with redis_errors("health check"):
            await self._client.ping()
        hub = self._hub
        return NodeHealth(hub.node_id, len(hub.connections), len(hub.online), hub.reads_paused)

    # ------------------------------------------------------------------ devices

    async def runtime_status(self, dids: Sequence[str]) -> dict[str, RuntimeStatus]:
        """Presence, last session and latest report of many devices in one round trip."""
        if not dids:
            return {}
        return await read_runtime(self._client, self._keyspace, dids)

    async def sessions(
        self, did: str, *, limit: int, offset: int, now_ms: int
    ) -> tuple[list[SessionRecord], int]:
        """A page of the device's presence history, newest first, and how many are kept."""
        return await read_sessions(
            self._client, self._keyspace, did, limit=limit, offset=offset, now_ms=now_ms
        )

    async def fleet_counts(self, dids: Sequence[str]) -> FleetCounts:
        """Online, locked, rented and faulty devices among `dids`, in one round trip."""
        return await read_fleet(self._client, self._keyspace, dids)

    async def service_states(self, dids: Sequence[str]) -> dict[str, ServiceState]:
        """The service state of many devices in one round trip (for a list's filters)."""
        return await read_services(self._client, self._keyspace, dids)

    async def publish_logins(
        self, entries: Sequence[LoginEntry], *, kick: str | None = None
    ) -> None:
        """Copy the devices' login entries to Redis at once (the registry sync would within
        seconds); with `kick` ("disable" or "revoke", the offline reason shown), close their
        connections wherever they are."""
        await write_entries(
            self._client, self._keyspace, [(e.did, e.state, e.key_version) for e in entries]
        )
        if kick is not None:
            await kick_everywhere(self._client, self._keyspace, [e.did for e in entries], verb=kick)

    # ------------------------------------------------------------------ service state

    async def read_service(self, did: str) -> ServiceState:
        return await self._store.read(did)

    async def change_service(
        self, did: str, change: ServiceChangeRequest, *, actor: str
    ) -> tuple[ChangeOutcome, ServiceState]:
        """Apply a change (models/service.py validates and records it); the device gets the
        new desired state at once when connected, else at its next login."""
        outcome = await service_requests.apply_change(self._store, did, change, actor=actor)
        return outcome, await self._store.read(did)

    async def hand_over(
        self, did: str, *, recipient: str, request_id: str, actor: str, reason: str,
        recorded: bool = False,
    ) -> handover.Handover:  # fmt: skip
        """An exchange: the device's live service for its replacement `recipient`; the quota
        left is taken off it in the same step (models/handover.py hand_over)."""
        return await handover.hand_over(
            self._store, did, recipient=recipient, actor=actor, reason=reason,
            request_id=request_id, recorded=recorded,
        )  # fmt: skip

    async def hand_back(
        self, did: str, *, request_id: str, lock_request_id: str | None, actor: str, reason: str,
        recorded: bool = False,
    ) -> handover.HandBack:  # fmt: skip
        """A cancelled exchange: the quota `did` handed over under `request_id` comes back to
        it, once (models/handover.py hand_back)."""
        return await handover.hand_back(
            self._store, did, request_id=request_id, lock_request_id=lock_request_id,
            actor=actor, reason=reason, recorded=recorded,
        )  # fmt: skip

    async def reset_filter(self, did: str, stage: int, *, actor: str, reason: str) -> int:
        """Tell the device a filter stage was replaced (recorded in the service log); the cid.
        DeviceOffline when the device cannot be told now."""
        router = _IssuerRouter(self._commands, actor)
        return await filters.reset_filter(router, did, stage, actor=actor, reason=reason)

    # ------------------------------------------------------------------ commands

    async def send_command(
        self,
        did: str,
        op: CommandOp,
        args: Mapping[int, int],
        *,
        mode: ServiceMode | None,
        issuer: str,
        reason: str,
        timeout_s: int,
        wait_s: float,
        service_state: ServiceState | None = None,
    ) -> CommandRecord | None:
        """Send a command; the record once final, or as it stands after `wait_s`.
        `service_state`: the device's live state when the caller read it already (a dispense
        checks its locks), else it is read here.

        Lock and unlock change the desired state (recorded in the service log with `reason`)
        and log a command that succeeds when the device holds that state's version. A dispense
        to a vending machine opens a session at price 0, so the ledger still closes it with the
        ml actually poured. A dispense to a device locked now (its live state) is refused
        (DeviceLocked). Anything else is a one-shot command routed to the device's node."""
        commands = self._commands
        if op in (CommandOp.LOCK, CommandOp.UNLOCK):
            change = service.lock if op is CommandOp.LOCK else service.unlock
            outcome = await change(self._store, did, actor=issuer, reason=reason or "command")
            cid, _ = await commands.record_state_change(did, op, outcome.version, issuer=issuer)
            return await commands.wait(did, cid, wait_s)
        if op is CommandOp.DISPENSE and mode is ServiceMode.VENDING:
            session = await start_dispense(
                _IssuerRouter(commands, issuer), self._store, did, args[1], price_fen_per_l=0,
                timeout_s=timeout_s,
            )  # fmt: skip
            return await commands.wait(did, int(session.cid), wait_s)
        if op is CommandOp.DISPENSE:
            state = service_state if service_state is not None else await self._store.read(did)
            check_not_locked(did, "dispense", state.lock_reasons)
        return await commands.issue_and_wait(
            did, op, args, timeout_s=timeout_s, wait_s=wait_s, issuer=issuer
        )

    async def vend(
        self,
        did: str,
        ml: int,
        *,
        price_fen_per_l: int,
        payer_uid: str,
        before_send: Callable[[DispenseSession], Awaitable[object]],
        issuer: str,
        timeout_s: int,
        wait_s: float,
    ) -> tuple[DispenseSession, CommandRecord | None]:
        """A paid dispense on a vending machine: `before_send` takes the payment (a wallet's
        hold) before the device is told to pour; the ledger closes the session with the ml
        actually poured."""
        session = await start_dispense(
            _IssuerRouter(self._commands, issuer), self._store, did, ml,
            price_fen_per_l=price_fen_per_l, payer_uid=payer_uid, timeout_s=timeout_s,
            before_send=before_send,
        )  # fmt: skip
        return session, await self._commands.wait(did, int(session.cid), wait_s)

    async def command(self, did: str, cid: int, wait_s: float) -> CommandRecord | None:
        """A command's record once final, or as it stands after `wait_s`."""
        return await self._commands.wait(did, cid, wait_s)

    async def recent_commands(
        self, did: str, *, limit: int, offset: int
    ) -> tuple[list[CommandRecord], int]:
        """A page of the device's latest commands, newest first, and how many are listed."""
        records = await self._commands.recent(did, limit=limit, offset=offset)
        return records, await self._commands.count(did)


class _IssuerRouter:
    """The router start_dispense takes, recording who issued the command."""

    def __init__(self, commands: CommandService, issuer: str) -> None:
        self.commands = commands
        self.issuer = issuer

    async def next_cid(self) -> int:
        return await self.commands.next_cid()

    async def deliver(self, did: str, command: Command) -> bool:
        return await self.commands.deliver(did, command, issuer=self.issuer)
