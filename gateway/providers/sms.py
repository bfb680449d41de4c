"""SMS providers behind models.sms_codes.SmsSender: a log provider and Aliyun SMS (dysmsapi).

Aliyun: the SendSms action of API version 2017-05-25, an RPC-style call signed with signature
version 1.0 (HMAC-SHA1 over the percent-encoded, sorted canonical query; the key is the access
key secret followed by "&"). Sent as a form POST so numbers stay out of URLs in proxy logs.
Provider errors come back as typed SmsError subclasses (models.sms_codes).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from aquafleet.gateway.config import Settings
from aquafleet.gateway.logs import get_logger
from aquafleet.models.sms_codes import (
    CodePurpose,
    SmsError,
    SmsMisconfigured,
    SmsRecipientRejected,
    SmsThrottled,
    SmsUnavailable,
    mask_mobile,
)

log = get_logger("aquafleet.sms")

ALIYUN_ENDPOINT = "https://dysmsapi.aliyuncs.com/"
ALIYUN_API_VERSION = "2017-05-25"
MAX_ANSWER_BYTES = 64 * 1024

# Aliyun answer codes by what they mean for us (anything else unknown: SmsUnavailable).
_THROTTLED = ("isv.BUSINESS_LIMIT_CONTROL", "isv.DAY_LIMIT_CONTROL", "Throttling")
_RECIPIENT = (
    "isv.MOBILE_NUMBER_ILLEGAL",
    "isv.MOBILE_COUNT_OVER_LIMIT",
    "isv.BLACK_KEY_CONTROL_LIMIT",
)
_MISCONFIGURED = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidSignatureMethod",
    "InvalidTimeStamp",  # our clock is off
    "SignatureNonceUsed",
    "MissingParameter",
    "InvalidParameter",
    "InvalidVersion",
    "InvalidAction",
    "Forbidden",
    "isv.SMS_SIGNATURE_ILLEGAL",
    "isv.SMS_TEMPLATE_ILLEGAL",
    "isv.TEMPLATE_MISSING_PARAMETERS",
    "isv.INVALID_JSON_PARAM",
    "isv.INVALID_PARAMETERS",
    "isv.AMOUNT_NOT_ENOUGH",
    "isv.OUT_OF_SERVICE",
    "isv.ACCOUNT_NOT_EXISTS",
    "isv.ACCOUNT_ABNORMAL",
    "isv.PRODUCT_UN_SUBSCRIPT",
    "isv.PRODUCT_UNSUBSCRIBE",
    "isv.RAM_PERMISSION_DENY",
)


class LogSmsSender:
    """Development provider: logs that a code was sent; the code itself only at debug level."""

    async def send_code(self, mobile: str, code: str, *, purpose: CodePurpose) -> None:
        log.info("sms_sent_to_log", mobile=mask_mobile(mobile), purpose=purpose.value)
        log.debug("sms_code_for_development", mobile=mobile, sms_code=code)

    async def send_template(self, mobile: str, template_code: str, params: dict[str, str]) -> str:
        """A notification (消息推送): logged, not sent."""
        log.info("sms_sent_to_log", mobile=mask_mobile(mobile), template=template_code)
        return "log"


# ----------------------------------------------------------------------------- Aliyun signing


def build_sms_sender(
    settings: Settings, session: aiohttp.ClientSession
) -> AliyunSmsSender | LogSmsSender:
    """The configured provider (sms_provider): Aliyun, or the development log."""
    if settings.sms_provider == "aliyun":
        secret = settings.sms_access_key_secret
        return AliyunSmsSender(
            session,
            AliyunSmsConfig(
                access_key_id=settings.sms_access_key_id,
                access_key_secret=secret.get_secret_value() if secret else "",
                sign_name=settings.sms_sign_name,
                template_code=settings.sms_template_code,
                endpoint=settings.sms_endpoint,
            ),
        )
    return LogSmsSender()


def percent_encode(value: str) -> str:
    """RFC 3986 as Aliyun's POP specifies it: A-Z a-z 0-9 - _ . ~ stay, space is %20."""
    return quote(value, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    """The sorted, percent-encoded query every parameter but Signature takes part in."""
    return "&".join(
        f"{percent_encode(k)}={percent_encode(v)}"
        for k, v in sorted(params.items())
        if k != "Signature"
    )


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def rpc_signature(method: str, params: Mapping[str, str], access_key_secret: str) -> str:
    """Signature version 1.0: base64(HMAC-SHA1(secret + "&", StringToSign))."""
    digest = hmac.new(
        f"{access_key_secret}&".encode(),
        string_to_sign(method, params).encode(),
        hashlib.sha1,
    ).digest()
    return base64.b64encode(digest).decode()


def utc_timestamp(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


# ----------------------------------------------------------------------------- Aliyun sender


@dataclass(frozen=True, slots=True)
class AliyunSmsConfig:
    access_key_id: str
    access_key_secret: str
    sign_name: str
    template_code: str
    endpoint: str = ALIYUN_ENDPOINT
    region_id: str = "cn-hangzhou"
    timeout_s: float = 5.0

    def __repr__(self) -> str:  # never print the secret
        return f"AliyunSmsConfig(access_key_id={self.access_key_id!r}, endpoint={self.endpoint!r})"


class AliyunSmsSender:
    """Aliyun SMS SendSms; the template takes one variable, `code`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: AliyunSmsConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.config = config
        self.clock = clock

    def signed_params(
        self,
        mobile: str,
        code: str,
        *,
        template_code: str | None = None,
        template_params: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """SendSms's signed parameters: the code template (one variable, `code`), or another
        template with its variables (notifications)."""
        c = self.config
        values = {"code": code} if template_params is None else template_params
        params = {
            "AccessKeyId": c.access_key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "PhoneNumbers": mobile,
            "RegionId": c.region_id,
            "SignName": c.sign_name,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": secrets.token_hex(16),
            "SignatureVersion": "1.0",
            "TemplateCode": template_code or c.template_code,
            "TemplateParam": json.dumps(values, ensure_ascii=False, separators=(",", ":")),
            "Timestamp": utc_timestamp(self.clock()),
            "Version": ALIYUN_API_VERSION,
        }
        params["Signature"] = rpc_signature("POST", params, c.access_key_secret)
        return params

    async def send_code(self, mobile: str, code: str, *, purpose: CodePurpose) -> None:
        await self._send(self.signed_params(mobile, code), mobile, purpose.value)

    async def send_template(self, mobile: str, template_code: str, params: dict[str, str]) -> str:
        """A notification (消息推送) with the vendor's template; the provider's BizId."""
        signed = self.signed_params(mobile, "", template_code=template_code, template_params=params)
        return await self._send(signed, mobile, f"notify:{template_code}")

    async def _send(self, params: dict[str, str], mobile: str, purpose: str) -> str:
        body = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in params.items())
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self.session.post(
                    self.config.endpoint,
                    data=body.encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                ) as response:
                    status = response.status
                    raw = await response.content.read(MAX_ANSWER_BYTES)
        except TimeoutError:
            raise SmsUnavailable("aliyun sms: no answer in time") from None
        except aiohttp.ClientError as exc:
            raise SmsUnavailable(f"aliyun sms: {type(exc).__name__}") from None
        answer = _parse_answer(status, raw)
        answer_code = str(answer.get("Code", ""))
        request_id = str(answer.get("RequestId", ""))
        if status == 200 and answer_code == "OK":
            biz_id = str(answer.get("BizId", ""))
            log.info(
                "sms_sent",
                provider="aliyun",
                mobile=mask_mobile(mobile),
                purpose=purpose,
                biz_id=biz_id,
                request_id=request_id,
            )
            return biz_id
        error = aliyun_error(status, answer_code, str(answer.get("Message", "")))
        log.warning(
            "sms_refused",
            provider="aliyun",
            mobile=mask_mobile(mobile),
            http_status=status,
            answer_code=answer_code,
            request_id=request_id,
            error=type(error).__name__,
        )
        raise error


def _parse_answer(status: int, raw: bytes) -> dict[str, Any]:
    if status >= 500:
        raise SmsUnavailable(f"aliyun sms: HTTP {status}")
    try:
        answer = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise SmsUnavailable(f"aliyun sms: HTTP {status} with an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise SmsUnavailable(f"aliyun sms: HTTP {status} with an unexpected answer")
    return answer


def aliyun_error(status: int, code: str, message: str) -> SmsError:
    """The typed error for an Aliyun answer code (the server's message is shortened)."""
    # SignatureDoesNotMatch echoes the server's string to sign: the number and our key id.
    message = message.split(" server string to sign", 1)[0][:160]
    text = f"aliyun sms {code or f'HTTP {status}'}: {message}"
    if code.startswith(_THROTTLED):
        return SmsThrottled(text)
    if code.startswith(_RECIPIENT):
        return SmsRecipientRejected(text)
    if code.startswith(_MISCONFIGURED):
        return SmsMisconfigured(text)
    return SmsUnavailable(text)
