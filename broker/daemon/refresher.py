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
- A refresh token is never presented twice: a followed file's is redeemed only when its
  CLI cannot be redeeming it at the same moment (``_check_uncontested``), and a request that may
  have reached the upstream without an answer is not sent again by itself (``uncertain``).
  Its answer stays journaled until the new tokens are durable; owed writes are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from broker.core.clock import Clock
from broker.core.errors import (
    BrokerError,
    LeftToCli,
    LoginRequired,
    NotLoggedIn,
    RefreshFailed,
    RefreshUncertain,
    StoreError,
)
from broker.core.model import Credential, CredentialKey
from broker.daemon import hints
from broker.daemon.audit import AuditTrail
from broker.daemon.credentials import CredentialSet
from broker.daemon.inflight import InFlight
from broker.daemon.journal import Journal, Journaled, JournaledHttp, ReplayHttp, StaleJournal, uncertain
from broker.daemon.metrics import Metrics
from broker.daemon.refresh_timing import backoff_delay, reachable_ttl, refresh_lead, retry_due, timer_due
from broker.flows.errors import FlowError, TransportError
from broker.flows.http import HttpClient
from broker.followed import cliprocs
from broker.followed.files import detached
from broker.followed.format import FileProblem
from broker.providers.base import Provider, ProviderContext
from broker.providers.registry import Registry
from broker.providers.upstream_errors import to_broker_error

log = logging.getLogger("broker.refresher")

MAX_SLEEP = 60.0
QUICK_RETRIES = 2
QUICK_RETRY_MAX_WAIT = 5.0
HELPER_START = 5.0
"""Room for the redeem helper's start and the write-back, beside the requests themselves."""
WAIT_LIMIT = 60.0
"""A request waits at most this long for a refresh; the refresh itself goes on."""
CLI_GRACE = 10.0
"""A request for a token a running CLI is refreshing waits this long for the CLI's new file."""
OWED_RETRY = 2.0
OWED_RETRY_CAP = 60.0
"""Owed writes (refused by the store, or a CLI's file locked) are tried again this often, backing off."""
STOPPED = ("login_required", "uncertain", "left_to_cli")
"""States in which nothing redeems the refresh token by itself; a person's ``broker refresh`` may."""
_random = secrets.SystemRandom()


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
        self._owed: dict[CredentialKey, asyncio.Task[None]] = {}
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

    def owed(self, key: CredentialKey) -> asyncio.Task[None] | None:
        """The task writing ``key``'s owed tokens (the store or a CLI's file refused them), if any."""
        return self._owed.get(key)

    def in_flight(self, key: CredentialKey) -> bool:
        """Whether a refresh of ``key`` is under way now."""
        return key in self._inflight

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
        tasks = [*self._timers.values(), *self._inflight.values(), *self._owed.values()]
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
            raise hints.not_logged_in(self.registry().get(key[0]), key[1], self.credentials)
        now = self.clock.now()
        if credential.remaining(now) >= min_ttl:
            return credential  # nearly every request ends here
        if credential.remaining(now) >= reachable_ttl(credential, min_ttl):
            return credential
        provider = self.registry().get(credential.provider)
        status = self.status(key)
        if not self._refreshable(provider, credential) or status.state in STOPPED or _holding_back(status, now):
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
            latest = await self._wait_at_most(asyncio.ensure_future(written()), CLI_GRACE)
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
        return await self._wait_at_most(task, wait_limit)

    def _start(self, key: CredentialKey, *, recover: bool = False, asked: bool = False) -> asyncio.Task[Credential]:
        """The refresh in flight for ``key``, started now if there is none (synchronously: no gap to race)."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh_once(key, recover, asked), name=f"refresh-now {key[0]}/{key[1]}")
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

    async def _refresh_once(self, key: CredentialKey, recover: bool = False, asked: bool = False) -> Credential:
        result, fresh = "ok", None
        try:
            replay = await self._journaled_answer(key) if recover else None
            fresh = await self._attempt(key, replay, asked=asked)
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

    async def _attempt(self, key: CredentialKey, replay: Journaled | None = None, *, asked: bool = False) -> Credential:
        """One refresh; with ``replay``, the journaled answer of one a crash cut short stands in for the network."""
        credential = self.credentials.get(key)
        if credential is None:
            raise hints.not_logged_in(self.registry().get(key[0]), key[1], self.credentials)
        provider = self.registry().get(credential.provider)
        status = self.status(key)
        status.state = "refreshing"
        outcome = _Outcome()
        async with contextlib.AsyncExitStack() as cli_lock:
            try:
                # A CLI holding its own lock is refreshing this very token: wait, then re-read its file.
                await cli_lock.enter_async_context(self.credentials.cli_lock(key))
                adopted = await self._adopt_newer_file(key, credential)
                if adopted is not None:
                    status.state, status.last_error, status.failures = "ready", None, 0
                    return adopted
                credential = self.credentials.get(key) or credential  # as the file holds it now
                if replay is None:
                    await self._check_uncontested(key, credential, asked)
                await self._record_in_flight(key, cli_lock, outcome)
                try:
                    fresh = await self._call_provider(provider, credential, replay)
                except StaleJournal:
                    outcome.settled = True  # the credential is past that answer already: nothing to do
                    status.state, status.last_error = "ready", None
                    return credential
                except RefreshUncertain:
                    raise  # the request may have spent the token: its mark and record stay
                except LoginRequired as dead:
                    outcome.settled = True
                    adopted = await self._adopt_newer_file(key, credential, any_change=True)
                    if adopted is None:
                        raise self._dead_login(key, dead) from None
                    status.state, status.last_error, status.failures = "ready", None, 0
                    return adopted
                except BrokerError:
                    outcome.settled = True  # an answer, or a request that never left
                    raise
            except BrokerError as exc:
                self._failed(key, exc)
                raise
            try:
                kept = await self.credentials.put_refreshed(fresh, credential)
            except StoreError as exc:
                status.state, status.last_error = "error", exc
                log.error("refreshed but not persisted provider=%s account=%s: %s", key[0], key[1], exc)
                self._settle_later(key, outcome)  # the journal keeps the answer until the store takes it
                raise
            if self.credentials.owes(key):
                self._settle_later(key, outcome)
            else:
                outcome.settled = True
        if kept is None:  # a logout or a new login came meanwhile: it stays
            latest = self.credentials.get(key)
            if latest is None:
                relogin = hints.relogin(self.registry().get(key[0]), key[1], self.credentials)
                raise NotLoggedIn(f"{key[0]}: logged out during the refresh", relogin)
            return latest
        status.state, status.last_error, status.failures = "ready", None, 0
        status.last_refresh_at = self.clock.now()
        status.refreshes += 1
        log.info("refreshed provider=%s account=%s expires_in=%s", key[0], key[1], _expires_in(kept, self.clock))
        return kept

    def _failed(self, key: CredentialKey, error: BrokerError) -> None:
        """Say why the refresh of ``key`` did not happen, and whether anything tries again by itself."""
        status = self.status(key)
        status.last_error = error
        if isinstance(error, LeftToCli):
            status.state = "left_to_cli"
            log.info("refresh left to the CLI provider=%s account=%s: %s", key[0], key[1], error.message)
            return
        if isinstance(error, RefreshUncertain):
            status.state = "uncertain"
            error.hint = (  # the commands for this very login
                f"check it once (a dead login then says so): run: broker refresh {key[0]} --account {key[1]}; "
                f"or log in again: {hints.relogin(self.registry().get(key[0]), key[1], self.credentials)}"
            )
        else:
            status.failures += 1
            status.state = "login_required" if isinstance(error, LoginRequired) else "error"
        log.warning("refresh failed provider=%s account=%s code=%s: %s", key[0], key[1], error.code, error.message)

    @property
    def redeem_bound(self) -> float:
        """The longest a refresh's requests can take, quick retries and the helper's start included."""
        return self.context.timeout * (QUICK_RETRIES + 1) + QUICK_RETRY_MAX_WAIT * QUICK_RETRIES + HELPER_START

    async def _check_uncontested(self, key: CredentialKey, credential: Credential, asked: bool) -> None:
        """Raise LeftToCli when the followed file's CLI may redeem this refresh token at the same moment.

        A CLI that takes no lock broker can take (Codex) redeems its refresh token only once
        its access token is within ``contested_within`` of expiry, after re-reading its file.
        While the token outlives that by more than broker's own requests can take, broker's
        redeem and write-back land first, and the CLI finds them. Past that point (after a
        suspend, a stop, an outage) the CLI may start and redeem at any moment and nothing
        keeps it out: broker leaves the refresh to it and serves what it writes, and redeems
        only when a person asks (``broker refresh``) while no process of that CLI is running.
        """
        state = self.credentials.followed.state_of(key)
        spec = None if state is None else state.spec
        if spec is None or spec.contested_within is None or spec.mode != "lead":
            return
        left = credential.remaining(self.clock.now())
        if left > spec.contested_within + self.redeem_bound:
            return
        running = await detached(cliprocs.running, spec.programs, spec.locate, spec.path)
        if asked and not running:
            return
        when = f"expires in {left:.0f} s" if left > 0 else "has expired"
        if running:
            who = f"{spec.cli} is running (pid {', '.join(map(str, running))}) and refreshes it itself"
            hint = f"use {spec.cli}: it refreshes the token on its next request, and broker serves what it writes"
        else:
            who = f"{spec.cli} refreshes it itself when it next runs, and may start at any moment"
            hint = (
                f"use {spec.cli} once, and broker serves what it writes; or, while no {spec.cli} runs, "
                f"run: broker refresh {key[0]} --account {key[1]}"
            )
        error = LeftToCli(
            f"{key[0]}: the token in {spec.path} {when}; {who}: broker never redeems a refresh token "
            f"{spec.cli} may redeem at the same moment",
            hint,
        )
        error.cli_running = bool(running)
        raise error

    async def check_cut_short(self, keys: set[CredentialKey]) -> None:
        """Refresh now each login whose last refresh a crash cut short (the daemon does it before ready).

        A journaled answer is replayed. With none, either the request never went out (the
        refresh simply happens now), or it may have (its mark is there): then the refresh
        token is not sent again by itself, and the login says so at once (``uncertain``).
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

    async def _journaled_answer(self, key: CredentialKey) -> Journaled | None:
        """The answer a helper of the last run journaled for ``key``, once no helper is at work on it.

        Raises RefreshUncertain when a request went out (its mark is there) and no answer was journaled.
        """
        if self.journals is None:
            return None
        journal = self.journals(key)

        def read() -> tuple[Journaled | None, bool]:
            with journal.locked():
                return journal.read(), journal.was_sending()

        answer, was_sending = await asyncio.to_thread(read)
        if answer is not None:
            log.warning("recovering the answer of the refresh cut short provider=%s account=%s", *key)
        elif was_sending:
            error = uncertain(f"{key[0]}: broker stopped in the middle of its last refresh, after its request went out")
            self._failed(key, error)
            raise error
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
        """Once the outcome is handled, forget the record and the journal; until then both stay."""
        assert self.inflight is not None
        if not outcome.settled:
            return
        try:
            if self.journals is not None:
                await asyncio.to_thread(self.journals(key).discard)
            await asyncio.to_thread(self.inflight.end, key)
        except OSError as exc:
            log.warning("cannot update %s: %s", self.inflight.path, exc)

    def _settle_later(self, key: CredentialKey, outcome: _Outcome) -> None:
        """New tokens only in memory: write them on a timer; the journal and the record stay until then."""
        running = self._owed.get(key)
        if running is not None and not running.done():
            running.cancel()
        self._owed[key] = asyncio.create_task(self._settle_owed(key, outcome), name=f"owed {key[0]}/{key[1]}")

    async def _settle_owed(self, key: CredentialKey, outcome: _Outcome) -> None:
        delay = OWED_RETRY
        while self.credentials.owes(key):
            await self.clock.sleep(delay)
            try:
                if not await self.credentials.settle_owed(key):
                    break
            except (BrokerError, OSError, FileProblem) as exc:
                log.warning("owed tokens still not written provider=%s account=%s: %s", key[0], key[1], exc)
            delay = min(delay * 2, OWED_RETRY_CAP)
        outcome.settled = True
        status = self.status(key)
        if isinstance(status.last_error, StoreError):
            status.state, status.last_error = "ready", None
        log.info("owed tokens written provider=%s account=%s", *key)
        if self.inflight is not None:
            await self._end_in_flight(key, outcome)

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
        return LoginRequired(
            f"{name}: the token expired and cannot be refreshed",
            hints.relogin(self.registry().get(name), credential.account, self.credentials),
        )

    async def _call_provider(
        self, provider: Provider, credential: Credential, replay: Journaled | None = None
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
                if exc.maybe_delivered:
                    raise uncertain(str(exc)) from None
                delay = (
                    exc.retry_after if exc.retry_after is not None else backoff_delay(attempt + 1, _random.random()) / 4
                )
                if attempt == QUICK_RETRIES or delay > QUICK_RETRY_MAX_WAIT:
                    if exc.retry_after is not None:
                        status.not_before = self.clock.now() + exc.retry_after
                    raise to_broker_error(exc, provider.name, "refresh") from None
                await self.clock.sleep(delay)
            except FlowError as exc:
                relogin = hints.relogin(provider, credential.account, self.credentials)
                raise to_broker_error(exc, provider.name, "refresh", relogin) from None
        raise AssertionError("unreachable")

    def _context_for(self, key: CredentialKey, replay: Journaled | None) -> ProviderContext:
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
            if not self._refreshable(provider, credential) or status.state in STOPPED:
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
            if self.status(key).state in STOPPED:
                return  # an on-demand refresh found the login dead, or left it: never send its token again
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
    settled: bool = False
    """The answer is handled: the new tokens are durable, or it was an answer that spends nothing.
    Until then (no answer, a cancellation, a write refused or owed) the journal and the record stay."""


@dataclass
class _Journaled(ProviderContext):
    """A refresh's context: each request goes through the journaling helper, or is the journaled answer."""

    journal: Journal = field(kw_only=True)
    replay: Journaled | None = field(default=None, kw_only=True)

    def http(self, *, proxy: str | None = None, headers: Mapping[str, str] | None = None) -> HttpClient:
        base = super().http(proxy=proxy, headers=headers)
        if self.replay is not None:
            return ReplayHttp(self.replay, base)
        return JournaledHttp(self.journal, base)
