"""Each credential's upkeep as ``broker status`` shows it, and the one place its states change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from broker.core.errors import BrokerError, LeftToCli, LoginRequired, RefreshUncertain, StoreError
from broker.core.model import CredentialKey

STOPPED = ("login_required", "uncertain", "left_to_cli")
"""States in which nothing redeems the refresh token by itself; a person's ``broker refresh`` may."""


@dataclass
class Status:
    """What ``broker status`` shows of a credential's upkeep."""

    state: str = "ready"
    """``ready``, ``refreshing``, ``login_required``, ``error``, ``uncertain`` (a request that may
    have spent the refresh token got no answer) or ``left_to_cli`` (a followed CLI refreshes it)."""
    last_error: BrokerError | None = None
    next_refresh_at: float | None = None
    last_refresh_at: float | None = None
    failures: int = 0
    refreshes: int = 0
    attempts: int = 0
    not_before: float | None = None
    """The upstream's Retry-After: no refresh is sent to it before this instant."""

    def ready(self, refreshed_at: float | None = None) -> None:
        """The credential is good again (``refreshed_at``: because broker refreshed it): faults are forgotten."""
        self.state, self.last_error, self.failures = "ready", None, 0
        if refreshed_at is not None:
            self.last_refresh_at = refreshed_at
            self.refreshes += 1

    def failed(self, error: BrokerError) -> None:
        """No refresh: a dead login or a fault counts against the timer; a refresh left alone does not."""
        self.last_error = error
        if isinstance(error, LeftToCli):
            self.state = "left_to_cli"
        elif isinstance(error, RefreshUncertain):
            self.state = "uncertain"
        else:
            self.failures += 1
            self.state = "login_required" if isinstance(error, LoginRequired) else "error"

    def unsaved(self, error: StoreError) -> None:
        """Refreshed, but the store refused the new tokens: they are served from memory meanwhile."""
        self.state, self.last_error = "error", error

    def saved(self) -> None:
        """The store took the tokens it refused before: its error goes."""
        if isinstance(self.last_error, StoreError):
            self.state, self.last_error = "ready", None

    def holding_back(self, now: float) -> bool:
        """Whether the upstream is owed a pause now: a Retry-After, or the backoff after a fault."""
        if self.not_before is not None and now < self.not_before:
            return True
        return self.failures > 0 and self.next_refresh_at is not None and now < self.next_refresh_at


class Statuses:
    """Every credential's ``Status``, and a way to wait until one of them satisfies a condition."""

    def __init__(self) -> None:
        self._status: dict[CredentialKey, Status] = {}
        self._settled = asyncio.Condition()

    def of(self, key: CredentialKey) -> Status:
        return self._status.setdefault(key, Status())

    def renew(self, key: CredentialKey) -> None:
        """A new credential (a login, a changed file): its upkeep starts afresh."""
        self._status[key] = Status()

    def drop(self, key: CredentialKey) -> None:
        self._status.pop(key, None)

    async def changed(self) -> None:
        """Wake the waiters: an attempt ended or a new plan was made."""
        async with self._settled:
            self._settled.notify_all()

    async def wait(self, key: CredentialKey, predicate: Callable[[Status], bool]) -> Status:
        async with self._settled:
            await self._settled.wait_for(lambda: predicate(self.of(key)))
        return self.of(key)
