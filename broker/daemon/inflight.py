"""Which refreshes are under way, on disk: a crash in the middle of one is found at the next start.

A rotating refresh token is spent the moment the upstream answers; if broker dies before
the new one is stored, the stored one is dead and nothing says so until the next
refresh, perhaps an hour later. So before a refresh token is redeemed, its credential's
key goes into ``refreshing.json`` (durably), and out again once the outcome is handled.
A key still listed at start names a refresh that a crash cut short: the daemon checks that
login before it reports ready. The file holds provider and account names only, never a token.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from broker.core.atomic import replace_atomically
from broker.core.model import CredentialKey

log = logging.getLogger("broker.inflight")

FILE_NAME = "refreshing.json"


class InFlight:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._keys: set[CredentialKey] = set()
        self._lock = threading.Lock()

    def left_over(self) -> set[CredentialKey]:
        """Keys a previous run was refreshing when it stopped; an unreadable file counts as none."""
        try:
            listed = json.loads(self.path.read_text())
            return {(str(provider), str(account)) for provider, account in listed}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return set()

    def forget_left_over(self) -> None:
        """Once the start has checked them: the file lists only refreshes under way now."""
        with self._lock:
            self._write()

    def begin(self, key: CredentialKey) -> None:
        """Record ``key`` before its refresh token is sent (blocks: fsync)."""
        with self._lock:
            self._keys.add(key)
            self._write()

    def end(self, key: CredentialKey) -> None:
        """The refresh's outcome is handled (stored, or reported): forget ``key``."""
        with self._lock:
            self._keys.discard(key)
            self._write()

    def _write(self) -> None:
        if self._keys:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_atomically(self.path, json.dumps(sorted(self._keys)).encode(), 0o600)
        else:
            self.path.unlink(missing_ok=True)
