"""Technicians (工程师): accounts under a vendor, agent or dealer, with skills, working state
and position (docs/api-tickets.md). Not in the seed (its section 五 names dispatch only)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from typing_extensions import TypeAliasType

from aquafleet.api.list_filters import named_node
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import (
    UNSET,
    ListQuery,
    PasswordMd5,
    PathParams,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    text,
)
from aquafleet.gateway.appkeys import REDIS, SETTINGS
from aquafleet.models.errors import Forbidden, InvalidInput, NotFound
from aquafleet.models.technicians import (
    Technician,
    TechnicianRequest,
    WorkState,
    create_technician,
    find_technician,
    set_position,
    technician_of,
    update_technician,
    visible_technicians,
)
from aquafleet.models.tenancy import ADMIN_ROLES, TECHNICIAN_ONLY, Role
from aquafleet.models.tickets import TicketType

routes = RouteTable(
    "technicians",
    "Technicians (工程师): field-service accounts with skills, working state and position; "
    "each sees only the tickets dispatched to it (docs/api-tickets.md).",
)

Skill = TypeAliasType(
    "Skill", Annotated[TicketType, Field(description="a ticket type the technician may work")]
)


class TechnicianOut(ResponseModel):
    id: int
    vid: str
    agent_id: int | None = Field(description="its agent or dealer node; null: the vendor's")
    user: str = Field(description="its login (POST /auth/login)")
    name: str
    mobile: str
    skills: list[int]
    work_state: int = Field(description="0 off, 1 available, 2 busy")
    is_default: bool = Field(description="in its node's team for dispatch by hierarchy")
    lat_e6: int | None
    lng_e6: int | None
    position_tms: UtcDateTime | None


async def technician_outs(rows: list[Technician]) -> list[TechnicianOut]:
    from aquafleet.models.accounts import AdminAccount

    names = dict(
        await AdminAccount.filter(id__in=[t.account_id for t in rows]).values_list("id", "username")
    )
    return [
        TechnicianOut(
            id=t.id,
            vid=t.vendor_id,
            agent_id=t.agent_id,
            user=str(names.get(t.account_id, "")),
            name=t.name,
            mobile=t.mobile,
            skills=list(t.skills),
            work_state=int(t.work_state),
            is_default=t.is_default,
            lat_e6=t.lat_e6,
            lng_e6=t.lng_e6,
            position_tms=t.position_at,
        )
        for t in rows
    ]


class TechnicianPath(PathParams):
    id: int = Field(ge=1)


class TechnicianIn(RequestModel):
    user: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{2,63}$", description="login name")
    pwd: PasswordMd5
    name: str = text(64, min_length=1)
    mobile: str = Field("", pattern=r"^(1[3-9][0-9]{9})?$")
    skills: list[Skill] = Field(default_factory=list, max_length=6)
    agent_id: int = Field(UNSET, ge=1, description="its node (default: the caller's)")
    is_default: bool = False
    vid: str = Field(UNSET, pattern=r"^[A-Z0-9]{4}$", description="the platform: whose")


class TechnicianChangeIn(RequestModel):
    name: str = text(64, default=UNSET, min_length=1)
    mobile: str = Field(UNSET, pattern=r"^(1[3-9][0-9]{9})?$")
    skills: list[Skill] = Field(UNSET, max_length=6)
    work_state: WorkState = Field(UNSET)
    is_default: bool = Field(UNSET)


class SelfChangeIn(RequestModel):
    work_state: WorkState = Field(UNSET, description="0 off, 1 available, 2 busy")
    lat_e6: int = Field(UNSET, ge=-85_051_128, le=85_051_128, description="where it is now")
    lng_e6: int = Field(UNSET, ge=-180_000_000, le=180_000_000)


class TechnicianListQuery(ListQuery):
    work_state: WorkState = Field(UNSET)
    agent_id: int = Field(UNSET, ge=1)


@routes.get(
    "/technicians",
    summary="List technicians",
    roles=ADMIN_ROLES,
    query=TechnicianListQuery,
    response=TechnicianOut,
    many=True,
    description="A: the platform all, a vendor its own, an agent or dealer its subtree's.",
)
async def list_technicians(call: Call) -> Page:
    query: TechnicianListQuery = call.query
    qs = visible_technicians(call.principal)
    if query.work_state is not None:
        qs = qs.filter(work_state=query.work_state)
    if query.agent_id is not None:
        await named_node(call.principal, query.agent_id)  # another subtree's: 404
        qs = qs.filter(agent_id=query.agent_id)
    rows, total = await query.page(qs, pk="id")
    return Page(await technician_outs(rows), total)


@routes.post(
    "/technicians",
    summary="Add a technician (and its login)",
    roles=ADMIN_ROLES,
    body=TechnicianIn,
    response=TechnicianOut,
    status=201,
    errors=(404, 409),
    description="A: a vendor under itself or one of its nodes; an agent or dealer under its "
    "own node or one below. `skills` are ticket types.",
)
async def add_technician(call: Call) -> TechnicianOut:
    from aquafleet.models.agents import Agent

    body: TechnicianIn = call.body
    principal = call.principal
    vendor_code = principal.vendor_code
    if principal.role is Role.PLATFORM:
        vendor_code = body.vid
    if vendor_code is None:
        raise InvalidInput("the platform names the vendor (vid)")
    agent_id = body.agent_id
    if agent_id is None and principal.agent_path:
        agent_id = int(principal.agent_path.strip("/").split("/")[-1])
    if agent_id is not None:
        node = await Agent.get_or_none(id=agent_id, vendor_id=vendor_code)
        if node is None or not principal.may_see_node(vendor_code, node.path):
            raise NotFound(f"agent {agent_id} not found")
    technician = await create_technician(
        vendor_code,
        TechnicianRequest(
            name=body.name, username=body.user, password_md5=body.pwd, mobile=body.mobile,
            skills=[int(s) for s in body.skills], agent_id=agent_id, is_default=body.is_default,
        ),
    )  # fmt: skip
    return (await technician_outs([technician]))[0]


@routes.get(
    "/technicians/me",
    summary="The calling technician",
    roles=TECHNICIAN_ONLY,
    response=TechnicianOut,
)
async def read_self(call: Call) -> TechnicianOut:
    return (await technician_outs([await technician_of(call.principal)]))[0]


@routes.put(
    "/technicians/me",
    summary="The calling technician's working state and position",
    roles=TECHNICIAN_ONLY,
    body=SelfChangeIn,
    response=TechnicianOut,
    description="A technician says whether it works (0 off, 1 available, 2 busy) and where it "
    "is (lat_e6/lng_e6 together): dispatch by distance searches these positions.",
)
async def change_self(call: Call) -> TechnicianOut:
    body: SelfChangeIn = call.body
    technician = await technician_of(call.principal)
    if (body.lat_e6 is None) != (body.lng_e6 is None):
        raise InvalidInput("give both lat_e6 and lng_e6, or neither")
    if body.work_state is not None:
        await update_technician(technician, {"work_state": body.work_state})
    if body.lat_e6 is not None and body.lng_e6 is not None:
        settings = call.app[SETTINGS]
        await set_position(
            call.app[REDIS], settings.redis_prefix, technician, body.lat_e6, body.lng_e6
        )
    return (await technician_outs([technician]))[0]


@routes.get(
    "/technicians/{id}",
    summary="Read a technician",
    roles=ADMIN_ROLES,
    params=TechnicianPath,
    response=TechnicianOut,
)
async def read_technician(call: Call) -> TechnicianOut:
    return (await technician_outs([await find_technician(call.principal, call.params.id)]))[0]


@routes.put(
    "/technicians/{id}",
    summary="Change a technician",
    roles=ADMIN_ROLES,
    params=TechnicianPath,
    body=TechnicianChangeIn,
    response=TechnicianOut,
    description="A, in scope: name, mobile, skills, working state, team membership.",
)
async def change_technician(call: Call) -> TechnicianOut:
    body: TechnicianChangeIn = call.body
    technician = await find_technician(call.principal, call.params.id)
    if call.principal.role is Role.TECHNICIAN:
        raise Forbidden("technicians change themselves through /technicians/me")
    changes: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
    if "skills" in changes:
        changes["skills"] = [int(s) for s in changes["skills"]]
    return (await technician_outs([await update_technician(technician, changes)]))[0]
