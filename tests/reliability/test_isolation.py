"""Another uid gets nothing: no token through the socket, no byte of broker's files.

``tests/test_socket_security.py`` checks the peer-uid refusal with curl and two files;
this runs the other user through ``setpriv`` (the real ``broker`` CLI among others),
walks every path the daemon created after logins, refreshes and a restart, and checks
the modes DESIGN.md states hold even when the daemon starts under ``umask 000``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login

NOBODY = "65534"
AS_NOBODY = ["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"]

RAW_TOKEN_REQUEST = """
import socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect(sys.argv[1])
    sock.sendall(b"GET /v1/token/acme HTTP/1.1\\r\\nHost: broker\\r\\nConnection: close\\r\\n\\r\\n")
    print(b"".join(iter(lambda: sock.recv(65536), b"")).decode())
"""

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another uid")


def as_nobody(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AS_NOBODY, *argv], env=env, capture_output=True, text=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def open_up_the_way(daemon: DaemonProcess) -> None:
    """Make the directories above broker's own as open as a usual HOME: only broker's modes protect it."""
    for directory in (daemon.root, daemon.root / "run", daemon.root / "state"):
        os.chmod(directory, 0o755)


def key_on_disk(daemon: DaemonProcess) -> bool:
    """The store's key is a key file, or (where a Secret Service answers, as in CI) in the keyring."""
    store = daemon.request("GET", "/v1/health")["store"]
    assert "key file" in store or "key from keyring" in store, store
    return "key file" in store


def logged_in(daemon: DaemonProcess, oauth: FakeOAuthServer) -> str:
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    assert daemon.cli("refresh", "acme").returncode == 0
    token = daemon.cli("token", "acme").stdout.strip()
    assert token
    return token


def test_broker_token_run_as_another_uid_gets_no_token(daemon: DaemonProcess, oauth: FakeOAuthServer):
    token = logged_in(daemon, oauth)
    if as_nobody(sys.executable, "-c", "pass").returncode != 0:
        pytest.skip(f"{sys.executable} cannot be run by uid {NOBODY} here")
    env = {**daemon.env, "HOME": "/nonexistent"}
    for opened in (False, True):
        if opened:  # as systemd-socket-activate leaves it: only the peer-uid check is left
            open_up_the_way(daemon)
            os.chmod(daemon.socket_path.parent, 0o755)
            os.chmod(daemon.socket_path, 0o666)
        result = as_nobody(sys.executable, "-m", "broker", "token", "acme", env=env)
        assert result.returncode == 69
        assert result.stdout == ""
        assert token not in result.stderr
        # Closed, the directory stops it; opened, the client itself sees whose daemon answers.
        expected = "is served by uid 0 (root)" if opened else "daemon_unavailable"
        assert expected in result.stderr, result.stderr
    # A client that skips that check (a raw request) meets the daemon's own peer check.
    raw = as_nobody(sys.executable, "-c", RAW_TOKEN_REQUEST, str(daemon.socket_path), env=env)
    assert raw.stdout.startswith("HTTP/1.1 403") and '"forbidden"' in raw.stdout, raw.stdout + raw.stderr
    assert token not in raw.stdout
    assert "refused a peer with uid=65534" in daemon.log()


def test_curl_as_another_uid_cannot_even_connect_to_the_socket(daemon: DaemonProcess, oauth: FakeOAuthServer):
    token = logged_in(daemon, oauth)
    open_up_the_way(daemon)
    result = as_nobody("curl", "-s", "--unix-socket", str(daemon.socket_path), "http://broker/v1/token/acme")
    assert result.returncode == 7, "curl: failed to connect"
    assert token not in result.stdout
    assert "refused a peer" not in daemon.log(), "the socket's directory stopped it before the daemon had to"


def test_another_uid_can_read_or_list_nothing_broker_wrote(daemon: DaemonProcess, oauth: FakeOAuthServer):
    logged_in(daemon, oauth)
    daemon.restart()
    assert daemon.cli("refresh", "acme").returncode == 0
    open_up_the_way(daemon)
    written = [daemon.state_dir, *daemon.state_dir.iterdir(), daemon.socket_path.parent]
    assert {p.name for p in written} >= {"credentials.enc", *(["key"] if key_on_disk(daemon) else [])}
    for path in written:
        if path.is_dir():
            listed = as_nobody("ls", str(path))
            assert listed.returncode != 0 and "Permission denied" in listed.stderr, path
        else:
            read = as_nobody("cat", str(path))
            assert read.returncode != 0 and "Permission denied" in read.stderr, path


def test_modes_hold_under_a_permissive_umask(daemon: DaemonProcess, oauth: FakeOAuthServer):
    with umask(0o000):
        logged_in(daemon, oauth)
        daemon.restart()
        assert daemon.cli("refresh", "acme").returncode == 0
    assert mode(daemon.state_dir) == 0o700
    assert mode(daemon.state_dir / "credentials.enc") == 0o600
    if key_on_disk(daemon):
        assert mode(daemon.state_dir / "key") == 0o600
    assert mode(daemon.socket_path.parent) == 0o700
    assert mode(daemon.socket_path) == 0o600
    for path in daemon.state_dir.iterdir():
        assert mode(path) & 0o077 == 0, f"{path.name} is open to others"
