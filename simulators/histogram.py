"""A fixed log-scale latency histogram in integer microseconds: mergeable across processes.

Every histogram has the same buckets, so merging is adding counts index by index. Values below
32 us are exact; above, each power of two is split into 16 buckets (HdrHistogram-style, 4
significant bits), so a reported percentile is within 3.2 % of the true value. Values are
clamped to 2**40 - 1 us (about 12.7 days).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SUB_BITS = 4
SUB = 1 << SUB_BITS  # buckets per power of two
EXACT = 2 * SUB  # values below this have a bucket each
MAX_VALUE = (1 << 40) - 1
BUCKETS = EXACT + (MAX_VALUE.bit_length() - SUB_BITS - 1) * SUB


def bucket_index(value: int) -> int:
    """The bucket of a value in microseconds (negative counts as 0, huge as MAX_VALUE)."""
    if value < EXACT:
        return value if value > 0 else 0
    if value > MAX_VALUE:
        value = MAX_VALUE
    shift = value.bit_length() - SUB_BITS - 1
    return EXACT + (shift - 1) * SUB + (value >> shift) - SUB


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value (inclusive) that land in a bucket."""
    if index < EXACT:
        return index, index
    shift = (index - EXACT) // SUB + 1
    mantissa = (index - EXACT) % SUB + SUB
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    """Counts per bucket, plus the exact count, sum and max."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total = 0
        self.max = 0

    def record(self, value_us: int) -> None:
        if value_us < EXACT:
            index = value_us if value_us > 0 else 0
        else:
            if value_us > MAX_VALUE:
                value_us = MAX_VALUE
            shift = value_us.bit_length() - SUB_BITS - 1
            index = EXACT + (shift - 1) * SUB + (value_us >> shift) - SUB
        self.counts[index] += 1
        self.count += 1
        self.total += value_us
        if value_us > self.max:
            self.max = value_us

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for index, n in enumerate(other.counts):
            if n:
                counts[index] += n
        self.count += other.count
        self.total += other.total
        if other.max > self.max:
            self.max = other.max

    def percentile(self, fraction: float) -> int | None:
        """The value below which `fraction` of the samples lie (bucket midpoint); None if empty."""
        if not self.count:
            return None
        rank = max(1, min(self.count, int(fraction * self.count + 0.999999)))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low, high = bucket_bounds(index)
                return min((low + high) // 2, self.max)
        return self.max  # pragma: no cover - counts and count agree

    def summary_ms(self) -> dict[str, Any]:
        """count, p50/p99/p999, mean and max in milliseconds (3 decimals)."""

        def ms(value: int | None) -> float | None:
            return None if value is None else round(value / 1000, 3)

        return {
            "count": self.count,
            "p50": ms(self.percentile(0.50)),
            "p99": ms(self.percentile(0.99)),
            "p999": ms(self.percentile(0.999)),
            "mean": ms(self.total // self.count) if self.count else None,
            "max": ms(self.max) if self.count else None,
        }

    # ------------------------------------------------------------------ transport

    def to_dict(self) -> dict[str, Any]:
        """A compact picklable/JSON form: only the non-empty buckets."""
        return {
            "buckets": {str(i): n for i, n in enumerate(self.counts) if n},
            "count": self.count,
            "sum": self.total,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        histogram = cls()
        for index, n in data.get("buckets", {}).items():
            position = int(index)
            if not 0 <= position < BUCKETS:
                raise ValueError(f"histogram bucket {position} out of range")
            histogram.counts[position] += int(n)
        histogram.count = int(data.get("count", sum(histogram.counts)))
        histogram.total = int(data.get("sum", 0))
        histogram.max = int(data.get("max", 0))
        return histogram

    @classmethod
    def merged(cls, histograms: Iterable[Histogram]) -> Histogram:
        result = cls()
        for histogram in histograms:
            result.merge(histogram)
        return result
