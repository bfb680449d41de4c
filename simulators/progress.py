"""The live progress view: one line a second on stderr, redrawn in place on a terminal, and
one closing line with the run's totals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO

ERROR_COUNTERS = (
    "login_failures",
    "login_timeouts",
    "acked_rejected",
    "acks_unmatched",
    "server_closes",
    "server_errors",
    "protocol_errors",
)


def _acked(counters: Mapping[str, int]) -> int:
    """Records acked (an ACK frame may settle many: coalesced acks)."""
    return counters["acked_stored"] + counters["acked_duplicate"] + counters["acked_by_watermark"]


def _sent(counters: Mapping[str, int]) -> int:
    return counters["records_sent"] + counters["records_resent"]


def _litres(ml: int) -> str:
    return f"{ml / 1000:,.1f} L"


class Progress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._previous: tuple[float, Mapping[str, int]] | None = None
        self._drawn = False

    def update(self, elapsed: float, phase: str, counters: Mapping[str, int]) -> None:
        """The live line: devices online, totals so far, and the rates of the last second."""
        sent_rate = ack_rate = 0.0
        if self._previous is not None:
            then, before = self._previous
            span = elapsed - then
            if span > 0:
                sent_rate = (_sent(counters) - _sent(before)) / span
                ack_rate = (_acked(counters) - _acked(before)) / span
        self._previous = (elapsed, dict(counters))
        errors = sum(counters[name] for name in ERROR_COUNTERS)
        line = (
            f"[{elapsed:6.1f}s {phase:5}] online {counters['online']:>6} "
            f"(connected {counters['connected']}) | records sent {_sent(counters)} "
            f"({sent_rate:.0f}/s) acked {_acked(counters)} ({ack_rate:.0f}/s) "
            f"in-flight {counters['in_flight']} | water {_litres(counters['acked_ml'])} | "
            f"errors {errors} disconnects {counters['disconnects']}"
        )
        self._write(line)

    def finish(self, elapsed: float, counters: Mapping[str, int]) -> None:
        """The closing line: totals of the whole run and its average rates (not a last-second
        rate, and the links closed because the run was over are not disconnects)."""
        errors = sum(counters[name] for name in ERROR_COUNTERS)
        average = _sent(counters) / elapsed if elapsed > 0 else 0.0
        line = (
            f"[{elapsed:6.1f}s done ] records sent {_sent(counters)} (average {average:.0f}/s), "
            f"acked {_acked(counters)}, water acked {_litres(counters['acked_ml'])} | "
            f"errors {errors} disconnects during the run {counters['disconnects']}, "
            f"closed at the end {counters['closed_at_end']}"
        )
        self._write(line)
        self.close()

    def _write(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
