"""Device-code login (RFC 8628) through the CLI, the daemon and a real authorization server."""

from __future__ import annotations

from tests.conftest import DaemonProcess, acme_config, read_event
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import without_lasting


def start_login(daemon: DaemonProcess, *extra: str):  # type: ignore[no-untyped-def]
    return daemon.popen("login", "acme", "--no-browser", "--json", *extra)


def test_device_login_prints_verify_then_done_and_serves_the_token(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    login = start_login(daemon)
    verify = read_event(login)
    assert verify["event"] == "verify"
    assert verify["verification_uri"] == f"{oauth.url}/device"
    assert verify["verification_uri_complete"].startswith(f"{oauth.url}/device")
    assert verify["expires_in"] > 0 and verify["user_code"]
    oauth.approve(verify["user_code"])
    done = read_event(login)
    assert without_lasting(done) == {"event": "done", "provider": "acme", "account": "alice@example.com"}
    assert done["refreshable"] is True and 3590 <= done["expires_in"] <= 3600
    assert login.wait(timeout=10) == 0

    token = daemon.cli("token", "acme")
    assert token.returncode == 0, token.stderr
    assert oauth.valid_access_token(token.stdout.strip())


def test_device_login_sends_the_rfc_8628_form(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    login = start_login(daemon)
    oauth.approve(read_event(login)["user_code"])
    assert read_event(login)["event"] == "done"
    polls = [form for method, path, form in oauth.requests if path == "/token"]
    assert polls, "the daemon never polled"
    assert polls[-1]["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
    assert polls[-1]["client_id"] == "broker-cli"
    authorization = next(form for method, path, form in oauth.requests if path == "/device_authorization")
    assert authorization == {"client_id": "broker-cli", "scope": "openid offline_access"}


def test_denied_device_login_exits_nonzero_with_an_error_event(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    login = start_login(daemon)
    oauth.deny(read_event(login)["user_code"])
    error = read_event(login)
    assert error["event"] == "error"
    assert error["code"] == "login_failed"
    assert "denied" in error["message"]
    assert login.wait(timeout=10) == 1
    assert daemon.cli("token", "acme").returncode == 3


def test_expired_device_code_ends_the_login(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    login = start_login(daemon)
    oauth.expire(read_event(login)["user_code"])
    error = read_event(login)
    assert error["code"] == "login_failed"
    assert "expired" in error["message"]
    assert login.wait(timeout=10) == 1


def test_account_flag_names_the_login(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    login = start_login(daemon, "--account", "work")
    oauth.approve(read_event(login)["user_code"])
    assert read_event(login)["account"] == "work"
    assert daemon.request("GET", "/v1/token/acme?account=work")["account"] == "work"


def test_human_login_shows_code_and_url(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    login = daemon.popen("login", "acme", "--no-browser")
    assert login.stderr is not None
    first = login.stderr.readline()
    assert f"open {oauth.url}/device" in first and first.rstrip().endswith("enter this code:")
    assert login.stderr.readline() == "\n"
    code = login.stderr.readline().strip()
    oauth.approve(code)
    assert login.wait(timeout=10) == 0
    assert "logged in to acme as alice@example.com" in login.stderr.read()


def test_invalid_client_is_reported_with_a_config_hint(daemon: DaemonProcess, oauth: FakeOAuthServer):
    wrong_secret = 'client_id = "broker-secret"\nclient_secret = "wrong"'
    config = acme_config(oauth).replace('client_id = "broker-cli"', wrong_secret)
    daemon.write_config(config)
    daemon.start()
    login = start_login(daemon)
    event = read_event(login)
    assert event["event"] == "error"
    assert "invalid_client" in event["message"]
    assert "client_secret" in event["hint"]
    assert login.wait(timeout=10) == 1
