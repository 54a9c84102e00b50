"""Refresh through the CLI and the daemon process: rotation, dead grants, restarts."""

from __future__ import annotations

import json

from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login


def token_json(daemon: DaemonProcess, *args: str) -> dict[str, object]:
    result = daemon.cli("token", "acme", "--json", *args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def stored_refresh_token(daemon: DaemonProcess) -> str:
    """What the daemon's durable store holds, read as the daemon reads it (key file or keyring)."""
    from broker.store.select import open_store

    (credential,) = open_store("file", daemon.state_dir).load()
    assert credential.refresh_token
    return credential.refresh_token


def test_refresh_rotates_and_the_old_refresh_token_is_rejected(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    first_access = token_json(daemon)["access_token"]
    first_refresh = stored_refresh_token(daemon)

    refreshed = daemon.cli("refresh", "acme")
    assert refreshed.returncode == 0, refreshed.stderr
    assert "refreshed" in refreshed.stdout

    second_refresh = stored_refresh_token(daemon)
    assert second_refresh != first_refresh
    assert not oauth.valid_refresh_token(first_refresh)
    assert oauth.valid_refresh_token(second_refresh)
    second_access = token_json(daemon)["access_token"]
    assert second_access != first_access and oauth.valid_access_token(str(second_access))


def test_min_ttl_counts_up_to_half_the_tokens_lifetime(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    before = token_json(daemon)
    impossible = token_json(daemon, "--min-ttl", "7200")
    assert impossible["access_token"] == before["access_token"], "no 1-hour token can last 2 hours: no refresh"
    # Just under the 3600 s lifetime: a refresh now would be the first of one per request.
    almost = token_json(daemon, "--min-ttl", "3599.99")
    assert almost["access_token"] == before["access_token"], "over half the lifetime is left: no refresh"
    assert oauth.grant_counts["refresh_token"] == 0


def test_restart_keeps_credentials_and_the_rotated_refresh_token(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    assert daemon.cli("refresh", "acme").returncode == 0
    token = token_json(daemon)["access_token"]
    daemon.restart()
    assert token_json(daemon)["access_token"] == token
    assert daemon.cli("refresh", "acme").returncode == 0, "the persisted refresh token is the live one"


def test_revoked_grant_exits_3_with_the_login_hint(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    oauth.revoke_all_refresh_tokens()
    result = daemon.cli("refresh", "acme")
    assert result.returncode == 3
    assert "login_required" in result.stderr
    assert "broker login acme" in result.stderr
    status = json.loads(daemon.cli("status", "--json").stdout)
    (account,) = next(p for p in status["providers"] if p["name"] == "acme")["accounts"]
    assert account["state"] == "login_required"
    assert account["last_error"]["hint"] == "run: broker login acme"


def test_logout_forgets_the_credential_for_good(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    result = daemon.cli("logout", "acme")
    assert result.returncode == 0 and "logged out of acme" in result.stdout
    assert daemon.cli("token", "acme").returncode == 3
    daemon.restart()
    missing = daemon.cli("token", "acme")
    assert missing.returncode == 3 and "broker login acme" in missing.stderr


def test_second_account_sits_beside_the_first_which_stays_default(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    first = device_login(daemon, oauth)
    device_login(daemon, oauth, "acme", "--account", "second")
    assert token_json(daemon)["account"] == first
    assert token_json(daemon, "--account", "second")["account"] == "second"
    several = daemon.cli("logout", "acme")
    assert several.returncode == 2 and "--account" in several.stderr


def test_metrics_count_refreshes_by_result(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    assert daemon.cli("refresh", "acme").returncode == 0
    oauth.revoke_all_refresh_tokens()
    assert daemon.cli("refresh", "acme").returncode == 3
    text = metrics_text(daemon)
    assert 'broker_refreshes_total{provider="acme",result="ok"} 1' in text
    assert 'broker_refreshes_total{provider="acme",result="login_required"} 1' in text
    assert "broker_credentials 1" in text


def metrics_text(daemon: DaemonProcess) -> str:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon.socket_path))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()
