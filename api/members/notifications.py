"""A member's notification preferences: which kinds of messages (消息推送) they turned off
(docs/api-tickets.md, "Messages"; the kinds and the essential ones are models.outbox's)."""

from __future__ import annotations

from pydantic import Field

from aquafleet.api.routing import Call, RouteTable
from aquafleet.api.schemas import RequestModel, ResponseModel
from aquafleet.models.outbox import ESSENTIAL, NotificationKind, opt_outs, set_opt_outs
from aquafleet.models.tenancy import MEMBER_ONLY

routes = RouteTable("members")


class PreferencesOut(ResponseModel):
    off: list[str] = Field(description="kinds the member turned off")
    essential: list[str] = Field(description="kinds that cannot be turned off")
    kinds: list[str] = Field(description="every kind of message")


class PreferencesIn(RequestModel):
    off: list[NotificationKind] = Field(max_length=len(NotificationKind))


def _preferences(off: list[str]) -> PreferencesOut:
    return PreferencesOut(
        off=off,
        essential=sorted(k.value for k in ESSENTIAL),
        kinds=[k.value for k in NotificationKind],
    )


@routes.get(
    "/notifications/preferences",
    summary="The kinds of messages the member turned off",
    roles=MEMBER_ONLY,
    response=PreferencesOut,
)
async def read_preferences(call: Call) -> PreferencesOut:
    return _preferences(await opt_outs(call.principal.subject))


@routes.put(
    "/notifications/preferences",
    summary="Turn kinds of messages off (and the others on)",
    roles=MEMBER_ONLY,
    body=PreferencesIn,
    response=PreferencesOut,
    errors=(422,),
    description="C. `off` replaces the list; essential kinds (money taken, water stopped, "
    "work assigned) cannot be turned off (422).",
)
async def change_preferences(call: Call) -> PreferencesOut:
    body: PreferencesIn = call.body
    return _preferences(await set_opt_outs(call.principal.subject, body.off))
