"""aquafleet: the process as a whole. `aquafleet.node` composes a node from the gateway's
resources and the REST API; `aquafleet.cli` is the `aquafleet` command."""
