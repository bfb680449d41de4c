"""The Redis keyspace. Every key of one device carries its shard's hash tag `{NN}`, so the
per-device Lua steps, and a whole shard's batch with its ledger stream, run on one cluster slot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# How long a device's last-session record outlives its last login or release: when and why it
# went offline stays readable this long (the Lua scripts hold the same number).
LAST_SESSION_TTL_MS = 90 * 86_400_000
CLUSTER_SCHEME = "redis+cluster://"  # a Redis URL naming any node of a Redis Cluster


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str
    shards: int
    # On a Redis Cluster the node channels are sharded (SPUBLISH/SSUBSCRIBE): one channel per
    # node and shard, in the shard's slot, so a Lua script publishes within its own slot and
    # a message travels only to that slot's master and replicas (docs/deploy.md).
    sharded_pubsub: bool = False

    @classmethod
    def for_url(cls, prefix: str, shards: int, redis_url: str | None) -> Keyspace:
        """The keyspace of a deployment: sharded node channels on a cluster URL."""
        cluster = redis_url is not None and redis_url.startswith(CLUSTER_SCHEME)
        return cls(prefix, shards, sharded_pubsub=cluster)

    def shard_of(self, did: str) -> int:
        return zlib.crc32(did.encode()) % self.shards

    def shard_prefix(self, shard: int) -> str:
        """Prefix of every key of a shard: `aq:{07}:`."""
        return f"{self.prefix}:{{{shard:02d}}}:"

    def ledger_stream(self, shard: int) -> str:
        return f"{self.shard_prefix(shard)}ledger"

    @property
    def ledger_dead(self) -> str:
        """Ledger entries the writer could not decode (kept for a person to inspect)."""
        return f"{self.prefix}:ledger-dead"

    def ledger_backlog(self, shard: int) -> str:
        """Records appended to the shard's stream and not yet written to the database."""
        return f"{self.shard_prefix(shard)}backlog"

    def registry(self, shard: int) -> str:
        """Hash did -> "state,key_version" of the shard's devices (login without a DB read)."""
        return f"{self.shard_prefix(shard)}registry"

    def meter(self, did: str) -> str:
        return f"{self.shard_prefix(self.shard_of(did))}m:{did}"

    def presence(self, did: str) -> str:
        return f"{self.shard_prefix(self.shard_of(did))}p:{did}"

    def last_session(self, did: str) -> str:
        """Hash of the device's current or last connection: node, conn, since, seen, ttl, when
        (off) and why it ended, and the end of the one before (poff, pwhy); outlives the
        presence (LAST_SESSION_TTL_MS)."""
        return f"{self.shard_prefix(self.shard_of(did))}l:{did}"

    def presence_history(self, did: str) -> str:
        """List of the device's past sessions, newest first (msgpack [node, since, seen, off,
        why]): claim.lua pushes the last session when the next login takes its place, capped
        at presence_history_size - 1, kept LAST_SESSION_TTL_MS after the last push."""
        return f"{self.shard_prefix(self.shard_of(did))}ph:{did}"

    def service_request(self, did: str, request_id: str) -> str:
        """Marks a service change request as applied (a retried top-up is applied once)."""
        return f"{self.shard_prefix(self.shard_of(did))}r:{did}:{request_id}"

    def service_unrecorded(self, did: str) -> str:
        """Hash request marker key -> record of the device's service changes applied whose
        database row is still pending (service.lua KEYS[7]); no expiry: models/service.py
        deletes each field once its row is complete."""
        return f"{self.shard_prefix(self.shard_of(did))}sa:{did}"

    def service_unrecorded_index(self, shard: int) -> str:
        """A shard's sorted set request marker key -> when the change was applied (unix ms)
        of the fields of its devices' unrecorded hashes (service.lua KEYS[8]): the recovery
        pass finds the old ones there without scanning (models/service_pending.py)."""
        return f"{self.shard_prefix(shard)}sa-index"

    @property
    def service_carried(self) -> str:
        """Set once the upgrade's one-off step carried the old markers and records into the
        unrecorded hashes and their index (ServiceStore.carry_old_records)."""
        return f"{self.prefix}:sa-carried"

    def service_request_of(self, marker: str) -> tuple[str, str] | None:
        """(did, request id) of a request marker key (`service_request`); None: not one."""
        _tag, sep, rest = marker.partition("}:r:")
        did, colon, request_id = rest.partition(":")
        return (did, request_id) if sep and colon and did and request_id else None

    def rental_schedule(self, kind: str, shard: int) -> str:
        """A shard's sorted set did -> rental_expires_at of the time-rental scheduler, one per
        kind (expiry, remind, grace); in the shard's slot, so service.lua keeps it atomically."""
        return f"{self.shard_prefix(shard)}rental:{kind}"

    @property
    def rental_owner(self) -> str:
        """The lease naming the one node that runs the time-rental scheduler."""
        return f"{self.prefix}:rental:owner"

    @property
    def payments_owner(self) -> str:
        """The lease naming the one node that runs the payments sweep."""
        return f"{self.prefix}:payments:owner"

    @property
    def order_timers_owner(self) -> str:
        """The lease naming the one node that runs the order timers (gateway/order_timers.py)."""
        return f"{self.prefix}:orders:timers:owner"

    @property
    def fleet_sampler_owner(self) -> str:
        """The lease naming the one node that samples the fleet's online history."""
        return f"{self.prefix}:fleet:sampler:owner"

    @property
    def command_ids(self) -> str:
        """Counter from which nodes take blocks of command ids (cid)."""
        return f"{self.prefix}:cids"

    def node_channel(self, node_id: str) -> str:
        """Pub/sub channel a node listens on for kicks of its connections (one Redis)."""
        return f"{self.prefix}:node:{node_id}"

    def node_channels(self, node_id: str) -> list[str]:
        """Every channel a node follows: its node channel, or on a cluster one per shard."""
        if not self.sharded_pubsub:
            return [self.node_channel(node_id)]
        return [f"{self.shard_prefix(s)}node:{node_id}" for s in self.all_shards()]

    @property
    def script_channels(self) -> str:
        """The node channel prefix our Lua scripts publish under; "" tells them to publish on
        the sharded channel of their own slot (SPUBLISH `<shard prefix>node:<node>`)."""
        return "" if self.sharded_pubsub else self.node_channel("")

    def device_node_channel(self, did: str, node_id: str) -> tuple[str, str]:
        """(publish command, channel) that reaches `node_id` about device `did`."""
        if not self.sharded_pubsub:
            return "PUBLISH", self.node_channel(node_id)
        return "SPUBLISH", f"{self.shard_prefix(self.shard_of(did))}node:{node_id}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def registry_synced(self) -> str:
        return f"{self.prefix}:registry:synced"

    @property
    def failed_logins(self) -> str:
        return f"{self.prefix}:failed-logins"

    def all_shards(self) -> range:
        return range(self.shards)
