"""One refresh in flight per credential: concurrent callers await the same task.

A rotating refresh token is redeemed exactly once however many callers want it at the
same moment, and a caller that gives up waiting leaves the refresh running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from broker.core.clock import Clock
from broker.core.model import CredentialKey

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._tasks: dict[CredentialKey, asyncio.Task[T]] = {}

    def start(self, key: CredentialKey, run: Callable[[], Coroutine[Any, Any, T]], name: str) -> asyncio.Task[T]:
        """The task in flight for ``key``, started now if there is none (synchronously: no gap to race)."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(run(), name=name)
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def running(self, key: CredentialKey) -> bool:
        return key in self._tasks

    def tasks(self) -> list[asyncio.Task[T]]:
        return list(self._tasks.values())

    def _finished(self, key: CredentialKey, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: callers that went away must not cause a warning


async def wait_at_most(task: asyncio.Task[T], seconds: float, clock: Clock) -> T:
    """``task``'s result, or ``TimeoutError`` after ``seconds`` on ``clock``; the task goes on."""
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    if not task.done():
        raise TimeoutError(f"no refresh within {seconds:g} s")
    return task.result()
