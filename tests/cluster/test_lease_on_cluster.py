"""The node lease's cases (tests/gateway/test_lease.py) on a Redis Cluster: each step is one
script on one key, so one slot."""

from tests.gateway.test_lease import (  # noqa: F401
    test_a_stale_holder_cannot_release_the_new_holders_lease,
    test_a_stale_holder_cannot_renew_the_new_holders_lease,
    test_one_node_holds_the_lease_and_hands_it_over,
    test_renew_extends_only_the_holders_lease,
)
