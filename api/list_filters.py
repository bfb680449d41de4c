"""A list's filter that names a tenant (vendor, node, member, technician, earner).

docs/api.md, "Roles and tenants": a record outside the caller's subtree answers 404, exactly as
one that does not exist. A filter naming one is refused the same way, never answered with an
empty page (or, worse, the caller's own records under the name it gave).
"""

from __future__ import annotations

from aquafleet.api.errors import NotFoundError
from aquafleet.models.agents import Agent, visible_agents
from aquafleet.models.commissions import earner_of
from aquafleet.models.errors import NotFound
from aquafleet.models.members import agent_path_of, get_member
from aquafleet.models.technicians import visible_technicians
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.vendors import Vendor

MAX_NODE_ID = 2**31 - 1  # the agent table's id column


async def named_vendor(principal: Principal, vid: str | None) -> str | None:
    """`vid` when the caller sees that vendor (the platform: any that exists); else 404."""
    if vid is None:
        return None
    if not principal.may_see_vendor(vid) or not await Vendor.exists(code=vid):
        raise NotFoundError(f"vendor {vid} not found")
    return vid


async def named_node(principal: Principal, agent_id: int | None) -> Agent | None:
    """The agent or dealer node `agent_id` of the caller's subtree; else 404."""
    if agent_id is None:
        return None
    node = await visible_agents(principal).get_or_none(id=agent_id)
    if node is None:
        raise NotFoundError(f"agent {agent_id} not found")
    return node


async def named_member(principal: Principal, uid: str | None) -> str | None:
    """`uid` when the caller sees that member (a member: itself); else 404."""
    if uid is None:
        return None
    if not await _sees_member(principal, uid):
        raise NotFoundError(f"member {uid} not found")
    return uid


async def _sees_member(principal: Principal, uid: str) -> bool:
    try:
        member = await get_member(uid)
    except NotFound:
        return False
    if principal.role is Role.MEMBER:
        return principal.subject == member.uid
    return principal.may_see_node(member.vendor_id, await agent_path_of(member))


async def named_technician(principal: Principal, technician_id: int | None) -> int | None:
    """`technician_id` when the caller sees that technician; else 404."""
    if technician_id is None:
        return None
    if not await visible_technicians(principal).filter(id=technician_id).exists():
        raise NotFoundError(f"technician {technician_id} not found")
    return technician_id


async def named_earner(principal: Principal, earner: str | None) -> str | None:
    """`earner` (member:{uid} or agent:{id}) when the caller sees its commissions: an earner
    only itself, a vendor its own earners, the platform any; else 404."""
    if earner is None:
        return None
    if principal.role not in (Role.PLATFORM, Role.VENDOR):
        if earner != earner_of(principal):
            raise NotFoundError(f"earner {earner} not found")
        return earner
    kind, _, ref = earner.partition(":")
    if kind == "member":
        seen = await _sees_member(principal, ref)
    else:  # the pattern allows 10 digits: past the id column's range no node has it
        node_id = int(ref)
        seen = (
            node_id <= MAX_NODE_ID and await visible_agents(principal).filter(id=node_id).exists()
        )
    if not seen:
        raise NotFoundError(f"earner {earner} not found")
    return earner
