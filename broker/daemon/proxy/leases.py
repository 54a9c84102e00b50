"""Proxy keys for ``broker exec`` children: one per child, for one provider, while that process lives.

- The key is bound to the process that asked (its pid from ``SO_PEERCRED``). ``broker
  exec`` replaces itself with the child (``execvpe`` keeps the pid), so the key lives
  exactly as long as the child. A pidfd tells the event loop the moment that process
  ends, and the key is forgotten then: no polling, no timer.
- It opens only its provider (and account): a child run for ``openai`` cannot spend
  ``copilot`` through the proxy.
- It is made with ``secrets`` and kept only in memory, looked up by its SHA-256: a
  daemon restart ends every lease (the child then gets 401 ``unauthorized``).
- ``broker proxy-key --rotate`` replaces the proxy's own key and leaves leases alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from dataclasses import dataclass

LEASE_PREFIX = "brk-exec-"


@dataclass(frozen=True)
class Lease:
    provider: str
    account: str | None
    """``None``: the provider's default account, whichever it is at each request."""
    pid: int

    def opens(self, provider: str, account: str | None) -> bool:
        return provider == self.provider and account == self.account


def supported() -> bool:
    """Leases need pidfds (Linux 5.3): elsewhere ``broker exec`` hands over the token itself."""
    return hasattr(os, "pidfd_open")


class Leases:
    def __init__(self) -> None:
        self._by_digest: dict[bytes, tuple[Lease, int]] = {}

    def grant(self, pid: int, provider: str, account: str | None) -> str:
        """A new key for ``pid``; ``ProcessLookupError`` when that process is gone already."""
        pidfd = os.pidfd_open(pid)
        key = LEASE_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(key)
        self._by_digest[digest] = (Lease(provider, account, pid), pidfd)
        asyncio.get_running_loop().add_reader(pidfd, self._ended, digest)
        return key

    def find(self, presented: str) -> Lease | None:
        if not presented.startswith(LEASE_PREFIX):
            return None
        held = self._by_digest.get(_digest(presented))
        return None if held is None else held[0]

    def __len__(self) -> int:
        return len(self._by_digest)

    def _ended(self, digest: bytes) -> None:
        """The process exited: its pidfd became readable."""
        _, pidfd = self._by_digest.pop(digest)
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)

    def close(self) -> None:
        for digest in list(self._by_digest):
            self._ended(digest)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
