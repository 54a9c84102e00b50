"""A FIFO, a directory or a socket at a followed path never blocks the daemon.

Opening a FIFO for reading waits for a writer; before, that wait held the followed files'
lock, so the watcher stopped, ``status`` showed ``refreshing`` for ever and SIGTERM no
longer stopped the daemon. Now each is a clear problem in ``status``, and SIGTERM still
stops the daemon within 2 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.client import Client
from broker.followed.filelock import flocked, open_regular
from tests.conftest import DaemonProcess
from tests.followed_harness import start_daemon

KINDS: dict[str, tuple[Callable[[Path], object], str]] = {
    "fifo": (os.mkfifo, "a FIFO (named pipe)"),
    "directory": (os.mkdir, "a directory"),
    "socket": (lambda path: socket.socket(socket.AF_UNIX).bind(str(path)), "a socket"),
}


def codex_file(daemon: DaemonProcess) -> Path:
    path = Path(daemon.env["HOME"]) / ".codex" / "auth.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def codex_files(daemon: DaemonProcess) -> list[dict[str, object]]:
    with Client(daemon.socket_path) as client:
        listing = client.request("GET", "/v1/providers")
    return list(next(p for p in listing["providers"] if p["name"] == "codex")["files"])


def stops_within_two_seconds(daemon: DaemonProcess) -> None:
    assert daemon.process is not None
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=5) == 0
    assert time.monotonic() - started < 2.0, "SIGTERM stops the daemon within 2 s"
    daemon.process = None


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_followed_path_that_is_not_a_file_is_a_clear_error_and_blocks_nothing(daemon: DaemonProcess, kind: str):
    make, described = KINDS[kind]
    make(codex_file(daemon))
    daemon.start()
    (entry,) = codex_files(daemon)
    assert entry["state"] == "error"
    error = entry["error"]
    assert isinstance(error, dict)
    assert f"is {described}, not a regular file" in str(error["message"]), error
    assert "remove it" in str(error["hint"])
    status = daemon.cli("status")
    assert status.returncode == 1 and described in status.stdout, "a broken file needs the user: " + status.stdout
    stops_within_two_seconds(daemon)


async def test_a_file_replaced_by_a_fifo_while_the_daemon_runs_blocks_nothing(short_tmp: Path):
    broker = await start_daemon(short_tmp, "")
    try:
        path = Path(broker.env["HOME"]) / ".codex" / "auth.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"OPENAI_API_KEY": "sk-test-key"}))
        await broker.file_state(path, "ok")
        path.unlink()
        os.mkfifo(path)
        state = await broker.file_state(path, "error")
        assert state.problem is not None and "a FIFO (named pipe)" in state.problem.message
        assert (await broker.token("codex"))["access_token"] == "sk-test-key", "the last good credential is served"
    finally:
        await asyncio.wait_for(broker.stop(), 2.0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_opening_or_locking_a_path_that_is_not_a_file_refuses_at_once(short_tmp: Path, kind: str):
    """What a path swapped for a FIFO between broker's check and its open meets: a refusal, never a wait."""
    make = KINDS[kind][0]
    path = short_tmp / "auth.json"
    make(path)
    for attempt in (lambda: os.close(open_regular(path)), lambda: flocked(path).__enter__()):
        with pytest.raises(OSError, match=r"not a regular file|Is a directory|No such device"):
            attempt()  # a FIFO opened for reading without O_NONBLOCK would wait here for a writer
