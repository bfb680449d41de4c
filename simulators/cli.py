"""`aquafleet sim` (being written)."""

from __future__ import annotations

from typing import Any


def add_sim_parser(commands: Any) -> None:
    sim = commands.add_parser("sim", help="run simulated purifiers against a gateway")
    sim.set_defaults(func=lambda args: 2)
