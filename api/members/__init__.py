"""Members (AA-01..10), member login, and the SMS code endpoints (docs/api-members.md).

Thin: the rules live in models.members and models.sms_codes. This module checks who may see
which member (tenancy: another tenant's uid answers 404), shapes the answers per role (seed
note 1), applies the login limits, and turns provider failures into answers.
"""

from __future__ import annotations

from aquafleet.api.members import accounts, notifications, sessions
from aquafleet.api.members.access import MEMBERS, WECHAT, visible_member
from aquafleet.api.members.providers import members_ctx
from aquafleet.api.members.schemas import UID_PATTERN
from aquafleet.api.routing import RouteTable

routes = RouteTable(
    "members",
    "Members (会员, AA-01..10), member login and SMS codes (docs/api-members.md).",
).include(sessions.routes, accounts.routes, notifications.routes)

__all__ = ["MEMBERS", "UID_PATTERN", "WECHAT", "members_ctx", "routes", "visible_member"]
