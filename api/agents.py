"""The agent tree (客户管理): a vendor creates agents, an agent creates dealers. Each caller
sees its own subtree only; a node is changed from above (its vendor, the agent over it)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from aquafleet.api.errors import Forbidden, NotFoundError, ValidationFailed
from aquafleet.api.list_filters import named_node, named_vendor
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import (
    UNSET,
    Email,
    ListQuery,
    OptionalMobile,
    PasswordMd5,
    PathParams,
    RequestModel,
    ResponseModel,
    Username,
    UtcDateTime,
    VendorCode,
    text,
)
from aquafleet.api.tokens import revoke_accounts
from aquafleet.models.accounts import AdminAccount, rename_account, set_password
from aquafleet.models.agents import (
    Agent,
    AgentLevel,
    AgentState,
    create_agent,
    delete_agent,
    may_manage,
    set_agent_state,
    visible_agents,
)
from aquafleet.models.tenancy import ADMIN_ROLES, Principal, Role
from aquafleet.models.vendors import Vendor, check_changeable

routes = RouteTable(
    "agents",
    "The vendor -> agent -> dealer tree (客户管理). Each level sees only its subtree; a node "
    "is managed (changed, disabled, deleted) by the levels above it.",
)

MANAGERS = frozenset({Role.PLATFORM, Role.VENDOR, Role.AGENT})

# ----------------------------------------------------------------------------- schemas


class AgentPath(PathParams):
    id: int = Field(ge=1, le=2**31 - 1, description="agent or dealer id")


class AgentCreate(RequestModel):
    """A vendor (or the platform, naming `vid`) creates agents; an agent creates dealers under
    itself; a vendor may also create a dealer by naming its agent as `parent`."""

    vid: VendorCode = Field(UNSET, description="the vendor: required for the platform admin")
    parent: int = Field(UNSET, ge=1, le=2**31 - 1, description="the agent a dealer belongs to")
    user: Username
    pwd: PasswordMd5
    name: str = text(128, min_length=1)
    contact: str = text(64, default="")
    mobile: OptionalMobile = ""
    email: Email = ""
    area: str = text(128, default="")
    address: str = text(255, default="")
    remark: str = text(255, default="")


class AgentUpdate(RequestModel):
    """Only the fields given change; `user` renames the node's login."""

    user: Username = Field(UNSET)
    name: str = text(128, min_length=1, default=None)
    contact: str = text(64, default=None)
    mobile: OptionalMobile = Field(UNSET)
    email: Email = Field(UNSET)
    area: str = text(128, default=None)
    address: str = text(255, default=None)
    remark: str = text(255, default=None)


class AgentStateIn(RequestModel):
    state: Literal[0, 2] = Field(
        description="0 disable (the node and everything under it can no longer log in), 2 enable"
    )


class AgentPassword(RequestModel):
    pwd: PasswordMd5


class AgentOut(ResponseModel):
    id: int
    vid: str
    parent: int | None = Field(description="the agent over a dealer; null for an agent")
    level: AgentLevel = Field(description="1 agent (代理商), 2 dealer (经销商)")
    path: str = Field(description='materialised path, e.g. "/12/34/"')
    state: AgentState = Field(description="0 disabled, 1 inactive, 2 active")
    user: str | None = Field(description="the node's login name")
    name: str
    contact: str
    mobile: str
    email: str
    area: str
    address: str
    remark: str
    reg_tms: UtcDateTime


class AgentListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "id": "id",
        "name": "name",
        "reg_tms": "created_at",
        "level": "level",
        "state": "state",
    }
    sort: Literal["id", "name", "reg_tms", "level", "state"] = "id"
    vid: VendorCode = Field(UNSET, description="only this vendor's nodes")
    parent: int = Field(UNSET, ge=1, le=2**31 - 1, description="only the dealers of this agent")
    level: AgentLevel = Field(UNSET, description="1 agents, 2 dealers")
    state: AgentState = Field(UNSET)
    name: str = Field(UNSET, max_length=128, description="name contains")
    mobile: str = Field(UNSET, max_length=20, description="mobile equals")


# ----------------------------------------------------------------------------- helpers


async def agent_outs(agents: list[Agent]) -> list[AgentOut]:
    users = dict(
        await AdminAccount.filter(agent_id__in=[a.id for a in agents]).values_list(
            "agent_id", "username"
        )
    )
    return [
        AgentOut(
            id=a.id,
            vid=a.vendor_id,
            parent=a.parent_id,
            level=a.level,
            path=a.path,
            state=a.state,
            user=users.get(a.id),
            name=a.name,
            contact=a.contact,
            mobile=a.mobile,
            email=a.email,
            area=a.area,
            address=a.address,
            remark=a.remark,
            reg_tms=a.created_at,
        )
        for a in agents
    ]


async def get_agent(call: Call) -> Agent:
    """The path's node if it is in the caller's subtree; 404 otherwise (never 403)."""
    agent = await visible_agents(call.principal).get_or_none(id=call.params.id)
    if agent is None:
        raise NotFoundError(f"agent {call.params.id} not found")
    return agent


async def get_managed_agent(call: Call) -> Agent:
    agent = await get_agent(call)
    if not may_manage(call.principal, agent):
        raise Forbidden("a node is changed by the levels above it, not by itself")
    return agent


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"body {field}: {message}", data=[{"field": field, "message": message}])


async def _creation_target(principal: Principal, body: AgentCreate) -> tuple[Vendor, Agent | None]:
    """The vendor and parent node a new node goes under, as the caller may choose them."""
    if principal.role is Role.AGENT:
        vid = principal.vendor_code
        if body.vid is not None and body.vid != principal.vendor_code:
            raise _invalid("vid", "an agent creates dealers in its own vendor")
        parent = await visible_agents(principal).get_or_none(path=principal.agent_path)
        if parent is None:
            raise NotFoundError("your agent node no longer exists")
        if body.parent is not None and body.parent != parent.id:
            raise _invalid("parent", "an agent creates dealers under itself")
    else:
        vid = principal.vendor_code if principal.role is Role.VENDOR else body.vid
        if vid is None:
            raise _invalid("vid", "the platform admin names the vendor")
        if body.vid is not None and body.vid != vid:
            raise _invalid("vid", "a vendor creates agents in its own vendor")
        parent = None
        if body.parent is not None:
            parent = await visible_agents(principal).get_or_none(id=body.parent, vendor_id=vid)
            if parent is None:
                raise NotFoundError(f"agent {body.parent} not found")
    vendor = await Vendor.get_or_none(code=vid)
    if vendor is None or not principal.may_see_vendor(vendor.code):
        raise NotFoundError("vendor not found")
    return vendor, parent


# ----------------------------------------------------------------------------- routes


@routes.get(
    "/agents",
    summary="List the agents and dealers in the caller's subtree",
    roles=ADMIN_ROLES,
    query=AgentListQuery,
    response=AgentOut,
    many=True,
    description="下级代理列表. The platform sees all, a vendor its tree, an agent itself and "
    "its dealers, a dealer itself. `parent=ID` lists one agent's dealers.",
)
async def list_agents(call: Call) -> Page:
    query: AgentListQuery = call.query
    qs = visible_agents(call.principal)
    filters: dict[str, Any] = {}
    if query.vid is not None:
        filters["vendor_id"] = await named_vendor(call.principal, query.vid)
    if query.parent is not None:
        await named_node(call.principal, query.parent)  # another subtree's: 404
        filters["parent_id"] = query.parent
    if query.level is not None:
        filters["level"] = query.level
    if query.state is not None:
        filters["state"] = query.state
    if query.name:
        filters["name__icontains"] = query.name
    if query.mobile:
        filters["mobile"] = query.mobile
    agents, total = await query.page(qs.filter(**filters), pk="id")
    return Page(await agent_outs(agents), total)


@routes.post(
    "/agents",
    summary="Add an agent (by a vendor) or a dealer (by an agent), with its login",
    roles=MANAGERS,
    body=AgentCreate,
    response=AgentOut,
    errors=(409,),
    description="添加下级代理. The new node's admin account (`user`, `pwd`) logs in at "
    "POST /api/v1/auth/login.",
)
async def add_agent(call: Call) -> AgentOut:
    body: AgentCreate = call.body
    vendor, parent = await _creation_target(call.principal, body)
    profile = body.model_dump(exclude={"vid", "parent", "user", "pwd"})
    agent = await create_agent(vendor, parent, profile, body.user, body.pwd)
    return (await agent_outs([agent]))[0]


@routes.get(
    "/agents/{id}",
    summary="Read an agent or dealer",
    roles=ADMIN_ROLES,
    params=AgentPath,
    response=AgentOut,
)
async def read_agent(call: Call) -> AgentOut:
    return (await agent_outs([await get_agent(call)]))[0]


@routes.put(
    "/agents/{id}",
    summary="Change an agent's or dealer's profile",
    roles=ADMIN_ROLES,
    params=AgentPath,
    body=AgentUpdate,
    response=AgentOut,
    errors=(409,),
    description="The levels above a node, and the node itself, may change its profile.",
)
async def change_agent(call: Call) -> AgentOut:
    agent = await get_agent(call)
    vendor = await Vendor.get(code=agent.vendor_id)
    check_changeable(vendor)
    changes = call.body.model_dump(exclude_unset=True)
    username = changes.pop("user", None)
    if username is not None:
        account = await AdminAccount.filter(agent_id=agent.id).first()
        if account is not None:
            await rename_account(account, username)
    if changes:
        agent.update_from_dict(changes)
        await agent.save(update_fields=[*changes, "updated_at"])
    return (await agent_outs([agent]))[0]


@routes.put(
    "/agents/{id}/state",
    summary="Disable or enable an agent or dealer",
    roles=MANAGERS,
    params=AgentPath,
    body=AgentStateIn,
    response=AgentOut,
    errors=(409,),
    description="Disabling a node ends the sessions of every login at or below it and keeps "
    "them out until it is enabled; its members and devices stay where they are.",
)
async def change_agent_state(call: Call) -> AgentOut:
    agent = await get_managed_agent(call)
    accounts = await set_agent_state(agent, AgentState(call.body.state))
    await revoke_accounts(call.app, accounts)
    return (await agent_outs([agent]))[0]


@routes.put(
    "/agents/{id}/pwd",
    summary="Set the password of an agent's or dealer's login",
    roles=MANAGERS,
    params=AgentPath,
    body=AgentPassword,
    response=AgentOut,
    description="Its sessions end. (A node changes its own password at PUT /api/v1/auth/pwd.)",
)
async def change_agent_password(call: Call) -> AgentOut:
    agent = await get_managed_agent(call)
    account = await AdminAccount.filter(agent_id=agent.id).first()
    if account is None:
        raise NotFoundError(f"agent {agent.id} has no login")
    await set_password(account, call.body.pwd)
    await revoke_accounts(call.app, [(str(account.role), str(account.id))])
    return (await agent_outs([agent]))[0]


@routes.delete(
    "/agents/{id}",
    summary="Delete an agent or dealer and its login",
    roles=MANAGERS,
    params=AgentPath,
    errors=(409,),
    description="删除下级代理. Refused with 409 `agent_has_children` while dealers are under "
    "it, and `agent_in_use` while members, devices or other records belong to it: move or "
    "delete those first (or disable the node instead).",
)
async def remove_agent(call: Call) -> None:
    agent = await get_managed_agent(call)
    accounts = await delete_agent(agent)
    await revoke_accounts(call.app, accounts)
