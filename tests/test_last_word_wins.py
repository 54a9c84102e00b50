"""A logout or a new login during a refresh of the same account is what remains.

The upstream is slow: it rotates the refresh token at once but holds its answer back, and
meanwhile the person logs out (or logs in again). The refresh then ends; what the person
did must hold in memory, in the store and after a restart.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from broker.client import Client
from broker.core.errors import NotLoggedIn
from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.reliability.conftest import file_store
from tests.reliability.test_crash_safety import device_login

WAIT = 10.0


@pytest.fixture
def slow(oauth: FakeOAuthServer) -> Iterator[FakeOAuthServer]:
    oauth.refresh_gate.clear()
    yield oauth
    oauth.refresh_gate.set()


def refresh_under_way(daemon: DaemonProcess, oauth: FakeOAuthServer) -> subprocess.Popen[str]:
    """``broker refresh acme``, once its request has reached the slow upstream."""
    refresh = daemon.popen("refresh", "acme")
    assert oauth.refresh_held.wait(WAIT), "the refresh reached the upstream"
    return refresh


def token(daemon: DaemonProcess) -> str:
    with Client(daemon.socket_path) as client:
        return str(client.request("GET", "/v1/token/acme")["access_token"])


def test_a_logout_during_a_refresh_stays_logged_out(daemon: DaemonProcess, slow: FakeOAuthServer):
    daemon.write_config(acme_config(slow))
    daemon.start()
    device_login(daemon.socket_path, slow)
    refresh = refresh_under_way(daemon, slow)
    logout = daemon.cli("logout", "acme")
    assert logout.returncode == 0, logout.stderr
    slow.refresh_gate.set()
    refresh.communicate(timeout=WAIT)
    assert refresh.returncode != 0, "the refresh of a login that is gone does not succeed"
    with pytest.raises(NotLoggedIn):
        token(daemon)
    assert file_store(daemon.state_dir).load() == []
    daemon.stop()
    daemon.start()
    with pytest.raises(NotLoggedIn):
        token(daemon)


def test_a_new_login_during_a_refresh_is_the_login_that_stays(daemon: DaemonProcess, slow: FakeOAuthServer):
    daemon.write_config(acme_config(slow))
    daemon.start()
    account = device_login(daemon.socket_path, slow)
    refresh = refresh_under_way(daemon, slow)
    assert device_login(daemon.socket_path, slow) == account
    (new,) = file_store(daemon.state_dir).load()
    slow.refresh_gate.set()
    refresh.communicate(timeout=WAIT)
    assert token(daemon) == new.access_token
    assert file_store(daemon.state_dir).load() == [new]
    daemon.stop()
    daemon.start()
    assert token(daemon) == new.access_token
    assert slow.valid_refresh_token(new.refresh_token or "")
