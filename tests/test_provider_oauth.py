"""The generic provider (``type = "oauth"``): authorization parameters, defaults for OpenID
servers, and a login that says how long it lasts."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from broker.providers.registry import build_registry

from broker.core.config import load_settings
from broker.core.errors import ConfigError
from tests.conftest import DaemonProcess, acme_config, isolated_env, read_event
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import authorize, browser_get, device_login


def authorization_query(daemon: DaemonProcess) -> dict[str, list[str]]:
    login = daemon.popen("login", "acme", "--no-browser", "--json")
    try:
        return parse_qs(urlsplit(read_event(login)["url"]).query)
    finally:
        login.kill()


def test_authorize_params_go_into_the_authorization_request(daemon: DaemonProcess, oauth: FakeOAuthServer):
    extra = 'authorize_params = { access_type = "offline", audience = "https://llm.acme.example" }'
    daemon.write_config(acme_config(oauth, flow="pkce", extra=extra))
    daemon.start()
    query = authorization_query(daemon)
    assert query["access_type"] == ["offline"]
    assert query["audience"] == ["https://llm.acme.example"]
    assert query["prompt"] == ["consent"]


def test_an_empty_authorize_param_drops_the_default_prompt(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth, flow="pkce", extra='authorize_params = { prompt = "" }'))
    daemon.start()
    assert "prompt" not in authorization_query(daemon)


def test_a_prompt_of_ones_own_replaces_the_default(daemon: DaemonProcess, oauth: FakeOAuthServer):
    extra = 'authorize_params = { prompt = "login consent" }'
    daemon.write_config(acme_config(oauth, flow="pkce", extra=extra))
    daemon.start()
    assert authorization_query(daemon)["prompt"] == ["login consent"]


def test_the_device_request_gets_authorize_params_but_no_prompt(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth, extra='authorize_params = { audience = "llm" }'))
    daemon.start()
    device_login(daemon, oauth)
    device_request = next(form for _, path, form in oauth.requests if path == "/device_authorization")
    assert device_request["audience"] == "llm"
    assert "prompt" not in device_request


@pytest.mark.parametrize("name", ["state", "redirect_uri", "code_challenge", "scope"])
def test_parameters_the_flow_sets_cannot_be_configured(short_tmp, oauth: FakeOAuthServer, name: str):  # type: ignore[no-untyped-def]
    env = isolated_env(short_tmp)
    with open(env["BROKER_CONFIG"], "w") as config:
        config.write(acme_config(oauth, flow="pkce", extra=f'authorize_params = {{ {name} = "x" }}'))
    with pytest.raises(ConfigError) as raised:
        build_registry(load_settings(env).root.section("providers"))
    assert f"providers.acme.authorize_params.{name}" in str(raised.value)


def test_without_scopes_an_openid_server_is_asked_for_openid_and_offline_access(
    daemon: DaemonProcess, oauth: FakeOAuthServer
):
    config = acme_config(oauth, flow="pkce").replace('scopes = ["openid", "offline_access"]\n', "")
    daemon.write_config(config)
    daemon.start()
    query = authorization_query(daemon)
    assert query["scope"] == ["openid offline_access"]
    assert query["prompt"] == ["consent"]


@pytest.fixture
def no_refresh_tokens(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    oauth.stop_issuing_refresh_tokens()
    oauth.set_access_token_lifetime(600)
    daemon.write_config(acme_config(oauth, flow="pkce"))
    return daemon.start()


def test_a_login_without_refresh_token_says_so_when_it_ends(no_refresh_tokens: DaemonProcess):
    login = no_refresh_tokens.popen("login", "acme", "--no-browser", "--json")
    browser_get(authorize(read_event(login)["url"]))
    done = read_event(login)
    assert done["event"] == "done"
    assert done["refreshable"] is False
    assert 590 <= done["expires_in"] <= 600
    served = json.loads(no_refresh_tokens.cli("token", "acme", "--json").stdout)
    assert served["expires_at"] == done["expires_at"]


def test_the_human_output_of_a_login_says_it_cannot_be_renewed(no_refresh_tokens: DaemonProcess):
    login = no_refresh_tokens.popen("login", "acme", "--no-browser")
    assert login.stderr is not None
    while "open this address" not in login.stderr.readline():
        pass
    login.stderr.readline()
    url = login.stderr.readline().strip()
    browser_get(authorize(url))
    _, err = login.communicate(timeout=30)
    assert login.returncode == 0
    assert "logged in to acme as alice@example.com" in err
    assert "this login cannot be renewed: the token expires in 9m" in err
    assert "broker login acme again" in err


def test_status_shows_a_login_that_cannot_be_renewed_before_it_expires(no_refresh_tokens: DaemonProcess):
    login = no_refresh_tokens.popen("login", "acme", "--no-browser", "--json")
    browser_get(authorize(read_event(login)["url"]))
    assert read_event(login)["event"] == "done"
    listing = json.loads(no_refresh_tokens.cli("status", "--json").stdout)
    account = next(p for p in listing["providers"] if p["name"] == "acme")["accounts"][0]
    assert account["state"] == "ready" and account["refreshable"] is False
    status = no_refresh_tokens.cli("status").stdout
    assert "not renewable: this login ends when the token expires; then run: broker login acme" in status


def test_a_refreshable_login_says_broker_renews_it(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    login = daemon.popen("login", "acme", "--no-browser")
    assert login.stderr is not None
    while not (line := login.stderr.readline()).startswith("    "):  # the code, on a line of its own
        assert line, "the login ended early"
    oauth.approve(line.strip())
    _, err = login.communicate(timeout=30)
    assert "the token expires in 59m; broker renews it ahead of each expiry" in err
    assert "not renewable" not in daemon.cli("status").stdout
