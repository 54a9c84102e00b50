"""One refresh of one credential: under its CLI's lock, adopt the CLI's tokens or redeem, then store.

- Transient faults get a few quick retries here (honouring Retry-After); the timer backs
  off beyond that. A dead grant (``invalid_grant``) marks the credential ``login_required``.
- A refresh token is never presented twice: a followed file's is redeemed only when its
  CLI cannot be redeeming it at the same moment (``adoption``), and a request that may
  have reached the upstream without an answer is not sent again by itself (``uncertain``).
- Every attempt ends in ``_record``'s metrics and audit, and its status changes only
  through ``Status``: ready when it got good tokens, failed (and why) when it did not.
"""

from __future__ import annotations

import contextlib
import logging
import secrets

from broker.core.errors import BrokerError, LeftToCli, LoginRequired, NotLoggedIn, RefreshUncertain, StoreError
from broker.core.model import Credential, CredentialKey
from broker.daemon import hints
from broker.daemon.audit import AuditTrail
from broker.daemon.journal import Journaled, StaleJournal, uncertain
from broker.daemon.metrics import Metrics
from broker.daemon.refresher.recovery import Outcome, Recovery
from broker.daemon.refresher.status import Status
from broker.daemon.refresher.timing import backoff_delay, refresh_lead
from broker.daemon.refresher.upkeep import Upkeep
from broker.flows.errors import FlowError, TransportError
from broker.followed import adoption
from broker.providers.base import Provider
from broker.providers.upstream_errors import to_broker_error

log = logging.getLogger("broker.refresher")

QUICK_RETRIES = 2
QUICK_RETRY_MAX_WAIT = 5.0
HELPER_START = 5.0
"""Room for the redeem helper's start and the write-back, beside the requests themselves."""
_random = secrets.SystemRandom()


class Attempts:
    def __init__(self, upkeep: Upkeep, recovery: Recovery, metrics: Metrics, audit: AuditTrail | None) -> None:
        self.upkeep = upkeep
        self.recovery = recovery
        self.metrics = metrics
        self.audit = audit

    @property
    def redeem_bound(self) -> float:
        """The longest a refresh's requests can take, quick retries and the helper's start included."""
        timeout = self.upkeep.context.timeout
        return timeout * (QUICK_RETRIES + 1) + QUICK_RETRY_MAX_WAIT * QUICK_RETRIES + HELPER_START

    async def run(self, key: CredentialKey, *, recover: bool = False, asked: bool = False) -> Credential:
        """One attempt, counted and audited whatever its outcome.

        ``recover``: a crash cut the last refresh short; its journaled answer stands in for the network.
        ``asked``: a person asked (``broker refresh``), which may redeem what broker leaves alone by itself.
        """
        result, fresh = "ok", None
        try:
            fresh = await self._attempt(key, recover, asked)
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
            self.upkeep.status(key).attempts += 1
            await self.upkeep.statuses.changed()

    async def _attempt(self, key: CredentialKey, recover: bool, asked: bool) -> Credential:
        upkeep = self.upkeep
        credential = upkeep.credentials.get(key)
        if credential is None:
            raise hints.not_logged_in(upkeep.registry().get(key[0]), key[1], upkeep.credentials)
        provider = upkeep.registry().get(credential.provider)
        status = upkeep.status(key)
        status.state = "refreshing"
        outcome = Outcome()
        async with contextlib.AsyncExitStack() as held:
            try:
                base, fresh = await self._redeem(provider, credential, recover, asked, held, outcome)
            except BrokerError as exc:
                self._failed(key, exc)
                raise
            kept = base if fresh is None else await self._keep(fresh, base, outcome, status)
        if kept is None:  # a logout or a new login came meanwhile: it stays, with an upkeep of its own
            latest = upkeep.credentials.get(key)
            if latest is None:
                relogin = hints.relogin(upkeep.registry().get(key[0]), key[1], upkeep.credentials)
                raise NotLoggedIn(f"{key[0]}: logged out during the refresh", relogin)
            return latest
        status.ready(refreshed_at=None if fresh is None else upkeep.clock.now())
        if fresh is not None:
            expires_in = "never" if kept.expires_at is None else f"{kept.expires_at - upkeep.clock.now():.0f}s"
            log.info("refreshed provider=%s account=%s expires_in=%s", key[0], key[1], expires_in)
        return kept

    async def _redeem(
        self,
        provider: Provider,
        credential: Credential,
        recover: bool,
        asked: bool,
        held: contextlib.AsyncExitStack,
        outcome: Outcome,
    ) -> tuple[Credential, Credential | None]:
        """The credential to refresh and its new tokens; ``None`` for them when nothing was redeemed:
        the CLI's file is newer, or the journaled answer is older than the credential. Locks stay in ``held``."""
        upkeep, key = self.upkeep, credential.key
        replay = await self.recovery.journaled_answer(key) if recover else None
        # A CLI holding its own lock is refreshing this very token: wait, then re-read its file.
        await held.enter_async_context(upkeep.credentials.cli_lock(key))
        adopted = await self._newer_in_file(credential)
        if adopted is not None:
            return adopted, None
        credential = upkeep.credentials.get(key) or credential  # as the file holds it now
        if replay is None:
            followed, now = upkeep.credentials.followed, upkeep.clock.now()
            await adoption.check_uncontested(followed, key, credential, now, self.redeem_bound, asked)
        await self.recovery.record_in_flight(key, held, outcome)
        try:
            return credential, await self._call_provider(provider, credential, replay)
        except RefreshUncertain:
            raise  # the request may have spent the token: its mark and record stay
        except StaleJournal:
            outcome.settled = True
            return credential, None  # the credential is past that answer already: nothing to do
        except LoginRequired as dead:
            outcome.settled = True
            adopted = await self._newer_in_file(credential, any_change=True)
            if adopted is None:
                raise self._dead_login(key, dead) from None
            return adopted, None
        except BrokerError:
            outcome.settled = True  # an answer, or a request that never left
            raise

    async def _newer_in_file(self, credential: Credential, *, any_change: bool = False) -> Credential | None:
        """The followed file's newer credential when it spares this refresh: it outlives the
        refresh lead, or (after a dead-grant answer) it changed at all."""
        upkeep = self.upkeep
        now = upkeep.clock.now()

        def spares_refresh(latest: Credential) -> bool:
            return any_change or latest.remaining(now) > refresh_lead(latest, upkeep.margin)

        credentials = upkeep.credentials
        return await adoption.newer_in_file(
            credentials.followed, credentials.reread, credential.key, credential, spares_refresh
        )

    async def _keep(self, fresh: Credential, base: Credential, outcome: Outcome, status: Status) -> Credential | None:
        """Store the new tokens (or write them back); ``None`` when a logout or a new login came meanwhile.

        Tokens the store or the CLI's file refused are owed: served, and written later by ``recovery``.
        """
        key, credentials = fresh.key, self.upkeep.credentials
        try:
            kept = await credentials.put_refreshed(fresh, base)
        except StoreError as exc:
            status.unsaved(exc)
            log.error("refreshed but not persisted provider=%s account=%s: %s", key[0], key[1], exc)
            self.recovery.settle_later(key, outcome)  # the journal keeps the answer until the store takes it
            raise
        if credentials.owes(key):
            self.recovery.settle_later(key, outcome)
        else:
            outcome.settled = True
        return kept

    def _failed(self, key: CredentialKey, error: BrokerError) -> None:
        """Say why the refresh of ``key`` did not happen, and whether anything tries again by itself."""
        self.upkeep.status(key).failed(error)
        if isinstance(error, LeftToCli):
            log.info("refresh left to the CLI provider=%s account=%s: %s", key[0], key[1], error.message)
            return
        if isinstance(error, RefreshUncertain):
            relogin = hints.relogin(self.upkeep.registry().get(key[0]), key[1], self.upkeep.credentials)
            error.hint = (  # the commands for this very login
                f"check it once (a dead login then says so): run: broker refresh {key[0]} --account {key[1]}; "
                f"or log in again: {relogin}"
            )
        log.warning("refresh failed provider=%s account=%s code=%s: %s", key[0], key[1], error.code, error.message)

    def _dead_login(self, key: CredentialKey, error: LoginRequired) -> LoginRequired:
        """A dead login says how to revive it: the owning CLI's login for a followed file."""
        if key in self.recovery.cut_short:
            error = LoginRequired(
                f"{error.message} (broker stopped in the middle of its last refresh, after the upstream had "
                "replaced the refresh token: the new one was lost)",
                error.hint,
            )
        return adoption.dead_in_file(self.upkeep.credentials.followed, key, error)

    async def _call_provider(self, provider: Provider, credential: Credential, replay: Journaled | None) -> Credential:
        """The provider's refresh, with a few quick retries for transient faults."""
        upkeep = self.upkeep
        status = upkeep.status(credential.key)
        context = self.recovery.context_for(credential.key, replay)
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
                        status.not_before = upkeep.clock.now() + exc.retry_after
                    raise to_broker_error(exc, provider.name, "refresh") from None
                await upkeep.clock.sleep(delay)
            except FlowError as exc:
                relogin = hints.relogin(provider, credential.account, upkeep.credentials)
                raise to_broker_error(exc, provider.name, "refresh", relogin) from None
        raise AssertionError("unreachable")
