"""A timer per credential: it sleeps until ``timing`` says the refresh is due, then asks for one.

No sleep is longer than a minute and every decision re-reads the wall clock, so a
laptop's suspend cannot make a deadline slip. A timer ends when nothing more can be
done by itself: no expiry, a dead login, a token left to its CLI or an uncertain one.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

from broker.core.errors import BrokerError
from broker.core.model import Credential, CredentialKey
from broker.daemon.refresher.status import STOPPED
from broker.daemon.refresher.timing import retry_due, timer_due
from broker.daemon.refresher.upkeep import Upkeep

MAX_SLEEP = 60.0
_random = secrets.SystemRandom()


class Scheduler:
    def __init__(self, upkeep: Upkeep, refresh: Callable[[CredentialKey], Awaitable[Credential]]) -> None:
        self.upkeep = upkeep
        self.refresh = refresh
        self._timers: dict[CredentialKey, asyncio.Task[None]] = {}

    def watch(self, key: CredentialKey) -> None:
        """(Re)start the timer of a credential, e.g. after a login replaced it."""
        self.forget(key)
        self.upkeep.statuses.renew(key)
        self._timers[key] = self._timer_task(key)

    def ensure_watched(self, key: CredentialKey) -> None:
        """Start the timer if it has ended (e.g. a manual refresh revived a dead login)."""
        timer = self._timers.get(key)
        if timer is None or timer.done():
            self._timers[key] = self._timer_task(key)

    def forget(self, key: CredentialKey) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.upkeep.statuses.drop(key)

    def timer(self, key: CredentialKey) -> asyncio.Task[None] | None:
        return self._timers.get(key)

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._timers.values())

    def clear(self) -> None:
        self._timers.clear()

    def _timer_task(self, key: CredentialKey) -> asyncio.Task[None]:
        return asyncio.create_task(self._keep_fresh(key), name=f"refresh {key[0]}/{key[1]}")

    async def _keep_fresh(self, key: CredentialKey) -> None:
        """The timer loop of one credential."""
        upkeep = self.upkeep
        while True:
            credential = upkeep.credentials.get(key)
            if credential is None or credential.expires_at is None:
                return
            provider = upkeep.registry().get(credential.provider)
            status = upkeep.status(key)
            if not upkeep.may_redeem(provider, credential) or status.state in STOPPED:
                return
            if status.failures:
                due = retry_due(upkeep.clock.now(), status.failures, _random.random(), status.not_before)
            else:
                due = timer_due(credential, upkeep.margin, _random.random(), status.last_refresh_at)
            status.next_refresh_at = due
            await upkeep.statuses.changed()
            await self._sleep_until(due)
            if upkeep.credentials.get(key) is not credential:
                continue  # replaced meanwhile (a login, an on-demand refresh): plan again
            if upkeep.status(key).state in STOPPED:
                return  # an on-demand refresh found the login dead, or left it: never send its token again
            try:
                await self.refresh(key)
            except BrokerError:
                continue

    async def _sleep_until(self, deadline: float) -> None:
        while (left := deadline - self.upkeep.clock.now()) > 0:
            await self.upkeep.clock.sleep(min(left, MAX_SLEEP))
