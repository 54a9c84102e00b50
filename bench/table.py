"""The one table ``make bench`` prints: each figure next to its target and a verdict."""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, TypeVar

Figures = TypeVar("Figures")

Row = tuple[str, str, str, str]
"""measure, figure, target, result (PASS, MISS or empty)."""


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def print_table(rows: list[Row]) -> None:
    headers = ("measure", "figure", "target", "result")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(4)]
    line = "  ".join("-" * width for width in widths)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def combined(rounds: Sequence[Figures], *, summed: tuple[str, ...] = (), peak: tuple[str, ...] = ()) -> Figures:
    """Rounds of one measure (dataclasses) as one: each figure's median, counts in ``summed``
    added up, and ``peak`` figures at their highest (a bottleneck shows in its worst round)."""
    columns: dict[str, Any] = {}
    for field in dataclasses.fields(rounds[0]):
        column = [getattr(round_, field.name) for round_ in rounds]
        if field.name in summed:
            columns[field.name] = sum(column)
        elif field.name in peak:
            columns[field.name] = max(column)
        else:
            columns[field.name] = float(statistics.median(column))
    return dataclasses.replace(rounds[0], **columns)
