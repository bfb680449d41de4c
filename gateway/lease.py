"""A node's lease on a Redis key: the one node of a cluster that runs a singleton job (the rental
scheduler, the order timers, the fleet sampler, the payments sweep).

Each step is one Lua script on the one key (one slot on a Redis Cluster): `acquire` takes the
lease when free and keeps it when already this node's (the loops call it every tick, so it is
also how the holder keeps it); `renew` and `release` compare the holder first, so a node whose
lease expired and was taken by another can neither extend nor delete the other's.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from aquafleet.gateway.errors import GatewayError
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.redis_io import Scripts

log = get_logger("aquafleet.lease")


@dataclass(eq=False, kw_only=True)
class NodeLease:
    """This node's hold on the lease at `key`; `held` is what the last step found."""

    client: aioredis.Redis
    scripts: Scripts
    key: str
    node_id: str
    lease_ms: int
    job: str  # names the log events: f"{job}_lease"
    held: bool = False

    async def acquire(self) -> bool:
        """Take the lease when free, keep it (renewed) when ours; whether this node holds it."""
        taken = await self.scripts.call(
            self.client, "lease", [self.key], [self.node_id, self.lease_ms]
        )
        return self._found(bool(taken))

    async def renew(self) -> bool:
        """Extend the lease only while it is ours (never take it); whether this node holds it."""
        renewed = await self.scripts.call(
            self.client, "lease_renew", [self.key], [self.node_id, self.lease_ms]
        )
        return self._found(bool(renewed))

    async def release(self) -> bool:
        """Hand the lease over at once (shutdown) instead of letting it time out; whether it
        was ours to release. Raises GatewayError when Redis does not answer (it then expires)."""
        if not self.held:
            return False
        self.held = False  # given up either way: unreleased, it expires within lease_ms
        released = await self.scripts.call(self.client, "lease_release", [self.key], [self.node_id])
        return bool(released)

    async def hand_over(self) -> None:
        """`release` at shutdown: when Redis does not answer, say so and let the lease expire."""
        try:
            await self.release()
        except GatewayError as exc:
            log.warning(f"{self.job}_lease_release_failed", node=self.node_id, error=str(exc))

    def _found(self, held: bool) -> bool:
        if held != self.held:
            log.info(f"{self.job}_lease", node=self.node_id, owner=held)
        self.held = held
        return held
