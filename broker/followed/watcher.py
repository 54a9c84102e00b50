"""File events for followed credential files, from watchdog, debounced, onto the loop.

Parent directories are watched (not the files): CLIs replace their files by rename,
which a watch on the file itself would lose. A file whose directory does not exist
yet is watched through its nearest existing ancestor until the directory appears.
No polling: the idle daemon wakes only on events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

log = logging.getLogger("broker.watcher")

DEBOUNCE = 0.1
OnChange = Callable[[Path], Coroutine[None, None, None]]


class _Relay(FileSystemEventHandler):
    """Runs in watchdog's thread: hands every event's paths to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notify: Callable[[str], None]) -> None:
        self.loop = loop
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                path = raw.decode() if isinstance(raw, bytes) else raw
                self.loop.call_soon_threadsafe(self.notify, path)


class Watcher:
    def __init__(self, files: Iterable[Path], on_change: OnChange, debounce: float = DEBOUNCE) -> None:
        self.files = {path: path for path in files}
        self.on_change = on_change
        self.debounce = debounce
        self._observer: BaseObserver | None = None
        self._watches: dict[Path, ObservedWatch] = {}
        self._pending: dict[Path, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._observer = Observer()
        self._observer.daemon = True
        self._relay = _Relay(self._loop, self._event)
        self._plan()
        self._observer.start()

    async def stop(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            await asyncio.to_thread(observer.join, 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _plan(self) -> None:
        """Watch the nearest existing directory of every file; drop watches no longer needed."""
        assert self._observer is not None
        wanted = {_nearest_existing(path.parent) for path in self.files}
        for directory in set(self._watches) - wanted:
            self._observer.unschedule(self._watches.pop(directory))
        for directory in wanted - set(self._watches):
            try:
                self._watches[directory] = self._observer.schedule(self._relay, str(directory), recursive=False)
            except OSError as exc:
                log.warning("cannot watch %s: %s", directory, exc.strerror)

    def _event(self, raw: str) -> None:
        path = Path(raw)
        below = [target for target in self.files if path in target.parents]
        if below:
            self._plan()  # a directory on the way to a followed file appeared or went
            for target in below:
                self._poke(target)
        if path in self.files:
            self._poke(path)

    def _poke(self, path: Path) -> None:
        """Debounce: many events in a burst (write, chmod, rename) make one re-read."""
        assert self._loop is not None
        handle = self._pending.pop(path, None)
        if handle is not None:
            handle.cancel()
        self._pending[path] = self._loop.call_later(self.debounce, self._fire, path)

    def _fire(self, path: Path) -> None:
        self._pending.pop(path, None)
        task = asyncio.create_task(self.on_change(path), name=f"reread {path}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _nearest_existing(directory: Path) -> Path:
    while not directory.is_dir() and directory != directory.parent:
        directory = directory.parent
    return directory
