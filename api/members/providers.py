"""The node side of members: the member services, the SMS sender and the WeChat client (one
HTTP session), and the token loader that re-checks a member at refresh."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from aquafleet.api.members.access import MEMBERS, WECHAT, member_principal
from aquafleet.api.tokens import TOKENS, TokenService
from aquafleet.gateway.appkeys import REDIS, SETTINGS
from aquafleet.gateway.providers.sms import build_sms_sender
from aquafleet.gateway.providers.wechat import WechatClient
from aquafleet.models.members import LOGIN_ALLOWED, Member, Members
from aquafleet.models.sms_codes import SmsCodes, derive_code_secret
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.vendors import Vendor, VendorState

HTTP_TIMEOUT_S = 10.0


async def members_ctx(app: web.Application) -> AsyncIterator[None]:
    """The member services, the SMS sender and the WeChat client (one HTTP session)."""
    settings = app[SETTINGS]
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=32),
    ) as session:
        codes = SmsCodes(
            app[REDIS],
            prefix=settings.redis_prefix,
            secret=derive_code_secret(settings.master_secret_bytes()),
            sender=build_sms_sender(settings, session),
        )
        app[MEMBERS] = Members(codes)
        app[WECHAT] = WechatClient(session, base_url=settings.wechat_api_url)
        tokens: TokenService = app[TOKENS]
        tokens.register_loader({Role.MEMBER}, reload_member)
        yield


async def reload_member(principal: Principal) -> Principal | None:
    """A member session's principal at refresh; None once it may no longer log in."""
    member = await Member.get_or_none(uid=principal.subject)
    if member is None or member.state not in LOGIN_ALLOWED:
        return None
    vendor = await Vendor.get_or_none(code=member.vendor_id)
    if vendor is None or vendor.state not in (VendorState.ACTIVE, VendorState.INACTIVE):
        return None
    return member_principal(member)
