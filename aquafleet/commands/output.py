"""One output convention for every command: readable lines and tables by default, one JSON
document with `--json` (for scripts); times as ISO 8601 UTC (`2026-11-29T08:00:00Z`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Renderer = Callable[[Any], str]


def iso(value: dt.datetime | int | float | None) -> str | None:
    """A time as ISO 8601 UTC with a Z; unix seconds are taken as UTC."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    else:
        when = dt.datetime.fromtimestamp(int(value), dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """`--expires-at` and the like: ISO 8601 with a zone (or unix seconds) -> unix seconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601, e.g. 2026-12-31T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a zone (Z or +08:00)")
    return int(when.timestamp())


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in low..high, or a usage error saying so (a negative
    `--limit` reached the ORM and ended in its traceback)."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{number} is not in {low}..{high}")
        return number

    return parse


LIMIT = whole_number(1, 100_000)  # `--limit` of the listing commands


def parse_date(text: str) -> dt.date:
    """`--date`: YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from None


def _plain(value: Any) -> Any:
    """JSON for what commands return: datetimes as ISO 8601 UTC."""
    if isinstance(value, dt.datetime):
        return iso(value)
    return str(value)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")


def emit(args: argparse.Namespace, data: Any, render: Renderer) -> None:
    """Print `data` as JSON with --json, else as `render` shows it."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(data, indent=2, default=_plain) + "\n")
    else:
        text = render(data)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def show(value: Any) -> str:
    """One value for a human: '-' for nothing, datetimes as ISO 8601."""
    if value is None or value == "":
        return "-"
    if isinstance(value, dt.datetime):
        return iso(value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def fields(pairs: Mapping[str, Any] | Sequence[tuple[str, Any]], indent: int = 0) -> str:
    """`name: value` lines, the values aligned."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    if not items:
        return ""
    width = max(len(name) for name, _ in items) + 1
    pad = " " * indent
    return "\n".join(f"{pad}{name + ':':<{width}} {show(value)}" for name, value in items)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: int = 0) -> str:
    """A plain text table with a header line."""
    cells = [[show(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    pad = " " * indent
    lines = [pad + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append(pad + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
