"""Broker and the real Claude Code share ``~/.claude/.credentials.json`` and Claude Code's locks.

Claude Code 2.1.332 (pinned in tests/peers/npm.txt) holds ``.oauth_refresh.lock`` (a
directory, npm proper-lockfile) around its re-read, refresh request and write, and
``.storage-write.lock`` around each write. Its token endpoint is a fixed host, so its own
refresh is not redirected here; what it checks is that every file broker writes back is
one ``claude auth status`` accepts, and that broker takes both locks as Claude Code does.
A write-back that waits past the lock's hold is owed: served, journaled, written later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.core.config import load_settings
from broker.daemon.main import Daemon
from broker.followed.filelock import lock_directory
from tests.helpers import owed_written
from tests.peers import npm_program
from tests.test_followed_claude import CHANGE_TIMEOUT, KEY, Claude, start

ROUNDS = 5


@contextlib.contextmanager
def held_like_claude_code(lock: Path) -> Iterator[None]:
    """The lock as Claude Code holds it: a directory whose mtime its holder keeps fresh."""
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with lock_directory(lock, stale_after=15.0):
            entered.set()
            leave.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert entered.wait(5)
    try:
        yield
    finally:
        leave.set()
        holder.join()


def auth_status(claude: Claude) -> dict[str, object]:
    """``claude auth status`` on the file broker wrote."""
    home = claude.path.parent.parent
    done = subprocess.run(
        [str(npm_program("claude")), "auth", "status"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "CLAUDE_CONFIG_DIR": str(claude.path.parent)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


async def refresh_due(claude: Claude, attempts: int) -> None:
    planned = claude.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    claude.clock.advance_to(planned)
    await asyncio.wait_for(claude.daemon.refresher.wait_attempts(KEY, attempts), CHANGE_TIMEOUT)


@pytest.fixture(autouse=True)
def short_lock_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.followed.filelock.WAIT", 0.5)


@pytest.fixture
async def claude(short_tmp: Path) -> AsyncIterator[Claude]:
    """Broker following a Claude Code login it has just read."""
    harness, server = await start(short_tmp)
    harness.write(harness.doc(*server.issue(), 3600))
    await harness.changed()
    yield harness
    await harness.daemon.stop()  # the daemon of the moment: a test may have restarted it
    server.stop()


def file_tokens(claude: Claude) -> dict[str, object]:
    return dict(json.loads(claude.path.read_text())["claudeAiOauth"])


async def owed_under_the_storage_lock(claude: Claude) -> str:
    """A refresh while Claude Code holds ``.storage-write.lock`` past broker's wait: the refresh token it spent."""
    spent = str(file_tokens(claude)["refreshToken"])
    with held_like_claude_code(claude.path.parent / ".storage-write.lock"):
        await refresh_due(claude, 1)
        assert claude.daemon.credentials.owes(KEY)
        served = await claude.token()
        assert served["access_token"] in claude.server.access, "the new tokens are served meanwhile"
        assert file_tokens(claude)["refreshToken"] == spent, "the file still waits for them"
    return spent


async def test_every_write_back_is_a_file_claude_code_accepts(claude: Claude):
    for attempt in range(1, ROUNDS + 1):
        await refresh_due(claude, attempt)
        assert file_tokens(claude)["refreshToken"] in claude.server.live
        status = await asyncio.to_thread(auth_status, claude)
        assert status["loggedIn"] is True and status["subscriptionType"] == "max", status
    assert claude.server.counts["refreshed"] == ROUNDS and claude.server.counts["reused"] == 0
    assert not (claude.path.parent / ".oauth_refresh.lock").exists(), "released after each refresh"


async def test_broker_waits_while_claude_code_holds_its_refresh_lock(claude: Claude):
    with held_like_claude_code(claude.path.parent / ".oauth_refresh.lock"):
        await refresh_due(claude, 1)
        assert claude.server.counts["refreshed"] == 0, "nothing is redeemed while Claude Code refreshes"
        assert claude.daemon.refresher.status(KEY).last_error is not None


async def test_a_write_back_waiting_on_the_storage_lock_is_owed_and_written_on_a_timer(claude: Claude):
    spent = await owed_under_the_storage_lock(claude)
    await owed_written(claude.clock, claude.daemon.refresher.owed(KEY), CHANGE_TIMEOUT)
    written = file_tokens(claude)
    assert written["refreshToken"] in claude.server.live and written["refreshToken"] != spent
    assert written["accessToken"] == (await claude.token())["access_token"]
    assert claude.server.counts["reused"] == 0 and claude.server.counts["refreshed"] == 1


async def test_a_stop_while_a_write_back_is_owed_writes_it_at_the_next_start(claude: Claude):
    spent = await owed_under_the_storage_lock(claude)
    await claude.daemon.stop()
    assert file_tokens(claude)["refreshToken"] == spent, "still owed when broker stopped"
    env = dict(claude.daemon.env)
    claude.daemon = Daemon(load_settings(env), clock=claude.clock, env=env)
    await claude.daemon.start()  # replays the journaled answer before it is ready
    written = file_tokens(claude)
    assert written["refreshToken"] in claude.server.live and written["refreshToken"] != spent
    assert claude.server.counts["reused"] == 0 and claude.server.counts["refreshed"] == 1
    assert (await asyncio.to_thread(auth_status, claude))["loggedIn"] is True
