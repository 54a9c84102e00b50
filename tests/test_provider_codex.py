"""Codex (ChatGPT sign-in) through the CLI and the real daemon, against a fake of auth.openai.com."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from broker.providers.codex import CLIENT_ID
from broker.providers.jwt_claims import claims

from broker.client import Client
from broker.core.config import load_settings
from broker.daemon.main import Daemon
from tests.conftest import DaemonProcess, isolated_env, read_event
from tests.fakes.clock import FakeClock
from tests.fakes.llm_upstream import CLOUDFLARE_PAGE, FakeLLM
from tests.fakes.openai_auth import (
    BOB,
    CODEX_CLI_HEADERS,
    ERROR_SHAPES,
    INVALIDATED,
    FakeOpenAIAuth,
    codex_served_headers,
)
from tests.helpers import without_lasting


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def occupy(stack: ExitStack, port: int) -> None:
    """Something else holds the port, as another program's listener would."""
    sock = stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", port))
    sock.listen()


@pytest.fixture
def ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


@pytest.fixture
def openai(ports: tuple[int, int]) -> Iterator[FakeOpenAIAuth]:
    with FakeOpenAIAuth(redirect_ports=ports, device_interval="0.05") as server:
        yield server


def codex_config(server: FakeOpenAIAuth, ports: tuple[int, int]) -> str:
    return f"""
[providers.codex]
redirect_port = {ports[0]}
fallback_redirect_port = {ports[1]}

[providers.codex.endpoints]
authorize = "{server.url}/oauth/authorize"
token = "{server.url}/oauth/token"
device_usercode = "{server.url}/api/accounts/deviceauth/usercode"
device_token = "{server.url}/api/accounts/deviceauth/token"
revoke = "{server.url}/oauth/revoke"
"""


@pytest.fixture
def codex(daemon: DaemonProcess, openai: FakeOpenAIAuth, ports: tuple[int, int]) -> DaemonProcess:
    daemon.write_config(codex_config(openai, ports))
    return daemon.start()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def authorize(url: str) -> str:
    """Act as the browser at OpenAI's sign-in page: where it is sent back to."""
    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(NoRedirect).open(url, timeout=10)
    assert redirect.value.code == 302, redirect.value.read()
    return str(redirect.value.headers["Location"])


def browser_get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status)


def browser_login(daemon: DaemonProcess, *extra: str) -> tuple[dict[str, Any], str]:
    """A whole browser sign-in: the ``open`` event and the account it ended with."""
    login = daemon.popen("login", "codex", "--no-browser", "--json", *extra)
    opened = read_event(login)
    assert opened["event"] == "open", opened
    assert browser_get(authorize(opened["url"])) == 200
    done = read_event(login)
    assert done["event"] == "done", done
    assert login.wait(timeout=10) == 0
    return opened, str(done["account"])


def token_json(daemon: DaemonProcess, *args: str) -> dict[str, Any]:
    result = daemon.cli("token", "codex", "--json", *args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_browser_sign_in_asks_openai_for_codex_parameters_with_a_localhost_redirect(
    codex: DaemonProcess, ports: tuple[int, int]
):
    opened, _ = browser_login(codex)
    query = {key: values[0] for key, values in parse_qs(urlsplit(opened["url"]).query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID == "app_EMoamEEZ73f0CkXaXp7hrann"
    assert query["scope"] == "openid profile email offline_access api.connectors.read api.connectors.invoke"
    assert query["id_token_add_organizations"] == "true"
    assert query["codex_cli_simplified_flow"] == "true"
    assert query["originator"] == "codex_cli_rs"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["redirect_uri"] == f"http://localhost:{ports[0]}/auth/callback"
    assert set(query) == {
        "response_type", "client_id", "redirect_uri", "scope", "code_challenge", "code_challenge_method",
        "id_token_add_organizations", "codex_cli_simplified_flow", "state", "originator",
    }, "server.rs build_authorize_url, field for field"  # fmt: skip


def test_browser_sign_in_serves_the_token_with_the_account_header_and_jwt_expiry(
    codex: DaemonProcess, openai: FakeOpenAIAuth
):
    _, account = browser_login(codex)
    assert account == "alice@example.com"
    token = token_json(codex)
    assert openai.valid_access_token(token["access_token"])
    assert token["api"] == "openai-responses"
    assert token["base_url"] == "https://chatgpt.com/backend-api/codex"
    assert token["headers"] == codex_served_headers("acct-alice-0001")
    assert token["expires_at"] == claims(token["access_token"])["exp"]
    exchange = [(kind, body) for method, path, kind, body in openai.requests if path == "/oauth/token"][-1]
    assert exchange[0] == "application/x-www-form-urlencoded"
    assert exchange[1]["grant_type"] == "authorization_code"
    assert exchange[1]["client_id"] == CLIENT_ID


def test_busy_first_port_falls_back_to_the_second(
    daemon: DaemonProcess, openai: FakeOpenAIAuth, ports: tuple[int, int]
):
    daemon.write_config(codex_config(openai, ports))
    daemon.start()
    with ExitStack() as stack:
        occupy(stack, ports[0])
        opened, account = browser_login(daemon)
    redirect = parse_qs(urlsplit(opened["url"]).query)["redirect_uri"][0]
    assert redirect == f"http://localhost:{ports[1]}/auth/callback"
    assert account == "alice@example.com"


def test_both_ports_busy_ends_the_login_saying_so(
    daemon: DaemonProcess, openai: FakeOpenAIAuth, ports: tuple[int, int]
):
    daemon.write_config(codex_config(openai, ports))
    daemon.start()
    with ExitStack() as stack:
        occupy(stack, ports[0])
        occupy(stack, ports[1])
        login = daemon.popen("login", "codex", "--no-browser", "--json")
        error = read_event(login)
        assert login.wait(timeout=10) == 1
    assert error["event"] == "error" and error["code"] == "login_failed"
    assert f"port {ports[0]} and {ports[1]}" in error["message"] and "in use" in error["message"]
    assert "broker login codex --device" in error["hint"]


def test_device_login_shows_openai_code_page_and_redeems_the_server_made_verifier(
    codex: DaemonProcess, openai: FakeOpenAIAuth
):
    login = codex.popen("login", "codex", "--device", "--no-browser", "--json")
    verify = read_event(login)
    assert verify["event"] == "verify"
    assert verify["verification_uri"] == f"{openai.url}/codex/device"
    assert verify["expires_in"] == 900 and verify["user_code"]
    openai.approve_device(verify["user_code"])
    assert without_lasting(read_event(login)) == {"event": "done", "provider": "codex", "account": "alice@example.com"}
    assert login.wait(timeout=10) == 0

    usercode = next(r for r in openai.requests if r[1] == "/api/accounts/deviceauth/usercode")
    assert usercode[2:] == ("application/json", {"client_id": CLIENT_ID})
    poll = next(r for r in openai.requests if r[1] == "/api/accounts/deviceauth/token")
    assert poll[2] == "application/json" and set(poll[3]) == {"device_auth_id", "user_code"}
    exchange = [r for r in openai.requests if r[1] == "/oauth/token"][-1]
    assert exchange[2] == "application/x-www-form-urlencoded"
    assert exchange[3]["redirect_uri"] == f"{openai.url}/deviceauth/callback"
    assert token_json(codex)["headers"] == codex_served_headers("acct-alice-0001")


def test_disabled_device_login_suggests_the_browser_sign_in(codex: DaemonProcess, openai: FakeOpenAIAuth):
    openai.device_login_enabled = False
    login = codex.popen("login", "codex", "--device", "--no-browser", "--json")
    error = read_event(login)
    assert login.wait(timeout=10) == 1
    assert error["code"] == "login_failed"
    assert "device login is not enabled" in error["message"]
    assert "broker login codex" in error["hint"] and "--device" not in error["hint"]


def test_refresh_sends_json_rotates_and_persists_the_new_refresh_token(codex: DaemonProcess, openai: FakeOpenAIAuth):
    browser_login(codex)
    before = token_json(codex)
    first_refresh = openai.newest_refresh_token(openai.user)
    assert codex.cli("refresh", "codex").returncode == 0

    index, refresh = [(i, r) for i, r in enumerate(openai.requests) if r[1] == "/oauth/token"][-1]
    assert refresh[2] == "application/json"
    assert refresh[3] == {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": first_refresh}
    sent = openai.request_headers[index]
    served = codex_served_headers("acct-alice-0001")
    assert (sent["Originator"], sent["User-Agent"]) == (served["originator"], served["User-Agent"])
    assert openai.refresh_token_state(first_refresh) == "used"
    after = token_json(codex)
    assert after["access_token"] != before["access_token"] and openai.valid_access_token(after["access_token"])
    assert after["headers"] == codex_served_headers("acct-alice-0001")

    codex.restart()
    assert token_json(codex)["access_token"] == after["access_token"]
    assert codex.cli("refresh", "codex").returncode == 0, "the rotated refresh token was persisted"
    assert openai.refresh_token_state(first_refresh) == "used", "never redeemed twice: the chain is intact"


REUSE_ANSWERS = {
    "401 refresh_token_reused": None,
    "400 refresh_token_reused": (
        400,
        {"error": {"message": "already used", "type": "invalid_request_error", "code": "refresh_token_reused"}},
    ),
    "400 invalid_grant": (400, {"error": "invalid_grant", "error_description": "Refresh token already used"}),
    "401 refresh_token_invalidated": INVALIDATED,
    "401 with a page, no JSON": (401, "<html><body>Unauthorized</body></html>"),
    "401 unknown code": (401, {"error": {"message": "?", "code": "something_new"}}),
}


@pytest.mark.parametrize("answer", REUSE_ANSWERS.values(), ids=list(REUSE_ANSWERS))
def test_refresh_token_used_elsewhere_marks_the_login_required_and_keeps_serving(
    codex: DaemonProcess, openai: FakeOpenAIAuth, answer: tuple[int, dict[str, Any]] | None
):
    if answer is not None:
        openai.reuse_answer = answer
    browser_login(codex)
    served = token_json(codex)["access_token"]
    openai.redeem(openai.newest_refresh_token(openai.user))  # the Codex CLI refreshed the same login first

    result = codex.cli("refresh", "codex")
    assert result.returncode == 3, result.stderr
    assert "login_required" in result.stderr and "broker login codex" in result.stderr
    status = json.loads(codex.cli("status", "--json").stdout)
    (account,) = next(p for p in status["providers"] if p["name"] == "codex")["accounts"]
    assert account["state"] == "login_required"
    assert token_json(codex)["access_token"] == served, "a still-valid token keeps being served"


def test_two_accounts_side_by_side_the_first_is_the_default(codex: DaemonProcess, openai: FakeOpenAIAuth):
    _, first = browser_login(codex)
    openai.user = BOB
    login = codex.popen("login", "codex", "--device", "--account", "work", "--no-browser", "--json")
    openai.approve_device(read_event(login)["user_code"])
    assert read_event(login)["account"] == "work"

    default = token_json(codex)
    assert (first, default["account"]) == ("alice@example.com", "alice@example.com")
    assert default["headers"] == codex_served_headers("acct-alice-0001")
    work = codex.request("GET", "/v1/token/codex?account=work")
    assert work["headers"] == codex_served_headers("acct-bob-0002")
    assert work["access_token"] != default["access_token"] and openai.valid_access_token(work["access_token"])
    assert token_json(codex, "--account", "alice@example.com")["access_token"] == default["access_token"]


def test_providers_json_shows_effective_endpoints_flows_and_api(daemon: DaemonProcess):
    daemon.write_config('[providers.codex.endpoints]\ntoken = "http://127.0.0.1:9/oauth/token"\n')
    daemon.start()
    listed = {p["name"]: p for p in json.loads(daemon.cli("providers", "--json").stdout)}
    codex = listed["codex"]
    assert codex["endpoints"] == {
        "authorize": "https://auth.openai.com/oauth/authorize",
        "token": "http://127.0.0.1:9/oauth/token",
        "device_usercode": "https://auth.openai.com/api/accounts/deviceauth/usercode",
        "device_token": "https://auth.openai.com/api/accounts/deviceauth/token",
        "revoke": "https://auth.openai.com/oauth/revoke",
    }
    assert codex["flows"] == ["pkce", "device"]
    assert codex["api"] == "openai-responses"
    assert codex["base_url"] == "https://chatgpt.com/backend-api/codex"
    assert codex["redirect_uris"] == ["http://localhost:1455/auth/callback", "http://localhost:1457/auth/callback"]


def test_unknown_endpoint_key_stops_the_daemon_naming_it(daemon: DaemonProcess):
    daemon.write_config('[providers.codex.endpoints]\ntokn = "http://127.0.0.1:9/oauth/token"\n')
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 78
    assert "providers.codex.endpoints.tokn: unknown key" in result.stderr
    assert '"token"' in result.stderr


async def test_device_login_gives_up_after_fifteen_minutes(short_tmp: Path):
    """With an injected clock: the wait is bounded even when the user never approves."""
    with FakeOpenAIAuth() as openai:
        env = isolated_env(short_tmp)
        Path(env["BROKER_CONFIG"]).write_text(codex_config(openai, (free_port(), free_port())))
        clock = FakeClock()
        daemon = Daemon(load_settings(env), clock=clock)
        await daemon.start()
        try:

            def run() -> list[dict[str, Any]]:
                with Client(env["BROKER_SOCKET"], timeout=60) as client:
                    return list(client.stream("POST", "/v1/login/codex", {"flow": "device"}))

            start = clock.now()
            verify, error = await asyncio.wait_for(asyncio.to_thread(run), 60)
        finally:
            await daemon.stop()
    assert verify["event"] == "verify"
    assert error["event"] == "error" and error["code"] == "login_failed"
    assert "expired" in error["message"]
    assert clock.now() - start == pytest.approx(900, abs=5)
    assert set(clock.jumped) == {5.0}, "polls honour OpenAI's interval (a string, '5')"


# --- what the strict fakes refuse, and that broker is not refused --------------------------------


def raw(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One request as some other client would send it: the status and the body."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("originator", [None, "someone_else"])
def test_the_fake_refuses_an_authorize_url_without_codexs_originator(
    openai: FakeOpenAIAuth, ports: tuple[int, int], originator: str | None
):
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": f"http://localhost:{ports[0]}/auth/callback",
        "scope": "openid",
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
        "state": "s",
    }
    if originator:
        query["originator"] = originator
    status, body = raw(f"{openai.url}/oauth/authorize?{urllib.parse.urlencode(query)}")
    assert status == 400 and json.loads(body)["error"]["code"] == "missing_required_parameter"


def test_the_fake_refuses_a_refresh_in_form_encoding(openai: FakeOpenAIAuth):
    form = urllib.parse.urlencode({"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": "rt_x"})
    status, body = raw(f"{openai.url}/oauth/token", data=form.encode(), headers=dict(CODEX_CLI_HEADERS))
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("missing", ["originator", "User-Agent"])
def test_the_fake_refuses_a_refresh_without_codexs_identity(openai: FakeOpenAIAuth, missing: str):
    body = json.dumps({"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": "rt_x"}).encode()
    headers = {"Content-Type": "application/json", **CODEX_CLI_HEADERS}
    headers[missing] = "python-urllib/3" if missing == "User-Agent" else ""
    assert raw(f"{openai.url}/oauth/token", data=body, headers=headers) == (403, CLOUDFLARE_PAGE)


@pytest.mark.parametrize("shape", ERROR_SHAPES)
def test_every_error_shape_codex_reads_ends_a_reused_login(codex: DaemonProcess, openai: FakeOpenAIAuth, shape: str):
    """manager.rs reads {"error": {"code"}}, {"error": "..."} and a top-level {"code"}: so does broker."""
    openai.error_shape = shape
    browser_login(codex)
    openai.redeem(openai.newest_refresh_token(openai.user))
    result = codex.cli("refresh", "codex")
    assert result.returncode == 3 and "login_required" in result.stderr, result.stderr


def test_api_calls_with_the_served_headers_pass_and_without_any_of_them_are_refused(
    codex: DaemonProcess, openai: FakeOpenAIAuth
):
    browser_login(codex)
    token = token_json(codex)
    with FakeLLM(style="codex", prefix="/backend-api/codex", key=openai.valid_access_token) as backend:

        def call(headers: dict[str, str]) -> int:
            body = json.dumps({"model": "gpt-5-codex", "input": "hi", "stream": False}).encode()
            auth = {"Authorization": f"Bearer {token['access_token']}", "Content-Type": "application/json"}
            return raw(f"{backend.url}/backend-api/codex/responses", data=body, headers={**headers, **auth})[0]

        assert call(token["headers"]) == 200
        for name, refused in {"originator": 403, "User-Agent": 403, "version": 400}.items():
            without = {k: v for k, v in token["headers"].items() if k != name}
            assert call({**without, "User-Agent": "Python-urllib/3.11"} if name == "User-Agent" else without) == refused


def test_config_corrects_codexs_wire_facts_and_providers_json_shows_them(
    daemon: DaemonProcess, openai: FakeOpenAIAuth, ports: tuple[int, int]
):
    daemon.write_config(
        codex_config(openai, ports)
        + '[providers.codex.versions]\ncodex = "0.200.1"\n'
        + '[providers.codex.authorize_params]\noriginator = "codex_vscode"\ncodex_cli_simplified_flow = ""\n'
        + '[providers.codex.headers]\noriginator = "codex_vscode"\n'
        + '[providers.codex.token_headers]\noriginator = "codex_vscode"\nUser-Agent = "codex_vscode/{codex}"\n'
    )
    daemon.start()
    listed = {p["name"]: p for p in json.loads(daemon.cli("providers", "--json").stdout)}["codex"]
    assert listed["versions"] == {"codex": "0.200.1"}
    assert listed["authorize_params"] == {"id_token_add_organizations": "true", "originator": "codex_vscode"}
    assert listed["token_headers"] == {"originator": "codex_vscode", "User-Agent": "codex_vscode/0.200.1"}
    assert listed["headers"]["version"] == "0.200.1" and listed["headers"]["originator"] == "codex_vscode"
    assert listed["client_id"] == CLIENT_ID and "api.connectors.read" in listed["scopes"]

    opened, _ = browser_login(daemon)
    query = {key: values[0] for key, values in parse_qs(urlsplit(opened["url"]).query).items()}
    assert query["originator"] == "codex_vscode" and "codex_cli_simplified_flow" not in query
    assert daemon.cli("refresh", "codex").returncode == 0, "the fake takes codex_vscode, a first-party originator"
    assert token_json(daemon)["headers"]["version"] == "0.200.1"


def test_a_placeholder_that_names_nothing_stops_the_daemon_naming_the_key(daemon: DaemonProcess):
    daemon.write_config('[providers.codex.headers]\nUser-Agent = "codex_cli_rs/{codx}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 78
    assert "providers.codex.headers.User-Agent: names {codx}" in result.stderr and "{codex}" in result.stderr
