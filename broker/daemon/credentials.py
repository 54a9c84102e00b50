"""The live set of credentials in memory, with durable copies where they belong.

A credential from ``broker login`` lives in the store; one followed from a CLI's file
lives in that file. Every change is written to its durable place first and only then
made visible, so a token is never served that a crash could lose (a rotated refresh
token above all). Where that write fails after a refresh (a full disk, a CLI's file
locked), the new tokens are served from memory and stay *owed* until a later try lands:
the spent refresh token is never the live one again.

The last word wins: changes of one credential take turns, and a refresh's result is kept
only if the credential it started from is still the live one (a logout or a new login
during the refresh is what remains).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from broker.core.errors import BadRequest, RefreshFailed, StoreError
from broker.core.model import Credential, CredentialKey
from broker.followed.filelock import LockTimeout
from broker.followed.files import FileState, FollowedFiles, detached
from broker.followed.format import FollowedFile
from broker.store.base import Store

log = logging.getLogger("broker.store")


class CredentialSet:
    def __init__(self, store: Store, followed: FollowedFiles | None = None) -> None:
        self.store = store
        self.followed = followed or FollowedFiles([])
        self._live: dict[CredentialKey, Credential] = {}
        self._accounts: dict[tuple[str, bool], list[str]] = {}
        """``accounts()`` answers, kept until the live set changes: every token request asks."""
        self._changed = asyncio.Condition()
        self._turns: dict[CredentialKey, asyncio.Lock] = {}
        self._unsaved: dict[CredentialKey, Credential] = {}
        """Refreshed login credentials the store refused: served from memory until a write lands."""
        self.load_error: StoreError | None = None
        """Why the store could not be read at start; the daemon serves on and says so."""

    async def load(self) -> None:
        """Read the store and every followed file (blocking I/O off the loop).

        An unreadable store does not stop the daemon: it starts empty, reports the
        error wherever a credential is asked for, and never writes over the file.
        """
        try:
            credentials = await asyncio.to_thread(self.store.load)
        except StoreError as exc:
            self.load_error = exc
            log.error("store unreadable: %s (%s)", exc.message, exc.hint)
            credentials = []
        for credential in credentials:
            self._set(credential)
        for path in list(self.followed.states):
            await self.reread(path)

    def get(self, key: CredentialKey) -> Credential | None:
        return self._live.get(key)

    def all(self) -> list[Credential]:
        return list(self._live.values())

    def accounts(self, provider: str, prefer_file: bool = False) -> list[str]:
        """Accounts of a provider, the default first: first login first, or the file's if preferred."""
        return list(self._ordered(provider, prefer_file))

    def default_account(self, provider: str, prefer_file: bool = False) -> str | None:
        """The account served when none is named; ``None`` when not logged in."""
        ordered = self._ordered(provider, prefer_file)
        return ordered[0] if ordered else None

    def _ordered(self, provider: str, prefer_file: bool) -> list[str]:
        known = self._accounts.get((provider, prefer_file))
        if known is None:
            mine = [c for (name, _), c in self._live.items() if name == provider]
            mine.sort(key=lambda c: (c.source == "login") == prefer_file)
            known = self._accounts[(provider, prefer_file)] = [c.account for c in mine]
        return known

    def _set(self, credential: Credential) -> None:
        self._live[credential.key] = credential
        self._accounts.clear()

    def _drop(self, key: CredentialKey) -> Credential | None:
        self._accounts.clear()
        return self._live.pop(key, None)

    def is_followed(self, key: CredentialKey) -> bool:
        return self.followed.state_of(key) is not None

    def may_refresh(self, key: CredentialKey) -> bool:
        """False for a followed file in ``follow`` mode: only its CLI redeems the refresh token."""
        state = self.followed.state_of(key)
        return state is None or state.spec.mode != "follow"

    @contextlib.asynccontextmanager
    async def cli_lock(self, key: CredentialKey) -> AsyncIterator[None]:
        """Hold a followed CLI's own lock (Qwen Code's) around a refresh; nothing for other credentials."""
        hold = self.followed.cli_lock(key)
        try:
            await detached(hold.__enter__)
        except LockTimeout as exc:
            raise RefreshFailed(
                f"{key[0]}: {exc}: its CLI is refreshing the same login", "broker tries again by itself"
            ) from None
        try:
            yield
        finally:
            await detached(hold.__exit__, None, None, None)

    def _turn(self, key: CredentialKey) -> asyncio.Lock:
        return self._turns.setdefault(key, asyncio.Lock())

    async def put(self, credential: Credential, spent: str | None = None) -> Credential:
        """Persist, then serve; the credential that is live afterwards.

        ``spent`` is the refresh token redeemed to get ``credential``. For a followed
        file whose CLI refreshed meanwhile, the live credential is the file's, not the
        one given: the CLI's tokens win.
        """
        async with self._turn(credential.key):
            return await self._put(credential, spent)

    async def put_refreshed(self, fresh: Credential, base: Credential) -> Credential | None:
        """A refresh's result, kept only while ``base`` (what it refreshed) is still the live credential.

        ``None``: a logout or a new login came meanwhile, and stays. A followed file's
        credential may have been re-read meanwhile: ``write_back`` settles that by the
        refresh token the file holds. A store that refuses the write raises StoreError,
        but the new tokens are live (owed to the store) so the spent ones are never used again.
        """
        key = fresh.key
        async with self._turn(key):
            if not self.is_followed(key) and self._live.get(key) is not base:
                log.warning("a refresh ended after a logout or a new login provider=%s account=%s: dropped", *key)
                return None
            try:
                return await self._put(fresh, base.refresh_token)
            except StoreError:
                self._unsaved[key] = fresh
                self._set(fresh)
                await self._notify()
                raise

    def owes(self, key: CredentialKey) -> bool:
        """Whether refreshed tokens of ``key`` are only in memory (the store or the CLI's file refused them)."""
        state = self.followed.state_of(key)
        return state.owed is not None if state is not None else key in self._unsaved

    async def settle_owed(self, key: CredentialKey) -> bool:
        """Try again to write owed tokens; whether some are still owed."""
        if self.is_followed(key):
            return await detached(self.followed.flush_owed, key)
        async with self._turn(key):
            owed = self._unsaved.get(key)
            if owed is None or self._live.get(key) is not owed:
                self._unsaved.pop(key, None)  # logged out or replaced meanwhile: nothing is owed
                return False
            await asyncio.to_thread(self.store.put, owed)
            del self._unsaved[key]
            self.load_error = None
        return False

    async def _put(self, credential: Credential, spent: str | None) -> Credential:
        if self.is_followed(credential.key):
            live = await detached(self.followed.write_back, credential, spent)
        else:
            await asyncio.to_thread(self.store.put, credential)
            self._unsaved.pop(credential.key, None)
            self.load_error = None
            live = credential
        self._set(live)
        await self._notify()
        return live

    async def login(self, credential: Credential) -> Credential:
        """Keep a credential a ``broker login`` produced; refuse names a followed file owns."""
        if self.is_followed(credential.key):
            raise BadRequest(
                f"the account name {credential.account!r} belongs to the followed CLI file",
                "log in with another --account",
            )
        return await self.put(credential)

    async def reread(self, path: Path) -> tuple[FileState, bool]:
        """Re-read a followed file and make the live set match it; whether the credential changed."""
        problem_before = self.followed.states[path].problem
        state = await detached(self.followed.read, path)
        key = (state.spec.provider, state.spec.account)
        if state.problem is not problem_before:
            await self._notify()  # status watchers see a file turn bad or good
        if state.credential is None:
            if self._drop(key) is None:
                return state, False
            log.info("followed credential gone provider=%s file=%s", key[0], path)
        elif self._live.get(key) != state.credential:
            self._set(state.credential)
            log.info("followed credential read provider=%s file=%s", key[0], path)
        else:
            return state, False
        await self._notify()
        return state, True

    async def refollow(self, specs: list[FollowedFile]) -> list[CredentialKey]:
        """Follow another set of CLI files (a config reload); the keys no longer served.

        Files new to the set are read by the caller (``reread``), as the watcher would.
        """
        dropped = await asyncio.to_thread(self.followed.refollow, specs)
        gone = [key for key in ((s.spec.provider, s.spec.account) for s in dropped) if self._drop(key) is not None]
        if gone:
            await self._notify()
        return gone

    async def delete(self, key: CredentialKey) -> bool:
        if key not in self._live:
            return False
        if self.is_followed(key):
            raise BadRequest(
                f"{key[0]}: the {key[1]} credential comes from a CLI's file, which broker never deletes",
                f"log out with that CLI, or stop following it: [providers.{key[0]}] follow = false",
            )
        async with self._turn(key):
            await asyncio.to_thread(self.store.delete, key)
            self._unsaved.pop(key, None)
            self._drop(key)
        await self._notify()
        return True

    async def wait_changed(self) -> None:
        """Return after the next change; used by status streams and tests."""
        async with self._changed:
            await self._changed.wait()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
