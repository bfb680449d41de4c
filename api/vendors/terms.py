"""A vendor's terms with the platform: its options (AX-08), its signing (contract) records
(AX-09..12) and the app key of its own servers' signed requests."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from aquafleet.api.auth import is_signed
from aquafleet.api.errors import Forbidden, NotFoundError
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import (
    UNSET,
    ListQuery,
    PathParams,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    VendorCode,
    text,
)
from aquafleet.api.signing import app_secret
from aquafleet.api.vendors.access import VendorPath, VidOut, changes_of, get_vendor
from aquafleet.gateway.appkeys import SETTINGS
from aquafleet.models.outbox import NotificationKind
from aquafleet.models.tenancy import PLATFORM_ONLY, PLATFORM_OR_VENDOR
from aquafleet.models.vendors import (
    Vendor,
    VendorContract,
    check_changeable,
    create_contract,
    rotate_app_key,
    update_contract,
    update_vendor,
)

routes = RouteTable("vendors")

# ----------------------------------------------------------------------------- schemas


class ContractPath(PathParams):
    vid: VendorCode
    sid: int = Field(ge=1, le=2**31 - 1, description="signing (contract) record id")


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


class AppKeyOut(ResponseModel):
    vid: str
    app_key: str
    app_secret: str = Field(description="shown this once; HMAC key of signed requests")


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


# ----------------------------------------------------------------------------- routes


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
