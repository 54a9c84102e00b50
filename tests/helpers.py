"""Small steps many tests share: a completed device login through the CLI."""

from __future__ import annotations

from tests.conftest import DaemonProcess, read_event
from tests.fakes.oauth_server import FakeOAuthServer


def device_login(daemon: DaemonProcess, oauth: FakeOAuthServer, provider: str = "acme", *extra: str) -> str:
    """Log in through ``broker login --json``; the account name."""
    login = daemon.popen("login", provider, "--no-browser", "--json", *extra)
    oauth.approve(read_event(login)["user_code"])
    done = read_event(login)
    assert done["event"] == "done", done
    assert login.wait(timeout=10) == 0
    return str(done["account"])
