"""Who may reach the daemon and read its files."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker.client import Client
from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login

NOBODY = 65534


def mode(path: os.PathLike[str] | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_socket_is_0600_in_a_0700_directory(daemon: DaemonProcess):
    daemon.start()
    assert stat.S_ISSOCK(os.stat(daemon.socket_path).st_mode)
    assert mode(daemon.socket_path) == 0o600
    assert mode(daemon.socket_path.parent) == 0o700


def test_store_key_and_state_dir_are_private(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    assert mode(daemon.state_dir) == 0o700
    assert mode(daemon.state_dir / "credentials.enc") == 0o600
    store = daemon.request("GET", "/v1/health")["store"]
    if "key file" in store:
        assert mode(daemon.state_dir / "key") == 0o600
    else:  # a real Secret Service answers (CI): the file's key lives there, not on disk
        assert "key from keyring" in store
        assert not (daemon.state_dir / "key").exists()


def test_a_directory_broker_did_not_create_keeps_its_mode(daemon: DaemonProcess):
    """A socket in the home directory: broker must not chmod the user's home."""
    home = Path(daemon.env["HOME"])
    os.chmod(home, 0o751)
    daemon.start(extra_env={"BROKER_SOCKET": str(home / "broker.sock")})
    assert mode(home) == 0o751
    assert mode(home / "broker.sock") == 0o600
    with Client(home / "broker.sock") as client:
        assert client.request("GET", "/v1/health")["status"] == "ok", "the client trusts a home it owns"


def test_missing_directories_are_made_0700_whatever_the_umask(daemon: DaemonProcess):
    socket_path = daemon.root / "run" / "deep" / "er" / "broker.sock"
    old = os.umask(0)
    try:
        daemon.start(extra_env={"BROKER_SOCKET": str(socket_path)})
    finally:
        os.umask(old)
    assert mode(socket_path.parent) == 0o700 and mode(socket_path.parent.parent) == 0o700


@pytest.mark.parametrize("loose", [0o777, 0o1777, 0o770])
def test_a_socket_directory_others_can_write_to_is_refused_and_left_alone(daemon: DaemonProcess, loose: int):
    directory = daemon.socket_path.parent
    directory.mkdir()
    os.chmod(directory, loose)
    started = subprocess.run(
        [sys.executable, "-m", "broker", "serve"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert started.returncode == 69
    assert f"{directory} can be written by others (mode {loose:04o})" in started.stderr
    assert "BROKER_SOCKET" in started.stderr
    assert mode(directory) == loose


def test_stale_socket_from_a_killed_daemon_is_replaced(daemon: DaemonProcess):
    daemon.start()
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait()
    assert daemon.socket_path.exists()
    daemon.process = None
    daemon.start()
    assert daemon.request("GET", "/v1/health")["status"] == "ok"


def test_second_daemon_on_a_live_socket_refuses_to_start(daemon: DaemonProcess):
    daemon.start()
    second = subprocess.run(
        [sys.executable, "-m", "broker", "serve"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 69
    assert "another broker daemon already listens" in second.stderr
    assert daemon.request("GET", "/v1/health")["status"] == "ok"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_peer_with_another_uid_is_refused_even_when_it_can_connect(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    # Open the path up on purpose (as systemd-socket-activate's 0644 socket would be):
    # the peer-uid check must still refuse.
    for path in (daemon.root, daemon.root / "run", daemon.socket_path.parent):
        os.chmod(path, 0o755)
    os.chmod(daemon.socket_path, 0o666)
    result = subprocess.run(
        ["curl", "-si", "--unix-socket", str(daemon.socket_path), "http://broker/v1/token/acme"],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 403")
    assert '"code": "forbidden"' in result.stdout
    token = daemon.cli("token", "acme").stdout.strip()
    assert token and token not in result.stdout
    assert "refused a peer with uid=65534" in daemon.log()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_another_uid_can_read_none_of_the_files(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    os.chmod(daemon.root, 0o755)
    os.chmod(daemon.root / "state", 0o755)
    for target in (daemon.state_dir / "credentials.enc", daemon.state_dir / "key"):
        result = subprocess.run(
            ["cat", str(target)], user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, timeout=10
        )
        assert result.returncode != 0 and b"Permission denied" in result.stderr


def test_socket_connect_is_refused_cleanly_without_a_daemon(daemon: DaemonProcess):
    with pytest.raises(OSError):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(daemon.socket_path))
