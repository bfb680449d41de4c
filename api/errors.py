"""The API's exception root and the stable error codes its answers carry.

Every failure an API client can see is an `ApiError`: an HTTP status, a stable `code` (listed in
docs/api.md; clients branch on it) and a human `message`. Domain errors (`models.errors`) are
translated at the boundary by `from_domain`; anything else becomes a 500 `internal_error` whose
details go to the log, never to the client.
"""

from __future__ import annotations

from typing import Any

from aquafleet.models.errors import Conflict, DomainError, InvalidInput, NotFound
from aquafleet.models.errors import Forbidden as DomainForbidden
from aquafleet.models.errors import Unavailable as DomainUnavailable


class ApiError(Exception):
    """A failure answered in the envelope: {status: false, code, message, data}."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.data = data
        self.headers = headers or {}


class BadRequest(ApiError):
    """The request cannot be read: not JSON, wrong content type, a body where none belongs."""

    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    """No credentials, or credentials that are wrong, expired or revoked."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "authentication required", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="aquafleet"'})
        super().__init__(message, **kwargs)


class Forbidden(ApiError):
    """Authenticated, but the caller's role may not call this endpoint."""

    status = 403
    code = "forbidden"


class NotFoundError(ApiError):
    """No such record in the caller's tenant subtree (another tenant's ids answer this too)."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class NotAcceptable(ApiError):
    """The client's Accept header admits none of the route's media types (JSON, for most)."""

    status = 406
    code = "not_acceptable"


class ConflictError(ApiError):
    """The record's state forbids the operation (duplicate, still in use, ...)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(ApiError):
    """The body, query or path broke the schema; `data` lists [{field, message}]."""

    status = 422
    code = "validation_failed"


class RateLimited(ApiError):
    """Too many attempts; `Retry-After` says when to try again."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(max(1, int(retry_after_s)))})
        super().__init__(message, **kwargs)


class Unavailable(ApiError):
    """A backing service (Redis, the database) did not answer."""

    status = 503
    code = "service_unavailable"


# Domain error class -> HTTP status. A subclass of one of these keeps its own `code`.
_DOMAIN_STATUS: list[tuple[type[DomainError], int]] = [
    (DomainForbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (InvalidInput, 422),
    (DomainUnavailable, 503),
]


def register_domain_error(cls: type[DomainError], status: int) -> None:
    """Map another domain error class (e.g. a rate limit) to an HTTP status."""
    _DOMAIN_STATUS.insert(0, (cls, status))


def from_domain(exc: DomainError) -> ApiError:
    """The API error a domain error is answered with (its `code` is kept)."""
    status = next((s for cls, s in _DOMAIN_STATUS if isinstance(exc, cls)), 422)
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if status == 429 and isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, int(retry_after)))
    data = getattr(exc, "data", None)  # e.g. an order's current state (a state conflict)
    return ApiError(exc.message, code=exc.code, status=status, headers=headers, data=data)


# Every code an answer can carry, with its status and meaning: the table in docs/api.md is
# checked against this by a test.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the body is not JSON, or not the declared content type"),
    "unauthorized": (401, "no credentials, or wrong, expired or revoked ones"),
    "login_failed": (401, "user name or password wrong, or the account cannot log in"),
    "signature_invalid": (401, "a signed request's key, signature, timestamp or nonce is wrong"),
    "forbidden": (403, "the caller's role may not call this endpoint or change this record"),
    "not_found": (404, "no such path, or no such record in the caller's tenant subtree"),
    "method_not_allowed": (405, "the path exists but not with this method"),
    "not_acceptable": (406, "the Accept header admits no JSON (the answer is JSON regardless)"),
    "conflict": (409, "the record already exists or its state forbids the change"),
    "username_taken": (409, "another admin account has this user name"),
    "vendor_exists": (409, "a vendor with this code already exists"),
    "vendor_deregistered": (409, "the vendor is deregistered; it can no longer change"),
    "contract_exists": (409, "the vendor already has a contract with this number"),
    "agent_has_children": (409, "the agent still has dealers; remove them first"),
    "agent_in_use": (409, "members, devices or other records still belong to the agent"),
    "parent_disabled": (409, "the parent node is disabled; enable it first"),
    "payload_too_large": (413, "the body is larger than the limit"),
    "unsupported_media_type": (415, "a body that is not application/json"),
    "validation_failed": (422, "the body, query or path broke the schema (see data)"),
    "invalid_input": (422, "a business rule refused a value"),
    "rate_limited": (429, "too many attempts; see the Retry-After header"),
    "wrong_password": (401, "a member's current password is wrong (password change)"),
    "mobile_taken": (409, "another member of the vendor has this mobile number"),
    "wechat_bound_elsewhere": (409, "this WeChat account is bound to another member"),
    "member_deregistered": (409, "the member is deregistered; it can no longer change"),
    "last_login_method": (409, "unbinding WeChat would leave the member no way to log in"),
    "sms_code_invalid": (422, "the SMS code is void (used, too many tries, other purpose)"),
    "sms_code_wrong": (422, "the SMS code does not match"),
    "sms_code_expired": (422, "the SMS code is older than 5 minutes"),
    "sms_mobile_rejected": (422, "the SMS provider refuses this number"),
    "wechat_code_invalid": (422, "the WeChat sign-in code is wrong, expired or used"),
    "sms_throttled": (429, "the SMS provider limits messages to this number for now"),
    "sms_unavailable": (503, "the SMS provider did not take the message"),
    "wechat_unavailable": (503, "WeChat did not answer or refused the sign-in"),
    "device_bound": (409, "the device is bound to another member; it is unbound first"),
    "device_deregistered": (409, "the device is deregistered; it can no longer change or be used"),
    "device_disabled": (409, "the device is disabled; it cannot be bound or commanded"),
    "share_exists": (409, "the device is already shared with this member"),
    "share_limit": (409, "the device is shared with as many members as allowed"),
    "sharing_disabled": (409, "the vendor has switched device sharing off (AX-08)"),
    "no_technician": (409, "no available technician with the ticket's skill fits the dispatch"),
    "technician_other_node": (409, "a dispatch to a technician of another node than the ticket's"),
    "handed_over_elsewhere": (
        409,
        "an exchange's retry names another device than the one given the quota",
    ),
    "handed_back": (409, "an exchange's completion after its cancel began giving the quota back"),
    "device_offline": (409, "the device is not connected: a one-shot command was not sent"),
    "payment_required": (409, "a vending machine pours after payment, not by a member's command"),
    "device_locked": (409, "the device is locked (the message says why): it pours nothing"),
    "payment_not_configured": (409, "the vendor's merchant or the notify URL is not set up"),
    "wechat_not_bound": (409, "the member has no WeChat account bound: WeChat Pay needs one"),
    "order_paid": (409, "the order is paid already"),
    "bill_open_at_channel": (409, "the order's bill is open at its channel; it moves once closed"),
    "vending_unpriced": (409, "the vendor has set no vending price (AX-08)"),
    "refund_exceeds_payment": (409, "a refund beyond what was paid and not yet refunded"),
    "notification_refused": (401, "a payment notification's signature, serial or time is wrong"),
    "wechatpay_refused": (502, "WeChat Pay refused the call (the message says why)"),
    "wechatpay_unavailable": (503, "WeChat Pay did not answer; try again"),
    "alipay_refused": (502, "Alipay refused to close the order's bill (the message says why)"),
    "alipay_unavailable": (503, "Alipay did not answer, or is not running on this node"),
    "secret_unreadable": (503, "a stored credential does not open with this master secret"),
    "insufficient_funds": (409, "the balance (wallet, available commission) is short of it"),
    "order_state_conflict": (409, "the order's state does not allow this move (data: its state)"),
    "referral_invalid": (400, "the referral code names no member or agent who may refer"),
    "idempotency_key_reused": (
        409,
        "an idempotency key (Idempotency-Key, request_id) sent again with another request",
    ),
    "renewal_device_gone": (409, "a renewal was paid for a device its member no longer holds"),
    "rental_devices_held": (409, "a rental whose member still holds its devices (end it first)"),
    "rental_end_exists": (409, "退租 of a device whose shipped device has a 退租, open or done"),
    "rental_ending": (409, "an exchange of a device whose 退租 is open: cancel the 退租 first"),
    "device_exchanged": (409, "a 退租 of a device an exchange took away since: end the new one's"),
    "device_not_held": (409, "an exchange naming a member who does not hold its device"),
    "rental_ended": (409, "an exchange of a device whose 退租 is done: it went back, deposit too"),
    "order_returning": (409, "a 退租 of an order being returned or returned (AD-12..14)"),
    "order_has_rental_end": (409, "a return (AD-12..14) of a rental with a 退租, open or done"),
    "handover_expired": (409, "an exchange's hand-over outlived its markers: settle by hand"),
    "card_not_configured": (409, "the vendor has no card acquirer set up"),
    "acquirer_refused": (502, "the card acquirer refused the call (the message says why)"),
    "acquirer_unavailable": (503, "the card acquirer did not answer; try again"),
    "cards_unavailable": (503, "card payments are not running on this node"),
    "internal_error": (500, "a bug: the request may or may not have taken effect"),
    "service_unavailable": (503, "Redis or the database did not answer"),
}


def _register_known_domain_errors() -> None:
    from aquafleet.models.accounts import LoginRefused
    from aquafleet.models.order_referrals import ReferralInvalid
    from aquafleet.models.ratelimit import RateLimited as DomainRateLimited

    register_domain_error(LoginRefused, 401)
    register_domain_error(ReferralInvalid, 400)
    register_domain_error(DomainRateLimited, 429)


_register_known_domain_errors()
