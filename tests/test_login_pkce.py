"""Code grant with PKCE and a loopback redirect (RFC 6749 §4.1, RFC 7636, RFC 8252)."""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.conftest import DaemonProcess, acme_config, read_event
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import authorize, browser_get


@pytest.fixture
def pkce_daemon(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    daemon.write_config(acme_config(oauth, flow="pkce"))
    return daemon.start()


def test_authorization_url_carries_s256_challenge_state_and_loopback_redirect(pkce_daemon: DaemonProcess):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    opened = read_event(login)
    assert opened["event"] == "open"
    query = parse_qs(urlsplit(opened["url"]).query)
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert len(query["state"][0]) >= 32
    redirect = urlsplit(query["redirect_uri"][0])
    assert (redirect.scheme, redirect.hostname, redirect.path) == ("http", "127.0.0.1", "/callback")
    assert redirect.port and redirect.port > 0
    login.kill()


def test_browser_redirect_completes_the_login(pkce_daemon: DaemonProcess, oauth: FakeOAuthServer):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    status, page = browser_get(location)
    assert status == 200 and "Signed in" in page
    assert read_event(login) == {"event": "done", "provider": "acme", "account": "alice@example.com"}
    assert login.wait(timeout=10) == 0
    token = pkce_daemon.cli("token", "acme", "--json")
    assert '"api": "openai-chat"' in token.stdout
    code_exchange = [form for _, path, form in oauth.requests if path == "/token"][-1]
    assert code_exchange["grant_type"] == "authorization_code"
    assert len(code_exchange["code_verifier"]) >= 43


def test_listener_closes_after_the_redirect(pkce_daemon: DaemonProcess):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    browser_get(location)
    assert read_event(login)["event"] == "done"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(location, timeout=5)


def test_wrong_state_is_refused_and_the_login_still_completes(pkce_daemon: DaemonProcess):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    parts = urlsplit(location)
    forged = parts._replace(query=urlencode({"code": "forged", "state": "not-the-state"})).geturl()
    status, page = browser_get(forged)
    assert status == 400 and "state" in page
    assert browser_get(location)[0] == 200
    assert read_event(login)["event"] == "done"


def test_pasted_redirect_url_completes_the_login(pkce_daemon: DaemonProcess):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    assert login.stdin is not None
    login.stdin.write(location + "\n")
    login.stdin.flush()
    assert read_event(login)["event"] == "done"
    assert login.wait(timeout=10) == 0


def test_denied_authorization_ends_with_login_failed(pkce_daemon: DaemonProcess, oauth: FakeOAuthServer):
    oauth.deny_authorizations = True
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    assert "error=access_denied" in location
    browser_get(location)
    event = read_event(login)
    assert event["event"] == "error" and event["code"] == "login_failed"
    assert login.wait(timeout=10) == 1
