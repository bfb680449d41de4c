"""The referral code (推荐码, seed FAQ 8) a member may give at checkout: who the order is
attributed to."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aquafleet.models.agents import Agent, AgentState
from aquafleet.models.errors import InvalidInput
from aquafleet.models.members import Member, MemberState, is_valid_uid

AGENT_CODE_RE = re.compile(r"^A([1-9][0-9]{0,9})$")


class ReferralInvalid(InvalidInput):
    """The referral code names nobody who may refer this member (the API answers 400)."""

    code = "referral_invalid"


def agent_referral_code(agent_id: int) -> str:
    """An agent's or dealer's referral code: `A` and its id, e.g. A12."""
    return f"A{agent_id}"


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who an order is attributed to: the agent node (scoping, commissions) and the referring
    member."""

    agent_id: int | None
    referrer_uid: str | None


async def resolve_referral(member: Member, code: str | None) -> Attribution:
    """Seed FAQ 8 (推荐码, optional at checkout). Without a code: the member's own agent and
    referrer. A member's uid: that member referred the order (not the buyer itself), the order
    goes to the referrer's agent node. An agent's or dealer's code (`A<id>`): that node, no
    referring member. Anything else, another vendor's code, a disabled agent or a disabled or
    deregistered member: ReferralInvalid."""
    if code is None:
        return Attribution(member.agent_id, member.referrer_id)
    code = code.strip().upper()
    refused = ReferralInvalid(f"referral code {code!r} is not valid for this shop")
    if is_valid_uid(code):
        if code == member.uid:
            raise ReferralInvalid(f"referral code {code!r} is the buyer's own: no self-referral")
        referrer = await Member.get_or_none(uid=code, vendor_id=member.vendor_id)
        if referrer is None or referrer.state in (MemberState.DISABLED, MemberState.DEREGISTERED):
            raise refused
        return Attribution(referrer.agent_id, referrer.uid)
    match = AGENT_CODE_RE.match(code)
    if match is None:
        raise refused
    agent = await Agent.get_or_none(id=int(match.group(1)), vendor_id=member.vendor_id)
    if agent is None or agent.state is AgentState.DISABLED:
        raise refused
    return Attribution(agent.id, None)
