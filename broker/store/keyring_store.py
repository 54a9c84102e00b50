"""The keyring backend: one OS-keyring secret per credential, plus an index of them.

Keyrings cannot list entries portably, hence the index. Writes order the two so a crash
leaves at worst an unlisted secret, never an index entry pointing at nothing we trust.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from broker.core.errors import StoreError
from broker.core.model import Credential, CredentialKey

if TYPE_CHECKING:  # keyring itself is imported only where a keyring is used (select.py)
    from keyring.backend import KeyringBackend

log = logging.getLogger(__name__)

INDEX = "index"
T = TypeVar("T")


def backend_label(backend: KeyringBackend) -> str:
    """keyring's display name, e.g. ``SecretService Keyring``."""
    return str(getattr(type(backend), "name", type(backend).__name__))


def credential_username(key: CredentialKey) -> str:
    return f"credential:{key[0]}/{key[1]}"


def secret_username(name: str) -> str:
    return f"secret:{name}"


class KeyringStore:
    name = "keyring"

    def __init__(self, service: str = "broker", backend: KeyringBackend | None = None, *, note: str = "") -> None:
        self.service = service
        if backend is None:
            import keyring

            backend = keyring.get_keyring()
        self.backend = backend
        self.note = note
        self._lock = threading.Lock()

    def describe(self) -> str:
        text = f"keyring {backend_label(self.backend)} (service {self.service})"
        return f"{text}; {self.note}" if self.note else text

    def load(self) -> list[Credential]:
        with self._lock:
            found = []
            for key in self._index():
                raw = self._get(credential_username(key))
                if raw is None:
                    log.warning("keyring index lists %s/%s but its entry is missing; skipped", *key)
                    continue
                found.append(self._parse(key, raw))
            return found

    def put(self, credential: Credential) -> None:
        with self._lock:
            username = credential_username(credential.key)
            self._call("write", username, self.backend.set_password, json.dumps(credential.to_json()))
            index = self._index()
            if credential.key not in index:
                self._set_index([*index, credential.key])

    def delete(self, key: CredentialKey) -> None:
        with self._lock:
            index = self._index()
            if key in index:
                self._set_index([k for k in index if k != key])
            self._delete(credential_username(key))

    def get_secret(self, name: str) -> str | None:
        return self._get(secret_username(name))

    def set_secret(self, name: str, value: str) -> None:
        username = secret_username(name)
        self._call("write", username, self.backend.set_password, value)

    def _index(self) -> list[CredentialKey]:
        raw = self._get(INDEX)
        if raw is None:
            return []
        try:
            entries = json.loads(raw)
            if not isinstance(entries, list) or not all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(s, str) for s in e) for e in entries
            ):
                raise TypeError("index entries must be [provider, account]")
            return [(p, a) for p, a in entries]
        except (ValueError, TypeError):
            raise self._damaged(INDEX) from None

    def _set_index(self, index: list[CredentialKey]) -> None:
        self._call("write", INDEX, self.backend.set_password, json.dumps([list(k) for k in index]))

    def _parse(self, key: CredentialKey, raw: str) -> Credential:
        try:
            credential = Credential.from_json(json.loads(raw))
        except (ValueError, TypeError, AttributeError):
            raise self._damaged(credential_username(key)) from None
        if credential.key != key:
            raise self._damaged(credential_username(key))
        return credential

    def _damaged(self, username: str) -> StoreError:
        return StoreError(
            f"keyring entry {username!r} (service {self.service!r}) is damaged",
            hint=f"remove it: keyring del {self.service} {username}, then log in again",
        )

    def _get(self, username: str) -> str | None:
        return self._call("read", username, self.backend.get_password)

    def _delete(self, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        try:
            self._call("delete", username, self.backend.delete_password)
        except StoreError as exc:
            # Backends report "not found" as PasswordDeleteError; gone is what we wanted.
            if not isinstance(exc.__cause__, PasswordDeleteError) or self._get(username) is not None:
                raise

    def _call(self, what: str, username: str, fn: Callable[..., T], *args: str) -> T:
        """Run one keyring call; any backend fault (locked, D-Bus gone) becomes a StoreError."""
        try:
            return fn(self.service, username, *args)
        except Exception as exc:
            raise StoreError(
                f"keyring {what} of {username!r} (service {self.service!r}) failed: {type(exc).__name__}: {exc}",
                hint="unlock the keyring, or set BROKER_STORE=file",
            ) from exc
