"""``broker login`` as a person sees it: on a pipe, on a terminal (a real pty), and interrupted."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, acme_config, read_event
from tests.fakes.oauth_server import FakeOAuthServer

PROMPT_TIMEOUT = 30.0


def on_terminal(
    daemon: DaemonProcess, *args: str, answers: dict[bytes, bytes] | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """``broker ARGS`` with a pty as its controlling terminal; each prompt in ``answers`` gets its answer."""
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**daemon.env, "TERM": "xterm", **(env or {})},
        start_new_session=True,
        preexec_fn=controlling_terminal,  # the pty must be the child's terminal, for getpass
    )
    os.close(slave)
    pending, seen = dict(answers or {}), b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], PROMPT_TIMEOUT)
            assert ready, f"no output within {PROMPT_TIMEOUT} s: {seen!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed its terminal
                break
            if not chunk:
                break
            seen += chunk
            for prompt in [p for p in pending if p in seen]:
                os.write(master, pending.pop(prompt))
    finally:
        os.close(master)
    return process.wait(timeout=PROMPT_TIMEOUT), seen.decode(errors="replace").replace("\r\n", "\n")


def key_login(daemon: DaemonProcess, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return daemon.cli("login", "openai", "--key-stdin", *extra, input=key + "\n")


@pytest.fixture
def acme(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    daemon.write_config(acme_config(oauth))
    return daemon.start()


def test_the_user_code_stands_on_a_line_of_its_own(acme: DaemonProcess, oauth: FakeOAuthServer):
    login = acme.popen("login", "acme", "--no-browser")
    assert login.stderr is not None
    lines = []
    while not (lines and lines[-1].strip() and len(lines) > 2 and not lines[-2].strip()):
        lines.append(login.stderr.readline())
    code = lines[-1].strip()
    assert lines[0].startswith("To sign in to acme, open ") and lines[0].rstrip().endswith("enter this code:")
    assert lines[-1] == f"    {code}\n" and " " not in code, "the code alone on its line, indented"
    oauth.approve(code)
    assert login.wait(timeout=30) == 0
    rest = login.stderr.read()
    assert "logged in to acme as " in rest
    assert "open this address" not in "".join(lines) + rest


def test_the_text_says_opened_in_your_browser_when_it_was(acme: DaemonProcess, oauth: FakeOAuthServer, tmp_path: Path):
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\nprintf '%s' \"$1\" > {opened}\n")
    browser.chmod(0o755)
    acme.env.update(DISPLAY=":99", BROWSER=str(browser))
    login = acme.popen("login", "acme")
    assert login.stderr is not None
    first = login.stderr.readline()
    assert "was opened in your browser" in first, first
    url = opened.read_text()
    assert url in first and url.startswith(oauth.url)
    line = ""
    while not line.startswith("    "):
        line = login.stderr.readline()
    oauth.approve(line.strip())
    assert login.wait(timeout=30) == 0


def test_ctrl_c_cancels_the_login_in_the_daemon_too(acme: DaemonProcess, oauth: FakeOAuthServer):
    login = acme.popen("login", "acme", "--json", "--no-browser")
    verify = read_event(login)
    login.send_signal(signal.SIGINT)
    assert login.wait(timeout=30) == 130
    assert login.stderr is not None
    err = login.stderr.read()
    assert "login cancelled" in err and "Traceback" not in err
    deadline = 100
    while "login cancelled provider=acme" not in acme.log():
        deadline -= 1
        assert deadline, "the daemon did not log the cancelled login"
        acme.request("GET", "/v1/health")  # a round trip to the daemon, not a sleep
    oauth.approve(verify["user_code"])
    acme_entry = next(p for p in acme.request("GET", "/v1/providers")["providers"] if p["name"] == "acme")
    assert acme_entry["accounts"] == [], "no login finished after the cancel"


def test_options_a_provider_does_not_take_are_refused_with_what_it_takes(daemon: DaemonProcess):
    daemon.start()
    result = daemon.cli("login", "openai", "--device")
    assert result.returncode == 2
    assert "openai does not take --device" in result.stderr
    assert "openai takes: --account NAME, --force, --json, --token-stdin (--key-stdin)" in result.stderr
    result = daemon.cli("login", "codex", "--enterprise-url", "https://ghe.example.com", "--no-browser")
    assert result.returncode == 2 and "codex does not take --enterprise-url" in result.stderr
    assert "--flow pkce|device" in result.stderr
    assert daemon.cli("login", "claude", "--device").stderr.count("run: claude, then /login") == 1


def test_logging_in_again_over_a_working_key_asks_first_on_a_terminal(daemon: DaemonProcess):
    daemon.start()
    assert key_login(daemon, "sk-first").returncode == 0
    status, seen = on_terminal(daemon, "login", "openai", answers={b"[y/N] ": b"n\n"})
    assert status == 1 and "openai already has a working login (default)" in seen
    assert "nothing changed" in seen
    assert daemon.cli("token", "openai").stdout.strip() == "sk-first"

    status, seen = on_terminal(daemon, "login", "openai", answers={b"[y/N] ": b"y\n", b"API key: ": b"sk-second\n"})
    assert status == 0, seen
    assert daemon.cli("token", "openai").stdout.strip() == "sk-second"

    status, seen = on_terminal(daemon, "login", "openai", "--force", answers={b"API key: ": b"sk-third\n"})
    assert status == 0 and "[y/N]" not in seen
    assert daemon.cli("token", "openai").stdout.strip() == "sk-third"


def test_a_scripted_login_replaces_the_key_and_says_so(daemon: DaemonProcess):
    daemon.start()
    key_login(daemon, "sk-first")
    result = key_login(daemon, "sk-second")
    assert result.returncode == 0 and "this replaces it" in result.stderr
    assert daemon.cli("token", "openai").stdout.strip() == "sk-second"


def test_errors_are_coloured_on_a_terminal_unless_no_color(daemon: DaemonProcess):
    daemon.start()
    _, coloured = on_terminal(daemon, "token", "nope")
    assert "\x1b[" in coloured and "unknown_provider" in coloured
    _, plain = on_terminal(daemon, "token", "nope", env={"NO_COLOR": "1"})
    assert "\x1b[" not in plain and "unknown_provider" in plain
    assert "\x1b[" not in daemon.cli("token", "nope").stderr, "never on a pipe"


def test_a_login_error_follows_the_text_without_a_blank_line(acme: DaemonProcess, oauth: FakeOAuthServer):
    login = acme.popen("login", "acme", "--no-browser")
    assert login.stderr is not None
    shown = ""
    while not shown.endswith("\n\n") or "    " not in shown:
        shown += login.stderr.readline()
    oauth.deny(shown.split("\n\n")[1].strip())
    assert login.wait(timeout=30) == 1
    shown += login.stderr.read()
    assert "broker: login_failed: acme: the sign-in was denied\n  to try again, run: broker login acme\n" in shown
    assert "\n\nbroker:" not in shown, "no blank line before the error"
    assert "retried by itself" not in shown
