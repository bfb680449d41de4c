"""Which process keeps the registry copy in Redis (settings.registry_sync)."""

from __future__ import annotations

from aquafleet.gateway.appkeys import TASKS


async def test_a_node_keeps_the_registry_copy_unless_told_another_does(node_factory):
    keeper = await node_factory()
    assert "registry-sync" in keeper.app[TASKS].tasks
    other = await node_factory(registry_sync=False)  # a second worker of one serve
    assert "registry-sync" not in other.app[TASKS].tasks
