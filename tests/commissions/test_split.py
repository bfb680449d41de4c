"""The commission split's pure rules (models/commissions.py): the levels never exceed the
commissionable amount, reversals keep a proportion rounded down of the commissionable money
still paid (a deposit given back takes nothing), and the order's parts give the commission
goods first."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from aquafleet.models.commissions import (
    LineBase,
    commissionable_left,
    kept_after_refunds,
    line_base,
    part_legs,
    source_split,
    split_levels,
)
from aquafleet.models.money import Part

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
    bought = {Part.GOODS: 5998, Part.FREIGHT: 1000}
    half = commissionable_left(bought, [(None, 3499)])
    assert half == Fraction(1, 2)
    assert [kept_after_refunds(a, half) for a in (1259, 539, 179)] == [629, 269, 89]
    everything = commissionable_left(bought, [(None, 3499), (None, 3499)])
    assert [kept_after_refunds(a, everything) for a in (1259, 539, 179)] == [0, 0, 0]


def test_a_deposit_or_fee_given_back_leaves_the_commission_and_the_rest_back_takes_it_all():
    rental = {Part.RENT: 6000, Part.DEPOSIT: 50000, Part.FREIGHT: 500}  # 56500 paid
    assert commissionable_left(rental, [(Part.DEPOSIT, 50000)]) == 1
    assert commissionable_left(rental, [(Part.FREIGHT, 500), (Part.INSTALL, 0)]) == 1
    assert commissionable_left(rental, [(Part.DEPOSIT, 50000), (Part.RENT, 3000)]) == (
        Fraction(1, 2)
    )
    # The order given back whole after its deposit: everything still paid goes, commission too.
    assert commissionable_left(rental, [(Part.DEPOSIT, 50000), (None, 6500)]) == 0
    # Given back whole in part: in proportion to what is left of each part.
    assert commissionable_left(rental, [(Part.DEPOSIT, 50000), (None, 3250)]) == Fraction(1, 2)
    # Half the order back as a whole, then the deposit "in full": only half of it was left,
    # the rest comes from the other parts, and with everything back nothing is kept.
    assert commissionable_left(rental, [(None, 28250), (Part.DEPOSIT, 25000)]) == Fraction(1, 2)
    assert commissionable_left(rental, [(None, 28250), (Part.DEPOSIT, 28250)]) == 0
    # Before this rule the deposit counted like any money: 50000 of 56500 took 88% of the
    # commission of a rental that ended as agreed.
    assert kept_after_refunds(1260, commissionable_left(rental, [(Part.DEPOSIT, 50000)])) == 1260
    assert commissionable_left({Part.FREIGHT: 500}, [(None, 500)]) == 0  # nothing earns


NAMED = (Part.GOODS, Part.RENT, Part.DEPOSIT, Part.FREIGHT, Part.INSTALL)


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


@st.composite
def orders_and_refunds(draw: st.DrawFn) -> tuple[dict[Part, int], list[tuple[Part | None, int]]]:
    """An order's parts and refunds as request_refund admits them: never more than paid, and
    never more of a part than the part."""
    parts = {part: draw(st.integers(0, 10**7)) for part in NAMED}
    left = dict(parts)
    paid_left = sum(parts.values())
    refunds: list[tuple[Part | None, int]] = []
    for _ in range(draw(st.integers(0, 6))):
        part = draw(st.sampled_from((None, *NAMED)))
        room = paid_left if part is None else min(paid_left, left[part])
        if room <= 0:
            continue
        amount = draw(st.integers(1, room))
        refunds.append((part, amount))
        paid_left -= amount
        if part is not None:
            left[part] -= amount
    return parts, refunds


@settings(max_examples=1000, deadline=None)
@given(amount=st.integers(0, 10**9), order=orders_and_refunds())
def test_reversals_only_ever_shrink_what_a_level_keeps(
    amount: int, order: tuple[dict[Part, int], list[tuple[Part | None, int]]]
):
    parts, refunds = order
    base = parts[Part.GOODS] + parts[Part.RENT]
    paid = sum(parts.values())
    kept = kept_after_refunds(amount, commissionable_left(parts, []))
    assert kept == (amount if base else 0)
    for i in range(1, len(refunds) + 1):
        so_far = refunds[:i]
        share = commissionable_left(parts, so_far)
        assert 0 <= share <= 1
        now = kept_after_refunds(amount, share)
        assert 0 <= now <= kept
        refunded = sum(a for _, a in so_far)
        named = sum(a for p, a in so_far if p in (Part.GOODS, Part.RENT))
        if base and all(p is not None for p, _ in so_far):  # every refund names its part
            assert share * base == base - named
        if base and all(p is None for p, _ in so_far):  # the order given back whole, in part
            assert now == amount * (paid - refunded) // paid
        kept = now
    if sum(a for _, a in refunds) == paid:
        assert kept == 0  # everything back: no commission left


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
