"""The pure rules of field service: who fires which ticket move from where, SLA settings,
hierarchy levels, fault codes, notification channels, opt-outs and backoff."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from aquafleet.models.errors import Forbidden, InvalidInput
from aquafleet.models.faults import fault_events
from aquafleet.models.outbox import (
    ESSENTIAL,
    Channel,
    NotificationKind,
    Recipient,
    RecipientType,
    backoff_s,
    channels_for,
    may_send,
    template_values,
)
from aquafleet.models.technicians import check_position, check_skills, hierarchy_levels
from aquafleet.models.ticket_flow import (
    EVENTS,
    TicketEvent,
    TicketStateConflict,
    next_state,
    parse_sla,
)
from aquafleet.models.tickets import TRANSITIONS, TicketState, TicketType
from aquafleet.models.usage import UsageRow
from aquafleet.protocol import EventKind, FrameType

S, E = TicketState, TicketEvent
ROLES = ("platform", "vendor", "agent", "dealer", "member", "technician", "system")


@pytest.mark.parametrize(("state", "event", "actor"), list(itertools.product(S, E, ROLES)))
def test_every_move_is_the_table_or_refused(state, event, actor):
    target, actors = EVENTS[event]
    member_late = event is E.CANCEL and actor == "member" and state is not S.CREATED
    if target not in TRANSITIONS[state] or member_late:
        with pytest.raises(TicketStateConflict) as caught:
            next_state(state, event, actor)
        assert state.name.lower() in str(caught.value)
    elif actor not in actors:
        with pytest.raises(Forbidden):
            next_state(state, event, actor)
    else:
        assert next_state(state, event, actor) is target


def test_technicians_work_tickets_but_never_approve_dispatch_or_cancel():
    for event in (E.APPROVE, E.REJECT, E.DISPATCH, E.CANCEL):
        assert "technician" not in EVENTS[event][1]
    for event in (E.START, E.WAIT, E.COMPLETE):
        assert "technician" in EVENTS[event][1] and "member" not in EVENTS[event][1]


def test_sla_setting():
    sla = parse_sla("fault=24, dismantle=168")
    assert sla[TicketType.FAULT] == 24 and sla[TicketType.DISMANTLE] == 168
    assert sla[TicketType.INSTALL] == 72  # left out: 72
    for bad in ("fault", "fault=x", "nothing=3", "fault=0", "fault=9000"):
        with pytest.raises(InvalidInput):
            parse_sla(bad)


def test_hierarchy_levels_are_dealer_agent_vendor():
    assert hierarchy_levels("/12/34/") == [34, 12, None]
    assert hierarchy_levels("/12/") == [12, None]
    assert hierarchy_levels(None) == [None]


def test_skills_and_positions_are_checked():
    assert check_skills([5, 4, 5]) == [4, 5]
    with pytest.raises(InvalidInput):
        check_skills([7])
    assert check_position(85_051_128, -180_000_000) == (85_051_128, -180_000_000)
    with pytest.raises(InvalidInput):
        check_position(89_000_000, 0)  # beyond what Redis GEO indexes


def test_fault_codes_come_from_fault_events_only_once_each():
    now = dt.datetime.now(dt.UTC)

    def row(did: str, rec: int, kind: int, frame: int = FrameType.EVENT) -> UsageRow:
        return UsageRow(did, 1, rec, int(frame), int(kind), 0, now, 0, None, None)

    rows = [
        row("D1", 1, EventKind.LEAK), row("D1", 2, EventKind.LEAK),
        row("D1", 3, EventKind.TAMPER), row("D2", 1, EventKind.DISPENSE_DONE),
        row("D3", 1, EventKind.FAULT_SET), row("D4", 1, 0, FrameType.TELEMETRY),
    ]  # fmt: skip
    assert fault_events(rows) == {"D1": ("leak", "tamper"), "D3": ("fault",)}


def test_channels_need_an_address_and_a_template():
    both = Recipient(RecipientType.MEMBER, "U", openid="o1", mobile="13900000000")
    kind = NotificationKind.TICKET_DONE
    config = {"wechat_templates": {"ticket_done": "t"}, "sms_templates": {"ticket_done": "S"}}
    assert channels_for(both, kind, config) == [
        (Channel.WECHAT, "o1"), (Channel.SMS, "13900000000"),
    ]  # fmt: skip
    assert channels_for(both, kind, {"sms_templates": {"ticket_done": "S"}}) == [
        (Channel.SMS, "13900000000")
    ]
    assert channels_for(Recipient(RecipientType.MEMBER, "U"), kind, config) == []


def test_opt_outs_never_silence_essential_messages():
    off = frozenset(k.value for k in NotificationKind)
    assert {k for k in NotificationKind if may_send(k, off)} == ESSENTIAL
    assert all(may_send(k, frozenset()) for k in NotificationKind)


def test_backoff_doubles_up_to_an_hour():
    assert [backoff_s(n) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert backoff_s(30) == 3600


def test_template_values_name_the_subject():
    values = template_values(
        NotificationKind.FILTER_LOW, {"ticket_id": "T1", "device_id": "D1", "detail": "9%"}
    )
    assert values == {
        "first": "滤芯即将到期", "keyword1": "T1", "keyword2": "D1", "keyword3": "9%",
        "remark": "",
    }  # fmt: skip
