"""A vendor's merchant credentials: AX-07 (the WeChat official account and WeChat Pay), and
what the PUTs of its other channels' credentials share (api/alipay.py, api/cards.py).

Thin: validation, sealing and storage are models/merchants.py's; secrets are write-only,
never answered and never logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import Field

from aquafleet.api.routing import Call, RouteTable
from aquafleet.api.schemas import UNSET, RequestModel, text
from aquafleet.api.sealing import box_of, secret_box
from aquafleet.api.vendors.access import VendorPath, VidOut, changes_of, get_vendor
from aquafleet.gateway.logs import get_logger
from aquafleet.models.merchants import (
    WECHAT_PUBLIC_FIELDS,
    WECHAT_SECRET_FIELDS,
    MerchantFields,
    seal_legacy_secrets,
    seal_vendor_secrets,
    set_wechat_merchant,
)
from aquafleet.models.tenancy import PLATFORM_ONLY
from aquafleet.models.vendors import check_changeable, update_vendor

log = get_logger("aquafleet.api.vendors")

routes = RouteTable("vendors")


async def seal_secrets_ctx(app: web.Application) -> AsyncIterator[None]:
    """The data migration of secrets stored before sealing existed: sealed at start, once."""
    sealed = await seal_legacy_secrets(secret_box(app))
    if sealed:
        log.info("vendor_secrets_sealed", count=sealed)
    yield


routes.contexts.append(seal_secrets_ctx)

MERCHANT_FIELDS = (*WECHAT_SECRET_FIELDS, *WECHAT_PUBLIC_FIELDS)


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
    await update_vendor(vendor, seal_vendor_secrets(changes, box, vendor.code))
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
