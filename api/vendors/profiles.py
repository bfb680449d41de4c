"""AX-01..06 and AX-13: a vendor's record and its admin account, from registration to
deregistration. Secrets are write-only."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field
from tortoise.expressions import Q
from tortoise.queryset import QuerySet

from aquafleet.api.errors import NotFoundError, ValidationFailed
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import (
    UNSET,
    Email,
    ListQuery,
    OptionalMobile,
    PasswordMd5,
    RequestModel,
    ResponseModel,
    Username,
    UtcDateTime,
    VendorCode,
    text,
)
from aquafleet.api.sealing import box_of
from aquafleet.api.tokens import revoke_accounts
from aquafleet.api.vendors.access import VendorPath, VidOut, changes_of, get_vendor
from aquafleet.api.vendors.terms import CONFIG_DEFAULTS, VendorConfigOut
from aquafleet.models.accounts import AdminAccount, set_password
from aquafleet.models.members import Member
from aquafleet.models.merchants import merchant_flags
from aquafleet.models.tenancy import PLATFORM_ONLY, Role
from aquafleet.models.vendors import (
    Vendor,
    VendorState,
    check_changeable,
    deregister_vendor,
    register_vendor,
    update_vendor,
    vendor_account,
)

routes = RouteTable("vendors")

# ----------------------------------------------------------------------------- schemas


class VendorCreate(RequestModel):
    """AX-02. `vid` may be chosen (4 characters A-Z/0-9); omitted, a free one is drawn."""

    vid: VendorCode = Field(UNSET)
    user: Username
    pwd: PasswordMd5
    type: int = Field(0, ge=0, le=255)
    name: str = text(128, min_length=1, description="full name (运营商全称)")
    abbv: str = text(64, default="", description="short name")
    logo: str = text(255, default="", description="logo URL")
    domain: str = text(128, default="")
    contact: str = text(64, default="", description="contact person")
    mobile: OptionalMobile = ""
    wechat: str = text(64, default="")
    email: Email = ""
    area: str = text(128, default="")
    address: str = text(255, default="")
    remark: str = text(255, default="")
    mp_gid: str = text(64, default="")
    mp_appid: str = text(64, default="")
    mp_secret: str = text(128, default="", description="write-only")
    mch_gid: str = text(64, default="")
    mch_appid: str = text(64, default="")
    mch_secret: str = text(128, default="", description="write-only")


class _VidMatches(RequestModel):
    """The seed repeats `vid` in some bodies; when given it must name the path's vendor."""

    vid: VendorCode = Field(UNSET)


class VendorUpdate(_VidMatches):
    """AX-04: only the fields given change."""

    state: Literal[0, 1, 2] = Field(
        UNSET,
        description="0 disabled (nobody of the vendor logs in; their sessions end), "
        "1 inactive, 2 active. Deregistration is AX-13.",
    )
    user: Username = Field(UNSET)
    type: int = Field(UNSET, ge=0, le=255)
    name: str = text(128, min_length=1, default=None)
    abbv: str = text(64, default=None)
    logo: str = text(255, default=None)
    domain: str = text(128, default=None)
    contact: str = text(64, default=None)
    mobile: OptionalMobile = Field(UNSET)
    wechat: str = text(64, default=None)
    email: Email = Field(UNSET)
    area: str = text(128, default=None)
    address: str = text(255, default=None)
    remark: str = text(255, default=None)
    reserved: str = text(255, default=None)


class VendorPassword(_VidMatches):
    """AX-05: the vendor admin's new password; its sessions end."""

    pwd: PasswordMd5


class VendorMobile(_VidMatches):
    """AX-06."""

    mobile: OptionalMobile


class VendorOut(ResponseModel):
    """AX-01/AX-03. pwd, mp_secret and mch_secret are never answered (the seed's note)."""

    vid: str
    state: VendorState = Field(description="0 disabled, 1 inactive, 2 active, 3 deregistered")
    type: int
    user: str | None = Field(description="the vendor admin's user name")
    name: str
    abbv: str
    logo: str
    domain: str
    contact: str
    mobile: str
    wechat: str
    email: str
    area: str
    address: str
    reg_tms: UtcDateTime
    remark: str
    mp_gid: str
    mp_appid: str
    mch_gid: str
    mch_appid: str
    mp_secret_set: bool = Field(description="whether mp_secret has been given")
    mch_secret_set: bool = Field(description="whether mch_secret has been given")
    mch_apiv3_key_set: bool = Field(description="whether the API v3 key has been given")
    mch_private_key_set: bool = Field(description="whether the merchant key has been given")
    mch_cert_serial: str
    wxpay_serial: str
    wxpay_public_key_set: bool
    reserved: str
    cfg: VendorConfigOut
    app_key: str | None = Field(description="the key of signed requests, if one was issued")


class VendorListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "vid": "code",
        "name": "name",
        "reg_tms": "created_at",
        "state": "state",
    }
    sort: Literal["vid", "name", "reg_tms", "state"] = "vid"
    state: VendorState | None = Field(UNSET, description="only vendors in this state")
    type: int | None = Field(UNSET, ge=0, le=255)
    name: str | None = Field(UNSET, max_length=128, description="name or short name contains")
    mobile: str | None = Field(UNSET, max_length=20, description="mobile equals")


# ----------------------------------------------------------------------------- helpers


def vendor_out(vendor: Vendor, user: str | None, merchant: dict[str, Any]) -> VendorOut:
    return VendorOut(
        **merchant,
        vid=vendor.code,
        state=vendor.state,
        type=vendor.type,
        user=user,
        name=vendor.name,
        abbv=vendor.abbv,
        logo=vendor.logo,
        domain=vendor.domain,
        contact=vendor.contact,
        mobile=vendor.mobile,
        wechat=vendor.wechat,
        email=vendor.email,
        area=vendor.area,
        address=vendor.address,
        reg_tms=vendor.created_at,
        remark=vendor.remark,
        mp_gid=vendor.mp_gid,
        mp_appid=vendor.mp_appid,
        mch_gid=vendor.mch_gid,
        mch_appid=vendor.mch_appid,
        mp_secret_set=bool(vendor.mp_secret),
        mch_secret_set=bool(vendor.mch_secret),
        reserved=vendor.reserved,
        cfg=VendorConfigOut(**{**CONFIG_DEFAULTS, **(vendor.config or {})}),
        app_key=vendor.app_key,
    )


def check_body_vid(call: Call) -> None:
    given = getattr(call.body, "vid", None)
    if given is not None and given != call.params.vid:
        raise ValidationFailed(
            "body vid: must name the vendor of the path",
            data=[{"field": "vid", "message": "must name the vendor of the path"}],
        )


# ----------------------------------------------------------------------------- routes


@routes.get(
    "/vendors",
    seed="AX-01",
    summary="List vendors",
    roles=PLATFORM_ONLY,
    query=VendorListQuery,
    response=VendorOut,
    many=True,
)
async def list_vendors(call: Call) -> Page:
    query: VendorListQuery = call.query
    qs: QuerySet[Vendor] = Vendor.all()
    if query.state is not None:
        qs = qs.filter(state=query.state)
    if query.type is not None:
        qs = qs.filter(type=query.type)
    if query.name:
        qs = qs.filter(Q(name__icontains=query.name) | Q(abbv__icontains=query.name))
    if query.mobile:
        qs = qs.filter(mobile=query.mobile)
    vendors, total = await query.page(qs, pk="code")
    users = dict(
        await AdminAccount.filter(
            vendor_id__in=[v.code for v in vendors], role=Role.VENDOR
        ).values_list("vendor_id", "username")
    )
    merchants = await merchant_flags([v.code for v in vendors])
    return Page([vendor_out(v, users.get(v.code), merchants[v.code]) for v in vendors], total)


@routes.post(
    "/vendors",
    seed="AX-02",
    summary="Register a vendor and its admin account",
    roles=PLATFORM_ONLY,
    body=VendorCreate,
    response=VidOut,
    errors=(409,),
)
async def create_vendor(call: Call) -> VidOut:
    body: VendorCreate = call.body
    profile = body.model_dump(exclude={"vid", "user", "pwd"})
    vendor = await register_vendor(profile, body.user, body.pwd, code=body.vid, box=box_of(call))
    return VidOut(vid=vendor.code)


@routes.get(
    "/vendors/{vid}",
    seed="AX-03",
    summary="Read a vendor",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    response=VendorOut,
)
async def read_vendor(call: Call) -> VendorOut:
    vendor = await get_vendor(call)
    account = await vendor_account(vendor.code)
    merchant = (await merchant_flags([vendor.code]))[vendor.code]
    return vendor_out(vendor, account.username if account else None, merchant)


@routes.put(
    "/vendors/{vid}",
    seed="AX-04",
    summary="Change a vendor's profile",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    body=VendorUpdate,
    response=VidOut,
    errors=(409,),
)
async def change_vendor(call: Call) -> VidOut:
    check_body_vid(call)
    vendor = await get_vendor(call)
    changes = changes_of(call.body)
    if "state" in changes:
        changes["state"] = VendorState(changes["state"])
    await update_vendor(vendor, changes)
    if changes.get("state") is VendorState.DISABLED:
        accounts = await AdminAccount.filter(vendor_id=vendor.code).values_list("role", "id")
        await log_out_tree(call, vendor, [(str(role), str(id_)) for role, id_ in accounts])
    return VidOut(vid=vendor.code)


async def log_out_tree(call: Call, vendor: Vendor, accounts: list[tuple[str, str]]) -> None:
    """End the sessions of the vendor's whole tree: its admin accounts (agents', dealers' and
    technicians' too) and its members, whose access tokens would otherwise live on."""
    await revoke_accounts(call.app, accounts)
    uids = await Member.filter(vendor_id=vendor.code).values_list("uid", flat=True)
    await revoke_accounts(call.app, [(str(Role.MEMBER), str(uid)) for uid in uids])


@routes.put(
    "/vendors/{vid}/pwd",
    seed="AX-05",
    summary="Change a vendor's login password",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    body=VendorPassword,
    response=VidOut,
    errors=(409,),
    description="Every session of the vendor's admin account ends.",
)
async def change_vendor_password(call: Call) -> VidOut:
    check_body_vid(call)
    vendor = await get_vendor(call)
    check_changeable(vendor)
    account = await vendor_account(vendor.code)
    if account is None:
        raise NotFoundError(f"vendor {vendor.code} has no admin account")
    await set_password(account, call.body.pwd)
    await revoke_accounts(call.app, [(str(Role.VENDOR), str(account.id))])
    return VidOut(vid=vendor.code)


@routes.put(
    "/vendors/{vid}/mob",
    seed="AX-06",
    summary="Change a vendor's mobile number",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    body=VendorMobile,
    response=VidOut,
    errors=(409,),
)
async def change_vendor_mobile(call: Call) -> VidOut:
    check_body_vid(call)
    vendor = await get_vendor(call)
    await update_vendor(vendor, {"mobile": call.body.mobile})
    return VidOut(vid=vendor.code)


@routes.delete(
    "/vendors/{vid}",
    seed="AX-13",
    summary="Deregister a vendor",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    description="注销: the vendor's admins, agents, dealers, technicians and members can no "
    "longer log in (their sessions end), its app key stops working; its devices, their "
    "history and the ledger stay. Deregistering again answers 204 too.",
)
async def deregister(call: Call) -> None:
    vendor = await get_vendor(call)
    accounts = await deregister_vendor(vendor)
    await log_out_tree(call, vendor, accounts)
