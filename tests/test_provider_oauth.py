"""The generic provider (``type = "oauth"``): authorization parameters and defaults for OpenID servers."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from broker.config import load_settings
from broker.errors import ConfigError
from providers.registry import build_registry
from tests.conftest import DaemonProcess, acme_config, isolated_env, read_event
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login


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
