"""Small steps many tests share: a completed device login through the CLI, a browser's part of a code grant."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from broker.daemon.refresher.recovery import OWED_RETRY_CAP
from tests.conftest import DaemonProcess, read_event
from tests.fakes.clock import FakeClock
from tests.fakes.oauth_server import FakeOAuthServer

LASTING = ("expires_at", "expires_in", "refreshable")
"""Fields of a ``done`` event that say how long the login lasts."""


def without_lasting(event: dict[str, Any]) -> dict[str, Any]:
    """A ``done`` event without the fields that depend on the token's lifetime and the clock."""
    return {name: value for name, value in event.items() if name not in LASTING}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until ``condition()`` holds (a token's expiry, a process's end, a log line), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


async def owed_written(clock: FakeClock, owed: asyncio.Task[None] | None, within: float) -> None:
    """Until the task writing owed tokens ends, the fake clock moved on for each of its tries.

    Its first tries wait less than the clock's autojump and run (in a thread) at once, while
    the fault may still be there; one may still be running when the test lifts the fault, and
    only then sleep on the timer. So the clock is moved again until the task ends."""
    assert owed is not None, "the refused write is owed and retried"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not owed.done():
        assert loop.time() < deadline, "the owed tokens were not written in time"
        clock.advance(OWED_RETRY_CAP)
        await asyncio.wait({owed}, timeout=0.05)
    owed.result()


def device_login(daemon: DaemonProcess, oauth: FakeOAuthServer, provider: str = "acme", *extra: str) -> str:
    """Log in through ``broker login --json``; the account name."""
    login = daemon.popen("login", provider, "--no-browser", "--json", *extra)
    oauth.approve(read_event(login)["user_code"])
    done = read_event(login)
    assert done["event"] == "done", done
    assert login.wait(timeout=10) == 0
    return str(done["account"])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def authorize(url: str) -> str:
    """Act as the browser at the authorization endpoint: the Location it is sent to."""
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(url, timeout=10)
    assert redirect.value.code == 302
    return str(redirect.value.headers["Location"])


def browser_get(url: str) -> tuple[int, str]:
    """The browser following a redirect to the loopback listener: status and page."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
