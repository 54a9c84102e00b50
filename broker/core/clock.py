"""Wall-clock time and sleeping, injected so refresh timing is testable without sleeps."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """UTC epoch seconds (wall clock: expiries are wall-clock instants)."""

    async def sleep(self, seconds: float) -> None:
        """Wait about ``seconds``; callers re-check ``now()`` afterwards."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
