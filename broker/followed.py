"""Reading and writing the credential files other CLIs own, without breaking them.

Reads refuse what is unsafe or unusable (symlinks, non-regular files, oversized,
unreadable, malformed) with a per-provider problem and never touch the file. Writes
happen only for files broker leads, under the CLI's lock where it has one and
``flock`` on the file, only if the file is byte-for-byte what broker last read (if
the CLI wrote meanwhile, its tokens win), atomically (temp file, fsync, rename, fsync
dir) and with the file's own mode. All of it blocks: the daemon calls it in a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.atomic import replace_atomically
from broker.filelock import LockTimeout, exclusive_create, flocked
from broker.model import Credential, CredentialKey
from providers.files import FileProblem, FollowedFile, dump_like

log = logging.getLogger("broker.followed")

MAX_BYTES = 1 << 20


@dataclass
class FileState:
    """What broker last saw in one followed file, and what it still owes it."""

    spec: FollowedFile
    raw: bytes | None = None
    credential: Credential | None = None
    """The last good credential: kept while a CLI's half-written file does not parse."""
    problem: FileProblem | None = None
    pending: Credential | None = field(default=None, repr=False)
    """Refreshed tokens not yet in the file (it was mid-write or locked when they came)."""
    spent: str | None = field(default=None, repr=False)
    """The refresh token broker redeemed for ``pending``: a file still holding it is stale."""
    cli_lock_held: bool = False
    """Broker holds the CLI's own lock around a whole refresh (``cli_lock``): the write-back must not retake it."""


class FollowedFiles:
    def __init__(self, specs: list[FollowedFile]) -> None:
        self.states = {spec.path: FileState(spec) for spec in specs}
        self._by_key = {(spec.provider, spec.account): spec.path for spec in specs}
        self._lock = threading.RLock()
        """Reads (watcher) and write-backs (refresher) run in worker threads: one at a time."""

    def refollow(self, specs: list[FollowedFile]) -> list[FileState]:
        """Follow ``specs`` from now on (a config reload); the states of files no longer followed.

        A file followed before and after as the same account keeps what broker saw in it
        and still owes it; only its settings (mode, write-back, lead) change.
        """
        with self._lock:
            old, new = self.states, dict[Path, FileState]()
            for spec in specs:
                state = old.get(spec.path)
                if state is not None and (state.spec.provider, state.spec.account) == (spec.provider, spec.account):
                    state.spec = spec
                    new[spec.path] = state
                else:
                    new[spec.path] = FileState(spec)
            self.states = new
            self._by_key = {(spec.provider, spec.account): spec.path for spec in specs}
        dropped = [state for path, state in old.items() if new.get(path) is not state]
        for state in dropped:
            if state.pending is not None:
                log.warning(
                    "no longer following %s while refreshed tokens were owed to it: %s",
                    state.spec.path,
                    "its CLI holds a spent refresh token and will need a new login",
                )
        return dropped

    def state_of(self, key: CredentialKey) -> FileState | None:
        path = self._by_key.get(key)
        return None if path is None else self.states[path]

    @contextlib.contextmanager
    def cli_lock(self, key: CredentialKey) -> Iterator[None]:
        """The CLI's own lock, for files that have one, held around a whole refresh: re-read, redeem, write.

        A CLI holding it is refreshing the same token; broker redeeming it too would spend
        it twice (Qwen Code then deletes its file). Blocks: call in a thread. Raises LockTimeout.
        """
        state = self.state_of(key)
        if state is None or state.spec.lock_file is None or state.spec.mode != "lead":
            yield
            return
        with _cli_lock(state.spec):
            state.cli_lock_held = True
            try:
                yield
            finally:
                state.cli_lock_held = False

    def read(self, path: Path) -> FileState:
        """Re-read one file; its state says what it holds now (a credential, nothing, a problem).

        Owed tokens are written as soon as the file parses again and still holds the
        spent refresh token.
        """
        with self._lock:
            return self._read(self.states[path])

    def _read(self, state: FileState) -> FileState:
        path = state.spec.path
        try:
            raw = _read_safely(path)
        except FileProblem as problem:
            state.raw, state.problem = None, problem
            return state
        if raw is None:
            state.raw, state.credential, state.problem, state.pending = None, None, None, None
            return state
        if raw == state.raw and state.problem is None:
            return state
        try:
            credential = self._parse(state.spec, raw)
        except FileProblem as problem:
            state.raw, state.problem = raw, problem
            return state
        state.raw, state.problem, state.credential = raw, None, credential
        if state.pending is not None:
            self._flush(state)
        return state

    def write_back(self, credential: Credential, spent: str | None) -> Credential:
        """Put refreshed tokens into the CLI's file; the credential that is live afterwards.

        ``spent`` is the refresh token broker just redeemed. If the file changed since
        broker read it and no longer holds that token, the CLI refreshed first: its
        tokens win and nothing is written. If it changed but still holds the spent
        token (the CLI rewrote it without refreshing), the new tokens are merged into
        the CLI's new content, or they would be lost.
        """
        state = self.state_of(credential.key)
        if state is None:
            return credential
        lead = max(state.spec.lead, credential.lead or 0.0)  # the provider's own (Copilot's refresh_in) may be longer
        credential = dataclasses.replace(credential, source=str(state.spec.path), lead=lead)
        if state.spec.mode != "lead" or state.spec.merge is None:
            state.credential = credential
            return credential
        with self._lock:
            state.pending, state.spent = credential, spent
            self._flush(state)
            return state.credential if state.pending is None and state.credential else credential

    def _flush(self, state: FileState) -> None:
        """Write ``state.pending`` into the file when that is safe; otherwise keep owing it."""
        spec, path, pending = state.spec, state.spec.path, state.pending
        assert pending is not None and spec.merge is not None
        try:
            with contextlib.nullcontext() if state.cli_lock_held else _cli_lock(spec), flocked(path):
                raw = _read_safely(path)
                if raw is None:
                    state.pending = None  # the CLI logged out: never recreate its file
                    return
                try:
                    current = self._parse(spec, raw)
                except FileProblem:
                    log.info("write-back deferred provider=%s: %s does not parse yet", spec.provider, path)
                    return
                if raw != state.raw and current.refresh_token != state.spent:
                    log.info("the CLI refreshed first provider=%s file=%s: its tokens win", spec.provider, path)
                    state.raw, state.credential, state.pending = raw, current, None
                    return
                data = dump_like(raw.decode(), spec.merge(json.loads(raw), pending))
                written = self._parse(spec, data)  # as the file holds it (e.g. expiry in whole ms)
                replace_atomically(path, data, stat.S_IMODE(path.stat().st_mode))
        except LockTimeout as exc:
            log.warning("write-back deferred provider=%s: %s", spec.provider, exc)
            return
        except OSError as exc:
            log.error("write-back failed provider=%s file=%s: %s", spec.provider, path, exc.strerror)
            return
        state.raw, state.credential, state.pending, state.problem = data, written, None, None
        log.info("wrote back provider=%s file=%s", spec.provider, path)

    @staticmethod
    def _parse(spec: FollowedFile, raw: bytes) -> Credential:
        try:
            credential = spec.parse(_json_object(raw))
            _check_times(credential)
        except FileProblem as problem:
            raise FileProblem(f"{spec.path}: {problem.message}", problem.hint or _fix_hint(spec)) from None
        except (ArithmeticError, ValueError):  # a number too large for a time (1e400, 10**400 ms)
            raise FileProblem(f"{spec.path}: holds a number out of range", _fix_hint(spec)) from None
        return dataclasses.replace(
            credential, provider=spec.provider, account=spec.account, source=str(spec.path), lead=spec.lead
        )


def _read_safely(path: Path) -> bytes | None:
    """The file's bytes; None when it does not exist; FileProblem when it must not be used."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileProblem(f"{path}: cannot be examined ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise FileProblem(
            f"{path} is a symlink; broker does not follow symlinked credential files",
            f"replace the link with the file itself, or point the provider's `file` setting at {path.resolve()}",
        )
    if not stat.S_ISREG(info.st_mode):
        raise FileProblem(f"{path} is not a regular file")
    if info.st_size > MAX_BYTES:
        raise FileProblem(f"{path} is {info.st_size} bytes, over the {MAX_BYTES}-byte limit for a credential file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileProblem(
            f"{path}: cannot be read ({exc.strerror})", f"check its owner and mode: ls -l {path}"
        ) from None
    with os.fdopen(fd, "rb") as file:
        return file.read(MAX_BYTES + 1)


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise FileProblem("the file is empty")
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FileProblem("the file is not UTF-8 text") from None
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise FileProblem(f"not valid JSON{f' (line {line})' if line else ''}; it may be truncated") from None
    except RecursionError:
        raise FileProblem("the JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise FileProblem("the JSON is not an object")
    return value


def _check_times(credential: Credential) -> None:
    """JSON allows Infinity and NaN, and 1e400 reads as infinity: none of them is an expiry."""
    for name, value in (("expiry", credential.expires_at), ("issue time", credential.issued_at)):
        if value is not None and not math.isfinite(value):
            raise FileProblem(f"its {name} is not a finite number")


def _fix_hint(spec: FollowedFile) -> str:
    return f"let {spec.cli} rewrite it ({spec.login_hint.removeprefix('run: ')}); broker never changes a broken file"


@contextlib.contextmanager
def _cli_lock(spec: FollowedFile) -> Iterator[None]:
    if spec.lock_file is None:
        yield
    else:
        with exclusive_create(spec.lock_file, spec.lock_stale):
            yield
