"""SMS verification codes against the real Redis, on a controlled clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from aquafleet.models.errors import InvalidInput
from aquafleet.models.ratelimit import RateLimited
from aquafleet.models.sms_codes import (
    CodeExpired,
    CodeMismatch,
    CodePurpose,
    SmsCodePolicy,
    SmsCodes,
    SmsUnavailable,
)

T0 = 1_800_000_000.0
MOBILE = "13800138000"


@dataclass
class RecordingSender:
    sent: list[tuple[str, str, CodePurpose]] = field(default_factory=list)
    fail_with: Exception | None = None

    async def send_code(self, mobile: str, code: str, *, purpose: CodePurpose) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((mobile, code, purpose))

    def last_code(self) -> str:
        return self.sent[-1][1]


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
def codes(redis_client: aioredis.Redis, redis_prefix: str, sender: RecordingSender) -> SmsCodes:
    return SmsCodes(redis_client, prefix=redis_prefix, secret=b"k" * 32, sender=sender)


async def test_a_code_is_six_digits_works_once_and_is_stored_hashed(
    codes: SmsCodes, sender: RecordingSender, redis_client: aioredis.Redis, redis_prefix: str
):
    await codes.send(CodePurpose.REGISTER, "DEMO", MOBILE, ip="10.0.0.1", now=T0)
    code = sender.last_code()
    assert len(code) == 6 and code.isdigit()
    stored = await redis_client.hgetall(f"{redis_prefix}:sms:register:DEMO:{MOBILE}")
    assert stored and code.encode() not in b"".join(stored.values())
    await codes.verify(CodePurpose.REGISTER, "DEMO", MOBILE, code, now=T0 + 10)
    with pytest.raises(CodeExpired):  # single use
        await codes.verify(CodePurpose.REGISTER, "DEMO", MOBILE, code, now=T0 + 11)


async def test_codes_expire_after_five_minutes(codes: SmsCodes, sender: RecordingSender):
    await codes.send(CodePurpose.RESET, "DEMO", MOBILE, ip=None, now=T0)
    with pytest.raises(CodeExpired):
        await codes.verify(CodePurpose.RESET, "DEMO", MOBILE, sender.last_code(), now=T0 + 300)


async def test_a_code_is_still_good_just_before_it_expires(
    codes: SmsCodes, sender: RecordingSender
):
    await codes.send(CodePurpose.RESET, "DEMO", MOBILE, ip=None, now=T0)
    await codes.verify(CodePurpose.RESET, "DEMO", MOBILE, sender.last_code(), now=T0 + 299)


async def test_a_code_serves_only_its_purpose_vendor_and_number(
    codes: SmsCodes, sender: RecordingSender
):
    await codes.send(CodePurpose.REGISTER, "DEMO", MOBILE, ip=None, now=T0)
    code = sender.last_code()
    with pytest.raises(CodeExpired):
        await codes.verify(CodePurpose.RESET, "DEMO", MOBILE, code, now=T0 + 1)
    with pytest.raises(CodeExpired):
        await codes.verify(CodePurpose.REGISTER, "OTHR", MOBILE, code, now=T0 + 1)
    with pytest.raises(CodeExpired):
        await codes.verify(CodePurpose.REGISTER, "DEMO", "13900139000", code, now=T0 + 1)
    await codes.verify(CodePurpose.REGISTER, "DEMO", MOBILE, code, now=T0 + 2)


async def test_five_wrong_tries_void_the_code(codes: SmsCodes, sender: RecordingSender):
    await codes.send(CodePurpose.LOGIN, "DEMO", MOBILE, ip=None, now=T0)
    right = sender.last_code()
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for left in (4, 3, 2, 1):
        with pytest.raises(CodeMismatch) as raised:
            await codes.verify(CodePurpose.LOGIN, "DEMO", MOBILE, wrong, now=T0 + 1)
        assert raised.value.attempts_left == left
    with pytest.raises(CodeExpired, match="too many tries"):
        await codes.verify(CodePurpose.LOGIN, "DEMO", MOBILE, wrong, now=T0 + 1)
    with pytest.raises(CodeExpired):  # the right code no longer helps
        await codes.verify(CodePurpose.LOGIN, "DEMO", MOBILE, right, now=T0 + 1)


async def test_a_new_code_replaces_the_old_one(codes: SmsCodes, sender: RecordingSender):
    await codes.send(CodePurpose.MOBILE, "DEMO", MOBILE, ip=None, now=T0)
    first = sender.last_code()
    await codes.send(CodePurpose.MOBILE, "DEMO", MOBILE, ip=None, now=T0 + 61)
    second = sender.last_code()
    if first != second:
        with pytest.raises(CodeMismatch):
            await codes.verify(CodePurpose.MOBILE, "DEMO", MOBILE, first, now=T0 + 62)
    await codes.verify(CodePurpose.MOBILE, "DEMO", MOBILE, second, now=T0 + 63)


async def test_one_code_a_minute_per_number(codes: SmsCodes, sender: RecordingSender):
    await codes.send(CodePurpose.REGISTER, "DEMO", MOBILE, ip=None, now=T0)
    with pytest.raises(RateLimited) as raised:
        await codes.send(CodePurpose.RESET, "DEMO", MOBILE, ip=None, now=T0 + 20)
    assert raised.value.retry_after_s == 40
    await codes.send(CodePurpose.REGISTER, "DEMO", "13900139000", ip=None, now=T0 + 20)
    await codes.send(CodePurpose.REGISTER, "DEMO", MOBILE, ip=None, now=T0 + 60)
    assert len(sender.sent) == 3


async def test_ten_codes_a_day_per_number_and_knocking_does_not_use_them_up(
    codes: SmsCodes, sender: RecordingSender
):
    for n in range(10):
        await codes.send(CodePurpose.LOGIN, "DEMO", MOBILE, ip=None, now=T0 + n * 61)
        for knock in range(1, 5):  # refused by the one-a-minute limit; not counted for the day
            with pytest.raises(RateLimited):
                await codes.send(
                    CodePurpose.LOGIN, "DEMO", MOBILE, ip=None, now=T0 + n * 61 + knock
                )
    with pytest.raises(RateLimited) as raised:
        await codes.send(CodePurpose.LOGIN, "DEMO", MOBILE, ip=None, now=T0 + 10 * 61)
    assert raised.value.retry_after_s == 86400 - 10 * 61
    await codes.send(CodePurpose.LOGIN, "DEMO", MOBILE, ip=None, now=T0 + 86400)
    assert len(sender.sent) == 11


async def test_code_requests_per_ip_are_limited(
    redis_client: aioredis.Redis, redis_prefix: str, sender: RecordingSender
):
    codes = SmsCodes(
        redis_client,
        prefix=redis_prefix,
        secret=b"k" * 32,
        sender=sender,
        policy=SmsCodePolicy(ip_hourly=3),
    )
    for n in range(3):
        await codes.send(CodePurpose.REGISTER, "DEMO", f"1380013800{n}", ip="10.9.9.9", now=T0)
    with pytest.raises(RateLimited):
        await codes.send(CodePurpose.REGISTER, "DEMO", "13800138009", ip="10.9.9.9", now=T0)
    await codes.send(CodePurpose.REGISTER, "DEMO", "13800138009", ip="10.9.9.8", now=T0)


async def test_a_failed_send_leaves_no_usable_code(codes: SmsCodes, sender: RecordingSender):
    sender.fail_with = SmsUnavailable("provider down")
    with pytest.raises(SmsUnavailable):
        await codes.send(CodePurpose.REGISTER, "DEMO", MOBILE, ip=None, now=T0)
    with pytest.raises(CodeExpired):
        await codes.verify(CodePurpose.REGISTER, "DEMO", MOBILE, "000000", now=T0 + 1)


@pytest.mark.parametrize(
    "mobile", ["", "1380013800", "23800138000", "1380013800a", "+8613800138000"]
)
async def test_bad_numbers_are_refused_before_anything_is_sent(
    codes: SmsCodes, sender: RecordingSender, mobile: str
):
    with pytest.raises(InvalidInput):
        await codes.send(CodePurpose.REGISTER, "DEMO", mobile, ip=None, now=T0)
    assert sender.sent == []


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", " 123456"])
async def test_malformed_codes_are_refused(codes: SmsCodes, code: str):
    with pytest.raises(InvalidInput):
        await codes.verify(CodePurpose.REGISTER, "DEMO", MOBILE, code, now=T0)
