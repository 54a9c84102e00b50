"""The one table ``make bench`` prints: each figure next to its target and a verdict."""

from __future__ import annotations

import sys
import time

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
