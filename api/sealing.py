"""The secret box of the node's API: seals third parties' credentials at rest with the key
derived from the master secret (models/sealed.py)."""

from __future__ import annotations

from aiohttp import web

from aquafleet.api.routing import Call
from aquafleet.gateway.appkeys import SETTINGS
from aquafleet.models.sealed import SecretBox


def secret_box(app: web.Application) -> SecretBox:
    return SecretBox.from_master(app[SETTINGS].master_secret_bytes())


def box_of(call: Call) -> SecretBox:
    return secret_box(call.app)
