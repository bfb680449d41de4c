"""The draw model: a cumulative counter that grows by 100-500 ml draws at about 30 ml/s."""

from __future__ import annotations

import itertools
import random

import pytest

from aquafleet.simulators.water import DRAW_MAX_ML, DRAW_MIN_ML, FLOW_ML_S, WaterMeter


def test_counter_grows_by_whole_draws_at_the_flow_rate() -> None:
    meter = WaterMeter(random.Random(3), 0.0, gap_s=5.0)
    values, pumping = [], 0
    for step in range(36000):  # an hour, every 0.1 s
        values.append(meter.level(step / 10))
        pumping += meter.pumping(step / 10)
    assert values == sorted(values)  # never backwards
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert max(steps) <= FLOW_ML_S * 0.1 + 1  # about 30 ml/s, never a jump
    assert meter.draws > 100
    # Every finished draw added a whole 100..500 ml: the total is their sum.
    assert DRAW_MIN_ML * (meter.draws - 1) <= values[-1] <= DRAW_MAX_ML * meter.draws
    # Pumping time is the water over the flow rate: draws last seconds, not an instant.
    assert pumping / len(values) == pytest.approx(
        (values[-1] / FLOW_ML_S) / 3600, rel=0.05, abs=0.01
    )


def test_sparse_looks_see_the_same_counter() -> None:
    dense = WaterMeter(random.Random(9), 0.0, gap_s=2.0)
    sparse = WaterMeter(random.Random(9), 0.0, gap_s=2.0)
    for step in range(1, 6001):
        dense.level(step / 10)
    assert sparse.level(600.0) == dense.level(600.0)


def test_freeze_ends_the_draw_in_progress_and_stops_pouring() -> None:
    meter = WaterMeter(random.Random(1), 0.0, gap_s=0.1)
    t = 0.0
    while meter.level(t) == 0 or not meter.pumping(t):
        t += 0.05
        assert t < 100
    t += 1.0
    level = meter.level(t)
    assert meter.freeze(t) == level
    assert meter.level(t + 100) == level and not meter.pumping(t + 100)
    assert meter.pour(250) == level + 250  # a dispense command still pours


def test_long_pause_skips_ahead_without_looping_forever() -> None:
    meter = WaterMeter(random.Random(5), 0.0, gap_s=0.01)
    level = meter.level(1e9)  # decades later: bounded work, counter still sane
    assert 0 <= level <= DRAW_MAX_ML * 64
    assert meter.level(1e9 + 1) >= level
