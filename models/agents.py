"""The agent tree under a vendor (客户管理): agents (level 1) and their dealers (level 2).

Each node keeps its materialised path (`models.tenancy.child_path`): agent 12 is "/12/", dealer
34 under it "/12/34/". A subtree is one indexed prefix filter (`path__startswith`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from tortoise import Tortoise, fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from aquafleet.models.errors import Conflict, InvalidInput
from aquafleet.models.tenancy import Principal, Role, child_path
from aquafleet.models.vendors import Vendor


class AgentLevel(IntEnum):
    AGENT = 1  # 代理商: created by its vendor
    DEALER = 2  # 经销商: created by its agent


class AgentState(IntEnum):
    """The seed's states (as for vendors and members): 0 disabled, 1 inactive, 2 active."""

    DISABLED = 0
    INACTIVE = 1
    ACTIVE = 2


MAX_LEVEL = AgentLevel.DEALER


class Agent(Model):
    """One node of a vendor's agent tree."""

    id = fields.IntField(primary_key=True)
    vendor: fields.ForeignKeyRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="agents", on_delete=fields.RESTRICT
    )
    parent: fields.ForeignKeyNullableRelation[Agent] = fields.ForeignKeyField(
        "models.Agent", related_name="children", null=True, on_delete=fields.RESTRICT
    )
    level = fields.IntEnumField(AgentLevel)
    path = fields.CharField(max_length=64, db_index=True, default="")
    name = fields.CharField(max_length=128)
    contact = fields.CharField(max_length=64, default="")
    mobile = fields.CharField(max_length=20, default="")
    email = fields.CharField(max_length=128, default="")
    area = fields.CharField(max_length=128, default="")
    address = fields.CharField(max_length=255, default="")
    remark = fields.CharField(max_length=255, default="")
    state = fields.IntEnumField(AgentState, default=AgentState.ACTIVE)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    vendor_id: str
    parent_id: int | None

    class Meta:
        table = "agent"


def path_ids(path: str) -> list[int]:
    """The node ids on a materialised path, root first: "/12/34/" -> [12, 34]."""
    return [int(part) for part in path.strip("/").split("/") if part]


# ----------------------------------------------------------------------------- services


class AgentHasChildren(Conflict):
    code = "agent_has_children"


class AgentInUse(Conflict):
    code = "agent_in_use"


class ParentDisabled(Conflict):
    code = "parent_disabled"


def visible_agents(principal: Principal) -> QuerySet[Agent]:
    """Every node in the caller's subtree (its own node included)."""
    if principal.role is Role.PLATFORM:
        return Agent.all()
    if principal.vendor_code is None:
        return Agent.filter(id__in=[])
    qs = Agent.filter(vendor_id=principal.vendor_code)
    if principal.role is Role.VENDOR:
        return qs
    if principal.role in (Role.AGENT, Role.DEALER) and principal.agent_path:
        return qs.filter(path__startswith=principal.agent_path)
    return Agent.filter(id__in=[])


def may_manage(principal: Principal, agent: Agent) -> bool:
    """Nodes are managed from above: the platform, their vendor, an agent above them."""
    if not principal.may_see_node(agent.vendor_id, agent.path):
        return False
    if principal.role in (Role.PLATFORM, Role.VENDOR):
        return True
    return principal.agent_path is not None and agent.path != principal.agent_path


async def create_agent(
    vendor: Vendor,
    parent: Agent | None,
    profile: dict[str, Any],
    username: str,
    password_md5: str,
) -> Agent:
    """A node (agent under the vendor, dealer under an agent) and its admin account."""
    from aquafleet.models.accounts import AdminAccount, UsernameTaken, check_username, hash_password
    from aquafleet.models.vendors import check_changeable

    check_changeable(vendor)
    check_username(username)
    if parent is not None:
        if parent.vendor_id != vendor.code:
            raise InvalidInput("the parent belongs to another vendor")
        if parent.level >= MAX_LEVEL:
            raise InvalidInput("dealers have no sub-agents")
        if parent.state is AgentState.DISABLED:
            raise ParentDisabled(f"agent {parent.id} is disabled")
    level = AgentLevel.AGENT if parent is None else AgentLevel(parent.level + 1)
    role = Role.AGENT if level is AgentLevel.AGENT else Role.DEALER
    password_hash = await hash_password(password_md5)
    async with in_transaction("default"):
        if await AdminAccount.filter(username__iexact=username).exists():
            raise UsernameTaken(f"user name {username!r} is taken")
        agent = await Agent.create(
            vendor_id=vendor.code,
            parent_id=parent.id if parent else None,
            level=level,
            **profile,
        )
        agent.path = child_path(parent.path if parent else None, agent.id)
        await agent.save(update_fields=["path"])
        try:
            await AdminAccount.create(
                username=username,
                password_hash=password_hash,
                role=role,
                vendor_id=vendor.code,
                agent_id=agent.id,
            )
        except IntegrityError:
            raise UsernameTaken(f"user name {username!r} is taken") from None
    return agent


async def subtree_accounts(agent: Agent) -> list[tuple[str, str]]:
    """(role, account id) of every admin account at or below `agent`."""
    from aquafleet.models.accounts import AdminAccount

    rows = await AdminAccount.filter(
        agent__path__startswith=agent.path, vendor_id=agent.vendor_id
    ).values_list("id", "role")
    return [(str(role), str(account_id)) for account_id, role in rows]


async def set_agent_state(agent: Agent, state: AgentState) -> list[tuple[str, str]]:
    """Disable (its subtree can no longer log in) or enable a node; returns the accounts whose
    sessions must end (when disabling)."""
    if state is not AgentState.DISABLED and agent.parent_id is not None:
        parent = await Agent.get(id=agent.parent_id)
        if parent.state is AgentState.DISABLED:
            raise ParentDisabled(f"agent {parent.id} is disabled; enable it first")
    agent.state = state
    await agent.save(update_fields=["state", "updated_at"])
    if state is AgentState.DISABLED:
        return await subtree_accounts(agent)
    return []


def _dependants() -> list[tuple[type[Model], str]]:
    """(model, FK field) of every model that points at Agent, but its own accounts and children."""
    from aquafleet.models.accounts import AdminAccount

    found = []
    for model in Tortoise.apps.get_models_iterable():
        if model in (AdminAccount, Agent):
            continue
        for name in model._meta.fk_fields:
            if model._meta.fields_map[name].related_model is Agent:
                found.append((model, name))
    return found


async def delete_agent(agent: Agent) -> list[tuple[str, str]]:
    """Delete a node and its accounts; refused while dealers, members, devices or anything
    else hang off it. Returns the accounts whose sessions must end."""
    from aquafleet.models.accounts import AdminAccount

    async with in_transaction("default"):
        if await Agent.filter(parent_id=agent.id).exists():
            raise AgentHasChildren(f"agent {agent.id} still has dealers; remove them first")
        for model, name in _dependants():
            if await model.filter(**{f"{name}_id": agent.id}).exists():
                what = model._meta.db_table
                raise AgentInUse(f"agent {agent.id} still has {what} records; move them first")
        accounts = await subtree_accounts(agent)
        await AdminAccount.filter(agent_id=agent.id).delete()
        try:
            await agent.delete()
        except IntegrityError:
            raise AgentInUse(f"agent {agent.id} is still referenced") from None
    return accounts
