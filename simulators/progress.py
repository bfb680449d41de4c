"""The live progress view: one line a second on stderr, redrawn in place on a terminal."""

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


class Progress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._previous: tuple[float, Mapping[str, int]] | None = None
        self._drawn = False

    def update(self, elapsed: float, phase: str, counters: Mapping[str, int]) -> None:
        sent_rate = ack_rate = 0.0
        if self._previous is not None:
            then, before = self._previous
            span = elapsed - then
            if span > 0:
                sent = counters["records_sent"] + counters["records_resent"]
                sent_before = before["records_sent"] + before["records_resent"]
                sent_rate = (sent - sent_before) / span
                ack_rate = (_acked(counters) - _acked(before)) / span
        self._previous = (elapsed, dict(counters))
        errors = sum(counters[name] for name in ERROR_COUNTERS)
        line = (
            f"[{elapsed:6.1f}s {phase:5}] connected {counters['connected']:>6} "
            f"logged-in {counters['online']:>6} | sent {sent_rate:>8.0f}/s "
            f"acked {ack_rate:>8.0f}/s in-flight {counters['in_flight']:>6} | "
            f"errors {errors} disconnects {counters['disconnects']}"
        )
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
