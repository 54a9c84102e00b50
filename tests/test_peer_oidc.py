"""The generic provider against a real, independently written OpenID provider: panva's
OpenID-certified oidc-provider from npm (pinned in tests/peers/npm.txt), set up strictly
by tests/peers/oidc_provider.mjs: code grant with PKCE and device grant, access tokens of
6 seconds, refresh tokens that rotate and revoke the login when a spent one comes back,
and offline_access (the refresh token) only with consent.

The real daemon logs in over its socket; the test is the person's browser.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from tests.conftest import DaemonProcess, read_event
from tests.helpers import browser_get
from tests.oidc_peer import CLIENT_ID, Browser, OidcPeer

ACCESS_TOKEN_TTL = 6
REFRESHES = 3
"""Timer refreshes awaited on each side of the daemon's restart."""
REFRESH_WAIT = 3 * ACCESS_TOKEN_TTL
"""Seconds a refresh may take to show up: the timer's is due after half a lifetime."""


@pytest.fixture
def peer() -> Iterator[OidcPeer]:
    server = OidcPeer(ACCESS_TOKEN_TTL)
    yield server
    server.stop()


def config(peer: OidcPeer, *, flow: str = "pkce", extra: str = "") -> str:
    """The generic provider as a new user would write it: no scopes, discovery does the rest."""
    return f"""
[providers.oidc]
type = "oauth"
flow = "{flow}"
issuer = "{peer.issuer}"
client_id = "{CLIENT_ID}"
base_url = "https://llm.example/v1"
{extra}
"""


def pkce_login(daemon: DaemonProcess, peer: OidcPeer) -> tuple[dict[str, object], dict[str, list[str]]]:
    """``broker login oidc`` with the test as the browser: the done event and the authorization query."""
    login = daemon.popen("login", "oidc", "--no-browser", "--json")
    url = read_event(login)["url"]
    status, page = browser_get(Browser(peer).authorize(url))
    assert status == 200, page
    done = read_event(login)
    assert login.wait(timeout=10) == 0
    return done, parse_qs(urlsplit(url).query)


def served_token(daemon: DaemonProcess) -> dict[str, object]:
    result = daemon.cli("token", "oidc", "--json")
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def no_reuse_seen(peer: OidcPeer) -> None:
    """Nothing the server said so far was a refused grant or a login it revoked."""
    while True:
        try:
            peer.next_event(0)
        except queue.Empty:
            break
    bad = [event for event in peer.seen if event["event"] in ("grant_error", "grant_revoked")]
    assert not bad, bad


def test_a_pkce_login_lasts_through_refreshes_and_a_restart_then_logs_out(daemon: DaemonProcess, peer: OidcPeer):
    daemon.write_config(config(peer))
    daemon.start()
    done, query = pkce_login(daemon, peer)
    assert query["scope"] == ["openid offline_access"], "the defaults for an OpenID server"
    assert query["prompt"] == ["consent"]
    assert done["account"] == "alice", "named after the id_token, checked against the server's JWKS"
    assert done["refreshable"] is True and 0 < int(str(done["expires_in"])) <= ACCESS_TOKEN_TTL
    code = peer.next_grant("authorization_code", 10)
    assert code["refresh_token"] is True and "offline_access" in code["scope"]

    for _ in range(REFRESHES):
        refreshed = peer.next_grant("refresh_token", REFRESH_WAIT)
        assert refreshed["refresh_token"] is True, "rotated"
        assert peer.userinfo(str(served_token(daemon)["access_token"])) == 200

    daemon.restart()
    for _ in range(REFRESHES):
        assert peer.next_grant("refresh_token", REFRESH_WAIT)["refresh_token"] is True
        assert peer.userinfo(str(served_token(daemon)["access_token"])) == 200
    token = served_token(daemon)
    assert peer.userinfo(str(token["access_token"])) == 200
    assert 0 < int(str(token["expires_in"])) <= ACCESS_TOKEN_TTL
    no_reuse_seen(peer)

    logout = daemon.cli("logout", "oidc")
    assert logout.returncode == 0, logout.stderr
    gone = daemon.cli("token", "oidc", "--json")
    assert gone.returncode != 0 and "not_logged_in" in gone.stdout + gone.stderr


def test_a_device_login_gets_a_refresh_token_and_is_refreshed(daemon: DaemonProcess, peer: OidcPeer):
    daemon.write_config(config(peer, flow="device"))
    daemon.start()
    login = daemon.popen("login", "oidc", "--no-browser", "--json")
    verify = read_event(login)
    assert verify["event"] == "verify"
    page = Browser(peer).approve_device(verify["verification_uri"], verify["user_code"])
    assert "<h1>Sign-in Success</h1>" in page, page[:300]
    done = read_event(login)
    assert done["event"] == "done" and done["account"] == "alice" and done["refreshable"] is True
    assert peer.next_grant("urn:ietf:params:oauth:grant-type:device_code", 10)["refresh_token"] is True
    assert peer.next_grant("refresh_token", REFRESH_WAIT)["refresh_token"] is True
    assert peer.userinfo(str(served_token(daemon)["access_token"])) == 200
    no_reuse_seen(peer)


def test_without_prompt_consent_the_server_drops_offline_access_and_the_login_says_it(
    daemon: DaemonProcess, peer: OidcPeer
):
    """broker's behaviour before: no prompt=consent, no refresh token, a login that silently dies."""
    daemon.write_config(config(peer, extra='authorize_params = { prompt = "" }'))
    daemon.start()
    done, query = pkce_login(daemon, peer)
    assert "prompt" not in query and query["scope"] == ["openid offline_access"]
    code = peer.next_grant("authorization_code", 10)
    assert code["refresh_token"] is False and "offline_access" not in code["scope"]
    assert done["refreshable"] is False
    status = daemon.cli("status").stdout
    assert "not renewable: this login ends when the token expires" in status


def test_a_redirect_stripped_of_its_iss_fails_the_login(daemon: DaemonProcess, peer: OidcPeer):
    """The server's metadata promises iss in every authorization response (RFC 9207)."""
    daemon.write_config(config(peer))
    daemon.start()
    login = daemon.popen("login", "oidc", "--no-browser", "--json")
    location = Browser(peer).authorize(read_event(login)["url"])
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query.pop("iss") == peer.issuer
    status, _ = browser_get(urlsplit(location)._replace(query=urlencode(query)).geturl())
    assert status == 400
    event = read_event(login)
    assert event["event"] == "error" and "RFC 9207" in event["message"]


def test_the_server_revokes_the_login_when_a_spent_refresh_token_comes_back(peer: OidcPeer):
    """The strictness broker relies on: rotation with reuse detection, seen from a client of the test's own."""
    verifier = "v" * 64
    redirect_uri = "http://127.0.0.1:9/callback"
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri,
        "scope": "openid offline_access",
        "prompt": "consent",
        "state": "s",
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    location = Browser(peer).authorize(f"{peer.issuer}/auth?{urlencode(query)}")
    code = parse_qs(urlsplit(location).query)["code"][0]
    status, first = peer.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": CLIENT_ID,
        }
    )
    assert status == 200
    refresh = {"grant_type": "refresh_token", "client_id": CLIENT_ID}
    status, second = peer.token({**refresh, "refresh_token": first["refresh_token"]})
    assert status == 200 and second["refresh_token"] != first["refresh_token"], "rotated"
    status, reused = peer.token({**refresh, "refresh_token": first["refresh_token"]})
    assert (status, reused["error"]) == (400, "invalid_grant")
    status, after = peer.token({**refresh, "refresh_token": second["refresh_token"]})
    assert (status, after["error"]) == (400, "invalid_grant"), "the reuse revoked the whole login"
