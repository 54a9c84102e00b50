"""What a crash or a refused write in the middle of a refresh must not lose.

- Before a refresh token is sent, its key goes into ``refreshing.json`` (``InFlight``);
  it leaves once the outcome is handled. A key still there at start names a refresh a
  crash cut short: the daemon checks that login before it reports ready.
- The redeem helper journals each answer (``broker.daemon.journal``). At start, the
  journaled answer of a refresh cut short is replayed as if it had just arrived; with no
  answer but the helper's mark, the request may have spent the token and it is not sent
  again by itself (``uncertain``).
- New tokens the store or a CLI's file refused are owed: kept in memory, served, and
  written on a timer. Until they are written the journal and the record stay, so a stop
  meanwhile replays them at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from broker.core.errors import BrokerError
from broker.core.model import Credential, CredentialKey
from broker.daemon.inflight import InFlight
from broker.daemon.journal import Journal, Journaled, JournaledPosts, ReplayPost, uncertain
from broker.daemon.refresher.upkeep import Upkeep
from broker.flows.http import HttpClient
from broker.followed.format import FileProblem
from broker.providers.base import ProviderContext

log = logging.getLogger("broker.refresher")

OWED_RETRY = 2.0
OWED_RETRY_CAP = 60.0
"""Owed writes (refused by the store, or a CLI's file locked) are tried again this often, backing off."""


@dataclass
class Outcome:
    settled: bool = False
    """The answer is handled: the new tokens are durable, or it was an answer that spends nothing.
    Until then (no answer, a cancellation, a write refused or owed) the journal and the record stay."""


class Recovery:
    def __init__(
        self,
        upkeep: Upkeep,
        inflight: InFlight | None,
        journals: Callable[[CredentialKey], Journal] | None,
    ) -> None:
        self.upkeep = upkeep
        self.inflight = inflight
        self.journals = journals
        """Each credential's journal; ``None``: refresh requests go out from this process itself."""
        self.cut_short: set[CredentialKey] = set()
        """Logins whose last refresh a crash interrupted, while ``check_cut_short`` checks them."""
        self._owed: dict[CredentialKey, asyncio.Task[None]] = {}

    def owed(self, key: CredentialKey) -> asyncio.Task[None] | None:
        """The task writing ``key``'s owed tokens (the store or a CLI's file refused them), if any."""
        return self._owed.get(key)

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._owed.values())

    async def check_cut_short(
        self, keys: set[CredentialKey], refresh: Callable[[CredentialKey], Awaitable[Credential]]
    ) -> None:
        """``refresh`` (recovering) each login whose last refresh a crash cut short, all at once.

        A journaled answer is replayed. With none, either the request never went out (the
        refresh simply happens now), or it may have (its mark is there): then the refresh
        token is not sent again by itself, and the login says so at once (``uncertain``).
        """
        keys = {key for key in keys if self.upkeep.refreshable(key)}
        for key in sorted(keys):
            log.warning("a refresh of provider=%s account=%s was cut short when broker last stopped: checking it", *key)
        self.cut_short |= keys
        try:
            await asyncio.gather(*[refresh(key) for key in keys], return_exceptions=True)
        finally:
            self.cut_short -= keys

    async def journaled_answer(self, key: CredentialKey) -> Journaled | None:
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
            raise uncertain(f"{key[0]}: broker stopped in the middle of its last refresh, after its request went out")
        return answer

    def context_for(self, key: CredentialKey, replay: Journaled | None) -> ProviderContext:
        """Where a refresh's requests go: through the journaling helper, or to the journaled answer."""
        base = self.upkeep.context
        if self.journals is None:
            return base
        return _Journaled(
            session=base.session, now=base.now, sleep=base.sleep, timeout=base.timeout,
            journal=self.journals(key), replay=replay,
        )  # fmt: skip

    async def record_in_flight(self, key: CredentialKey, until: contextlib.AsyncExitStack, outcome: Outcome) -> None:
        """The refresh token is about to be sent: say so on disk until this attempt's outcome is handled."""
        if self.inflight is None:
            return
        try:
            await asyncio.to_thread(self.inflight.begin, key)
        except OSError as exc:  # the refresh goes on: only the recovery from a crash in it is at stake
            log.warning("cannot record the refresh in %s: %s", self.inflight.path, exc)
            return
        until.push_async_callback(self._end_in_flight, key, outcome)

    async def _end_in_flight(self, key: CredentialKey, outcome: Outcome) -> None:
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

    def settle_later(self, key: CredentialKey, outcome: Outcome) -> None:
        """New tokens only in memory: write them on a timer; the journal and the record stay until then."""
        running = self._owed.get(key)
        if running is not None and not running.done():
            running.cancel()
        self._owed[key] = asyncio.create_task(self._settle_owed(key, outcome), name=f"owed {key[0]}/{key[1]}")

    async def _settle_owed(self, key: CredentialKey, outcome: Outcome) -> None:
        credentials, clock = self.upkeep.credentials, self.upkeep.clock
        delay = OWED_RETRY
        while credentials.owes(key):
            await clock.sleep(delay)
            try:
                if not await credentials.settle_owed(key):
                    break
            except (BrokerError, OSError, FileProblem) as exc:
                log.warning("owed tokens still not written provider=%s account=%s: %s", key[0], key[1], exc)
            delay = min(delay * 2, OWED_RETRY_CAP)
        outcome.settled = True
        self.upkeep.status(key).saved()
        log.info("owed tokens written provider=%s account=%s", *key)
        if self.inflight is not None:
            await self._end_in_flight(key, outcome)


@dataclass
class _Journaled(ProviderContext):
    """A refresh's context: each request goes through the journaling helper, or is the journaled answer."""

    journal: Journal = field(kw_only=True)
    replay: Journaled | None = field(default=None, kw_only=True)

    def http(self, *, proxy: str | None = None, headers: Mapping[str, str] | None = None) -> HttpClient:
        base = super().http(proxy=proxy, headers=headers)
        if self.replay is not None:
            return base.posting_through(ReplayPost(self.replay))
        return base.posting_through(JournaledPosts(self.journal))
