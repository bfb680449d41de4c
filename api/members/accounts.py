"""AA-03..07, AA-10: the member list, a member, its profile, password, mobile, the anonymous
password reset and deregistration."""

from __future__ import annotations

import hmac

from tortoise.queryset import QuerySet

from aquafleet.api.errors import ConflictError, Forbidden, NotFoundError, ValidationFailed
from aquafleet.api.list_filters import named_vendor
from aquafleet.api.members.access import (
    MEMBERS,
    check_same_uid,
    end_sessions,
    limit_password_guesses,
    member_out,
    password_guess_key,
    redis_of,
    send_code,
    send_code_telling_nothing,
    visible_member,
)
from aquafleet.api.members.schemas import (
    MemberCodeQuery,
    MemberListQuery,
    MemberOut,
    MemberPath,
    MemberUpdate,
    MobileIn,
    PasswordIn,
    ResetIn,
)
from aquafleet.api.routing import AUTHENTICATOR, PUBLIC, Call, Page, RouteTable
from aquafleet.gateway.logs import get_logger
from aquafleet.models import ratelimit
from aquafleet.models.devices import bound_device_counts
from aquafleet.models.errors import NotFound
from aquafleet.models.members import (
    LOGIN_ALLOWED,
    Member,
    MemberState,
    change_password,
    deregister,
    get_member,
    mobile_is_free,
    update_member,
)
from aquafleet.models.sms_codes import CodePurpose
from aquafleet.models.tenancy import ADMIN_ROLES, PLATFORM_ONLY, PLATFORM_VENDOR_OR_MEMBER, Role

log = get_logger("aquafleet.api.members")

routes = RouteTable("members")


@routes.get(
    "/users",
    seed="AA-01",
    summary="List members (what each role sees: docs/api-members.md)",
    roles=ADMIN_ROLES,
    query=MemberListQuery,
    response=MemberOut,
    many=True,
    description="Platform: every vendor's members (filter by vid); vendor: its own; agent or "
    "dealer: the members of its node and the nodes below. Members call AA-03 for themselves.",
)
async def list_members(call: Call) -> Page:
    query: MemberListQuery = call.query
    principal = call.principal
    qs: QuerySet[Member] = Member.all()
    if principal.role is not Role.PLATFORM:
        qs = qs.filter(vendor_id=principal.vendor_code)
    if query.vid is not None:
        qs = qs.filter(vendor_id=await named_vendor(principal, query.vid))
    if principal.role in (Role.AGENT, Role.DEALER):
        qs = qs.filter(agent__path__startswith=principal.agent_path or "/none/")
    if query.agent_id is not None:
        from aquafleet.models.agents import Agent

        node = await Agent.get_or_none(id=query.agent_id)
        if node is None or not principal.may_see_node(node.vendor_id, node.path):
            raise NotFoundError(f"agent {query.agent_id} not found")
        qs = qs.filter(agent__path__startswith=node.path)
    if query.state is not None:
        qs = qs.filter(state=query.state)
    if query.type is not None:
        qs = qs.filter(type=query.type)
    if query.vip is not None:
        qs = qs.filter(vip=query.vip)
    if query.mobile:
        qs = qs.filter(mobile=query.mobile)
    if query.name:
        qs = qs.filter(name__icontains=query.name)
    rows, total = await query.page(qs, pk="uid")
    counts = await bound_device_counts([m.uid for m in rows])
    return Page([member_out(m, principal, counts.get(m.uid, 0)) for m in rows], total)


@routes.get(
    "/users/{uid}",
    seed="AA-03",
    summary="Read a member",
    roles=ADMIN_ROLES | {Role.MEMBER},
    params=MemberPath,
    response=MemberOut,
    description="A member reads only themself; admins read members of their subtree.",
)
async def read_member(call: Call) -> MemberOut:
    member = await visible_member(call.principal, call.params.uid)
    counts = await bound_device_counts([member.uid])
    return member_out(member, call.principal, counts.get(member.uid, 0))


@routes.put(
    "/users/{uid}",
    seed="AA-04",
    summary="Update a member's profile",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    body=MemberUpdate,
    response=MemberOut,
    errors=(403, 404, 409),
    description="Only the fields given change. Members may change name, avatar, email, area, "
    "address, and rid while they have none; mobile, remark, state, type, vip, agent_id and a "
    "set rid are for platform and vendor admins (403 for members). vid cannot change.",
)
async def update_member_profile(call: Call) -> MemberOut:
    body: MemberUpdate = call.body
    principal = call.principal
    member = await visible_member(principal, call.params.uid)
    check_same_uid(body.uid, member.uid)
    given = body.model_dump(include=body.model_fields_set - {"uid"})
    if "vid" in given and given.pop("vid") != member.vendor_id:
        raise ValidationFailed(
            "body vid: a member cannot move to another vendor",
            data=[{"field": "vid", "message": "a member cannot move to another vendor"}],
        )
    if "rid" in given:
        given["referrer_id"] = given.pop("rid") or None
    is_member = principal.role is Role.MEMBER
    admin_only = {"mobile", "remark", "state", "type", "vip", "agent_id"}
    if is_member:
        refused = sorted(admin_only & set(given))
        if "referrer_id" in given and member.referrer_id is not None:
            refused.append("rid")
        if refused:
            raise Forbidden(f"only an admin may change {', '.join(refused)}")
    changes = {k: v for k, v in given.items() if v is not None or k == "referrer_id"}
    was_blocked = member.state == MemberState.DISABLED
    member = await update_member(member, changes)
    if member.state == MemberState.DISABLED and not was_blocked:
        await end_sessions(call, member)
    counts = await bound_device_counts([member.uid])
    return member_out(member, principal, counts.get(member.uid, 0))


@routes.put(
    "/users/{uid}/pwd",
    seed="AA-05",
    summary="Change a member's password",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    body=PasswordIn,
    errors=(401, 404, 429),
    description="A member gives old_pwd (unless it has no password yet); platform and vendor "
    "admins set a new one without it. Wrong old passwords wait like login guesses from the "
    "address (429 with Retry-After). Every session of the member ends.",
)
async def change_member_password(call: Call) -> None:
    body: PasswordIn = call.body
    principal = call.principal
    member = await visible_member(principal, call.params.uid)
    check_same_uid(body.uid, member.uid)
    require_old = principal.role is Role.MEMBER
    if require_old and member.password_hash is not None:
        await limit_password_guesses(call, member)
    await change_password(
        member, body.new_pwd, old_password_md5=body.old_pwd, require_old=require_old
    )
    if require_old:
        await ratelimit.reset(redis_of(call.app), password_guess_key(call, member))
    await end_sessions(call, member)


@routes.get(
    "/users/{uid}/mob/code",
    seed="AA-06A",
    summary="Send a mobile-change code to the new number",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    query=MemberCodeQuery,
    status=200,
    errors=(404, 409, 429, 503),
)
async def send_mobile_code(call: Call) -> None:
    query: MemberCodeQuery = call.query
    member = await visible_member(call.principal, call.params.uid)
    check_same_uid(query.uid, member.uid)
    if not await mobile_is_free(member.vendor_id, query.mobile):
        raise ConflictError(f"mobile {query.mobile} is already registered", code="mobile_taken")
    await send_code(call, CodePurpose.MOBILE, member.vendor_id, query.mobile)


@routes.put(
    "/users/{uid}/mob",
    seed="AA-06B",
    summary="Change a member's mobile number (with the code sent to it)",
    roles=PLATFORM_VENDOR_OR_MEMBER,
    params=MemberPath,
    body=MobileIn,
    errors=(404, 409, 422),
)
async def change_member_mobile(call: Call) -> None:
    body: MobileIn = call.body
    member = await visible_member(call.principal, call.params.uid)
    check_same_uid(body.uid, member.uid)
    await call.app[MEMBERS].change_mobile(member, body.mobile, body.code)


async def reset_target(call: Call, uid: str, mobile: str | None) -> Member:
    """AA-07 is public (a member who forgot the password has no token): the code proves it."""
    principal = call.principal_or_none
    if principal is None and call.request.headers.get("Authorization"):
        principal = await call.app[AUTHENTICATOR].authenticate(call.request, b"")
    if principal is not None:
        if principal.role not in PLATFORM_VENDOR_OR_MEMBER:
            raise Forbidden(f"a {principal.role} account may not call this endpoint")
        member = await visible_member(principal, uid)
    else:
        try:
            member = await get_member(uid)
        except NotFound:
            raise NotFoundError("no member with this uid and mobile") from None
    if mobile is not None and not (
        member.mobile is not None and hmac.compare_digest(member.mobile, mobile)
    ):
        raise NotFoundError("no member with this uid and mobile")
    return member


@routes.get(
    "/users/{uid}/rst/code",
    seed="AA-07A",
    summary="Send a password-reset code to the member's mobile",
    roles=PUBLIC,
    params=MemberPath,
    query=MemberCodeQuery,
    status=200,
    errors=(401, 403, 404, 429, 503),
    description="Public (seed: A#+C; but who forgot the password has no token): the code goes "
    "only to the member's own mobile. Without a token the answer is 200 whether or not the uid "
    "and mobile are a member's (the code limits count either way; a provider's failure is only "
    "logged). With a token, the seed's roles apply (404 for a wrong pair, 503 when the SMS "
    "provider fails).",
)
async def send_reset_code(call: Call) -> None:
    query: MemberCodeQuery = call.query
    check_same_uid(query.uid, call.params.uid)
    anonymous = not call.request.headers.get("Authorization")
    try:
        member = await reset_target(call, call.params.uid, query.mobile)
        if member.state not in LOGIN_ALLOWED:
            raise NotFoundError("no member with this uid and mobile")
    except NotFoundError:
        if not anonymous:
            raise
        # Anonymous: a refused pair is answered as a sent code (a 404 told which uid a number
        # belongs to: uids are sequential), and counts like one against the limits per number
        # and client IP, so pairs cannot be tried at full speed either.
        await call.app[MEMBERS].codes.check_limits(query.mobile, ip=call.client_ip)
        log.info("reset_code_refused", uid=call.params.uid, answered="as if sent")
        return
    if anonymous:  # the provider's refusal of the member's number must not tell it apart either
        await send_code_telling_nothing(call, CodePurpose.RESET, member.vendor_id, query.mobile)
    else:
        await send_code(call, CodePurpose.RESET, member.vendor_id, query.mobile)


@routes.put(
    "/users/{uid}/rst",
    seed="AA-07B",
    summary="Reset a member's password with the code",
    roles=PUBLIC,
    params=MemberPath,
    body=ResetIn,
    errors=(401, 403, 404, 422),
    description="Public like AA-07A. Every session of the member ends.",
)
async def reset_member_password(call: Call) -> None:
    body: ResetIn = call.body
    check_same_uid(body.uid, call.params.uid)
    if not call.request.headers.get("Authorization"):  # anonymous: tells no one who exists
        members = call.app[MEMBERS]
        member = await members.reset_password_anonymously(call.params.uid, body.code, body.pwd)
        await end_sessions(call, member)
        return
    member = await reset_target(call, call.params.uid, None)
    if member.state not in LOGIN_ALLOWED:
        raise NotFoundError("no member with this uid and mobile")
    await call.app[MEMBERS].reset_password(member, body.code, body.pwd)
    await end_sessions(call, member)


@routes.delete(
    "/users/{uid}",
    seed="AA-10",
    summary="Deregister a member (platform admin only)",
    roles=PLATFORM_ONLY,
    params=MemberPath,
    errors=(404,),
    description="The member can no longer log in and its personal data is erased; the row, "
    "uid, vendor, agent, referrer, bonus and VIP flag stay, because orders, ledgers and "
    "commissions refer to them (docs/api-members.md). Repeating it answers 204 again.",
)
async def deregister_member(call: Call) -> None:
    member = await visible_member(call.principal, call.params.uid)
    await deregister(member)
    await end_sessions(call, member)
    log.info("member_deregistered", uid=member.uid)
