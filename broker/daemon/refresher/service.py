"""What the daemon asks of the refresher: a token fresh enough, a refresh now, each credential's upkeep."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from broker.core.clock import Clock
from broker.core.errors import BrokerError, LeftToCli, LoginRequired
from broker.core.model import Credential, CredentialKey
from broker.daemon import hints
from broker.daemon.audit import AuditTrail
from broker.daemon.credentials import CredentialSet
from broker.daemon.inflight import InFlight
from broker.daemon.journal import Journal
from broker.daemon.metrics import Metrics
from broker.daemon.refresher.attempt import Attempts
from broker.daemon.refresher.recovery import Recovery
from broker.daemon.refresher.scheduler import Scheduler
from broker.daemon.refresher.single_flight import SingleFlight, wait_at_most
from broker.daemon.refresher.status import STOPPED, Status
from broker.daemon.refresher.timing import reachable_ttl
from broker.daemon.refresher.upkeep import Upkeep
from broker.followed import adoption
from broker.providers.base import ProviderContext
from broker.providers.registry import Registry

WAIT_LIMIT = 60.0
"""A request waits at most this long for a refresh; the refresh itself goes on."""
CLI_GRACE = 10.0
"""A request for a token a running CLI is refreshing waits this long for the CLI's new file."""


class Refresher:
    def __init__(
        self,
        credentials: CredentialSet,
        registry: Callable[[], Registry],
        context: ProviderContext,
        clock: Clock,
        *,
        margin: float = 60.0,
        metrics: Metrics | None = None,
        inflight: InFlight | None = None,
        journals: Callable[[CredentialKey], Journal] | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.credentials, self.context, self.clock = credentials, context, clock
        self.upkeep = Upkeep(credentials, registry, context, clock, margin)
        self.metrics = metrics or Metrics()
        self.recovery = Recovery(self.upkeep, inflight, journals)
        self._attempts = Attempts(self.upkeep, self.recovery, self.metrics, audit)
        self._flights: SingleFlight[Credential] = SingleFlight()
        self._scheduler = Scheduler(self.upkeep, self.refresh_now)

    @property
    def margin(self) -> float:
        return self.upkeep.margin

    @margin.setter
    def margin(self, margin: float) -> None:
        """A config reload sets it: every part reads it from ``upkeep``."""
        self.upkeep.margin = margin

    @property
    def inflight(self) -> InFlight | None:
        return self.recovery.inflight

    def registry(self) -> Registry:
        return self.upkeep.registry()

    def status(self, key: CredentialKey) -> Status:
        return self.upkeep.status(key)

    def refreshable(self, key: CredentialKey) -> bool:
        return self.upkeep.refreshable(key)

    def watch(self, key: CredentialKey) -> None:
        """(Re)start the timer of a credential, e.g. after a login replaced it."""
        self._scheduler.watch(key)

    def ensure_watched(self, key: CredentialKey) -> None:
        """Start the timer if it has ended (e.g. a manual refresh revived a dead login)."""
        self._scheduler.ensure_watched(key)

    def forget(self, key: CredentialKey) -> None:
        self._scheduler.forget(key)

    def timer(self, key: CredentialKey) -> asyncio.Task[None] | None:
        """The task that keeps ``key`` fresh; it ends when nothing more can be done by itself."""
        return self._scheduler.timer(key)

    def owed(self, key: CredentialKey) -> asyncio.Task[None] | None:
        """The task writing ``key``'s owed tokens (the store or a CLI's file refused them), if any."""
        return self.recovery.owed(key)

    def in_flight(self, key: CredentialKey) -> bool:
        """Whether a refresh of ``key`` is under way now."""
        return self._flights.running(key)

    def watch_all(self) -> None:
        """At start: a timer for every credential, keeping what the start's checks found (a dead login)."""
        for credential in self.credentials.all():
            self.ensure_watched(credential.key)

    async def close(self) -> None:
        tasks = [*self._scheduler.tasks(), *self._flights.tasks(), *self.recovery.tasks()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._scheduler.clear()

    def held(self, key: CredentialKey, min_ttl: float) -> Credential | None:
        """The credential in memory when it has ``min_ttl`` left; ``None`` when ``fresh`` has more to do."""
        credential = self.credentials.get(key)
        return credential if credential is not None and credential.remaining(self.clock.now()) >= min_ttl else None

    async def fresh(self, key: CredentialKey, min_ttl: float) -> Credential:
        """A credential with at least ``min_ttl`` seconds left, refreshing first if needed.

        When the refresh fails or outlasts ``WAIT_LIMIT`` but the current token has not
        expired, that token is served: a short-lived token beats none. While the timer
        backs off after a fault (or waits out a Retry-After), clients do not start
        refreshes of their own: an outage must not multiply the upstream's load by the
        clients' request rate. They get the current token, or the fault once it expired.
        """
        credential = self.credentials.get(key)
        if credential is None:
            raise hints.not_logged_in(self.registry().get(key[0]), key[1], self.credentials)
        now = self.clock.now()
        if credential.remaining(now) >= min_ttl:
            return credential  # nearly every request ends here
        if credential.remaining(now) >= reachable_ttl(credential, min_ttl):
            return credential
        provider = self.registry().get(credential.provider)
        status = self.status(key)
        if not self.upkeep.may_redeem(provider, credential) or status.state in STOPPED or status.holding_back(now):
            if credential.remaining(now) > 0:
                return credential
            if status.state == "left_to_cli":
                return await self._from_the_cli(key, credential, status)
            raise status.last_error or self._cannot_refresh(credential)
        try:
            return await self.refresh_now(key, WAIT_LIMIT)
        except LeftToCli:
            return await self._from_the_cli(key, credential, self.status(key))
        except (BrokerError, TimeoutError):
            if credential.remaining(self.clock.now()) > 0:
                return credential
            raise

    async def _from_the_cli(self, key: CredentialKey, credential: Credential, status: Status) -> Credential:
        """A token only the followed CLI may refresh now: what a running CLI writes within ``CLI_GRACE``,
        else the reason."""
        if credential.remaining(self.clock.now()) > 0:
            return credential
        if not isinstance(status.last_error, LeftToCli) or not status.last_error.cli_running:
            raise status.last_error or self._cannot_refresh(credential)

        async def written() -> Credential:
            while (latest := self.credentials.get(key)) is credential or latest is None:
                await self.credentials.wait_changed()
            return latest

        try:
            latest = await wait_at_most(asyncio.ensure_future(written()), CLI_GRACE, self.clock)
        except TimeoutError:
            raise status.last_error from None
        if latest.remaining(self.clock.now()) > 0:
            return latest
        raise status.last_error or self._cannot_refresh(latest)

    async def refresh_now(
        self, key: CredentialKey, wait_limit: float | None = None, *, asked: bool = False
    ) -> Credential:
        """Refresh once; concurrent callers share the one request in flight.

        A caller giving up (``wait_limit`` passed: ``TimeoutError``) leaves the refresh running.
        ``asked``: a person asked (``broker refresh``), which may redeem what broker leaves
        alone by itself: a token whose last request got no answer, or a followed file's
        token that only its CLI may refresh, once no process of that CLI is running.
        """
        task = self._start(key, asked=asked)
        if wait_limit is None:
            return await asyncio.shield(task)
        return await wait_at_most(task, wait_limit, self.clock)

    def _start(self, key: CredentialKey, *, recover: bool = False, asked: bool = False) -> asyncio.Task[Credential]:
        run = functools.partial(self._attempts.run, key, recover=recover, asked=asked)
        return self._flights.start(key, run, name=f"refresh-now {key[0]}/{key[1]}")

    async def check_cut_short(self, keys: set[CredentialKey]) -> None:
        """Refresh now each login whose last refresh a crash cut short (the daemon does it before ready)."""
        await self.recovery.check_cut_short(keys, lambda key: self._start(key, recover=True))

    async def wait_attempts(self, key: CredentialKey, count: int) -> Status:
        """Return once ``count`` refresh attempts of ``key`` have ended, whatever their outcome."""
        return await self.wait_status(key, lambda status: status.attempts >= count)

    async def wait_status(self, key: CredentialKey, predicate: Callable[[Status], bool]) -> Status:
        """Return once the upkeep of ``key`` satisfies ``predicate`` (after an attempt or a new plan)."""
        return await self.upkeep.statuses.wait(key, predicate)

    def _cannot_refresh(self, credential: Credential) -> BrokerError:
        followed_only = adoption.only_followed(self.credentials.followed, credential)
        if followed_only is not None:
            return followed_only
        return LoginRequired(
            f"{credential.provider}: the token expired and cannot be refreshed",
            hints.relogin(self.registry().get(credential.provider), credential.account, self.credentials),
        )
