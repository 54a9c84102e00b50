"""A clock the test moves by hand, so refresh timing is checked without waiting.

Sleeps shorter than ``autojump_below`` pass at once (virtual time jumps ahead):
they are the short retry waits inside one refresh. Longer sleeps (the refresh timer)
wake only when the test calls ``advance``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0, autojump_below: float = 10.0) -> None:
        self._now = start
        self.autojump_below = autojump_below
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()
        self.jumped: list[float] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds < self.autojump_below:
            self.jumped.append(seconds)
            self._now += max(0.0, seconds)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._ids), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def advance_to(self, instant: float) -> None:
        self.advance(max(0.0, instant - self._now))

    def set_back(self, instant: float) -> None:
        """The clock set back to ``instant`` (by NTP, by a user); sleepers keep the instants they wait for."""
        assert instant <= self._now, "set_back moves the clock back; advance moves it forward"
        self._now = instant
