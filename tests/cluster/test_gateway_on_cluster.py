"""The gateway suite's end-to-end cases, run unchanged on a Redis Cluster (the fixtures of
tests/cluster/conftest.py give them the cluster): logins and presence, metering and acks,
the ledger streams into the database, commands across two nodes, the rental scheduler's lease."""

from __future__ import annotations

from tests.gateway.test_commands import *  # noqa: F403
from tests.gateway.test_ledger_writer import *  # noqa: F403
from tests.gateway.test_node_sessions import *  # noqa: F403
from tests.metering.test_time_rental import *  # noqa: F403

# Runs `aquafleet serve` processes on the single test Redis: not a cluster case.
del test_two_serve_processes_lock_an_expiry_once_and_survive_the_owner_dying  # noqa: F821
