"""The Redis keyspace. Every key of one device carries its shard's hash tag `{NN}`, so the
per-device Lua steps, and a whole shard's batch with its ledger stream, run on one cluster slot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str
    shards: int

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

    def desired(self, did: str) -> str:
        return f"{self.shard_prefix(self.shard_of(did))}d:{did}"

    def node_channel(self, node_id: str) -> str:
        """Pub/sub channel a node listens on for kicks of its connections."""
        return f"{self.prefix}:node:{node_id}"

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
