"""Code grant with PKCE and a loopback redirect (RFC 6749 §4.1, RFC 7636, RFC 8252, RFC 9207)."""

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
    done = read_event(login)
    assert done == {
        "event": "done",
        "provider": "acme",
        "account": "alice@example.com",
        "refreshable": True,
        "expires_at": done["expires_at"],
        "expires_in": done["expires_in"],
    }
    assert 3590 <= done["expires_in"] <= 3600
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


def test_offline_access_is_asked_with_prompt_consent(pkce_daemon: DaemonProcess):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    query = parse_qs(urlsplit(read_event(login)["url"]).query)
    assert query["scope"] == ["openid offline_access"]
    assert query["prompt"] == ["consent"], "OpenID Connect Core §11: else the server drops offline_access"
    login.kill()


def with_state(location: str, **params: str) -> str:
    """The loopback address of ``location`` with this login's state and other parameters."""
    parts = urlsplit(location)
    state = parse_qs(parts.query)["state"][0]
    return parts._replace(query=urlencode({"state": state, **params})).geturl()


def test_error_redirect_with_another_state_is_ignored_and_the_login_still_completes(pkce_daemon: DaemonProcess):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    forged = urlsplit(location)._replace(query=urlencode({"error": "access_denied", "state": "guessed"})).geturl()
    status, page = browser_get(forged)
    assert status == 400 and "state does not match" in page
    stateless = urlsplit(location)._replace(query="error=access_denied").geturl()
    assert browser_get(stateless)[0] == 400
    not_ascii = urlsplit(location)._replace(query=urlencode({"error": "access_denied", "state": "é"})).geturl()
    assert browser_get(not_ascii)[0] == 400
    assert browser_get(location)[0] == 200, "the login kept waiting for its own redirect"
    assert read_event(login)["event"] == "done"


def test_error_redirect_with_the_state_ends_the_login(pkce_daemon: DaemonProcess):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    status, _ = browser_get(with_state(location, error="access_denied"))
    assert status == 400
    event = read_event(login)
    assert event["event"] == "error" and event["code"] == "login_failed"


def test_texts_in_the_listener_pages_are_html_escaped(pkce_daemon: DaemonProcess):
    login = pkce_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    status, page = browser_get(with_state(location, error="<script>alert(1)</script>"))
    assert status == 400
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    login.kill()


@pytest.fixture
def iss_daemon(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    """A server that says ``authorization_response_iss_parameter_supported`` (RFC 9207)."""
    oauth.iss_in_redirect = True
    daemon.write_config(acme_config(oauth, flow="pkce"))
    return daemon.start()


def test_redirect_with_the_issuers_iss_completes_the_login(iss_daemon: DaemonProcess, oauth: FakeOAuthServer):
    login = iss_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    assert parse_qs(urlsplit(location).query)["iss"] == [oauth.issuer]
    assert browser_get(location)[0] == 200
    assert read_event(login)["event"] == "done"


@pytest.mark.parametrize("iss", ["https://attacker.example", None], ids=["another-issuer", "no-iss"])
def test_redirect_from_another_issuer_or_without_iss_fails_the_login(iss_daemon: DaemonProcess, iss: str | None):
    login = iss_daemon.popen("login", "acme", "--no-browser", "--json")
    location = authorize(read_event(login)["url"])
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items() if k != "iss"}
    if iss is not None:
        query["iss"] = iss
    status, page = browser_get(urlsplit(location)._replace(query=urlencode(query)).geturl())
    assert status == 400 and "RFC 9207" in page
    event = read_event(login)
    assert event["event"] == "error" and event["code"] == "login_failed"
    assert "RFC 9207" in event["message"] and "issuer" in event["message"]
    assert login.wait(timeout=10) == 1
