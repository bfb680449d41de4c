"""Commissions (佣金管理, seed section 七: AE-01 list, AE-02 summary, AE-03 withdraw) and the
agents' 佣金列表 (docs/api-commissions.md, rules in docs/commissions.md).

Thin: the split, the states, the withdrawals and the scoping live in models.commissions. The
platform sees every vendor's commissions, a vendor its own; every earner (a member, an agent,
a dealer) sees and withdraws its own.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from aiohttp import web
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from aquafleet.api.errors import NotFoundError
from aquafleet.api.list_filters import named_earner, named_vendor
from aquafleet.api.payments import PAYMENTS
from aquafleet.api.routing import Call, Page, RouteTable
from aquafleet.api.schemas import (
    UNSET,
    ListQuery,
    PathParams,
    Query,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    VendorCode,
)
from aquafleet.gateway.appkeys import SETTINGS
from aquafleet.gateway.payouts import choose_payout
from aquafleet.models.agents import visible_agents
from aquafleet.models.commissions import (
    MAX_REQUEST_ID,
    Commission,
    CommissionState,
    Withdrawal,
    WithdrawalState,
    earner_of,
    subtree_commissions,
    summary,
    visible_commissions,
)
from aquafleet.models.products import MAX_FEN
from aquafleet.models.tenancy import ADMIN_ROLES, ANY_ROLE, Role
from aquafleet.models.withdrawals import PAYOUT_CHANNELS, request_withdrawal

routes = RouteTable(
    "commissions",
    "Commissions (佣金管理, AE-01..03): three-level distribution earnings, their summary and "
    "withdrawals (docs/api-commissions.md, docs/commissions.md).",
)

EARNERS = frozenset({Role.MEMBER, Role.AGENT, Role.DEALER})
EARNER_PATTERN = r"^(member:[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}|agent:[1-9][0-9]{0,9})$"
OID_PATTERN = r"^[0-9]{8}[A-Z0-9]{4}[0-9]{12}$"
CSV_TYPE = "text/csv"
MAX_CSV_ROWS = 10_000


class CommissionOut(ResponseModel):
    id: int
    order_id: str
    vid: str
    level: int = Field(description="1: the buyer's referrer, 2: its referrer, 3: the next")
    earner: str = Field(description="member:{uid} or agent:{id}")
    user_id: str = Field(description="the buyer")
    base: int = Field(description="the order's commissionable amount (goods and rent), fen")
    amount: int = Field(description="what the level earned when the order was paid, fen")
    reversed: int = Field(description="taken back by refunds, fen")
    kept: int = Field(description="amount - reversed, fen")
    state: int = Field(description="1 pending (待激活), 2 available (可用), 3 reversed")
    state_name: str
    create_tms: UtcDateTime
    activate_tms: UtcDateTime | None


class CommissionListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "create_tms": "created_at",
        "amount": "amount_fen",
        "level": "level",
    }
    sort: Literal["create_tms", "amount", "level"] = "create_tms"
    order: Literal["asc", "desc"] = Field("desc", description="sort direction (newest first)")
    state: CommissionState = Field(UNSET)
    level: int = Field(UNSET, ge=1, le=3)
    earner: str = Field(UNSET, pattern=EARNER_PATTERN)
    order_id: str = Field(UNSET, pattern=OID_PATTERN)
    vid: VendorCode = Field(UNSET)
    since: dt.datetime = Field(UNSET, description="created at or after (ISO 8601, with Z)")
    until: dt.datetime = Field(UNSET, description="created before (ISO 8601, with Z)")


class SummaryQuery(Query):
    vid: VendorCode = Field(UNSET, description="the platform: one vendor's")
    earner: str = Field(UNSET, pattern=EARNER_PATTERN, description="A#: one earner's")


class SummaryOut(ResponseModel):
    vid: str | None
    earner: str | None
    available: int = Field(description="可用: may be withdrawn, fen")
    pending: int = Field(description="待激活: the orders can still be returned, fen")
    withdrawn: int = Field(description="paid out, fen")
    reversed: int = Field(description="taken back by refunds, fen")
    payout: int = Field(description="withdrawals requested, not yet paid, fen")
    debt: int = Field(
        description="reversed after it was withdrawn; paid first from new commissions"
    )
    earned: int = Field(description="every level's amount - reversed, fen")


class WithdrawIn(RequestModel):
    """AE-03: withdraw available commission."""

    amount: int = Field(ge=1, le=MAX_FEN, description="fen")
    request_id: str = Field(
        min_length=1, max_length=MAX_REQUEST_ID, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the client's id of this request: the same id again with the same request "
        "answers the first withdrawal; with another (amount, channel) 409 "
        "idempotency_key_reused",
    )  # fmt: skip
    channel: Literal["manual", "weixin"] | None = Field(
        None,
        description="how it is paid out: weixin (WeChat Pay transfer to the member's bound "
        "WeChat), manual (an operator's bank transfer); unset: weixin when the earner is a "
        "member with WeChat bound and the vendor's WeChat Pay merchant is set up, else manual",
    )


class WithdrawalOut(ResponseModel):
    id: int
    request_id: str
    vid: str
    earner: str
    amount: int
    state: int = Field(description="1 requested, 2 paid, 3 failed (the money back to available)")
    state_name: str
    channel: str
    reason: str
    create_tms: UtcDateTime
    update_tms: UtcDateTime


class WithdrawalListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {"create_tms": "created_at"}
    sort: Literal["create_tms"] = "create_tms"
    order: Literal["asc", "desc"] = Field("desc", description="sort direction (newest first)")
    state: WithdrawalState = Field(UNSET)
    earner: str = Field(UNSET, pattern=EARNER_PATTERN)
    vid: VendorCode = Field(UNSET)


class AgentPath(PathParams):
    id: int = Field(ge=1, le=2**31 - 1, description="agent or dealer id")


class AgentCommissionQuery(Query):
    limit: int = Field(20, ge=1, le=100, description="commissions listed (the totals cover all)")
    offset: int = Field(0, ge=0, le=1_000_000)
    since: dt.datetime = Field(UNSET, description="created at or after (ISO 8601, with Z)")
    until: dt.datetime = Field(UNSET, description="created before (ISO 8601, with Z)")
    format: SkipJsonSchema[Literal["json", "csv"]] = "json"


class Totals(ResponseModel):
    count: int
    amount: int
    reversed: int
    kept: int


class LevelTotals(Totals):
    level: int


class MonthTotals(Totals):
    month: str = Field(description="YYYY-MM (UTC)")


class AgentCommissionsOut(ResponseModel):
    agent_id: int
    totals: Totals
    by_level: list[LevelTotals]
    by_month: list[MonthTotals]
    by_earner: list[dict[str, Any]] = Field(description="{earner, count, amount, reversed, kept}")
    commissions: list[CommissionOut] = Field(description="newest first, paged by limit/offset")


# ----------------------------------------------------------------------------- shaping


def commission_out(row: Commission) -> CommissionOut:
    return CommissionOut(
        id=row.id, order_id=row.order_oid, vid=row.vendor_code, level=row.level,
        earner=row.earner, user_id=row.buyer_uid, base=row.base_fen, amount=row.amount_fen,
        reversed=row.reversed_fen, kept=row.kept_fen, state=int(row.state),
        state_name=row.state.name.lower(), create_tms=row.created_at,
        activate_tms=row.activated_at,
    )  # fmt: skip


def withdrawal_out(row: Withdrawal) -> WithdrawalOut:
    return WithdrawalOut(
        id=row.id, request_id=row.request_id, vid=row.vendor_code, earner=row.earner,
        amount=row.amount_fen, state=int(row.state), state_name=row.state.name.lower(),
        channel=row.channel, reason=row.reason, create_tms=row.created_at,
        update_tms=row.updated_at,
    )  # fmt: skip


def _aware(value: dt.datetime, field: str) -> dt.datetime:
    from aquafleet.api.errors import ValidationFailed

    if value.tzinfo is None:
        raise ValidationFailed(
            f"query {field}: give a time zone (Z)",
            data=[{"field": field, "message": "give a time zone (Z)"}],
        )
    return value


def _totals(rows: Sequence[Commission]) -> dict[str, int]:
    return {
        "count": len(rows),
        "amount": sum(int(r.amount_fen) for r in rows),
        "reversed": sum(int(r.reversed_fen) for r in rows),
        "kept": sum(r.kept_fen for r in rows),
    }


# ----------------------------------------------------------------------------- routes


@routes.get(
    "/commission",
    seed="AE-01",
    summary="List commissions (分销佣金)",
    roles=ANY_ROLE,
    query=CommissionListQuery,
    response=CommissionOut,
    many=True,
    description="A# and every earner: the platform every vendor's commissions, a vendor its "
    "own, a member, an agent or a dealer what it earned itself. One record per order and "
    "level. Newest first unless told otherwise.",
)
async def list_commissions(call: Call) -> Page:
    query: CommissionListQuery = call.query
    qs = visible_commissions(call.principal)
    await named_vendor(call.principal, query.vid)
    await named_earner(call.principal, query.earner)
    filters: dict[str, Any] = {}
    for name, column in (
        ("state", "state"), ("level", "level"), ("earner", "earner"),
        ("order_id", "order_oid"), ("vid", "vendor_code"),
    ):  # fmt: skip
        value = getattr(query, name)
        if value is not None:
            filters[column] = value
    if query.since is not None:
        filters["created_at__gte"] = _aware(query.since, "since")
    if query.until is not None:
        filters["created_at__lt"] = _aware(query.until, "until")
    rows, total = await query.page(qs.filter(**filters), pk="id")
    return Page([commission_out(r) for r in rows], total)


@routes.get(
    "/commission/summary",
    seed="AE-02",
    summary="Commission summary (可用/待激)",
    roles=ANY_ROLE,
    query=SummaryQuery,
    response=SummaryOut,
    description="A+C. An earner (member, agent, dealer) its own: available, pending, "
    "withdrawn, reversed, in payout, debt. A vendor the sum over its earners, or one earner's "
    "with `earner`; the platform every vendor's, or one's with `vid`.",
)
async def read_summary(call: Call) -> SummaryOut:
    principal = call.principal
    query: SummaryQuery = call.query
    # A vid or earner the caller does not see is 404, never replaced by the caller's own.
    named = await named_vendor(principal, query.vid)
    vendor = named if principal.role is Role.PLATFORM else principal.vendor_code
    earner = await named_earner(principal, query.earner)
    if principal.role not in (Role.PLATFORM, Role.VENDOR):
        earner = earner_of(principal)
    totals = await summary(vendor_code=vendor, earner=earner)
    return SummaryOut(
        vid=vendor, earner=earner, available=totals.available, pending=totals.pending,
        withdrawn=totals.withdrawn, reversed=totals.reversed, payout=totals.payout,
        debt=totals.debt, earned=totals.earned,
    )  # fmt: skip


@routes.post(
    "/commission",
    seed="AE-03",
    summary="Withdraw available commission (提取可用佣金)",
    roles=EARNERS,
    body=WithdrawIn,
    response=WithdrawalOut,
    errors=(409, 429),
    description="C and agents/dealers (the earners; the seed's A+C, vendors and the platform "
    "earn nothing to withdraw). At least 30 s after the earner's last withdrawal (间隔30秒以上, "
    "429 with Retry-After), at least the `commission_min_withdrawal_fen` setting (422), at "
    "most what is available (409 insufficient_funds). The same `request_id` again with the same "
    "request answers the first withdrawal; with another amount, or naming another channel than "
    "the first took, 409 idempotency_key_reused (nothing moves). `channel` weixin pays it to "
    "the member's bound WeChat by WeChat Pay's merchant transfer (商家转账到零钱; state 2 paid "
    "or 3 failed when WeChat Pay has carried it out, found by the payments sweep); manual stays "
    "1 requested until an operator records the transfer (`aquafleet commissions payout`). "
    "Agents and dealers are paid manually.",
)
async def withdraw(call: Call) -> WithdrawalOut:
    body: WithdrawIn = call.body
    first = await Withdrawal.get_or_none(
        earner=earner_of(call.principal) or "", request_id=body.request_id
    )
    channel = (
        PAYOUT_CHANNELS["manual"]  # a repeat answers the first, whatever channel it took
        if first is not None
        else await choose_payout(
            call.principal, body.amount, body.channel, call.app[PAYMENTS].payout
        )
    )
    withdrawal, _created = await request_withdrawal(
        call.principal, amount_fen=body.amount, request_id=body.request_id, channel=channel,
        min_fen=call.app[SETTINGS].commission_min_withdrawal_fen, asked_channel=body.channel,
    )  # fmt: skip
    return withdrawal_out(withdrawal)


@routes.get(
    "/commission/withdrawals",
    summary="List withdrawals",
    roles=ANY_ROLE,
    query=WithdrawalListQuery,
    response=WithdrawalOut,
    many=True,
    description="Not in the seed: the withdrawals (AE-03) scoped as AE-01, newest first.",
)
async def list_withdrawals(call: Call) -> Page:
    principal = call.principal
    query: WithdrawalListQuery = call.query
    qs = Withdrawal.all()
    await named_vendor(principal, query.vid)
    await named_earner(principal, query.earner)
    if principal.role is Role.VENDOR:
        qs = qs.filter(vendor_code=principal.vendor_code)
    elif principal.role is not Role.PLATFORM:
        qs = qs.filter(vendor_code=principal.vendor_code, earner=earner_of(principal) or "-")
    for name, column in (("state", "state"), ("earner", "earner"), ("vid", "vendor_code")):
        value = getattr(query, name)
        if value is not None:
            qs = qs.filter(**{column: value})
    rows, total = await query.page(qs, pk="id")
    return Page([withdrawal_out(r) for r in rows], total)


@routes.get(
    "/agents/{id}/commissions",
    summary="An agent's commissions across its subtree (佣金列表)",
    roles=ADMIN_ROLES,
    params=AgentPath,
    query=AgentCommissionQuery,
    response=AgentCommissionsOut,
    description="A, the seed's 客户管理 佣金列表: what the node and the dealers under it "
    "earned, with totals, totals per commission level, per month (UTC) and per earner, and the "
    "commissions newest first. `?format=csv` (or `Accept: text/csv`) answers every commission "
    f"(up to {MAX_CSV_ROWS}) as CSV. A node outside the caller's subtree answers 404.",
)
async def agent_commissions(call: Call) -> AgentCommissionsOut | web.Response:
    query: AgentCommissionQuery = call.query
    agent = await visible_agents(call.principal).get_or_none(id=call.params.id)
    if agent is None:
        raise NotFoundError(f"agent {call.params.id} not found")
    qs = subtree_commissions(agent.vendor_id, agent.path)
    if query.since is not None:
        qs = qs.filter(created_at__gte=_aware(query.since, "since"))
    if query.until is not None:
        qs = qs.filter(created_at__lt=_aware(query.until, "until"))
    rows = list(await qs.order_by("-created_at", "-id").limit(MAX_CSV_ROWS))
    if query.format == "csv" or CSV_TYPE in call.request.headers.get("Accept", "").lower():
        return web.Response(
            text=commissions_csv(rows), content_type=CSV_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="commissions-agent-{agent.id}.csv"',
                "Cache-Control": "no-store",
            },
        )  # fmt: skip
    by_level: dict[int, list[Commission]] = defaultdict(list)
    by_month: dict[str, list[Commission]] = defaultdict(list)
    by_earner: dict[str, list[Commission]] = defaultdict(list)
    for row in rows:
        by_level[row.level].append(row)
        by_month[f"{row.created_at.astimezone(dt.UTC):%Y-%m}"].append(row)
        by_earner[row.earner].append(row)
    page = rows[query.offset : query.offset + query.limit]
    return AgentCommissionsOut(
        agent_id=agent.id,
        totals=Totals(**_totals(rows)),
        by_level=[LevelTotals(level=k, **_totals(v)) for k, v in sorted(by_level.items())],
        by_month=[MonthTotals(month=k, **_totals(v)) for k, v in sorted(by_month.items())],
        by_earner=[{"earner": k, **_totals(v)} for k, v in sorted(by_earner.items())],
        commissions=[commission_out(r) for r in page],
    )


CSV_COLUMNS = (
    "id", "create_tms", "order_id", "level", "earner", "user_id", "base", "amount", "reversed",
    "kept", "state_name", "activate_tms",
)  # fmt: skip


def commissions_csv(rows: Sequence[Commission]) -> str:
    """A header line, then one line per commission (amounts in fen, times ISO 8601 UTC)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        data = commission_out(row).model_dump(mode="json")
        writer.writerow([data[c] if data[c] is not None else "" for c in CSV_COLUMNS])
    return out.getvalue()
