"""The sim's live line and its closing line: totals, not only rates."""

from __future__ import annotations

import io

from aquafleet.simulators.progress import Progress
from aquafleet.simulators.stats import sum_counters


def _counters(**values: int) -> dict[str, int]:
    counters = sum_counters([])
    counters.update(values)
    return counters


def test_the_live_line_shows_totals_and_the_closing_line_whole_run_figures() -> None:
    out = io.StringIO()
    progress = Progress(out)
    first = _counters(
        online=900, connected=1000, records_sent=500, acked_stored=400, acked_ml=52_300
    )
    progress.update(1.0, "run", first)
    second = _counters(
        online=1000, connected=1000, records_sent=2500, acked_stored=2400, acked_ml=252_300,
        disconnects=3,
    )  # fmt: skip
    progress.update(2.0, "run", second)
    live = out.getvalue().splitlines()[-1]
    assert "online   1000" in live
    assert "records sent 2500 (2000/s) acked 2400 (2000/s)" in live
    assert "water 252.3 L" in live and "disconnects 3" in live

    # The end: a burst of the last records within a moment of the previous line must not show
    # as a rate, and the 1000 links closed because the run was over are not disconnects.
    progress.finish(
        10.0, _counters(records_sent=20_000, acked_stored=20_000, acked_ml=2_000_000,
                        disconnects=3, closed_at_end=1000),
    )  # fmt: skip
    last = out.getvalue().splitlines()[-1]
    assert "records sent 20000 (average 2000/s)" in last
    assert "water acked 2,000.0 L" in last
    assert "disconnects during the run 3, closed at the end 1000" in last
