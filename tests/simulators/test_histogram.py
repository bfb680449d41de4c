"""The mergeable log-scale latency histogram."""

from __future__ import annotations

import random

import pytest

from aquafleet.simulators.histogram import (
    BUCKETS,
    EXACT,
    MAX_VALUE,
    Histogram,
    bucket_bounds,
    bucket_index,
)


def test_buckets_tile_the_range_without_gaps() -> None:
    previous_high = -1
    for index in range(BUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1 and high >= low
        assert bucket_index(low) == index == bucket_index(high)
        previous_high = high
    assert previous_high == MAX_VALUE
    assert bucket_index(MAX_VALUE * 10) == BUCKETS - 1
    assert bucket_index(-5) == 0


def test_relative_width_is_bounded() -> None:
    for index in range(EXACT, BUCKETS):
        low, high = bucket_bounds(index)
        assert (high - low + 1) / low <= 1 / 16


def test_percentiles_are_within_the_bucket_error() -> None:
    rng = random.Random(4)
    values = [int(rng.lognormvariate(8, 1.2)) for _ in range(50_000)]
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    values.sort()
    for fraction in (0.5, 0.99, 0.999):
        exact = values[int(fraction * len(values) + 0.999999) - 1]
        assert histogram.percentile(fraction) == pytest.approx(exact, rel=0.04)
    assert histogram.max == values[-1] and histogram.count == len(values)
    assert histogram.percentile(1.0) == pytest.approx(values[-1], rel=0.04)


def test_small_values_are_exact() -> None:
    histogram = Histogram()
    for value in (0, 1, 2, 3, 31):
        histogram.record(value)
    assert [histogram.percentile(q) for q in (0.2, 0.4, 0.6, 0.8, 1.0)] == [0, 1, 2, 3, 31]
    assert Histogram().percentile(0.5) is None


def test_merging_equals_recording_everything_in_one() -> None:
    rng = random.Random(8)
    parts = [Histogram() for _ in range(3)]
    whole = Histogram()
    for _ in range(10_000):
        value = rng.randint(0, 5_000_000)
        rng.choice(parts).record(value)
        whole.record(value)
    merged = Histogram.merged(Histogram.from_dict(p.to_dict()) for p in parts)
    assert merged.counts == whole.counts
    assert (merged.count, merged.total, merged.max) == (whole.count, whole.total, whole.max)
    assert merged.summary_ms() == whole.summary_ms()


def test_summary_is_in_milliseconds() -> None:
    histogram = Histogram()
    histogram.record(1500)
    summary = histogram.summary_ms()
    assert summary["count"] == 1
    assert summary["max"] == 1.5
    assert summary["p50"] == pytest.approx(1.5, rel=0.04)


def test_from_dict_refuses_foreign_buckets() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Histogram.from_dict({"buckets": {str(BUCKETS): 1}})
