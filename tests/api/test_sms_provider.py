"""The Aliyun SMS provider against a faithful local fake of dysmsapi, and the log provider."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from aquafleet.gateway.logs import configure_logging
from aquafleet.gateway.providers.sms import (
    AliyunSmsConfig,
    AliyunSmsSender,
    LogSmsSender,
    percent_encode,
    rpc_signature,
)
from aquafleet.models.sms_codes import (
    CodePurpose,
    SmsMisconfigured,
    SmsRecipientRejected,
    SmsThrottled,
    SmsUnavailable,
)
from tests.fakes.aliyun_sms import FakeAliyunSms

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeAliyunSms]:
    async with FakeAliyunSms(clock=clock) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_sender(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock, **overrides: str
) -> AliyunSmsSender:
    values = {
        "access_key_id": "LTAIfake0001",
        "access_key_secret": "fake-secret",
        "sign_name": "净水云",
        "template_code": "SMS_100001",
        "endpoint": fake.url,
    }
    values.update(overrides)
    return AliyunSmsSender(session, AliyunSmsConfig(**values), clock=clock)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- signing


def test_the_signature_matches_aliyuns_sms_documentation_example():
    params = {
        "AccessKeyId": "testId",
        "Action": "SendSms",
        "Format": "XML",
        "OutId": "123",
        "PhoneNumbers": "15300000001",
        "RegionId": "cn-hangzhou",
        "SignName": "阿里云短信测试专用",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
        "SignatureVersion": "1.0",
        "TemplateCode": "SMS_71390007",
        "TemplateParam": '{"customer":"test"}',
        "Timestamp": "2017-07-12T02:42:19Z",
        "Version": "2017-05-25",
    }
    assert rpc_signature("GET", params, "testSecret") == "zJDF+Lrzhj/ThnlvIToysFRq6t4="


def test_the_signature_matches_aliyuns_rpc_documentation_example():
    params = {
        "Format": "XML",
        "AccessKeyId": "testid",
        "Action": "DescribeRegions",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "SignatureVersion": "1.0",
        "Version": "2014-05-26",
        "Timestamp": "2016-02-23T12:46:24Z",
    }
    assert rpc_signature("GET", params, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_percent_encoding_follows_rfc3986_as_aliyun_specifies():
    assert percent_encode("a b*~-_.") == "a%20b%2A~-_."
    assert percent_encode("/=&+:") == "%2F%3D%26%2B%3A"
    assert percent_encode("水") == "%E6%B0%B4"


# ----------------------------------------------------------------------------- sending


async def test_a_code_is_sent_with_the_sign_name_and_template(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock
):
    await make_sender(session, fake, clock).send_code(
        "13800138000", "123456", purpose=CodePurpose.REGISTER
    )
    assert len(fake.sent) == 1
    sent = fake.sent[0]
    assert (sent.mobile, sent.sign_name, sent.template_code) == (
        "13800138000",
        "净水云",
        "SMS_100001",
    )
    assert json.loads(sent.params["TemplateParam"]) == {"code": "123456"}
    assert sent.text == "您的验证码为123456，5分钟内有效。"


async def test_a_wrong_secret_is_a_configuration_error(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock
):
    sender = make_sender(session, fake, clock, access_key_secret="wrong")
    with pytest.raises(SmsMisconfigured, match="SignatureDoesNotMatch") as raised:
        await sender.send_code("13800138000", "123456", purpose=CodePurpose.REGISTER)
    assert "13800138000" not in raised.value.message  # the server's string to sign is cut off
    assert fake.sent == []


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"access_key_id": "LTAIunknown"}, "InvalidAccessKeyId.NotFound"),
        ({"sign_name": "别家"}, "isv.SMS_SIGNATURE_ILLEGAL"),
        ({"template_code": "SMS_999"}, "isv.SMS_TEMPLATE_ILLEGAL"),
    ],
)
async def test_bad_settings_are_configuration_errors(
    session: aiohttp.ClientSession,
    fake: FakeAliyunSms,
    clock: Clock,
    overrides: dict[str, str],
    code: str,
):
    sender = make_sender(session, fake, clock, **overrides)
    with pytest.raises(SmsMisconfigured, match=code.replace(".", r"\.")):
        await sender.send_code("13800138000", "123456", purpose=CodePurpose.REGISTER)


async def test_a_clock_far_off_is_refused_as_aliyun_does(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock
):
    sender = make_sender(session, fake, Clock(T0 - 16 * 60))
    with pytest.raises(SmsMisconfigured, match=r"InvalidTimeStamp\.Expired"):
        await sender.send_code("13800138000", "123456", purpose=CodePurpose.REGISTER)


async def test_an_empty_balance_is_a_configuration_error(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock
):
    fake.balance = 0
    with pytest.raises(SmsMisconfigured, match="AMOUNT_NOT_ENOUGH"):
        await make_sender(session, fake, clock).send_code(
            "13800138000", "123456", purpose=CodePurpose.RESET
        )


async def test_a_number_aliyun_refuses_is_a_recipient_error(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock
):
    with pytest.raises(SmsRecipientRejected, match="MOBILE_NUMBER_ILLEGAL"):
        await make_sender(session, fake, clock).send_code(
            "12345", "123456", purpose=CodePurpose.RESET
        )


async def test_aliyuns_flow_control_is_a_throttle_error(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock
):
    sender = make_sender(session, fake, clock)
    await sender.send_code("13800138000", "111111", purpose=CodePurpose.LOGIN)
    clock.now += 30
    with pytest.raises(SmsThrottled, match="BUSINESS_LIMIT_CONTROL"):
        await sender.send_code("13800138000", "222222", purpose=CodePurpose.LOGIN)
    clock.now += 31
    await sender.send_code("13800138000", "333333", purpose=CodePurpose.LOGIN)
    assert fake.codes_sent_to("13800138000") == ["111111", "333333"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, '{"Code":"InternalError","Message":"The request processing has failed."}'),
        (503, "<html>Service Unavailable</html>"),
        (200, "not json"),
        (200, "[1, 2]"),
        (200, '{"Code":"isp.SYSTEM_ERROR","Message":"系统错误","RequestId":"X"}'),
    ],
)
async def test_provider_failures_are_unavailable_errors(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock, status: int, body: str
):
    fake.scripted.append((status, body))
    with pytest.raises(SmsUnavailable):
        await make_sender(session, fake, clock).send_code(
            "13800138000", "123456", purpose=CodePurpose.REGISTER
        )


async def test_an_unreachable_provider_is_an_unavailable_error(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock
):
    url = fake.url
    await fake.close()
    sender = make_sender(session, fake, clock, endpoint=url)
    with pytest.raises(SmsUnavailable):
        await sender.send_code("13800138000", "123456", purpose=CodePurpose.REGISTER)


async def test_every_request_has_a_fresh_nonce(
    session: aiohttp.ClientSession, fake: FakeAliyunSms, clock: Clock
):
    sender = make_sender(session, fake, clock)
    for n in range(3):
        await sender.send_code(f"1380013800{n}", "123456", purpose=CodePurpose.REGISTER)
    assert len({s.params["SignatureNonce"] for s in fake.sent}) == 3


@pytest.mark.parametrize(("level", "shows_code"), [("info", False), ("debug", True)])
async def test_the_log_provider_shows_the_code_only_at_debug_level(level: str, shows_code: bool):
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    try:
        await LogSmsSender().send_code("13800138000", "654321", purpose=CodePurpose.LOGIN)
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert "138****8000" in text
    assert ("654321" in text) is shows_code
    assert ("13800138000" in text) is shows_code


def test_the_config_never_shows_the_secret():
    config = AliyunSmsConfig("LTAI1", "very-secret", "s", "t")
    assert "very-secret" not in repr(config) and "very-secret" not in str(config)
