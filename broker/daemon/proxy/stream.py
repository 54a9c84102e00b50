"""The account of what each proxied request did, for its log line and the metrics.

A side that breaks off is recorded (``Exchange.cut_short``); the client sees a cut answer
as cut, never as complete (``broker.daemon.proxy.connection``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

CLIENT_CLOSED = 499
"""The status logged and counted when the client hung up before any answer (nginx's convention)."""


@dataclass
class Exchange:
    """What one proxied request did, for its log line and the metrics."""

    method: str
    shown: str
    """The path as a log line shows it."""
    provider: str
    """The metrics label: the provider, or "" for a name the registry does not know."""
    account: str | None = None
    status: int = 0
    sent: int = 0
    received: int = 0
    cut_by: str = ""
    """``client`` or ``upstream`` when that side broke the answer off."""
    ending: str = ""
    """Why the answer is not whole, for the log line."""
    logged: bool = False
    started: float = field(default_factory=time.monotonic)

    def cut_short(self, by: str, why: str) -> None:
        if not self.cut_by:
            self.cut_by, self.ending = by, f"{why} after {self.received} bytes"
        if by == "client" and not self.status:
            self.status = CLIENT_CLOSED  # before the upstream answered
