"""Reading and writing the credential files other CLIs own, without breaking them.

Reads refuse what is unsafe or unusable (symlinks, non-regular files, oversized,
unreadable, malformed) with a per-provider problem and never touch the file. Writes
happen only for files broker leads, under the CLI's own locks where it has them and
``flock`` on the file, only while the file still holds the refresh token broker spent
(if the CLI refreshed meanwhile, its tokens win), atomically (temp file, fsync, rename,
fsync dir) and with the file's own mode. All of it blocks: the daemon runs it in
threads of its own (``detached``), so a path that hangs (a network home that stopped
answering) stalls neither the daemon nor its exit, and every wait on ``_lock`` is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from broker.core.atomic import replace_atomically
from broker.core.model import Credential, CredentialKey
from broker.followed.filelock import (
    LockTimeout,
    NotAFile,
    describe_kind,
    exclusive_create,
    flocked,
    lock_directory,
    open_regular,
)
from broker.followed.format import CliLock, FileProblem, FollowedFile, dump_like

log = logging.getLogger("broker.followed")

MAX_BYTES = 1 << 20
BUSY_LIMIT = 10.0
"""The longest any caller waits for another's file work (a read or write-back) to end."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class Owed:
    """Tokens broker refreshed that the file does not hold yet, with the refresh token they cost."""

    credential: Credential
    spent: str | None
    """The refresh token redeemed for them: a file that still holds it is stale; one without it, the CLI's newer."""


@dataclass
class FileState:
    """What broker last saw in one followed file, and what it still owes it."""

    spec: FollowedFile
    raw: bytes | None = None
    credential: Credential | None = None
    """The last good credential: kept while a CLI's half-written file does not parse."""
    problem: FileProblem | None = None
    owed: Owed | None = field(default=None, repr=False)
    """Refreshed tokens not yet in the file (it was mid-write or locked when they came)."""
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
            if state.owed is not None:
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
        if state is None or not state.spec.refresh_locks or state.spec.mode != "lead":
            yield
            return
        with _holding(state.spec.refresh_locks):
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
        state = self.states[path]
        try:
            with self._busy(state):  # a read stuck on a hung path holds the others up for BUSY_LIMIT at most
                return self._take(state, _read_safely(path))
        except FileProblem as problem:
            state.raw, state.problem = None, problem
            return state

    def _take(self, state: FileState, raw: bytes | None) -> FileState:
        if raw is None:
            state.raw, state.credential, state.problem, state.owed = None, None, None, None
            return state
        if raw == state.raw and state.problem is None:
            return state
        try:
            credential = self._parse(state.spec, raw)
        except FileProblem as problem:
            state.raw, state.problem = raw, problem
            return state
        state.raw, state.problem, state.credential = raw, None, credential
        if state.owed is not None:
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
        try:
            with self._busy(state):
                state.owed = Owed(credential, spent)
                self._flush(state)
                return state.credential if state.owed is None and state.credential else credential
        except FileProblem as problem:  # another thread is stuck on the file: the tokens are owed
            log.warning("write-back deferred provider=%s: %s", state.spec.provider, problem.message)
            state.owed = Owed(credential, spent)
            return credential

    def flush_owed(self, key: CredentialKey) -> bool:
        """Try again to write what broker owes the file; whether anything is still owed."""
        state = self.state_of(key)
        if state is None:
            return False
        with self._busy(state):
            if state.owed is not None:
                self._flush(state)
            return state.owed is not None

    @contextlib.contextmanager
    def _busy(self, state: FileState) -> Iterator[None]:
        """``_lock``, waited for at most ``BUSY_LIMIT``: a thread stuck on a hung path must not stall the rest."""
        if not self._lock.acquire(timeout=BUSY_LIMIT):
            raise FileProblem(
                f"{state.spec.path}: another read or write of it has not ended within {BUSY_LIMIT:g} s",
                "check the filesystem it is on (a network home that stopped answering?)",
            )
        try:
            yield
        finally:
            self._lock.release()

    def _flush(self, state: FileState) -> None:
        """Write ``state.owed`` into the file when that is safe; otherwise keep owing it."""
        spec, path, owed = state.spec, state.spec.path, state.owed
        assert owed is not None and spec.merge is not None
        try:
            refresh_locks = () if state.cli_lock_held else spec.refresh_locks
            with _holding((*refresh_locks, *spec.write_locks)), flocked(path):
                raw = _read_safely(path)
                if raw is None:
                    state.owed = None  # the CLI logged out: never recreate its file
                    return
                try:
                    current = self._parse(spec, raw)
                except FileProblem:
                    log.info("write-back deferred provider=%s: %s does not parse yet", spec.provider, path)
                    return
                if raw != state.raw and current.refresh_token != owed.spent:
                    log.info("the CLI refreshed first provider=%s file=%s: its tokens win", spec.provider, path)
                    state.raw, state.credential, state.owed = raw, current, None
                    return
                data = dump_like(raw.decode(), spec.merge(json.loads(raw), owed.credential))
                written = self._parse(spec, data)  # as the file holds it (e.g. expiry in whole ms)
                replace_atomically(path, data, stat.S_IMODE(path.stat().st_mode))
        except LockTimeout as exc:
            log.warning("write-back deferred provider=%s: %s", spec.provider, exc)
            return
        except (OSError, FileProblem) as exc:
            log.error("write-back failed provider=%s file=%s: %s", spec.provider, path, exc)
            return
        state.raw, state.credential, state.owed, state.problem = data, written, None, None
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
        raise _not_a_file(path, describe_kind(info.st_mode))
    if info.st_size > MAX_BYTES:
        raise FileProblem(f"{path} is {info.st_size} bytes, over the {MAX_BYTES}-byte limit for a credential file")
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    except NotAFile as exc:  # swapped for something else since the lstat
        raise FileProblem(str(exc)) from None
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


def _not_a_file(path: Path, kind: str) -> FileProblem:
    return FileProblem(
        f"{path} is {kind}, not a regular file: broker does not open it",
        f"remove it (rm {'-r ' if kind == 'a directory' else ''}{path}) and log in again with the CLI",
    )


@contextlib.contextmanager
def _holding(locks: tuple[CliLock, ...]) -> Iterator[None]:
    """The CLI's own locks, taken in its order and released in reverse."""
    with contextlib.ExitStack() as held:
        for lock in locks:
            take = exclusive_create if lock.kind == "create" else lock_directory
            held.enter_context(take(lock.path, lock.stale))
        yield


async def detached(work: Callable[..., _T], *args: Any) -> _T:
    """``work(*args)`` in a daemon thread of its own: a call stuck on a hung path holds up neither
    the loop nor the process's exit (the default executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(result: Any, failed: bool) -> None:
        if not done.done():
            (done.set_exception if failed else done.set_result)(result)

    def run() -> None:
        result: Any
        try:
            result, failed = work(*args), False
        except BaseException as exc:
            result, failed = exc, True
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, failed)

    threading.Thread(target=run, name="followed file", daemon=True).start()
    return await done
