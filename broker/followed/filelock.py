"""Advisory locks around a followed file, so broker and the owning CLI take turns.

Three kinds, because CLIs differ: an exclusive-create lock file (Qwen Code's
``oauth_creds.lock``), a lock directory made by ``mkdir`` whose mtime the holder keeps
fresh (the npm ``proper-lockfile`` protocol of Claude Code's ``.oauth_refresh.lock`` and
``.storage-write.lock``), and ``flock`` on the credential file itself. Every wait is
bounded, and a lock a crashed process left behind is broken once it is stale.

Nothing here may block on a path: a FIFO, a socket or a device where a file should be is
opened non-blocking and refused, never waited on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

WAIT = 5.0
STEP = 0.05


class LockTimeout(Exception):
    pass


class NotAFile(OSError):
    """A path that should be a regular file is something else (a FIFO, a socket, a directory)."""


_T = TypeVar("_T")


def open_regular(path: Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``path`` if it is a regular file; never blocks, never follows a symlink.

    ``O_NONBLOCK`` keeps ``open`` of a FIFO from waiting for a writer; the type is checked
    on the opened descriptor, so a swap between a check and the open cannot fool it.
    """
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise NotAFile(f"{path} is {describe_kind(kind)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def describe_kind(mode: int) -> str:
    """What a non-regular file is, for people."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def exclusive_create(lock: Path, stale_after: float, wait: float | None = None) -> Iterator[None]:
    """Hold ``lock`` by creating it; break it when older than ``stale_after`` seconds."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = _take(lock, stale_after, wait, lambda: os.open(lock, flags, 0o600), os.unlink)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def lock_directory(lock: Path, stale_after: float, wait: float | None = None) -> Iterator[None]:
    """Hold ``lock`` by making it a directory, as npm's ``proper-lockfile`` does.

    Its holder touches the directory every ``stale_after / 4`` seconds; one untouched for
    ``stale_after`` seconds belongs to a process that died, and is taken over. Broker keeps
    its own hold fresh the same way, so a CLI never takes a lock broker still holds.
    """
    _take(lock, stale_after, wait, lambda: lock.mkdir(mode=0o700), os.rmdir)
    stop = threading.Event()
    keeper = threading.Thread(target=_keep_fresh, args=(lock, stale_after / 4, stop), name="lock keeper", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        with contextlib.suppress(FileNotFoundError, OSError):
            lock.rmdir()


def _keep_fresh(lock: Path, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        with contextlib.suppress(OSError):
            os.utime(lock)


def _take(
    lock: Path, stale_after: float, wait: float | None, create: Callable[[], _T], remove: Callable[[Path], None]
) -> _T:
    """``create()`` the lock once nobody holds it, breaking it when older than ``stale_after`` seconds."""
    deadline = time.monotonic() + (WAIT if wait is None else wait)
    while True:
        try:
            return create()
        except FileExistsError:
            if _break_if_stale(lock, stale_after, remove):
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{lock} is held by another process") from None
            time.sleep(STEP)  # another process holds it: a blocking wait in a worker thread


def _break_if_stale(lock: Path, stale_after: float, remove: Callable[[Path], None]) -> bool:
    """Remove a lock nobody has touched for ``stale_after`` seconds; whether the lock is gone."""
    try:
        if time.time() - lock.lstat().st_mtime <= stale_after:
            return False
        remove(lock)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


@contextlib.contextmanager
def flocked(path: Path, wait: float | None = None) -> Iterator[None]:
    """``flock(LOCK_EX)`` on ``path`` while it exists; a missing file needs no lock.

    Raises NotAFile for anything but a regular file.
    """
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        yield
        return
    deadline = time.monotonic() + (WAIT if wait is None else wait)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"{path} is locked by another process") from None
                time.sleep(STEP)
        yield
    finally:
        os.close(fd)
