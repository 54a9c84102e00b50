"""Keeps every credential fresh ahead of its expiry, one refresh at a time.

- A timer per credential fires ahead of expiry, when ``refresh_timing`` says (the
  larger of the margin and 10 % of the lifetime, never more than half the lifetime,
  with jitter); the same module bounds what a client's ``min_ttl`` can demand.
- Single-flight: concurrent callers of ``refresh_now`` await the same task, so a
  rotating refresh token is redeemed exactly once.
- Transient faults retry with exponential backoff and jitter (honouring Retry-After);
  a dead grant (``invalid_grant``) ends retries and marks the credential
  ``login_required``. A still-valid token keeps being served meanwhile.
- No sleep is longer than a minute and every decision re-reads the wall clock, so a
  laptop's suspend cannot make a deadline slip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from broker.audit import AuditTrail
from broker.clock import Clock
from broker.credentials import CredentialSet
from broker.errors import BrokerError, LoginRequired, NotLoggedIn, RefreshFailed, StoreError
from broker.inflight import InFlight
from broker.journal import Journal, JournaledHttp, ReplayHttp
from broker.metrics import Metrics
from broker.model import Credential, CredentialKey
from broker.refresh_timing import backoff_delay, reachable_ttl, refresh_lead, retry_due, timer_due
from broker.upstream_errors import to_broker_error
from flows.errors import FlowError, TransportError
from flows.http import HttpClient, HttpResponse
from providers.base import Provider, ProviderContext
from providers.registry import Registry

log = logging.getLogger("broker.refresher")

MAX_SLEEP = 60.0
QUICK_RETRIES = 2
QUICK_RETRY_MAX_WAIT = 5.0
WAIT_LIMIT = 60.0
"""A request waits at most this long for a refresh; the refresh itself goes on."""
_random = secrets.SystemRandom()


@dataclass
class Status:
    """What ``broker status`` shows of a credential's upkeep."""

    state: str = "ready"
    """``ready``, ``refreshing``, ``login_required`` or ``error``."""
    last_error: BrokerError | None = None
    next_refresh_at: float | None = None
    last_refresh_at: float | None = None
    failures: int = 0
    refreshes: int = 0
    attempts: int = 0
    not_before: float | None = None
    """The upstream's Retry-After: no refresh is sent to it before this instant."""


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
        self.credentials = credentials
        self.audit = audit
        self.inflight = inflight
        self.journals = journals
        """Each credential's journal; ``None``: refresh requests go out from this process itself."""
        self._cut_short: set[CredentialKey] = set()
        """Logins whose last refresh a crash interrupted, while ``check_cut_short`` checks them."""
        self.metrics = metrics or Metrics()
        self.registry = registry
        self.context = context
        self.clock = clock
        self.margin = margin
        self._status: dict[CredentialKey, Status] = {}
        self._timers: dict[CredentialKey, asyncio.Task[None]] = {}
        self._inflight: dict[CredentialKey, asyncio.Task[Credential]] = {}
        self._settled = asyncio.Condition()

    def status(self, key: CredentialKey) -> Status:
        return self._status.setdefault(key, Status())

    def watch(self, key: CredentialKey) -> None:
        """(Re)start the timer of a credential, e.g. after a login replaced it."""
        self.forget(key)
        self._status[key] = Status()
        self._timers[key] = asyncio.create_task(self._keep_fresh(key), name=f"refresh {key[0]}/{key[1]}")

    def ensure_watched(self, key: CredentialKey) -> None:
        """Start the timer if it has ended (e.g. a manual refresh revived a dead login)."""
        timer = self._timers.get(key)
        if timer is None or timer.done():
            self._timers[key] = asyncio.create_task(self._keep_fresh(key), name=f"refresh {key[0]}/{key[1]}")

    def timer(self, key: CredentialKey) -> asyncio.Task[None] | None:
        """The task that keeps ``key`` fresh; it ends when nothing more can be done by itself."""
        return self._timers.get(key)

    def watch_all(self) -> None:
        """At start: a timer for every credential, keeping what the start's checks found (a dead login)."""
        for credential in self.credentials.all():
            self.ensure_watched(credential.key)

    def forget(self, key: CredentialKey) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._status.pop(key, None)

    async def close(self) -> None:
        tasks = [*self._timers.values(), *self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._timers.clear()

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
            raise NotLoggedIn(f"{key[0]}: no login for account {key[1]!r}", f"run: broker login {key[0]}")
        now = self.clock.now()
        if credential.remaining(now) >= min_ttl:
            return credential  # nearly every request ends here
        if credential.remaining(now) >= reachable_ttl(credential, min_ttl):
            return credential
        provider = self.registry().get(credential.provider)
        status = self.status(key)
        if (
            not self._refreshable(provider, credential)
            or status.state == "login_required"
            or _holding_back(status, now)
        ):
            if credential.remaining(now) > 0:
                return credential
            raise status.last_error or self._cannot_refresh(credential)
        try:
            return await self.refresh_now(key, WAIT_LIMIT)
        except (BrokerError, TimeoutError):
            if credential.remaining(self.clock.now()) > 0:
                return credential
            raise

    async def refresh_now(self, key: CredentialKey, wait_limit: float | None = None) -> Credential:
        """Refresh once; concurrent callers share the one request in flight.

        A caller giving up (``wait_limit`` passed: ``TimeoutError``) leaves the refresh running.
        """
        task = self._start(key)
        if wait_limit is None:
            return await asyncio.shield(task)
        return await self._wait_at_most(task, wait_limit)

    def _start(self, key: CredentialKey, *, recover: bool = False) -> asyncio.Task[Credential]:
        """The refresh in flight for ``key``, started now if there is none (synchronously: no gap to race)."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh_once(key, recover), name=f"refresh-now {key[0]}/{key[1]}")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    async def _wait_at_most(self, task: asyncio.Task[Credential], seconds: float) -> Credential:
        """``task``'s result, or ``TimeoutError`` after ``seconds`` on the injected clock."""
        timer = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if not task.done():
            raise TimeoutError(f"no refresh within {seconds:g} s")
        return task.result()

    def _finished(self, key: CredentialKey, task: asyncio.Task[Credential]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: callers that went away must not cause a warning

    async def wait_attempts(self, key: CredentialKey, count: int) -> Status:
        """Return once ``count`` refresh attempts of ``key`` have ended, whatever their outcome."""
        return await self.wait_status(key, lambda status: status.attempts >= count)

    async def wait_status(self, key: CredentialKey, predicate: Callable[[Status], bool]) -> Status:
        """Return once the upkeep of ``key`` satisfies ``predicate`` (after an attempt or a new plan)."""
        async with self._settled:
            await self._settled.wait_for(lambda: predicate(self.status(key)))
        return self.status(key)

    async def _changed(self) -> None:
        async with self._settled:
            self._settled.notify_all()

    async def _refresh_once(self, key: CredentialKey, recover: bool = False) -> Credential:
        result, fresh = "ok", None
        try:
            fresh = await self._attempt(key, await self._journaled_answer(key) if recover else None)
            return fresh
        except BrokerError as exc:
            result = exc.code
            raise
        except BaseException:
            result = "internal"
            raise
        finally:
            self.metrics.refreshes[(key[0], result)] += 1
            if self.audit is not None:
                self.audit.refreshed(key, fresh, result)
            self.status(key).attempts += 1
            await self._changed()

    async def _attempt(self, key: CredentialKey, replay: HttpResponse | None = None) -> Credential:
        """One refresh; with ``replay``, the journaled answer of one a crash cut short stands in for the network."""
        credential = self.credentials.get(key)
        if credential is None:
            raise NotLoggedIn(f"{key[0]}: no login for account {key[1]!r}", f"run: broker login {key[0]}")
        provider = self.registry().get(credential.provider)
        status = self.status(key)
        status.state = "refreshing"
        async with contextlib.AsyncExitStack() as cli_lock:
            try:
                # A CLI holding its own lock is refreshing this very token: wait, then re-read its file.
                await cli_lock.enter_async_context(self.credentials.cli_lock(key))
                adopted = await self._adopt_newer_file(key, credential)
                if adopted is not None:
                    status.state, status.last_error, status.failures = "ready", None, 0
                    return adopted
                credential = self.credentials.get(key) or credential  # as the file holds it now
                outcome = _Outcome()
                await self._record_in_flight(key, cli_lock, outcome)
                try:
                    fresh = await self._call_provider(provider, credential, replay)
                except LoginRequired as dead:
                    adopted = await self._adopt_newer_file(key, credential, any_change=True)
                    if adopted is None:
                        raise self._dead_login(key, dead) from None
                    status.state, status.last_error, status.failures = "ready", None, 0
                    return adopted
            except BrokerError as exc:
                status.last_error = exc
                status.failures += 1
                status.state = "login_required" if isinstance(exc, LoginRequired) else "error"
                log.warning("refresh failed provider=%s account=%s code=%s: %s", key[0], key[1], exc.code, exc.message)
                raise
            try:
                fresh = await self.credentials.put(fresh, spent=credential.refresh_token)
            except StoreError as exc:
                outcome.unsaved = True  # the journal keeps the answer for the next start
                status.state, status.last_error = "error", exc
                log.error("refreshed but not persisted provider=%s account=%s: %s", key[0], key[1], exc)
                raise
        status.state, status.last_error, status.failures = "ready", None, 0
        status.last_refresh_at = self.clock.now()
        status.refreshes += 1
        log.info("refreshed provider=%s account=%s expires_in=%s", key[0], key[1], _expires_in(fresh, self.clock))
        return fresh

    async def check_cut_short(self, keys: set[CredentialKey]) -> None:
        """Refresh now each login whose last refresh a crash cut short (the daemon does it before ready).

        Either the upstream never redeemed its refresh token (the refresh simply happens
        now) or it had rotated it already: then the login is dead and says so at once,
        rather than at its next refresh, perhaps an hour later.
        """
        keys = {key for key in keys if self.refreshable(key)}
        for key in sorted(keys):
            log.warning("a refresh of provider=%s account=%s was cut short when broker last stopped: checking it", *key)
        self._cut_short |= keys
        try:
            tasks = [self._start(key, recover=True) for key in keys]
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._cut_short -= keys

    async def _journaled_answer(self, key: CredentialKey) -> HttpResponse | None:
        """The answer a helper of the last run journaled for ``key``, once no helper is at work on it."""
        if self.journals is None:
            return None
        journal = self.journals(key)

        def read() -> HttpResponse | None:
            with journal.locked():
                return journal.read()

        answer = await asyncio.to_thread(read)
        if answer is not None:
            log.warning("recovering the answer of the refresh cut short provider=%s account=%s", *key)
        return answer

    async def _record_in_flight(self, key: CredentialKey, until: contextlib.AsyncExitStack, outcome: _Outcome) -> None:
        """The refresh token is about to be sent: say so on disk until this attempt's outcome is handled."""
        if self.inflight is None:
            return
        try:
            await asyncio.to_thread(self.inflight.begin, key)
        except OSError as exc:  # the refresh goes on: only the recovery from a crash in it is at stake
            log.warning("cannot record the refresh in %s: %s", self.inflight.path, exc)
            return
        until.push_async_callback(self._end_in_flight, key, outcome)

    async def _end_in_flight(self, key: CredentialKey, outcome: _Outcome) -> None:
        """The outcome is handled: forget the record and the journal (kept when the store refused the write)."""
        assert self.inflight is not None
        if outcome.unsaved:
            return
        try:
            if self.journals is not None:
                await asyncio.to_thread(self.journals(key).discard)
            await asyncio.to_thread(self.inflight.end, key)
        except OSError as exc:
            log.warning("cannot update %s: %s", self.inflight.path, exc)

    async def _adopt_newer_file(
        self, key: CredentialKey, credential: Credential, *, any_change: bool = False
    ) -> Credential | None:
        """For a followed file: the CLI's newer credential when it already did the work.

        Re-read just before redeeming a refresh token: if the CLI refreshed first, its
        tokens are used (and its refresh token is not spent twice). After a dead-grant
        answer, any change in the file counts: the CLI may have logged in again.
        """
        state = self.credentials.followed.state_of(key)
        if state is None:
            return None
        state, _ = await self.credentials.reread(state.spec.path)
        latest = state.credential
        if latest is None:
            problem = state.problem
            raise LoginRequired(
                problem.message if problem else f"{key[0]}: {state.spec.path} is gone",
                problem.hint if problem and problem.hint else state.spec.login_hint,
            )
        if latest == credential:
            return None
        if any_change or latest.remaining(self.clock.now()) > refresh_lead(latest, self.margin):
            log.info("using the tokens the CLI wrote provider=%s file=%s", key[0], state.spec.path)
            return latest
        return None

    def _dead_login(self, key: CredentialKey, error: LoginRequired) -> LoginRequired:
        """A dead login says how to revive it: the owning CLI's login for a followed file."""
        if key in self._cut_short:
            error = LoginRequired(
                f"{error.message} (broker stopped in the middle of its last refresh, after the upstream had "
                "replaced the refresh token: the new one was lost)",
                error.hint,
            )
        state = self.credentials.followed.state_of(key)
        if state is None:
            return error
        return LoginRequired(f"{error.message} (in {state.spec.path})", state.spec.login_hint)

    def refreshable(self, key: CredentialKey) -> bool:
        credential = self.credentials.get(key)
        return credential is not None and self._refreshable(self.registry().get(key[0]), credential)

    def _refreshable(self, provider: Provider, credential: Credential) -> bool:
        return provider.can_refresh(credential) and self.credentials.may_refresh(credential.key)

    def _cannot_refresh(self, credential: Credential) -> BrokerError:
        name = credential.provider
        state = self.credentials.followed.state_of(credential.key)
        if state is not None and state.spec.mode == "follow":
            return RefreshFailed(
                f"{name}: the token in {state.spec.path} expired and broker only follows that file",
                f"let {state.spec.cli} refresh it ({state.spec.login_hint.removeprefix('run: ')}), "
                f"or set write_back = true under [providers.{name}]",
            )
        return LoginRequired(f"{name}: the token expired and cannot be refreshed", f"run: broker login {name}")

    async def _call_provider(
        self, provider: Provider, credential: Credential, replay: HttpResponse | None = None
    ) -> Credential:
        """The provider's refresh, with a few quick retries for transient faults."""
        status = self.status(credential.key)
        context = self._context_for(credential.key, replay)
        for attempt in range(QUICK_RETRIES + 1):
            try:
                fresh = await provider.refresh(context, credential)
                status.not_before = None
                return fresh
            except TransportError as exc:
                delay = (
                    exc.retry_after if exc.retry_after is not None else backoff_delay(attempt + 1, _random.random()) / 4
                )
                if attempt == QUICK_RETRIES or delay > QUICK_RETRY_MAX_WAIT:
                    if exc.retry_after is not None:
                        status.not_before = self.clock.now() + exc.retry_after
                    raise to_broker_error(exc, provider.name, "refresh") from None
                await self.clock.sleep(delay)
            except FlowError as exc:
                raise to_broker_error(exc, provider.name, "refresh") from None
        raise AssertionError("unreachable")

    def _context_for(self, key: CredentialKey, replay: HttpResponse | None) -> ProviderContext:
        """Where a refresh's requests go: through the journaling helper, or to the journaled answer."""
        if self.journals is None:
            return self.context
        base = self.context
        return _Journaled(
            session=base.session, now=base.now, sleep=base.sleep, timeout=base.timeout,
            journal=self.journals(key), replay=replay,
        )  # fmt: skip

    async def _keep_fresh(self, key: CredentialKey) -> None:
        """The timer loop of one credential."""
        while True:
            credential = self.credentials.get(key)
            if credential is None or credential.expires_at is None:
                return
            provider = self.registry().get(credential.provider)
            status = self.status(key)
            if not self._refreshable(provider, credential) or status.state == "login_required":
                return
            if status.failures:
                due = retry_due(self.clock.now(), status.failures, _random.random(), status.not_before)
            else:
                due = timer_due(credential, self.margin, _random.random(), status.last_refresh_at)
            status.next_refresh_at = due
            await self._changed()
            await self._sleep_until(due)
            if self.credentials.get(key) is not credential:
                continue  # replaced meanwhile (a login, an on-demand refresh): plan again
            if self.status(key).state == "login_required":
                return  # an on-demand refresh found the login dead meanwhile: never send its token again
            try:
                await self.refresh_now(key)
            except BrokerError:
                continue

    async def _sleep_until(self, deadline: float) -> None:
        while (left := deadline - self.clock.now()) > 0:
            await self.clock.sleep(min(left, MAX_SLEEP))


def _holding_back(status: Status, now: float) -> bool:
    """Whether the upstream is owed a pause now: a Retry-After, or the backoff after a fault."""
    if status.not_before is not None and now < status.not_before:
        return True
    return status.failures > 0 and status.next_refresh_at is not None and now < status.next_refresh_at


def _expires_in(credential: Credential, clock: Clock) -> str:
    return "never" if credential.expires_at is None else f"{credential.expires_at - clock.now():.0f}s"


@dataclass
class _Outcome:
    unsaved: bool = False
    """The upstream answered but the store refused the new tokens: the journal must survive."""


@dataclass
class _Journaled(ProviderContext):
    """A refresh's context: each request goes through the journaling helper, or is the journaled answer."""

    journal: Journal = field(kw_only=True)
    replay: HttpResponse | None = field(default=None, kw_only=True)

    def http(self, *, proxy: str | None = None, headers: Mapping[str, str] | None = None) -> HttpClient:
        base = super().http(proxy=proxy, headers=headers)
        if self.replay is not None:
            return ReplayHttp(self.replay, base)
        return JournaledHttp(self.journal, base)
