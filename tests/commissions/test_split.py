"""The commission split's pure rules (models/commissions.py): the levels never exceed the
commissionable amount, reversals keep a proportion rounded down, and the order's parts give
the commission goods first."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aquafleet.models.commissions import (
    LineBase,
    kept_after_refunds,
    line_base,
    part_legs,
    source_split,
    split_levels,
)

OID = "20261206COMM000000000001"


@st.composite
def percents(draw: st.DrawFn) -> list[int]:
    """A product's commis.config: up to 3 levels, each 0..100, together at most 100."""
    levels = draw(st.integers(0, 3))
    out: list[int] = []
    for _ in range(levels):
        out.append(draw(st.integers(0, 100 - sum(out))))
    return out


lines = st.lists(st.builds(LineBase, st.integers(0, 10**10), percents()), min_size=1, max_size=20)


@settings(max_examples=2000, deadline=None)
@given(lines=lines, levels=st.integers(0, 3))
def test_the_levels_never_exceed_the_commissionable_amount(lines: list[LineBase], levels: int):
    split = split_levels(lines, levels)
    assert len(split) == levels
    assert all(type(x) is int and x >= 0 for x in split)
    assert sum(split) <= sum(line.base_fen for line in lines)
    # each level is the exact amount rounded down: less than one fen lost per level
    for i, amount in enumerate(split):
        exact = sum(line.base_fen * (line.percents[i] if i < len(line.percents) else 0)
                    for line in lines)  # fmt: skip
        assert amount * 100 <= exact < (amount + 1) * 100


def test_the_docs_worked_example():
    line = line_base(
        price_fen=2999, quantity=2, renewal=False,
        snapshot={"commis": {"enabled": True, "config": [21, 9, 3]}},
    )  # fmt: skip
    assert line.base_fen == 5998
    assert split_levels([line], 3) == [1259, 539, 179]
    assert split_levels([line], 2) == [1259, 539]
    assert [kept_after_refunds(a, 6998, 3499) for a in (1259, 539, 179)] == [629, 269, 89]
    assert [kept_after_refunds(a, 6998, 6998) for a in (1259, 539, 179)] == [0, 0, 0]


def test_a_line_earns_only_when_enabled_and_renewals_per_the_product_option():
    enabled = {"commis": {"enabled": True, "config": [10]}}
    assert line_base(price_fen=100, quantity=3, snapshot=enabled, renewal=False).base_fen == 300
    assert line_base(price_fen=100, quantity=3, snapshot=enabled, renewal=True).base_fen == 300
    no_renewal = {"commis": {"enabled": True, "config": [10], "renewal": False}}
    assert line_base(price_fen=100, quantity=1, snapshot=no_renewal, renewal=True).base_fen == 0
    assert line_base(price_fen=100, quantity=1, snapshot=no_renewal, renewal=False).base_fen == 100
    disabled = {"commis": {"enabled": False, "config": [10]}}
    assert line_base(price_fen=100, quantity=1, snapshot=disabled, renewal=False).base_fen == 0
    assert line_base(price_fen=100, quantity=1, snapshot={}, renewal=False).base_fen == 0


@settings(max_examples=1000, deadline=None)
@given(
    amount=st.integers(0, 10**9),
    paid=st.integers(1, 10**10),
    refunds=st.lists(st.integers(1, 10**9), max_size=5),
)
def test_reversals_only_ever_shrink_what_a_level_keeps(amount: int, paid: int, refunds: list[int]):
    kept = kept_after_refunds(amount, paid, 0)
    assert kept == amount
    refunded = 0
    for refund in refunds:
        refunded += refund
        now = kept_after_refunds(amount, paid, refunded)
        assert 0 <= now <= kept
        assert now * paid <= amount * max(0, paid - refunded)
        kept = now
    assert kept_after_refunds(amount, paid, paid) == 0


@settings(max_examples=1000, deadline=None)
@given(
    goods=st.integers(0, 10**6), before=st.integers(0, 2 * 10**6), after=st.integers(0, 2 * 10**6)
)
def test_the_order_parts_give_goods_first_and_take_back_exactly(
    goods: int, before: int, after: int
):
    g, r = source_split(goods, before)
    assert g + r == before and 0 <= g <= goods and r >= 0 and (r == 0 or g == goods)
    legs = part_legs(OID, goods, before, after)
    assert sum(leg.amount_fen for leg in legs) == after - before
    assert all(leg.amount_fen for leg in legs)
    assert {leg.account for leg in legs} <= {f"order:{OID}:goods", f"order:{OID}:rent"}
