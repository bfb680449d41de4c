"""Vendors (运营商), AX-01..13: platform admin only. Secrets are write-only."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar, Literal

from aiohttp import web
from pydantic import Field
from tortoise.expressions import Q
from tortoise.queryset import QuerySet

from aquafleet.api.auth import is_signed
from aquafleet.api.errors import Forbidden, NotFoundError, ValidationFailed
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
from aquafleet.api.sealing import box_of, secret_box
from aquafleet.api.signing import app_secret
from aquafleet.api.tokens import revoke_accounts
from aquafleet.gateway.appkeys import SETTINGS
from aquafleet.gateway.logs import get_logger
from aquafleet.models.accounts import AdminAccount, set_password
from aquafleet.models.merchants import (
    WECHAT_PUBLIC_FIELDS,
    WECHAT_SECRET_FIELDS,
    MerchantFields,
    merchant_flags,
    seal_legacy_secrets,
    seal_vendor_secrets,
    set_wechat_merchant,
)
from aquafleet.models.outbox import NotificationKind
from aquafleet.models.tenancy import PLATFORM_ONLY, PLATFORM_OR_VENDOR, Role
from aquafleet.models.vendors import (
    Vendor,
    VendorContract,
    VendorState,
    check_changeable,
    create_contract,
    deregister_vendor,
    register_vendor,
    rotate_app_key,
    update_contract,
    update_vendor,
    vendor_account,
)

log = get_logger("aquafleet.api.vendors")

routes = RouteTable(
    "vendors",
    "Vendors (brands, 运营商): AX-01..13, the platform admin's. `vid` is the 4-character "
    "vendor code. pwd, mp_secret and mch_secret are write-only.",
)


async def seal_secrets_ctx(app: web.Application) -> AsyncIterator[None]:
    """The data migration of secrets stored before sealing existed: sealed at start, once."""
    sealed = await seal_legacy_secrets(secret_box(app))
    if sealed:
        log.info("vendor_secrets_sealed", count=sealed)
    yield


routes.contexts.append(seal_secrets_ctx)

# ----------------------------------------------------------------------------- schemas


class VendorPath(PathParams):
    vid: VendorCode


class ContractPath(PathParams):
    vid: VendorCode
    sid: int = Field(ge=1, le=2**31 - 1, description="signing (contract) record id")


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


class VendorWechat(RequestModel):
    """AX-07: official account (mp_*) and merchant (mch_*) settings, and the WeChat Pay API v3
    credentials (docs/payments.md); given fields change, an empty string clears one. Secrets
    are write-only and stored encrypted."""

    mp_gid: str = text(64, default=None)
    mp_appid: str = text(64, default=None)
    mp_secret: str = text(128, default=None, description="write-only")
    mch_gid: str = text(64, default=None, description="WeChat Pay merchant id (商户号)")
    mch_appid: str = text(64, default=None, description="app id the merchant pays for")
    mch_secret: str = text(128, default=None, description="write-only")
    mch_apiv3_key: str = text(32, default=None, description="write-only: the API v3 key")
    mch_private_key: str = Field(
        UNSET, max_length=8192, description="write-only: the merchant's RSA private key (PEM)"
    )
    mch_cert_serial: str = text(64, default=None, description="the merchant certificate serial")
    wxpay_serial: str = text(
        64, default=None, description="the platform certificate serial or public key id"
    )
    wxpay_public_key: str = Field(
        UNSET, max_length=4096, description="the platform's RSA public key (PEM)"
    )


TemplateId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class VendorConfig(RequestModel):
    """AX-08 (the seed: "Pending"): the vendor's options; only the fields given change."""

    member_registration: bool = Field(UNSET, description="members may register themselves (AA-02B)")
    device_sharing: bool = Field(UNSET, description="members may share devices (AB-15)")
    commission_levels: int = Field(
        UNSET, ge=0, le=3, description="levels of the distribution commission (三级分销)"
    )
    sms_sign: str = text(32, default=UNSET, description="SMS signature")
    shop_public: bool = Field(
        UNSET, description="visitors who have not logged in may browse the shop (AC-01/03/05)"
    )
    vending_price_fen_per_l: int = Field(
        UNSET, ge=0, le=100_000, description="what a litre from a vending machine costs, in fen"
    )
    wechat_templates: dict[NotificationKind, TemplateId] = Field(
        UNSET,
        description="消息推送: the official account's template id per kind of message "
        "(docs/api-tickets.md); a kind without one is not sent by WeChat",
    )
    sms_templates: dict[NotificationKind, TemplateId] = Field(
        UNSET, description="消息推送: the SMS template code per kind of message"
    )


CONFIG_DEFAULTS: dict[str, Any] = {
    "member_registration": True,
    "device_sharing": True,
    "commission_levels": 3,
    "sms_sign": "",
    "shop_public": False,
    "vending_price_fen_per_l": 0,
    "wechat_templates": {},
    "sms_templates": {},
}


class VendorConfigOut(ResponseModel):
    member_registration: bool
    device_sharing: bool
    commission_levels: int
    sms_sign: str
    shop_public: bool
    vending_price_fen_per_l: int
    wechat_templates: dict[str, str]
    sms_templates: dict[str, str]


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


class VidOut(ResponseModel):
    vid: str


class AppKeyOut(ResponseModel):
    vid: str
    app_key: str
    app_secret: str = Field(description="shown this once; HMAC key of signed requests")


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


class ContractIn(RequestModel):
    """A signing (contract) record (AX-10)."""

    contract_no: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_./-]+$")
    title: str = text(128, default="")
    signed_on: dt.date
    starts_on: dt.date
    ends_on: dt.date | None = None
    amount_fen: int = Field(0, ge=0, le=10**13, description="contract amount in fen")
    remark: str = text(255, default="")


class ContractUpdate(RequestModel):
    """AX-11: only the fields given change."""

    contract_no: str = Field(UNSET, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_./-]+$")
    title: str = text(128, default=None)
    signed_on: dt.date = Field(UNSET)
    starts_on: dt.date = Field(UNSET)
    ends_on: dt.date | None = Field(None, description="null: open-ended")
    amount_fen: int = Field(UNSET, ge=0, le=10**13)
    remark: str = text(255, default=None)


class ContractOut(ResponseModel):
    id: int
    vid: str
    contract_no: str
    title: str
    signed_on: dt.date
    starts_on: dt.date
    ends_on: dt.date | None
    amount_fen: int
    remark: str
    created_tms: UtcDateTime
    updated_tms: UtcDateTime


class ContractListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "id": "id",
        "signed_on": "signed_on",
        "starts_on": "starts_on",
        "contract_no": "contract_no",
    }
    sort: Literal["id", "signed_on", "starts_on", "contract_no"] = "id"


# ----------------------------------------------------------------------------- helpers

MERCHANT_FIELDS = (*WECHAT_SECRET_FIELDS, *WECHAT_PUBLIC_FIELDS)


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


def contract_out(contract: VendorContract) -> ContractOut:
    return ContractOut(
        id=contract.id,
        vid=contract.vendor_id,
        contract_no=contract.contract_no,
        title=contract.title,
        signed_on=contract.signed_on,
        starts_on=contract.starts_on,
        ends_on=contract.ends_on,
        amount_fen=contract.amount_fen,
        remark=contract.remark,
        created_tms=contract.created_at,
        updated_tms=contract.updated_at,
    )


async def get_vendor(call: Call) -> Vendor:
    """The path's vendor, if the caller may see it (404 otherwise, never 403)."""
    vid = call.params.vid
    if not call.principal.may_see_vendor(vid):
        raise NotFoundError(f"vendor {vid} not found")
    vendor = await Vendor.get_or_none(code=vid)
    if vendor is None:
        raise NotFoundError(f"vendor {vid} not found")
    return vendor


def check_body_vid(call: Call) -> None:
    given = getattr(call.body, "vid", None)
    if given is not None and given != call.params.vid:
        raise ValidationFailed(
            "body vid: must name the vendor of the path",
            data=[{"field": "vid", "message": "must name the vendor of the path"}],
        )


def changes_of(model: RequestModel, *, skip: frozenset[str] = frozenset({"vid"})) -> dict[str, Any]:
    return {k: v for k, v in model.model_dump(exclude_unset=True).items() if k not in skip}


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
    profile = seal_vendor_secrets(body.model_dump(exclude={"vid", "user", "pwd"}), box_of(call))
    vendor = await register_vendor(profile, body.user, body.pwd, code=body.vid)
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
        await revoke_accounts(call.app, [(str(role), str(id_)) for role, id_ in accounts])
    return VidOut(vid=vendor.code)


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


@routes.put(
    "/vendors/{vid}/mxx",
    seed="AX-07",
    summary="Change a vendor's WeChat official account and merchant settings",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    body=VendorWechat,
    response=VidOut,
    errors=(409,),
)
async def change_vendor_wechat(call: Call) -> VidOut:
    vendor = await get_vendor(call)
    check_changeable(vendor)
    changes = changes_of(call.body)
    merchant = {k: changes.pop(k) for k in MERCHANT_FIELDS if k in changes}
    box = box_of(call)
    await set_wechat_merchant(vendor.code, merchant, box)
    await update_vendor(vendor, seal_vendor_secrets(changes, box))
    log.info("vendor_wechat_changed", vid=vendor.code, fields=sorted([*merchant, *changes]))
    return VidOut(vid=vendor.code)


# The PUTs of a vendor's credentials at Alipay and its card acquirer (api/alipay.py, api/cards.py).
MERCHANT_PUT_DESCRIPTION = (
    "A*: as AX-07 for WeChat Pay. The private key is sealed at rest, never answered "
    "and never logged; a malformed key is refused (422) without being repeated."
)


async def set_vendor_merchant(call: Call, merchant: MerchantFields) -> tuple[str, list[str]]:
    """Store the body's credentials for the path's vendor; its code and the fields given."""
    vendor = await get_vendor(call)
    check_changeable(vendor)
    given = call.body.model_dump(exclude_unset=True)
    await merchant.store(vendor.code, given, box_of(call))
    return vendor.code, sorted(given)


@routes.put(
    "/vendors/{vid}/cfg",
    seed="AX-08",
    summary="Change a vendor's configuration options",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    body=VendorConfig,
    response=VidOut,
    errors=(409,),
)
async def change_vendor_config(call: Call) -> VidOut:
    vendor = await get_vendor(call)
    changes = {k: v for k, v in changes_of(call.body).items() if v is not None}
    await update_vendor(vendor, {"config": {**(vendor.config or {}), **changes}})
    return VidOut(vid=vendor.code)


@routes.get(
    "/vendors/{vid}/signing",
    seed="AX-09",
    summary="List a vendor's signing (contract) records",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    query=ContractListQuery,
    response=ContractOut,
    many=True,
)
async def list_contracts(call: Call) -> Page:
    vendor = await get_vendor(call)
    query: ContractListQuery = call.query
    qs = VendorContract.filter(vendor_id=vendor.code)
    rows, total = await query.page(qs, pk="id")
    return Page([contract_out(c) for c in rows], total)


@routes.post(
    "/vendors/{vid}/signing",
    seed="AX-10",
    summary="Add a signing (contract) record",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    body=ContractIn,
    response=ContractOut,
    errors=(409,),
)
async def add_contract(call: Call) -> ContractOut:
    vendor = await get_vendor(call)
    contract = await create_contract(vendor, call.body.model_dump())
    return contract_out(contract)


async def get_contract(call: Call) -> tuple[Vendor, VendorContract]:
    vendor = await get_vendor(call)
    contract = await VendorContract.get_or_none(id=call.params.sid, vendor_id=vendor.code)
    if contract is None:
        raise NotFoundError(f"vendor {vendor.code} has no signing record {call.params.sid}")
    return vendor, contract


@routes.put(
    "/vendors/{vid}/signing/{sid}",
    seed="AX-11",
    summary="Change a signing (contract) record",
    roles=PLATFORM_ONLY,
    params=ContractPath,
    body=ContractUpdate,
    response=ContractOut,
    errors=(409,),
)
async def change_contract(call: Call) -> ContractOut:
    vendor, contract = await get_contract(call)
    check_changeable(vendor)
    await update_contract(contract, changes_of(call.body))
    return contract_out(contract)


@routes.delete(
    "/vendors/{vid}/signing/{sid}",
    seed="AX-12",
    summary="Delete a signing (contract) record",
    roles=PLATFORM_ONLY,
    params=ContractPath,
    errors=(409,),
)
async def delete_contract(call: Call) -> None:
    vendor, contract = await get_contract(call)
    check_changeable(vendor)
    await contract.delete()


@routes.delete(
    "/vendors/{vid}",
    seed="AX-13",
    summary="Deregister a vendor",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    description="注销: the vendor's admins, agents and dealers can no longer log in (their "
    "sessions end), its app key stops working; its devices, their history and the ledger "
    "stay. Deregistering again answers 204 too.",
)
async def deregister(call: Call) -> None:
    vendor = await get_vendor(call)
    accounts = await deregister_vendor(vendor)
    await revoke_accounts(call.app, accounts)


@routes.post(
    "/vendors/{vid}/app-key",
    summary="Issue a new app key and secret for signed requests (not in the seed)",
    roles=PLATFORM_OR_VENDOR,
    params=VendorPath,
    response=AppKeyOut,
    errors=(409,),
    description="The vendor's servers sign their requests with these (docs/api-auth.md). The "
    "secret is shown this once; a new key revokes the old one. A vendor admin may issue its "
    "own (by bearer token, not by a signed request).",
)
async def issue_app_key(call: Call) -> AppKeyOut:
    if is_signed(call.principal):
        raise Forbidden("a signed request may not replace its own key")
    vendor = await get_vendor(call)
    key = await rotate_app_key(vendor)
    secret = app_secret(call.app[SETTINGS].master_secret_bytes(), key)
    return AppKeyOut(vid=vendor.code, app_key=key, app_secret=secret)
