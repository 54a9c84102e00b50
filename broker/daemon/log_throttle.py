"""Log lines about refused requests, at a rate nobody else controls.

Anyone who can reach a socket or the proxy port can make the daemon refuse requests as
fast as they can send them: 5,000 refused proxy requests once wrote 35 MB of log in a
second. So each kind of refusal logs at most ``limit`` lines per ``window`` seconds;
the first line after a quiet spell says how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LIMIT = 10
WINDOW = 60.0


class Throttle:
    def __init__(self, limit: int = LIMIT, window: float = WINDOW, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._started = float("-inf")
        self._logged = 0
        self.dropped = 0
        """Lines left out since the last one logged."""

    def admit(self) -> str | None:
        """``None``: leave this line out. Else what to add to it: how many were left out before ("" for none)."""
        now = self.clock()
        if now - self._started >= self.window:
            self._started, self._logged = now, 0
        if self._logged >= self.limit:
            self.dropped += 1
            return None
        self._logged += 1
        suffix = f" ({self.dropped} similar lines left out in the last {self.window:.0f} s)" if self.dropped else ""
        self.dropped = 0
        return suffix

    def log(self, logger: logging.Logger, level: int, message: str, *args: object) -> None:
        """``logger.log(...)`` within the limit."""
        suffix = self.admit()
        if suffix is not None:
            logger.log(level, message + suffix, *args)


class ThrottleFilter(logging.Filter):
    """The same limit for records a library logs (aiohttp's malformed-request lines)."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW) -> None:
        super().__init__()
        self.throttle = Throttle(limit, window)

    def filter(self, record: logging.LogRecord) -> bool:
        suffix = self.throttle.admit()
        if suffix:
            record.msg, record.args = record.getMessage() + suffix, None
        return suffix is not None
