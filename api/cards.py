"""Card payments (AD-08 credit card, AD-09 debit card) through a card acquirer, the acquirer's
notifications, and a vendor's acquirer credentials (docs/payments.md).

Thin: the channel interface and the service are gateway/cards.py's, the Allinpay adapter
gateway/providers/allinpay.py's; a paid bill goes through the shared models/payments.py.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import ConfigDict, Field

from aquafleet.api.errors import ApiError, Unavailable
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
from aquafleet.gateway.cards import (
    AcquirerRefused,
    AcquirerUnavailable,
    CardKind,
    CardNotificationRefused,
    CardPayments,
)
from aquafleet.gateway.logs import get_logger
from aquafleet.models.allinpay import ALLINPAY_MERCHANT
from aquafleet.models.members import get_member
from aquafleet.models.order_queries import find_order
from aquafleet.models.tenancy import MEMBER_ONLY, PLATFORM_ONLY

log = get_logger("aquafleet.api.cards")

routes = RouteTable(
    "cards",
    "Card payments (AD-08, AD-09) through the vendor's card acquirer (Allinpay 通联 收银宝), "
    "and the endpoint the acquirer posts its signed notifications to (docs/payments.md).",
)


def cards(call: Call) -> CardPayments:
    service = call.app[PAYMENTS].cards
    if service is None:
        raise Unavailable("card payments are not running on this node", code="cards_unavailable")
    return service


class CardPrepayOut(ResponseModel):
    bill_no: str = Field(
        description="支付号: our number at the acquirer "
        "(the order id; `{oid}-2`... once closed at a channel "
        "to move)"
    )
    acquirer: str = Field(description="the vendor's card acquirer (allinpay)")
    pay_info: str = Field(
        description="what the app opens for the member to pay with the card (Allinpay: the "
        "UnionPay payment code, 银联扫码 payinfo)"
    )


async def _prepay(call: Call, kind: CardKind) -> CardPrepayOut:
    order = await find_order(call.principal, call.params.oid)
    member = await get_member(call.principal.subject)
    service = cards(call)
    try:
        payment, acquirer, pay_info = await service.prepay(order, member, kind)
    except AcquirerUnavailable:
        raise Unavailable(
            "the card acquirer did not answer; try again", code="acquirer_unavailable"
        ) from None
    except AcquirerRefused as exc:
        raise ApiError(str(exc), code="acquirer_refused", status=502) from None
    return CardPrepayOut(bill_no=payment.bill_no, acquirer=acquirer, pay_info=pay_info)


PREPAY_DESCRIPTION = (
    "C: the member's own unpaid order. Opens (once; again answers the same bill) the order's "
    "bill for its total at the vendor's card acquirer and answers what the app opens to pay. "
    "The order is paid (channel `card`) when the acquirer's signed notification arrives (or the "
    "sweep's query finds it paid), never on the app's word." + MOVED_BILL_DESCRIPTION
)


@routes.post(
    "/orders/{oid}/prepay/credit",
    seed="AD-08",
    summary="Credit card prepay (信用卡预支付)",
    roles=MEMBER_ONLY,
    params=OrderPath,
    response=CardPrepayOut,
    status=200,
    errors=(404, 409, 502, 503),
    description=PREPAY_DESCRIPTION,
)
async def prepay_credit(call: Call) -> CardPrepayOut:
    return await _prepay(call, CardKind.CREDIT)


@routes.post(
    "/orders/{oid}/prepay/debit",
    seed="AD-09",
    summary="Debit card prepay (银行卡预支付)",
    roles=MEMBER_ONLY,
    params=OrderPath,
    response=CardPrepayOut,
    status=200,
    errors=(404, 409, 502, 503),
    description=PREPAY_DESCRIPTION + " The acquirer is told to refuse credit cards "
    "(Allinpay `limit_pay=no_credit`).",
)
async def prepay_debit(call: Call) -> CardPrepayOut:
    return await _prepay(call, CardKind.DEBIT)


class CardNotifyPath(PathParams):
    acquirer: str = Field(pattern=r"^[a-z0-9]{2,16}$")
    vid: VendorCode


class CardNotificationIn(RequestModel):
    """The acquirer's notification form (Allinpay: 交易结果通知), verified before it is read."""

    model_config = ConfigDict(extra="allow")

    sign: str = Field(max_length=1024)


@routes.post(
    "/payments/card/{acquirer}/notify/{vid}",
    summary="A card acquirer's payment notification (not in the seed)",
    roles=PUBLIC,
    params=CardNotifyPath,
    body=CardNotificationIn,
    form=True,
    stream="text/plain",  # taken: the acquirer's expected answer (Allinpay: success)
    status=200,
    errors=(401, 404, 409),
    description="The acquirer posts its signed form here (the notify_url of the bill). The "
    "signature (Allinpay: SHA1WithRSA with Allinpay's public key) and the merchant are verified; "
    "anything else answers 401 and changes nothing. Taken, it answers what the acquirer expects "
    "(Allinpay: `success`) whatever it did (paid, duplicate, amount_mismatch, ...).",
)
async def card_notify(call: Call) -> web.StreamResponse:
    service = cards(call)
    notice = service.notification(call.params.acquirer, call.params.vid, posted_form(call))
    outcome = await notification_taken(call, "card", notice, CardNotificationRefused)
    acquirer = service.acquirers[call.params.acquirer]
    return web.Response(text=acquirer.notify_ack, headers={"X-Outcome": outcome.value})


class AllinpayMerchantIn(RequestModel):
    """Given fields change, an empty string clears one."""

    allinpay_cusid: str | None = Field(None, max_length=32, description="商户号 (cusid)")
    allinpay_appid: str | None = Field(None, max_length=32, description="应用ID (appid)")
    allinpay_private_key: str | None = Field(
        None, max_length=8192, description="the merchant's RSA private key, PEM (write-only)"
    )
    allinpay_public_key: str | None = Field(
        None, max_length=4096, description="Allinpay's RSA public key (通联公钥), PEM"
    )


@routes.put(
    "/vendors/{vid}/acquirers/allinpay",
    summary="Set a vendor's Allinpay 收银宝 merchant (the card acquirer; not in the seed)",
    roles=PLATFORM_ONLY,
    params=VendorPath,
    body=AllinpayMerchantIn,
    response=VidOut,
    errors=(409,),
    description=MERCHANT_PUT_DESCRIPTION,
)
async def set_allinpay(call: Call) -> VidOut:
    vid, fields = await set_vendor_merchant(call, ALLINPAY_MERCHANT)
    log.info("vendor_acquirer_changed", vid=vid, acquirer="allinpay", fields=fields)
    return VidOut(vid=vid)
