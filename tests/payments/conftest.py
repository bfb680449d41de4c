"""Payment tests run a whole node (the API's fixtures) against local fakes of the channels."""

from __future__ import annotations

from tests.api.conftest import api, api_node, tenants

__all__ = ["api", "api_node", "tenants"]
