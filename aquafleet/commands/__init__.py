"""Command groups of the `aquafleet` command (aquafleet/cli.py builds the parser)."""
