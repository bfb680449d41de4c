"""SMS verification codes: registration, mobile change, password reset and login by code.

A code is 6 digits from `secrets`, bound to one purpose, one vendor and one mobile; it expires
after 5 minutes, works once, and is void after 5 wrong tries. Redis keeps only an HMAC of it
(keyed by a secret derived from the master secret), so a copy of Redis does not reveal codes.
Requests are rate limited per mobile (1 a minute, 10 a day) and per client IP (30 an hour), so
nobody can flood a phone or run up the SMS bill.

The text goes out through an `SmsSender` (gateway/providers/sms.py: a log provider for
development, Aliyun SMS for production).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError

from aquafleet.models.errors import DomainError, InvalidInput
from aquafleet.models.ratelimit import hit_all, rate_key
from aquafleet.models.redis_boundary import redis_errors

log = structlog.get_logger(__name__)

MOBILE_RE = re.compile(r"^1[3-9][0-9]{9}$")  # mainland China mobile numbers
CODE_RE = re.compile(r"^[0-9]{6}$")


class CodePurpose(StrEnum):
    """What a code may be used for; a code of one purpose never serves another."""

    REGISTER = "register"
    MOBILE = "mobile"  # change of mobile number (sent to the new number)
    RESET = "reset"  # password reset
    LOGIN = "login"  # login by mobile and code


# ----------------------------------------------------------------------------- errors


class SmsCodeError(DomainError):
    """The code given does not verify."""

    code = "sms_code_invalid"


class CodeMismatch(SmsCodeError):
    code = "sms_code_wrong"

    def __init__(self, message: str, attempts_left: int) -> None:
        super().__init__(message)
        self.attempts_left = attempts_left


class CodeExpired(SmsCodeError):
    """No live code: never sent, expired, already used, or void after too many tries."""

    code = "sms_code_expired"


class SmsError(DomainError):
    """The SMS provider did not send the message."""

    code = "sms_unavailable"


class SmsUnavailable(SmsError):
    """The provider did not answer, answered garbage, or failed on its side; may be retried."""

    code = "sms_unavailable"


class SmsMisconfigured(SmsError):
    """Our credentials, sign name, template or account balance are wrong: an operator must act."""

    code = "sms_misconfigured"


class SmsRecipientRejected(SmsError):
    """The provider refuses this number (invalid, blacklisted)."""

    code = "sms_mobile_rejected"


class SmsThrottled(SmsError):
    """The provider's own flow control refused the message (too many to this number)."""

    code = "sms_throttled"


# ----------------------------------------------------------------------------- sender


class SmsSender(Protocol):
    """Sends a verification code by SMS. Raises an SmsError subclass when it could not."""

    async def send_code(self, mobile: str, code: str, *, purpose: CodePurpose) -> None: ...


def check_mobile(mobile: str) -> str:
    if not MOBILE_RE.match(mobile):
        raise InvalidInput("mobile must be an 11-digit mainland China mobile number")
    return mobile


def mask_mobile(mobile: str) -> str:
    """138****8000: enough to tell numbers apart in logs, not to call them."""
    return f"{mobile[:3]}****{mobile[-4:]}" if len(mobile) >= 8 else "****"


# ----------------------------------------------------------------------------- codes


@dataclass(frozen=True, slots=True)
class SmsCodePolicy:
    ttl_s: int = 300
    max_attempts: int = 5
    mobile_interval_s: int = 60  # at most one code per mobile in this time
    mobile_daily: int = 10  # codes per mobile per 24 h
    ip_hourly: int = 30  # code requests per client IP per hour


# KEYS[1] the code's hash; ARGV digest, now_ms. Deletes the code when it is used, expired
# or out of tries; answers {status, attempts left}.
_VERIFY_LUA = """
local v = redis.call('HMGET', KEYS[1], 'h', 'exp', 'left')
if not v[1] then return {'missing', 0} end
if tonumber(v[2]) <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return {'expired', 0}
end
if v[1] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {'ok', 0}
end
local left = redis.call('HINCRBY', KEYS[1], 'left', -1)
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return {'exhausted', 0}
end
return {'wrong', left}
"""
_VERIFY_SHA = hashlib.sha1(_VERIFY_LUA.encode()).hexdigest()


def derive_code_secret(master_secret: bytes) -> bytes:
    """The HMAC key codes are stored under (never the master secret itself)."""
    return hmac.new(master_secret, b"aquafleet sms codes v1", hashlib.sha256).digest()


class SmsCodes:
    """Issue and verify codes; one instance per node."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        secret: bytes,
        sender: SmsSender,
        policy: SmsCodePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.clock = clock  # unix seconds; tests set a controlled clock
        self.prefix = prefix
        self.secret = secret
        self.sender = sender
        self.policy = policy or SmsCodePolicy()

    def _key(self, purpose: CodePurpose, vendor_code: str, mobile: str) -> str:
        return f"{self.prefix}:sms:{purpose.value}:{vendor_code}:{mobile}"

    def _digest(self, purpose: CodePurpose, vendor_code: str, mobile: str, code: str) -> str:
        message = f"{purpose.value}|{vendor_code}|{mobile}|{code}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    async def send(
        self,
        purpose: CodePurpose,
        vendor_code: str,
        mobile: str,
        *,
        ip: str | None,
        now: float | None = None,
    ) -> None:
        """Make a new code (the previous one of this purpose is void) and text it.

        Raises RateLimited (with the wait) or an SmsError from the sender.
        """
        check_mobile(mobile)
        at = self.clock() if now is None else now
        await self.check_limits(mobile, ip=ip, now=at)
        p = self.policy
        code = f"{secrets.randbelow(1_000_000):06d}"
        key = self._key(purpose, vendor_code, mobile)
        digest = self._digest(purpose, vendor_code, mobile, code)
        expires_ms = int((at + p.ttl_s) * 1000)
        with redis_errors("storing an SMS code"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping={"h": digest, "exp": expires_ms, "left": p.max_attempts})
                # Redis forgets it a little after it expires; `exp` decides, on the caller's clock.
                pipe.expire(key, p.ttl_s + 60)
                await pipe.execute()
        try:
            await self.sender.send_code(mobile, code, purpose=purpose)
        except SmsError:
            with redis_errors("dropping an unsent SMS code"):
                await self.redis.delete(key)
            raise
        log.info(
            "sms_code_sent", purpose=purpose.value, vendor=vendor_code, mobile=mask_mobile(mobile)
        )

    async def check_limits(self, mobile: str, *, ip: str | None, now: float | None = None) -> None:
        """Count a code request against the limits (RateLimited when refused), send nothing.

        For requests that must look like a real one (a login code for an unknown number).
        """
        check_mobile(mobile)
        at = self.clock() if now is None else now
        p = self.policy
        limits = [(rate_key(self.prefix, "sms-mobile-1m", mobile), 1, p.mobile_interval_s)]
        if ip:
            limits.append((rate_key(self.prefix, "sms-ip-1h", ip), p.ip_hourly, 3600))
        limits.append((rate_key(self.prefix, "sms-mobile-1d", mobile), p.mobile_daily, 86400))
        # Counted on all or none: a request refused by one limit uses up no other.
        decision = await hit_all(self.redis, limits, now=at)
        decision.raise_if_refused("code requests")

    async def verify(
        self,
        purpose: CodePurpose,
        vendor_code: str,
        mobile: str,
        code: str,
        *,
        now: float | None = None,
    ) -> None:
        """Use the code: returns when it is right (and voids it); raises SmsCodeError otherwise."""
        if not CODE_RE.match(code):
            raise InvalidInput("code must be 6 digits")
        key = self._key(purpose, vendor_code, mobile)
        now_ms = int((self.clock() if now is None else now) * 1000)
        args = (self._digest(purpose, vendor_code, mobile, code), now_ms)
        with redis_errors("verifying an SMS code"):
            try:
                reply = await self.redis.evalsha(_VERIFY_SHA, 1, key, *args)
            except NoScriptError:
                reply = await self.redis.eval(_VERIFY_LUA, 1, key, *args)
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status == "ok":
            return
        if status == "wrong":
            left = int(reply[1])
            raise CodeMismatch(f"wrong code; {left} tries left", left)
        if status == "exhausted":
            raise CodeExpired("wrong code; too many tries, request a new code")
        raise CodeExpired("no valid code for this number; request a new one")
