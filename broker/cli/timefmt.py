"""Durations for people."""

from __future__ import annotations


def until(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds <= 0:
        return "expired"
    seconds = int(seconds)
    if seconds < 120:
        return f"in {seconds}s"
    if seconds < 7200:
        return f"in {seconds // 60}m"
    if seconds < 172800:
        return f"in {seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"in {seconds // 86400}d"
