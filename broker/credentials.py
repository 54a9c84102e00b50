"""The live set of credentials in memory, with the store as its durable copy.

Every change is written to the store first and only then made visible, so a token is
never served that a crash could lose (a rotated refresh token above all).
"""

from __future__ import annotations

import asyncio
import logging

from broker.errors import StoreError
from broker.model import Credential, CredentialKey
from broker.store.base import Store

log = logging.getLogger("broker.store")


class CredentialSet:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._live: dict[CredentialKey, Credential] = {}
        self._changed = asyncio.Condition()
        self.load_error: StoreError | None = None
        """Why the store could not be read at start; the daemon serves on and says so."""

    async def load(self) -> None:
        """Read every credential from the store (blocking I/O off the loop).

        An unreadable store does not stop the daemon: it starts empty, reports the
        error wherever a credential is asked for, and never writes over the file.
        """
        try:
            credentials = await asyncio.to_thread(self.store.load)
        except StoreError as exc:
            self.load_error = exc
            log.error("store unreadable: %s (%s)", exc.message, exc.hint)
            return
        for credential in credentials:
            self._live[credential.key] = credential

    def get(self, key: CredentialKey) -> Credential | None:
        return self._live.get(key)

    def all(self) -> list[Credential]:
        return list(self._live.values())

    def accounts(self, provider: str) -> list[str]:
        """Accounts of a provider, first login first: the first is the default."""
        return [account for (name, account) in self._live if name == provider]

    async def put(self, credential: Credential) -> None:
        """Persist, then serve."""
        await asyncio.to_thread(self.store.put, credential)
        self.load_error = None
        self._live[credential.key] = credential
        await self._notify()

    async def delete(self, key: CredentialKey) -> bool:
        if key not in self._live:
            return False
        await asyncio.to_thread(self.store.delete, key)
        del self._live[key]
        await self._notify()
        return True

    async def wait_changed(self) -> None:
        """Return after the next change; used by status streams and tests."""
        async with self._changed:
            await self._changed.wait()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
