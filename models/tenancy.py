"""Who is asking, and which part of the tenant tree they may see.

The tree is platform > vendor > agent > dealer > member. Agents and dealers are nodes of one
table (`models.agents.Agent`) with a materialised path: an agent with id 12 has the path "/12/",
a dealer 34 under it "/12/34/". A node's subtree is every row whose path starts with its path,
so scoping a query is one indexed prefix filter, never a walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """The seed's roles: A* = PLATFORM; A# = PLATFORM or VENDOR; A = any admin; C = MEMBER."""

    PLATFORM = "platform"
    VENDOR = "vendor"
    AGENT = "agent"
    DEALER = "dealer"
    MEMBER = "member"
    TECHNICIAN = "technician"  # 工程师: a field-service account under a vendor, agent or dealer


ADMIN_ROLES = frozenset({Role.PLATFORM, Role.VENDOR, Role.AGENT, Role.DEALER})
PLATFORM_OR_VENDOR = frozenset({Role.PLATFORM, Role.VENDOR})
# The seed's 使用范围 column: A* / A# / A / C / A+C / A#+C.
PLATFORM_ONLY = frozenset({Role.PLATFORM})
MEMBER_ONLY = frozenset({Role.MEMBER})
ANY_ROLE = ADMIN_ROLES | MEMBER_ONLY
PLATFORM_VENDOR_OR_MEMBER = PLATFORM_OR_VENDOR | MEMBER_ONLY
# Technicians see only the tickets dispatched to them: no other endpoint admits them.
TECHNICIAN_ONLY = frozenset({Role.TECHNICIAN})


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request.

    subject: the admin (or technician) account id, or the member's uid.
    vendor_code: the caller's vendor; None only for the platform admin.
    agent_path: the materialised path of the caller's agent or dealer node (or the node a
        technician works under); None for the platform, vendors and members.
    """

    role: Role
    subject: str
    vendor_code: str | None = None
    agent_path: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES

    def may_see_vendor(self, vendor_code: str) -> bool:
        return self.role is Role.PLATFORM or self.vendor_code == vendor_code

    def may_see_node(self, vendor_code: str, agent_path: str | None) -> bool:
        """True when a row owned by (vendor_code, agent_path) is in the caller's subtree.

        agent_path is the owning agent/dealer node's path, or None for rows owned by the vendor
        itself (visible to the platform and the vendor only).
        """
        if self.role is Role.PLATFORM:
            return True
        if self.vendor_code != vendor_code:
            return False
        if self.role is Role.VENDOR:
            return True
        if self.role in (Role.AGENT, Role.DEALER):
            return (
                agent_path is not None
                and self.agent_path is not None
                and agent_path.startswith(self.agent_path)
            )
        return False


def child_path(parent_path: str | None, node_id: int) -> str:
    """The materialised path of node `node_id` under `parent_path` (None: under the vendor)."""
    return f"{parent_path or '/'}{node_id}/"
