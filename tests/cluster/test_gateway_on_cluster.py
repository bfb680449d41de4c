"""The gateway suite's end-to-end cases, run unchanged on a Redis Cluster (the fixtures of
tests/cluster/conftest.py give them the cluster): logins and presence (online and offline
status, touches, releases, readings, the presence history), metering and acks, volume rental
and vending metering (quota, locks, top-ups), the ledger streams into the database, commands
across two nodes, the rental scheduler's lease."""

from __future__ import annotations

from tests.gateway.test_commands import *  # noqa: F403
from tests.gateway.test_device_status import *  # noqa: F403
from tests.gateway.test_ledger_writer import *  # noqa: F403
from tests.gateway.test_node_sessions import *  # noqa: F403
from tests.gateway.test_presence_history import *  # noqa: F403
from tests.metering.test_time_rental import *  # noqa: F403
from tests.metering.test_vending import *  # noqa: F403
from tests.metering.test_volume_rental import *  # noqa: F403

# Runs `aquafleet serve` processes on the single test Redis: not a cluster case.
del test_two_serve_processes_lock_an_expiry_once_and_survive_the_owner_dying  # noqa: F821
# Asserts that a quota lock is on the wire before the node answers the device's next record: so
# it is on one Redis (PUBLISH reaches the node's subscription before the next round trip ends),
# not on a cluster, where the node polls its sharded subscriptions master by master, 50 ms each
# (gateway/node_bus.py SHARDED_POLL_S): the lock follows within one pass (docs/deploy.md).
del test_login_carries_the_quota_and_exhaustion_locks_at_once  # noqa: F821
# Counts the round trips on the single Redis' connection pool; a cluster client has one pool
# per master (and the page's keys spread over them).
del test_a_page_of_devices_is_read_in_one_round_trip  # noqa: F821
