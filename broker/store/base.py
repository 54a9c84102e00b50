"""The contract every store backend keeps.

Backends are synchronous (keyring and file locks block); the daemon calls them through
``asyncio.to_thread``. The daemon is the only writer, so a backend needs no locking
between processes, but every write must be atomic: a crash leaves the old or the new
state, never a mix.
"""

from __future__ import annotations

from typing import Protocol

from broker.core.model import Credential, CredentialKey


class Store(Protocol):
    name: str
    """``keyring`` or ``file``: shown in ``broker status``."""

    def describe(self) -> str:
        """One line for a person: backend and where it keeps things (never a secret)."""

    def load(self) -> list[Credential]:
        """Every stored credential. Raises ``StoreError`` if the store cannot be read."""

    def put(self, credential: Credential) -> None:
        """Create or replace the credential with the same key, durably, before returning."""

    def delete(self, key: CredentialKey) -> None:
        """Remove a credential; a missing one is not an error."""

    def get_secret(self, name: str) -> str | None:
        """A broker-owned secret that is not a credential (e.g. the proxy key)."""

    def set_secret(self, name: str, value: str) -> None:
        """Store a broker-owned secret durably."""
