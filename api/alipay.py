"""Alipay (pay_ch alipay): the H5 prepay, Alipay's asynchronous notifications, and a vendor's
Alipay app credentials (docs/payments.md).

Thin: the channel is gateway/alipay.py's, the protocol gateway/providers/alipay.py's; a paid
bill goes through the shared models/payments.py.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import ConfigDict, Field

from aquafleet.api.errors import Unavailable
from aquafleet.api.orders import OrderPath
from aquafleet.api.payments import (
    MOVED_BILL_DESCRIPTION,
    PAYMENTS,
    notification_taken,
    posted_form,
)
from aquafleet.api.routing import PUBLIC, Call, RouteTable
from aquafleet.api.schemas import PathParams, RequestModel, ResponseModel, VendorCode
from aquafleet.api.vendors import MERCHANT_PUT_DESCRIPTION, VendorPath, VidOut, set_vendor_merchant
from aquafleet.gateway.alipay import NOTIFY_ACK, AlipayNotificationRefused, AlipayPayments
from aquafleet.gateway.logs import get_logger
from aquafleet.models.alipay import ALIPAY_MERCHANT
from aquafleet.models.members import get_member
from aquafleet.models.order_queries import find_order
from aquafleet.models.tenancy import MEMBER_ONLY, PLATFORM_ONLY

log = get_logger("aquafleet.api.alipay")

routes = RouteTable(
    "alipay",
    "Alipay (pay_ch alipay): the H5 payment URL of an order, the endpoint Alipay posts its "
    "signed asynchronous notifications to, and a vendor's Alipay app (docs/payments.md).",
)


def channel(call: Call) -> AlipayPayments:
    service = call.app[PAYMENTS].alipay
    if service is None:
        raise Unavailable("Alipay is not running on this node", code="alipay_unavailable")
    return service


class AlipayPrepayOut(ResponseModel):
    bill_no: str = Field(
        description="支付号: Alipay's out_trade_no "
        "(the order id; `{oid}-2`... once closed at a channel "
        "to move)"
    )
    pay_url: str = Field(
        description="the signed alipay.trade.wap.pay URL (手机网站支付) the app opens in a "
        "browser or web view; Alipay's cashier page, or the Alipay app it hands over to"
    )


@routes.post(
    "/orders/{oid}/prepay/alipay",
    summary="Alipay prepay (H5, alipay.trade.wap.pay; not in the seed)",
    roles=MEMBER_ONLY,
    params=OrderPath,
    response=AlipayPrepayOut,
    status=200,
    errors=(404, 409, 502, 503),
    description="C: the member's own unpaid order. Opens (once; again answers the same bill) "
    "the order's bill for its total with the vendor's Alipay app and answers the signed "
    "wap.pay URL. The order is paid (channel `alipay`) when Alipay's signed notification "
    "arrives (or the sweep's alipay.trade.query finds it paid), never on the app's word."
    + MOVED_BILL_DESCRIPTION,
)
async def prepay_alipay(call: Call) -> AlipayPrepayOut:
    order = await find_order(call.principal, call.params.oid)
    member = await get_member(call.principal.subject)
    payment, url = await channel(call).prepay(order, member)
    return AlipayPrepayOut(bill_no=payment.bill_no, pay_url=url)


class AlipayNotifyPath(PathParams):
    vid: VendorCode


class AlipayNotificationIn(RequestModel):
    """Alipay's 异步通知 form, verified before anything in it is read."""

    model_config = ConfigDict(extra="allow")

    sign: str = Field(max_length=2048)
    sign_type: str = Field(max_length=8)


@routes.post(
    "/payments/alipay/notify/{vid}",
    summary="Alipay's asynchronous notification (not in the seed)",
    roles=PUBLIC,
    params=AlipayNotifyPath,
    body=AlipayNotificationIn,
    form=True,
    stream="text/plain",  # taken: the literal `success` Alipay expects
    status=200,
    errors=(401, 404, 409),
    description="Alipay posts its signed form here (the bill's notify_url). The RSA2 signature "
    "(Alipay's public key, over every parameter but sign and sign_type), the app_id and the "
    "seller_id are verified; anything else answers 401 and changes nothing (Alipay resends). "
    "Taken, it answers `success` whatever it did (paid, duplicate, amount_mismatch, ...; the "
    "outcome is in the X-Outcome header).",
)
async def alipay_notify(call: Call) -> web.StreamResponse:
    notice = channel(call).notification(call.params.vid, posted_form(call))
    outcome = await notification_taken(call, "alipay", notice, AlipayNotificationRefused)
    return web.Response(text=NOTIFY_ACK, headers={"X-Outcome": outcome.value})


class AlipayMerchantIn(RequestModel):
    """Given fields change, an empty string clears one."""

    alipay_app_id: str | None = Field(None, max_length=32, description="the app's APPID")
    alipay_seller_id: str | None = Field(
        None, max_length=32, description="the merchant's partner id (PID, 2088...): seller_id"
    )
    alipay_private_key: str | None = Field(
        None, max_length=8192, description="the app's RSA2 private key, PEM (write-only)"
    )
    alipay_public_key: str | None = Field(
        None, max_length=4096, description="Alipay's public key (支付宝公钥), PEM"
    )


@routes.put(
    "/vendors/{vid}/mxx/alipay",
    summary="Set a vendor's Alipay app (not in the seed; AX-07's sibling)",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    body=AlipayMerchantIn,
    response=VidOut,
    errors=(409,),
    description=MERCHANT_PUT_DESCRIPTION,
)
async def set_alipay(call: Call) -> VidOut:
    vid, fields = await set_vendor_merchant(call, ALIPAY_MERCHANT)
    log.info("vendor_merchant_changed", vid=vid, channel="alipay", fields=fields)
    return VidOut(vid=vid)
