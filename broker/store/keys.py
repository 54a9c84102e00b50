"""Where the file store's 32-byte AES key comes from.

Order: a systemd credential (``$CREDENTIALS_DIRECTORY/broker.key``), then the OS keyring
when a real one answers, then a 0600 key file beside the store. A key is only ever
created for a store that has no file yet: a fresh key can never open an existing file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from broker.core.atomic import fsync_dir
from broker.core.errors import StoreError
from broker.store.keyring_store import backend_label

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

KEY_BYTES = 32
CREDENTIAL_NAME = "broker.key"
KEYRING_USERNAME = "file-store-key"
KEY_FILE_NAME = "key"


class KeySource(Protocol):
    kind: ClassVar[str]
    """``systemd-credential``, ``keyring`` or ``file``: recorded in the store's envelope."""

    def describe(self) -> str:
        """Where the key lives, for ``broker status`` (never the key itself)."""

    def get(self, *, create: bool) -> bytes | None:
        """The key, or ``None`` if there is none yet and ``create`` is false."""


def parse_key(data: bytes, what: str) -> bytes:
    """Accept 32 raw bytes or their base64, so a key can be made with ``head -c32`` or ``openssl``."""
    if len(data) == KEY_BYTES:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise StoreError(f"{what} is not a key: expected 32 bytes or their base64")
    return key


def tighten_mode(path: Path, mode: int) -> None:
    """Drop group/other bits on a path we own; refuse one that someone else owns."""
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        raise StoreError(
            f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})",
            hint="use a state directory of your own (set XDG_STATE_HOME)",
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, mode)


@dataclass(frozen=True)
class _KeyFile:
    """A key kept in a file of its own: where it is, and reading it, are the same for every such file."""

    path: Path
    what: ClassVar[str]
    """The file's kind, as messages and ``describe`` name it."""
    shown: ClassVar[str]
    """How ``describe`` introduces the file."""

    def describe(self) -> str:
        return f"{self.shown} {self.path}"

    def _read(self, *, missing_ok: bool = False) -> bytes | None:
        """The key; ``None`` for a missing file where that is no fault, else a StoreError naming the file."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            if missing_ok and isinstance(exc, FileNotFoundError):
                return None
            raise StoreError(f"cannot read {self.what} {self.path}: {exc.strerror}") from None
        self._check()
        return parse_key(data, f"{self.what} {self.path}")

    def _check(self) -> None:
        """What to make sure of once the file is read; nothing by default."""

    def get(self, *, create: bool) -> bytes | None:
        """The key; one at a path broker does not own is only ever read, never created."""
        return self._read()


@dataclass(frozen=True)
class SystemdCredentialKey(_KeyFile):
    """A key systemd hands over (``LoadCredential=``/``SetCredentialEncrypted=``); read-only."""

    kind: ClassVar[str] = "systemd-credential"
    what: ClassVar[str] = "systemd credential"
    shown: ClassVar[str] = "key from systemd credential"


@dataclass(frozen=True)
class KeyringKey:
    """The key kept in the OS keyring, so nothing on disk alone opens the store."""

    backend: KeyringBackend
    service: str = "broker"
    kind: ClassVar[str] = "keyring"

    def describe(self) -> str:
        return f"key from keyring {backend_label(self.backend)} (service {self.service})"

    def get(self, *, create: bool) -> bytes | None:
        where = f"the file-store key in the keyring (service {self.service}, username {KEYRING_USERNAME})"
        try:
            value = self.backend.get_password(self.service, KEYRING_USERNAME)
            if value is None and create:
                value = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
                self.backend.set_password(self.service, KEYRING_USERNAME, value)
        except Exception as exc:
            raise StoreError(
                f"cannot use {where}: {type(exc).__name__}: {exc}",
                hint="unlock the keyring, or set BROKER_STORE=file",
            ) from None
        return None if value is None else parse_key(value.encode(), where)


@dataclass(frozen=True)
class FileKey(_KeyFile):
    """A 0600 key file in the 0700 state directory: the fallback when nothing better exists."""

    kind: ClassVar[str] = "file"
    what: ClassVar[str] = "key file"
    shown: ClassVar[str] = "key file"

    def get(self, *, create: bool) -> bytes | None:
        key = self._read(missing_ok=True)
        if key is not None or not create:
            return key
        self._create()
        return self._read()

    def _check(self) -> None:
        tighten_mode(self.path, 0o600)

    def _create(self) -> None:
        # Written under a temporary name, then linked: the key file appears whole or not
        # at all, and link() never replaces a key another writer made first.
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise StoreError(f"cannot create key file {self.path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def key_source(state_dir: Path, keyring_backend: KeyringBackend | None, service: str = "broker") -> KeySource:
    """Pick the key source; a key file that already exists wins over an empty keyring."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        return SystemdCredentialKey(Path(cred_dir) / CREDENTIAL_NAME)
    key_file = FileKey(state_dir / KEY_FILE_NAME)
    if keyring_backend is None:
        return key_file
    in_keyring = KeyringKey(keyring_backend, service)
    if key_file.path.exists() and in_keyring.get(create=False) is None:
        return key_file
    return in_keyring
