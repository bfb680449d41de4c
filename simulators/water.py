"""How a virtual purifier pours water: draws of 100-500 ml at about 30 ml/s, idle gaps between.

`flow_total_ml` is the purifier's cumulative counter. It is computed lazily from the clock when a
record is made (no timer per draw), always as an integer: the water of a finished draw is added
whole, the current draw contributes `elapsed * rate` ml, so the counter never goes backwards.
"""

from __future__ import annotations

import random

DRAW_MIN_ML, DRAW_MAX_ML = 100, 500
FLOW_ML_S = 30.0
MAX_RATE_DRAW_ML = 300  # with --max-rate every record adds a draw of 0..300 ml
MAX_DRAWS_PER_LOOK = 64  # a device not looked at for ages skips ahead instead of looping


class WaterMeter:
    """The counter of one purifier; `now` is any monotonic clock in seconds."""

    __slots__ = (
        "draw_ml",
        "draw_start",
        "draws",
        "frozen",
        "gap_s",
        "next_draw_at",
        "rate_ml_s",
        "rng",
        "total_ml",
    )

    def __init__(
        self, rng: random.Random, now: float, *, gap_s: float, rate_ml_s: float = FLOW_ML_S
    ) -> None:
        self.rng = rng
        self.gap_s = gap_s
        self.rate_ml_s = rate_ml_s
        self.total_ml = 0  # water of finished draws
        self.draw_ml = 0  # size of the draw in progress (0: idle)
        self.draw_start = 0.0
        self.draws = 0
        self.frozen = False
        # Purifiers start at a random point of their idle gap, so draws spread out at once.
        self.next_draw_at = now + rng.uniform(0.0, gap_s)

    def pumping(self, now: float) -> bool:
        return bool(self.draw_ml) and not self.frozen and now >= self.draw_start

    def level(self, now: float) -> int:
        """The counter at `now` (ml since this run started)."""
        if self.frozen:
            return self.total_ml
        rate = self.rate_ml_s
        for _ in range(MAX_DRAWS_PER_LOOK):
            if self.draw_ml:
                poured = int((now - self.draw_start) * rate)
                if poured < self.draw_ml:
                    return self.total_ml + (poured if poured > 0 else 0)
                ended = self.draw_start + self.draw_ml / rate
                self.total_ml += self.draw_ml
                self.draw_ml = 0
                self.next_draw_at = ended + self.rng.expovariate(1.0 / self.gap_s)
            if now < self.next_draw_at:
                return self.total_ml
            self.draw_start = self.next_draw_at
            self.draw_ml = self.rng.randint(DRAW_MIN_ML, DRAW_MAX_ML)
            self.draws += 1
        # Not looked at for a very long time: forget the missed gaps rather than replay them.
        self.next_draw_at = now + self.rng.expovariate(1.0 / self.gap_s)
        return self.total_ml

    def pour(self, ml: int) -> int:
        """Add a draw at once (--max-rate records, dispense commands); returns the counter."""
        self.total_ml += ml
        if ml:
            self.draws += 1
        return self.total_ml

    def freeze(self, now: float) -> int:
        """Stop pouring (end of the run): a draw in progress ends where it is."""
        if not self.frozen:
            self.total_ml = self.level(now)
            self.draw_ml = 0
            self.frozen = True
        return self.total_ml
