"""Advisory locks around a followed file, so broker and the owning CLI take turns.

Two kinds, because CLIs differ: an exclusive-create lock file (Qwen Code's
``oauth_creds.lock``, stale after a few seconds so a crashed CLI cannot wedge us) and
``flock`` on the credential file itself (honoured by any tool that uses it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

WAIT = 5.0
STEP = 0.05


class LockTimeout(Exception):
    pass


@contextlib.contextmanager
def exclusive_create(lock: Path, stale_after: float, wait: float = WAIT) -> Iterator[None]:
    """Hold ``lock`` by creating it; break it when older than ``stale_after`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - lock.stat().st_mtime > stale_after:
                    lock.unlink()
                    continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{lock} is held by another process") from None
            time.sleep(STEP)  # another process holds it: a blocking wait in a worker thread
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def flocked(path: Path, wait: float = WAIT) -> Iterator[None]:
    """``flock(LOCK_EX)`` on ``path`` while it exists; a missing file needs no lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    deadline = time.monotonic() + wait
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
