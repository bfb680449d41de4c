"""Payments (AD-07..10) and the channels' notifications (docs/payments.md).

Thin: the channel work is gateway/payments.py's `PaymentService`, the decisions
models/payments.py's and models/money.py's. Nothing that moves money is taken from a client:
amounts come from the order, a payment only from the channel's signed, decrypted notification
or its own answer to our query.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from aquafleet.api.errors import (
    ApiError,
    ConflictError,
    NotFoundError,
    Unavailable,
    register_domain_error,
)
from aquafleet.api.members.access import visible_member
from aquafleet.api.orders import OrderPath
from aquafleet.api.routing import PUBLIC, RAW_BODY, Call, RouteTable
from aquafleet.api.schemas import (
    PathParams,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    VendorCode,
)
from aquafleet.api.sealing import secret_box
from aquafleet.gateway.appkeys import (
    DEVICE_GATEWAY,
    KEYSPACE,
    METRICS,
    REDIS,
    SCRIPTS,
    SETTINGS,
    TASKS,
)
from aquafleet.gateway.channels import BillCloseRefused
from aquafleet.gateway.logs import get_logger
from aquafleet.gateway.payments import PaymentService, PaymentSweeper, payment_service
from aquafleet.gateway.providers.wechatpay import (
    AnswerNotVerified,
    WechatPayRefused,
    WechatPayUnavailable,
)
from aquafleet.gateway.wechatpay import NotificationRefused
from aquafleet.models.devices import Device
from aquafleet.models.members import get_member
from aquafleet.models.money import Refund
from aquafleet.models.order_queries import find_order
from aquafleet.models.orders import Order
from aquafleet.models.payments import PaymentState, payment_of_order
from aquafleet.models.service_requests import ServiceChangeRequest
from aquafleet.models.tenancy import ANY_ROLE, MEMBER_ONLY
from aquafleet.models.vending import MAX_DISPENSE_ML, DispenseSession, charge_fen
from aquafleet.models.vendors import Vendor
from aquafleet.models.wallet import (
    MAX_TOPUP_FEN,
    MIN_TOPUP_FEN,
    WALLET,
    hold_for_dispense,
    pay_order_from_wallet,
    wallet_balance,
)

log = get_logger("aquafleet.api.payments")
T = TypeVar("T")

PAYMENTS: web.AppKey[PaymentService] = web.AppKey("payments")
PAYMENT_SWEEPER: web.AppKey[PaymentSweeper] = web.AppKey("payment_sweeper")
HTTP_TIMEOUT_S = 10.0

routes = RouteTable(
    "payments",
    "Payments (AD-07..10): WeChat Pay prepay, payment information, and the endpoints WeChat "
    "Pay posts its signed notifications to (docs/payments.md).",
)


async def payments_ctx(app: web.Application) -> AsyncIterator[None]:
    """The WeChat Pay client (one HTTP session) and the payment service."""
    settings = app[SETTINGS]
    gateway = app[DEVICE_GATEWAY]

    async def apply_service(did: str, change: ServiceChangeRequest) -> object:
        return await gateway.change_service(did, change, actor="payments")

    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=32),
    ) as session:
        service = app[PAYMENTS] = payment_service(
            settings, session, secret_box(app), app[METRICS], apply_service=apply_service
        )
        sweeper = app[PAYMENT_SWEEPER] = PaymentSweeper(
            service, app[REDIS], app[SCRIPTS], lease_key=app[KEYSPACE].payments_owner,
            node_id=settings.resolved_node_id, interval_s=settings.payments_sweep_interval_s,
        )  # fmt: skip
        app[TASKS].start("payments-sweeper", sweeper.run)
        try:
            yield
        finally:
            await app[TASKS].stop("payments-sweeper")
            await sweeper.release()


routes.contexts.append(payments_ctx)


# A channel (WeChat Pay, Alipay, the card acquirer) refused to close a bill to move it.
register_domain_error(BillCloseRefused, 502)


# What every prepay (and the wallet) says about a bill open at another channel.
MOVED_BILL_DESCRIPTION = (
    " A bill the member opened at another channel (WeChat Pay, Alipay, a card) is closed there "
    "first, so it cannot be paid there too: that channel unreachable answers 503 "
    "(wechatpay_unavailable, alipay_unavailable, acquirer_unavailable) and nothing moves; paid "
    "there meanwhile, that payment is applied and the answer is 409 order_paid; still payable "
    "there (a card being processed), 409 bill_open_at_channel; refused there, 502."
)


def channel_errors(exc: Exception) -> ApiError:
    if isinstance(exc, AnswerNotVerified):
        return Unavailable(
            "WeChat Pay's answer could not be verified; try again", code="wechatpay_unavailable"
        )
    if isinstance(exc, WechatPayUnavailable):
        return Unavailable("WeChat Pay did not answer; try again", code="wechatpay_unavailable")
    return ApiError(str(exc), code="wechatpay_refused", status=502)


# ----------------------------------------------------------------------------- AD-07


class PrepayOut(ResponseModel):
    """What the app passes to wx.requestPayment (mini program) or WeixinJSBridge (JSAPI)."""

    appId: str
    timeStamp: str
    nonceStr: str
    package: str = Field(description="prepay_id=...")
    signType: str = Field(description="RSA")
    paySign: str = Field(description="RSA-SHA256 with the merchant key, base64")
    bill_no: str = Field(description="支付号: WeChat Pay's out_trade_no")


@routes.post(
    "/orders/{oid}/prepay/weixin",
    seed="AD-07",
    summary="WeChat Pay prepay (JSAPI / mini program)",
    roles=MEMBER_ONLY,
    params=OrderPath,
    response=PrepayOut,
    status=200,
    errors=(404, 409, 502, 503),
    description="C: the member's own unpaid order. Creates (once; again answers the same bill) "
    "the WeChat Pay transaction for the order's total with the vendor's merchant, payer the "
    "member's bound WeChat openid, and answers the signed parameters that open the payment "
    "sheet. The order is paid when WeChat Pay's signed notification arrives (or the sweep's "
    "query finds it paid), never on the app's word." + MOVED_BILL_DESCRIPTION,
)
async def prepay_weixin(call: Call) -> PrepayOut:
    order = await find_order(call.principal, call.params.oid)
    member = await get_member(call.principal.subject)
    try:
        payment, params = await call.app[PAYMENTS].wechat.prepay(order, member)
    except (WechatPayUnavailable, WechatPayRefused) as exc:
        raise channel_errors(exc) from None
    return PrepayOut(**params, bill_no=payment.bill_no)


# ----------------------------------------------------------------------------- AD-10


class RefundOut(ResponseModel):
    refund_no: str
    amount: int = Field(description="fen")
    part: str = Field(
        description="the order part it gives back (goods, freight, install, deposit, rent), "
        "empty when it gives back the order as a whole"
    )
    state: str = Field(description="due, requested, succeeded or failed")
    reason: str
    create_tms: UtcDateTime


class PaymentOut(ResponseModel):
    """The seed's `payment` block, and the bill's state and refunds."""

    pay_ch: str = Field(
        description="支付通道: weixin, alipay, wallet, card, manual; empty when unpaid"
    )
    pay_state: str = Field(description="unpaid, pending (a bill is open), paid, closed")
    pay_tms: UtcDateTime | None = Field(description="支付时间")
    bill_no: str = Field(description="支付号 (our number at the channel)")
    transaction_no: str = Field(description="交易号 (the channel's)")
    amount: int = Field(description="fen")
    refunds: list[RefundOut]


@routes.get(
    "/orders/{oid}/payment",
    seed="AD-10",
    summary="An order's payment information",
    roles=ANY_ROLE,
    params=OrderPath,
    response=PaymentOut,
    description="A+C, scoped as AD-01: channel, state, time, bill and transaction numbers, and "
    "the refunds of the order.",
)
async def read_payment(call: Call) -> PaymentOut:
    return await payment_info(await find_order(call.principal, call.params.oid))


async def payment_info(order: Order) -> PaymentOut:
    payment = await payment_of_order(order.oid)
    refunds = [
        RefundOut(
            refund_no=r.refund_no,
            amount=r.amount_fen,
            part=r.part,
            state=r.state.name.lower(),
            reason=r.reason,
            create_tms=r.created_at,
        )
        for r in await Refund.filter(order_oid=order.oid).order_by("id")
    ]
    if payment is None:
        paid = order.paid_at is not None
        return PaymentOut(
            pay_ch="manual" if paid else "", pay_state="paid" if paid else "unpaid",
            pay_tms=order.paid_at, bill_no="", transaction_no="", amount=order.total_fen,
            refunds=refunds,
        )  # fmt: skip
    state = {PaymentState.PENDING: "pending", PaymentState.PAID: "paid"}.get(
        payment.state, "closed"
    )
    return PaymentOut(
        pay_ch=payment.channel, pay_state=state, pay_tms=payment.paid_at,
        bill_no=payment.bill_no, transaction_no=payment.transaction_no,
        amount=payment.amount_fen, refunds=refunds,
    )  # fmt: skip


# ----------------------------------------------------------------------------- notifications


class VendorNotifyPath(PathParams):
    vid: VendorCode


class WechatNotificationIn(BaseModel):
    """WeChat Pay's notification as it posts it (verified and decrypted before it is read)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=64)
    event_type: str = Field(max_length=64)
    resource_type: str = Field("", max_length=64)


class NotifyOut(ResponseModel):
    outcome: str


async def notification_taken(
    call: Call, channel: str, notice: Awaitable[T], refused: type[Exception]
) -> T:
    """What a channel's notification did; 401 (counted and logged; nothing changed) when the
    channel refuses it: forged, stale, unreadable or another merchant's."""
    try:
        return await notice
    except refused as exc:
        call.app[PAYMENTS].metrics.payments_notices_refused += 1
        log.warning(f"{channel}_notification_refused", vid=call.params.vid, why=str(exc))
        raise ApiError(str(exc), code="notification_refused", status=401) from None


def posted_form(call: Call) -> dict[str, str]:
    """A notification posted as a form (Alipay, the card acquirers), its values as text."""
    return {k: str(v) for k, v in call.body.model_dump().items()}


async def _notification(call: Call, refund: bool) -> NotifyOut:
    wechat = call.app[PAYMENTS].wechat
    body = call.request[RAW_BODY].decode("utf-8", "replace")
    vid, headers = call.params.vid, call.request.headers
    if refund:
        outcome = await notification_taken(
            call, "wechatpay", wechat.refund_notification(vid, headers, body), NotificationRefused
        )
        return NotifyOut(outcome=outcome)
    paid = wechat.payment_notification(vid, headers, body)
    return NotifyOut(
        outcome=(await notification_taken(call, "wechatpay", paid, NotificationRefused)).value
    )


@routes.post(
    "/payments/weixin/notify/{vid}",
    summary="WeChat Pay's payment notification (not in the seed)",
    roles=PUBLIC,
    params=VendorNotifyPath,
    body=WechatNotificationIn,
    response=NotifyOut,
    status=200,
    errors=(401, 404, 409),
    description="WeChat Pay posts here (the vendor's notify URL). The platform signature, "
    "serial and timestamp are verified and the resource decrypted with the vendor's API v3 key; "
    "anything else answers 401 and changes nothing. A 2xx tells WeChat Pay to stop resending: "
    "`outcome` says what the notification did (paid, duplicate, amount_mismatch, "
    "refund_after_close, paid_twice, unknown_bill).",
)
async def wechat_notify(call: Call) -> NotifyOut:
    return await _notification(call, refund=False)


@routes.post(
    "/payments/weixin/refund-notify/{vid}",
    summary="WeChat Pay's refund notification (not in the seed)",
    roles=PUBLIC,
    params=VendorNotifyPath,
    body=WechatNotificationIn,
    response=NotifyOut,
    status=200,
    errors=(401, 404, 409),
    description="As the payment notification; a succeeded refund is settled in the money "
    "ledger once (`outcome` settled, failed, pending, amount_mismatch or unknown).",
)
async def wechat_refund_notify(call: Call) -> NotifyOut:
    return await _notification(call, refund=True)


# ----------------------------------------------------------------------------- the wallet

UID_PATTERN = r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$"
DID_PATTERN = r"^[A-Z0-9]{4}[0-9]{8}[0-9A-F]{4}$"


class MemberPath(PathParams):
    uid: str = Field(pattern=UID_PATTERN)


class DevicePath(PathParams):
    did: str = Field(pattern=DID_PATTERN)


class WalletOut(ResponseModel):
    uid: str
    balance: int = Field(description="fen the member may spend")


class TopupIn(RequestModel):
    amount: int = Field(ge=MIN_TOPUP_FEN, le=MAX_TOPUP_FEN, description="fen")


class VendIn(RequestModel):
    ml: int = Field(ge=1, le=MAX_DISPENSE_ML)


class VendOut(ResponseModel):
    session_id: int
    did: str
    cid: int
    requested_ml: int
    price_fen_per_l: int
    held: int = Field(description="fen held from the wallet; what was not poured comes back")
    state: str = Field(description="pending, done or failed")
    actual_ml: int | None
    charge: int | None = Field(description="fen charged for what was poured")
    balance: int = Field(description="the wallet after the hold")


@routes.get(
    "/users/{uid}/wallet",
    summary="A member's wallet balance (not in the seed)",
    roles=ANY_ROLE,
    params=MemberPath,
    response=WalletOut,
    description="The member itself, or an admin whose subtree holds it. The balance is the sum "
    "of the wallet's ledger entries (docs/money.md).",
)
async def read_wallet(call: Call) -> WalletOut:
    member = await visible_member(call.principal, call.params.uid)
    return WalletOut(uid=member.uid, balance=await wallet_balance(member.uid))


@routes.post(
    "/users/{uid}/wallet/topup",
    summary="Top up the wallet through WeChat Pay (not in the seed)",
    roles=MEMBER_ONLY,
    params=MemberPath,
    body=TopupIn,
    response=PrepayOut,
    status=200,
    errors=(404, 409, 502, 503),
    description="C, its own wallet: a top-up bill at WeChat Pay, answered as AD-07 does; the "
    "wallet is credited when WeChat Pay's signed notification (or a query) confirms it.",
)
async def topup_wallet(call: Call) -> PrepayOut:
    member = await visible_member(call.principal, call.params.uid)
    try:
        payment, params = await call.app[PAYMENTS].wechat.topup(member, call.body.amount)
    except (WechatPayUnavailable, WechatPayRefused) as exc:
        raise channel_errors(exc) from None
    return PrepayOut(**params, bill_no=payment.bill_no)


@routes.post(
    "/orders/{oid}/prepay/wallet",
    summary="Pay an order from the wallet (not in the seed; pay_ch wallet)",
    roles=MEMBER_ONLY,
    params=OrderPath,
    response=PaymentOut,
    status=200,
    errors=(404, 409, 502, 503),
    description="C, its own unpaid order: paid at once from its wallet (insufficient_funds "
    "when the wallet holds less; concurrent spends never overdraw it)." + MOVED_BILL_DESCRIPTION,
)
async def pay_with_wallet(call: Call) -> PaymentOut:
    order = await find_order(call.principal, call.params.oid)
    payments = call.app[PAYMENTS]
    apply_service = payments.apply_service  # a renewal renews its device
    # A bill open at another channel is closed there first: what the member holds there
    # cannot pay the order a second time (the channel unreachable: 503, nothing moved).
    await payments.release_bill(order, WALLET)
    paid = await pay_order_from_wallet(order, call.principal.subject, apply_service=apply_service)
    return await payment_info(paid)


@routes.post(
    "/devices/{did}/vend",
    summary="Pour from a vending machine, paid from the wallet (not in the seed)",
    roles=MEMBER_ONLY,
    params=DevicePath,
    body=VendIn,
    response=VendOut,
    status=200,
    errors=(404, 409),
    description="C, a vending machine of the member's vendor, at the vendor's price per litre "
    "(AX-08 vending_price_fen_per_l). The most the pour can cost is held from the wallet "
    "before the machine is told to pour; once it reports the ml poured, the charge is booked "
    "and the rest comes back (the payments sweep).",
)
async def vend(call: Call) -> VendOut:
    member = await get_member(call.principal.subject)
    device = await Device.get_or_none(did=call.params.did, vendor_id=member.vendor_id)
    if device is None:
        raise NotFoundError(f"device {call.params.did} not found")
    vendor = await Vendor.get(code=member.vendor_id)
    price = int((vendor.config or {}).get("vending_price_fen_per_l", 0))
    if price <= 0:
        raise ConflictError("the vendor has set no vending price (AX-08)", code="vending_unpriced")

    async def hold(session: DispenseSession) -> None:
        await hold_for_dispense(session, member.uid)

    session, _record = await call.app[DEVICE_GATEWAY].vend(
        device.did, call.body.ml, price_fen_per_l=price, payer_uid=member.uid,
        before_send=hold, issuer=f"member:{member.uid}", timeout_s=60, wait_s=5.0,
    )  # fmt: skip
    await session.refresh_from_db()
    return VendOut(
        session_id=session.id, did=session.did, cid=session.cid,
        requested_ml=session.requested_ml, price_fen_per_l=price,
        held=charge_fen(session.requested_ml, price), state=session.state.name.lower(),
        actual_ml=session.actual_ml, charge=session.charge_fen,
        balance=await wallet_balance(member.uid),
    )  # fmt: skip
