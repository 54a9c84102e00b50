"""Choose the store: the OS keyring only where a real one answers, else the encrypted file.

``keyring.get_keyring()`` alone is not enough for a daemon: it falls back to ``fail``,
picks a plaintext file when keyrings.alt is installed, and picks the Secret Service when
D-Bus can merely *activate* it, even if the first read would then wait for an unlock
prompt no one will answer. So only known OS stores are accepted, and each is probed.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from broker.core.errors import StoreError
from broker.store.base import Store
from broker.store.file_store import FILE_NAME, FileStore
from broker.store.keyring_store import KeyringStore, backend_label
from broker.store.keys import key_source

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

BACKENDS = ("auto", "keyring", "file")
PROBE_TIMEOUT = 3.0
OS_STORES = frozenset(
    {
        "keyring.backends.SecretService.Keyring",
        "keyring.backends.libsecret.Keyring",
        "keyring.backends.macOS.Keyring",
        "keyring.backends.Windows.WinVaultKeyring",
        "keyring.backends.kwallet.DBusKeyring",
        "keyring.backends.kwallet.DBusKeyringKWallet4",
    }
)
"""Exact class names: a plugin subclass could be anything, so none is trusted by inheritance."""


def class_name(backend: KeyringBackend | type[KeyringBackend]) -> str:
    cls = backend if isinstance(backend, type) else type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def probe(backend: KeyringBackend, service: str = "broker", timeout: float = PROBE_TIMEOUT) -> str | None:
    """Read one absent entry in a thread; ``None`` if it answered, else why not.

    A daemon thread, because a read blocked on an unlock prompt may never return.
    """
    outcome: list[str | None] = []

    def read() -> None:
        try:
            backend.get_password(service, "probe")
            outcome.append(None)
        except Exception as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=read, name="keyring-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"{backend_label(backend)} did not answer within {timeout:g} s (locked, waiting for a prompt?)"
    return None if outcome[0] is None else f"{backend_label(backend)} failed: {outcome[0]}"


def _candidates() -> tuple[list[KeyringBackend], str]:
    """OS stores to try, best first, and why there are none when the list is empty.

    keyring (with its plugin discovery, about 2 MiB of the daemon's memory) is imported
    only when some OS store could answer.
    """
    chosen = os.environ.get("PYTHON_KEYRING_BACKEND")
    if not chosen and _no_session_bus():
        return [], NO_SESSION_BUS
    import keyring.backend
    import keyring.core
    from keyring.backends.chainer import ChainerBackend

    if chosen:
        if chosen not in OS_STORES and chosen != class_name(ChainerBackend):
            return [], f"PYTHON_KEYRING_BACKEND={chosen} is not an OS secret store"
        try:
            explicit = keyring.core.load_keyring(chosen)
        except Exception as exc:
            return [], f"PYTHON_KEYRING_BACKEND={chosen} cannot be used: {exc}"
        inner = explicit.backends if isinstance(explicit, ChainerBackend) else [explicit]
        found = [b for b in inner if class_name(b) in OS_STORES]
        return found, "" if found else f"PYTHON_KEYRING_BACKEND={chosen} is not an OS secret store"
    found = [b for b in keyring.backend.get_all_keyring() if class_name(b) in OS_STORES]
    found.sort(key=lambda b: type(b).priority, reverse=True)
    return found, "" if found else _why_none()


NO_SESSION_BUS = "no D-Bus session (DBUS_SESSION_BUS_ADDRESS is unset)"


def _no_session_bus() -> bool:
    """On Linux every OS store speaks D-Bus: with no session bus, named or at its usual place, none can answer."""
    if not sys.platform.startswith("linux") or os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return False
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return not (runtime and os.path.exists(os.path.join(runtime, "bus")))


def _why_none() -> str:
    if sys.platform.startswith("linux"):
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return NO_SESSION_BUS
        try:
            from keyring.backends import SecretService

            SecretService.Keyring.priority  # noqa: B018  (raises with the reason)
        except Exception as exc:
            return f"no Secret Service: {exc or type(exc).__name__}"
    return "no OS secret store is available"


def viable_keyring(service: str = "broker") -> tuple[KeyringBackend | None, str]:
    """The best OS secret store that answers now, and a reason for a person either way."""
    candidates, reason = _candidates()
    failures = []
    for backend in candidates:
        failure = probe(backend, service)
        if failure is None:
            return backend, f"{backend_label(backend)} answered"
        failures.append(failure)
    return None, reason or "; ".join(failures)


def open_store(backend: str, state_dir: Path, *, service: str = "broker") -> Store:
    """The store ``BROKER_STORE``/config asks for; its ``describe()`` says what was chosen and why."""
    if backend not in BACKENDS:
        raise StoreError(f"unknown store backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    found, reason = viable_keyring(service)
    if backend == "keyring":
        if found is None:
            raise StoreError(
                f"the keyring store was requested but no OS secret store answers: {reason}",
                hint="set BROKER_STORE=file to keep credentials in an encrypted file instead",
            )
        return KeyringStore(service, found, note=reason)
    if backend == "auto" and found is not None:
        if (state_dir / FILE_NAME).exists():
            # Credentials already live in the file: switching to the keyring because it
            # happens to answer today would make them seem to vanish.
            return FileStore(
                state_dir, key_source(state_dir, found, service), note="auto: the file already holds credentials"
            )
        return KeyringStore(service, found, note=f"auto: {reason}")
    keys = key_source(state_dir, found, service)
    note = f"keyring unavailable: {reason}" if found is None else ""
    return FileStore(state_dir, keys, note=note)
