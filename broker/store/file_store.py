"""The file backend: every credential and broker secret in one AES-256-GCM encrypted file.

One file keeps a write atomic with a single rename. The envelope is plain JSON so a
person can see what the file is; a damaged file is never overwritten, since it may be
the only copy of a login that can still be recovered.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.core.atomic import replace_atomically
from broker.core.errors import StoreError
from broker.core.model import Credential, CredentialKey
from broker.core.trust import Untrusted, ensure_private_dir
from broker.store.keys import KeySource

log = logging.getLogger("broker.store")

FILE_NAME = "credentials.enc"
FORMAT = "broker-store"
VERSION = 1
NONCE_BYTES = 12
LEFTOVER_AGE = 60.0
"""A temp file this old beside the store is a killed writer's: a write takes milliseconds."""
AAD = f"{FORMAT}/v{VERSION}".encode()
"""Binds the ciphertext to this format version: a downgraded envelope fails to decrypt."""


@dataclass
class _Contents:
    credentials: dict[CredentialKey, Credential] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)

    def copy(self) -> _Contents:
        return _Contents(dict(self.credentials), dict(self.secrets))


@dataclass(frozen=True)
class _Known:
    ident: tuple[int, int, int, int]
    contents: _Contents
    key: bytes


def key_id(key: bytes) -> str:
    """A one-way tag of the key, so a wrong key can be told apart from a damaged file."""
    return hmac.new(key, b"broker-store key id", hashlib.sha256).hexdigest()[:16]


def ensure_state_dir(path: Path) -> None:
    """The state directory: made 0700, or one that exists checked (``broker.trust``), never chmodded."""
    try:
        ensure_private_dir(path)
        if not path.is_dir():
            raise StoreError(f"{path} is not a directory")
    except Untrusted as exc:
        raise StoreError(f"unsafe state directory: {exc}", "use a directory only you can write to") from None
    except OSError as exc:
        raise StoreError(f"cannot create state directory {path}: {exc.strerror}") from None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileStore:
    name = "file"

    def __init__(self, state_dir: Path, key_source: KeySource, *, note: str = "") -> None:
        ensure_state_dir(state_dir)
        self.path = state_dir / FILE_NAME
        self.key_source = key_source
        self.note = note
        self._lock = threading.Lock()
        self._broken: tuple[StoreError, tuple[int, int, int, int]] | None = None
        self._sweep_leftovers()
        self._known: _Known | None = None
        """The file as this store last read or wrote it: a write after a refresh re-reads
        nothing and asks no keyring, so the window in which a crash can lose a rotated
        refresh token is the encryption and the write alone."""

    def _sweep_leftovers(self) -> None:
        """Remove temp files a killed writer left beside the store (never a recent one: it may be in use)."""
        horizon = time.time() - LEFTOVER_AGE
        for leftover in self.path.parent.glob(f".{FILE_NAME}.*.tmp"):
            with contextlib.suppress(OSError):
                if leftover.lstat().st_mtime < horizon:
                    leftover.unlink()
                    log.info("removed %s, left by a writer that was killed mid-write", leftover.name)

    def describe(self) -> str:
        text = f"file {self.path} ({self.key_source.describe()})"
        return f"{text}; {self.note}" if self.note else text

    def load(self) -> list[Credential]:
        with self._lock:
            return list(self._read().credentials.values())

    def put(self, credential: Credential) -> None:
        with self._lock:
            contents = self._read()
            contents.credentials[credential.key] = credential
            self._write(contents)

    def delete(self, key: CredentialKey) -> None:
        with self._lock:
            contents = self._read()
            if contents.credentials.pop(key, None) is not None:
                self._write(contents)

    def get_secret(self, name: str) -> str | None:
        with self._lock:
            return self._read().secrets.get(name)

    def set_secret(self, name: str, value: str) -> None:
        with self._lock:
            contents = self._read()
            contents.secrets[name] = value
            self._write(contents)

    def _read(self) -> _Contents:
        known = self._known
        if known is not None:
            try:
                if _identity(os.stat(self.path)) == known.ident:
                    return known.contents.copy()
            except OSError:
                pass  # gone or unreadable now: the full read below says which
        self._known = None
        try:
            with open(self.path, "rb") as f:
                ident = _identity(os.fstat(f.fileno()))
                if self._broken is not None and self._broken[1] == ident:
                    err = self._broken[0]
                    raise StoreError(err.message, err.hint)
                raw = f.read()
        except FileNotFoundError:
            return _Contents()
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from None
        # A different file now (moved aside, restored): judge it afresh.
        self._broken = None
        try:
            contents, key = self._decode(raw)
        except _Damaged as exc:
            err = StoreError(exc.message, exc.hint)
            self._broken = (err, ident)
            raise err from None
        self._known = _Known(ident, contents.copy(), key)
        return contents

    def _damaged(self, problem: str, hint: str | None = None) -> _Damaged:
        return _Damaged(
            f"{self.path} {problem}",
            hint or f"move it aside (run: {self._mv_aside()}), then log in again",
        )

    def _mv_aside(self) -> str:
        return f"mv {shlex.quote(str(self.path))} {shlex.quote(str(self.path) + '.bad')}"

    def _decode(self, raw: bytes) -> tuple[_Contents, bytes]:
        """The contents, and the key that opened them."""
        try:
            envelope = json.loads(raw)
        except ValueError:
            raise self._damaged("is damaged or truncated: it is not JSON") from None
        if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
            raise self._damaged("is not a broker store file")
        if envelope.get("version") != VERSION:
            raise self._damaged(
                f"has store format version {envelope.get('version')!r}; this broker reads {VERSION}",
                hint=f"use a broker that reads it, or move it aside (run: {self._mv_aside()}), then log in again",
            )
        try:
            nonce = base64.b64decode(envelope["nonce"], validate=True)
            ciphertext = base64.b64decode(envelope["ciphertext"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise self._damaged("is damaged: its nonce or ciphertext is not base64") from None
        if len(nonce) != NONCE_BYTES:
            raise self._damaged("is damaged: its nonce has the wrong length")
        key = self._key_for(envelope)
        try:
            plaintext = AESGCM(key).decrypt(nonce, ciphertext, AAD)
        except InvalidTag:
            raise self._damaged("cannot be decrypted: it is damaged or the key does not match") from None
        return self._parse(plaintext), key

    def _key_for(self, envelope: dict[str, Any]) -> bytes:
        written_with = envelope.get("key_source", "an unknown source")
        restore = (
            f"restore the key it was written with (key from {written_with}), "
            f"or move it aside (run: {self._mv_aside()}), then log in again"
        )
        # A missing or wrong key is not damage: restoring the key must make the file
        # usable again, so these do not mark the file as broken.
        key = self.key_source.get(create=False)
        if key is None:
            missing = f"{self.path} exists but its key is missing ({self.key_source.describe()})"
            raise StoreError(missing, restore)
        if envelope.get("key_id", key_id(key)) != key_id(key):
            raise StoreError(
                f"the key does not match {self.path}: it was encrypted with another key than the "
                f"{self.key_source.describe()}",
                restore,
            )
        return key

    def _parse(self, plaintext: bytes) -> _Contents:
        try:
            data = json.loads(plaintext)
            if data["version"] != VERSION:
                raise ValueError("inner version")
            creds = [Credential.from_json(item) for item in data["credentials"]]
            stored = {str(k): str(v) for k, v in data["secrets"].items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise self._damaged("decrypts but its contents are damaged") from None
        return _Contents({c.key: c for c in creds}, stored)

    def _write(self, contents: _Contents) -> None:
        key = self._known.key if self._known is not None else self.key_source.get(create=True)
        assert key is not None
        plaintext = json.dumps(
            {
                "version": VERSION,
                "credentials": [c.to_json() for c in contents.credentials.values()],
                "secrets": contents.secrets,
            }
        ).encode()
        nonce = secrets.token_bytes(NONCE_BYTES)
        envelope = {
            "format": FORMAT,
            "version": VERSION,
            "key_source": self.key_source.kind,
            "key_id": key_id(key),
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(AESGCM(key).encrypt(nonce, plaintext, AAD)).decode(),
        }
        self._known = None
        try:
            replace_atomically(self.path, (json.dumps(envelope, indent=1) + "\n").encode(), 0o600)
            self._known = _Known(_identity(os.stat(self.path)), contents.copy(), key)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None


class _Damaged(Exception):
    """Internal: the file is unusable as it is, so this store instance must not overwrite it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
