"""``copilot``: GitHub's device flow, then Copilot's token exchange, against a fake GitHub on loopback.

Most tests run the real daemon as a process; the slow_down and renewal tests run it in
this process on its real socket so they can move its clock by hand.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker.providers.copilot import CLIENT_ID

from broker.client import Client
from broker.core.config import load_settings
from broker.daemon.main import Daemon
from tests.conftest import DaemonProcess, isolated_env, read_event
from tests.fakes.clock import FakeClock
from tests.fakes.github import API_HEADERS, EXCHANGE_HEADERS, FakeGitHub
from tests.fakes.llm_upstream import FakeLLM
from tests.helpers import without_lasting

TOKEN_PATH = "/copilot_internal/v2/token"


def copilot_config(github: FakeGitHub, extra: str = "") -> str:
    """``[providers.copilot]`` with its GitHub endpoints at the fake; ``copilot_token`` derives from ``api``."""
    return f"""
[providers.copilot]
{extra}

[providers.copilot.endpoints]
device_code = "{github.url}/login/device/code"
access_token = "{github.url}/login/oauth/access_token"
api = "{github.url}"
"""


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(device_interval=0.05) as server:
        yield server


def start_login(daemon: DaemonProcess, *extra: str) -> subprocess.Popen[str]:
    return daemon.popen("login", "copilot", "--no-browser", "--json", *extra)


def login(daemon: DaemonProcess, github: FakeGitHub, *extra: str, user: str | None = None) -> dict[str, Any]:
    """A whole login the user approves as ``user``; the ``done`` event."""
    process = start_login(daemon, *extra)
    github.approve(read_event(process)["user_code"], user)
    done = read_event(process)
    assert done["event"] == "done", done
    assert process.wait(timeout=10) == 0
    return done


def token_json(daemon: DaemonProcess) -> dict[str, Any]:
    """The socket API's token answer (what ``broker token copilot --json`` prints)."""
    answer: dict[str, Any] = daemon.request("GET", "/v1/token/copilot")
    return answer


def account_state(daemon: DaemonProcess, account: str) -> dict[str, Any]:
    listing = daemon.request("GET", "/v1/providers")["providers"]
    copilot = next(p for p in listing if p["name"] == "copilot")
    state: dict[str, Any] = next(a for a in copilot["accounts"] if a["account"] == account)
    return state


# --- login and what clients get ---------------------------------------------------------------


def test_login_serves_the_copilot_token_with_its_api_base_and_editor_headers(
    daemon: DaemonProcess, github: FakeGitHub
) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    assert without_lasting(login(daemon, github)) == {"event": "done", "provider": "copilot", "account": "octocat"}

    result = daemon.cli("token", "copilot", "--json")
    assert result.returncode == 0, result.stderr
    assert "ghu_" not in result.stdout, "the GitHub token must never reach a client"
    token = json.loads(result.stdout)
    record = github.copilot_token(token["access_token"])
    assert record is not None and record.user == "octocat"
    assert token["expires_at"] == record.expires_at
    assert token["base_url"] == github.copilot_api
    assert token["api"] == "openai-chat"
    assert token["headers"] == API_HEADERS
    assert token["account"] == "octocat"


def test_device_login_posts_githubs_form_and_the_exchange_sends_the_github_token_with_vscode_headers(
    daemon: DaemonProcess, github: FakeGitHub
) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    login(daemon, github)
    (authorization,) = github.seen("/login/device/code")
    assert authorization.form == {"client_id": CLIENT_ID, "scope": "read:user"}
    assert "application/json" in authorization.headers["Accept"]
    poll = github.seen("/login/oauth/access_token")[-1]
    assert poll.form["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
    assert poll.form["client_id"] == CLIENT_ID
    (exchange,) = github.seen(TOKEN_PATH)
    (github_token,) = github.github_tokens("octocat")
    assert github_token.startswith("ghu_")
    assert exchange.headers["Authorization"] == f"token {github_token}"
    assert {name: exchange.headers.get(name) for name in EXCHANGE_HEADERS} == EXCHANGE_HEADERS


def test_configured_versions_and_headers_replace_the_defaults_on_the_exchange_and_for_clients(
    daemon: DaemonProcess, github: FakeGitHub
) -> None:
    config = (
        '[providers.copilot.versions]\nvscode = "1.120.0"\n'
        '[providers.copilot.headers]\nCopilot-Integration-Id = ""\nX-Team = "ml"\n'
        '[providers.copilot.token_headers]\nX-GitHub-Api-Version = "2022-11-28"\n'
    )
    daemon.write_config(copilot_config(github) + config)
    daemon.start()
    login(daemon, github)
    served = token_json(daemon)["headers"]
    assert served["Editor-Version"] == "vscode/1.120.0", "a version moves every header that names it"
    assert served["X-Team"] == "ml" and served["X-GitHub-Api-Version"] == "2025-05-01"
    assert "Copilot-Integration-Id" not in served, "an empty value removes a default header"
    exchange = github.seen(TOKEN_PATH)[0].headers
    assert exchange["Editor-Version"] == "vscode/1.120.0"
    assert exchange["X-GitHub-Api-Version"] == "2022-11-28" and "X-Team" not in exchange


def test_oauth_app_model_serves_the_github_token_itself_without_an_exchange(
    daemon: DaemonProcess, github: FakeGitHub
) -> None:
    daemon.write_config(copilot_config(github, 'client_id = "Ov23liFakeApp"\nexchange = false'))
    daemon.start()
    login(daemon, github)
    token = token_json(daemon)
    assert token["access_token"] == github.github_tokens("octocat")[0]
    assert token["access_token"].startswith("gho_")
    assert token["expires_at"] is None
    assert token["base_url"] == "https://api.githubcopilot.com"
    assert github.seen(TOKEN_PATH) == []
    described = next(p for p in daemon.request("GET", "/v1/providers")["providers"] if p["name"] == "copilot")
    assert described["login_model"] == "github-token"
    assert described["client_id"] == "Ov23liFakeApp"


def test_two_accounts_side_by_side_the_first_is_the_default(daemon: DaemonProcess, github: FakeGitHub) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    login(daemon, github, user="octocat")
    assert login(daemon, github, "--account", "work", user="hubot")["account"] == "work"

    default = github.copilot_token(token_json(daemon)["access_token"])
    assert default is not None and default.user == "octocat"
    work = github.copilot_token(daemon.request("GET", "/v1/token/copilot?account=work")["access_token"])
    assert work is not None and work.user == "hubot"
    assert daemon.request("GET", "/v1/token/copilot?account=octocat")["account"] == "octocat"


# --- the device flow's failures ---------------------------------------------------------------


def test_expired_device_code_ends_the_login(daemon: DaemonProcess, github: FakeGitHub) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    process = start_login(daemon)
    github.expire(read_event(process)["user_code"])
    error = read_event(process)
    assert error["event"] == "error" and error["code"] == "login_failed"
    assert "expired" in error["message"]
    assert process.wait(timeout=10) == 1
    assert github.polls[-1].answer == "expired_token"


def test_denied_device_login_is_reported_as_denied(daemon: DaemonProcess, github: FakeGitHub) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    process = start_login(daemon)
    github.deny(read_event(process)["user_code"])
    error = read_event(process)
    assert error["code"] == "login_failed" and "denied" in error["message"]
    assert process.wait(timeout=10) == 1


# --- the exchange's failures ----------------------------------------------------------------------


def test_account_without_copilot_fails_the_login_with_a_clear_message(
    daemon: DaemonProcess, github: FakeGitHub
) -> None:
    github.set_copilot("octocat", False)
    daemon.write_config(copilot_config(github))
    daemon.start()
    process = start_login(daemon)
    github.approve(read_event(process)["user_code"])
    error = read_event(process)
    assert error["event"] == "error" and error["code"] == "login_failed"
    assert "no Copilot subscription for GitHub account octocat" in error["message"]
    assert "no_copilot_access" in error["message"]
    assert "github.com/settings/copilot" in error["hint"]
    assert process.wait(timeout=10) == 1
    assert daemon.cli("token", "copilot").returncode == 3


def test_revoked_github_token_makes_the_renewal_ask_for_a_new_login(daemon: DaemonProcess, github: FakeGitHub) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    login(daemon, github)
    github.revoke("octocat")
    result = daemon.cli("refresh", "copilot")
    assert result.returncode == 3, result.stderr
    assert "login_required" in result.stderr
    assert "broker login copilot" in result.stderr
    assert account_state(daemon, "octocat")["state"] == "login_required"


def test_ended_subscription_fails_the_renewal_but_the_current_token_is_still_served(
    daemon: DaemonProcess, github: FakeGitHub
) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    login(daemon, github)
    before = token_json(daemon)["access_token"]
    github.set_copilot("octocat", False)
    result = daemon.cli("refresh", "copilot")
    assert result.returncode == 1
    assert "refresh_failed" in result.stderr and "no Copilot subscription" in result.stderr
    state = account_state(daemon, "octocat")
    assert state["state"] == "error"
    assert state["last_error"]["code"] == "refresh_failed"
    assert token_json(daemon)["access_token"] == before


def test_refresh_is_planned_when_the_copilot_token_says_to_renew(daemon: DaemonProcess, github: FakeGitHub) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    login(daemon, github)
    exchanged = github.seen(TOKEN_PATH)[0].at
    planned = account_state(daemon, "octocat")["next_refresh_at"]
    renew_at = exchanged + github.copilot_refresh_in
    assert renew_at - 30 - 2 <= planned <= renew_at + 1  # jitter up to 30 s, whole seconds on the wire


# --- hosts and config -------------------------------------------------------------------------------


def test_enterprise_url_login_uses_the_enterprise_hosts_and_renewal_remembers_them(
    daemon: DaemonProcess, github: FakeGitHub
) -> None:
    # The fake is reached as an HTTP proxy, so it sees the host names broker derives.
    daemon.write_config(f'[providers.copilot]\nproxy = "{github.url}"\n')
    daemon.start()
    login(daemon, github, "--enterprise-url", "http://ghe.example.test")
    assert daemon.cli("refresh", "copilot").returncode == 0
    hosts = [(r.host, r.path) for r in github.requests]
    assert ("ghe.example.test", "/login/device/code") in hosts
    assert ("ghe.example.test", "/login/oauth/access_token") in hosts
    assert ("api.ghe.example.test", "/user") in hosts
    assert [h for h, p in hosts if p == TOKEN_PATH] == ["api.ghe.example.test"] * 2
    assert not any(h.endswith("github.com") for h, _ in hosts)


def test_providers_json_shows_effective_endpoints_flows_api_and_login_model(daemon: DaemonProcess) -> None:
    daemon.write_config(
        '[providers.copilot]\nenterprise_url = "https://ghe.example.com"\n'
        '[providers.copilot.endpoints]\ndevice_code = "https://login.example.net/device"\n'
    )
    daemon.start()
    result = daemon.cli("providers", "--json")
    assert result.returncode == 0, result.stderr
    copilot = next(p for p in json.loads(result.stdout) if p["name"] == "copilot")
    assert copilot["endpoints"] == {
        "device_code": "https://login.example.net/device",
        "access_token": "https://ghe.example.com/login/oauth/access_token",
        "copilot_token": "https://api.ghe.example.com/copilot_internal/v2/token",
        "api": "https://api.ghe.example.com",
    }
    assert copilot["flows"] == ["device"]
    assert copilot["api"] == "openai-chat"
    assert copilot["login_model"] == "copilot-token-exchange"
    assert copilot["client_id"] == CLIENT_ID
    assert copilot["base_url"] == "https://copilot-api.ghe.example.com"
    assert copilot["headers"] == API_HEADERS and copilot["token_headers"] == EXCHANGE_HEADERS
    assert copilot["versions"] == {"vscode": "1.109.0", "copilot_chat": "0.38.0"}


def test_unknown_endpoint_key_is_a_config_error_naming_the_key(daemon: DaemonProcess) -> None:
    daemon.write_config('[providers.copilot.endpoints]\ndevice_cod = "https://example.com/x"\n')
    result = daemon.cli("serve")
    assert result.returncode == 78
    assert "providers.copilot.endpoints.device_cod" in result.stderr
    assert 'did you mean "device_code"' in result.stderr


# --- in-process daemon with a hand-moved clock --------------------------------------------------------


@dataclass
class InProcess:
    daemon: Daemon
    socket: Path
    clients: ThreadPoolExecutor

    async def login(self, provider: str) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            with Client(self.socket, timeout=30) as client:
                return list(client.stream("POST", f"/v1/login/{provider}", {}))

        return await asyncio.get_running_loop().run_in_executor(self.clients, run)

    async def get(self, path: str) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=30) as client:
                return client.request("GET", path)

        return await asyncio.get_running_loop().run_in_executor(self.clients, call)


@asynccontextmanager
async def in_process(root: Path, config: str, clock: FakeClock) -> AsyncIterator[InProcess]:
    env = isolated_env(root)
    Path(env["BROKER_CONFIG"]).write_text(config)
    daemon = Daemon(load_settings(env), clock=clock)
    await daemon.start()
    try:
        with ThreadPoolExecutor(4) as clients:
            yield InProcess(daemon, Path(env["BROKER_SOCKET"]), clients)
    finally:
        await daemon.stop()


@pytest.mark.parametrize(
    "step",
    [5.0, 8.0],
    ids=["five-seconds-more", "the-body-asks-for-more"],  # GitHub's body carries the new interval: it wins
)
async def test_slow_down_lengthens_every_later_poll(short_tmp: Path, step: float) -> None:
    clock = FakeClock()
    with FakeGitHub(now=clock.now, device_interval=0.05) as github:
        github.slow_down_next(step=step)
        github.approve_on_poll(3)
        async with in_process(short_tmp, copilot_config(github), clock) as harness:
            events = await harness.login("copilot")
    assert events[-1]["event"] == "done"
    first, second, third = github.polls
    assert (first.answer, second.answer, third.answer) == ("slow_down", "authorization_pending", "access_token")
    assert first.interval == pytest.approx(0.05 + step), "GitHub's body carries the new interval"
    assert second.at - first.at == pytest.approx(0.05 + step)
    assert third.at - second.at == pytest.approx(0.05 + step), "the longer interval holds for every later poll"


async def test_timer_renews_the_copilot_token_at_refresh_in_and_keeps_the_github_token(short_tmp: Path) -> None:
    clock = FakeClock()
    key = ("copilot", "octocat")
    with FakeGitHub(now=clock.now, device_interval=0.05) as github:
        github.approve_on_poll(1)
        async with in_process(short_tmp, copilot_config(github), clock) as harness:
            assert (await harness.login("copilot"))[-1]["event"] == "done"
            first = harness.daemon.credentials.get(key)
            assert first is not None
            planned = harness.daemon.refresher.status(key).next_refresh_at
            renew_at = first.extra["refresh_at"]
            assert planned is not None and renew_at - 30 <= planned <= renew_at + 1e-6
            assert first.expires_at is not None and planned < first.expires_at - 60

            clock.advance_to(planned - 1)
            assert len(github.seen(TOKEN_PATH)) == 1
            clock.advance_to(planned)
            status = await asyncio.wait_for(harness.daemon.refresher.wait_attempts(key, 1), 10)
            assert status.state == "ready"

            second = harness.daemon.credentials.get(key)
            assert second is not None and second.access_token != first.access_token
            assert second.extra["github_token"] == first.extra["github_token"]
            served = await harness.get("/v1/token/copilot")
            assert served["access_token"] == second.access_token
            assert github.copilot_token(served["access_token"]) is not None
            assert len(github.seen(TOKEN_PATH)) == 2


# --- what the strict fakes refuse --------------------------------------------------------------


def status_of(url: str, headers: dict[str, str], data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(
    ("change", "status"),
    [({"User-Agent": ""}, 403), ({"X-GitHub-Api-Version": "2099-01-01"}, 400)],
    ids=["no User-Agent", "unknown API version"],
)
def test_the_github_fake_refuses_what_githubs_rest_api_refuses(
    daemon: DaemonProcess, github: FakeGitHub, change: dict[str, str], status: int
) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    login(daemon, github)
    (github_token,) = github.github_tokens("octocat")
    headers = {**EXCHANGE_HEADERS, "Authorization": f"token {github_token}"}
    url = f"{github.url}/copilot_internal/v2/token"
    assert status_of(url, headers) == 200
    assert status_of(url, {**headers, **change}) == status


def test_copilot_api_calls_with_the_served_headers_pass_and_without_any_of_them_are_refused(
    daemon: DaemonProcess, github: FakeGitHub
) -> None:
    daemon.write_config(copilot_config(github))
    daemon.start()
    login(daemon, github)
    token = token_json(daemon)
    key = token["access_token"]
    with FakeLLM(
        prefix="", key=lambda t: github.copilot_token(t) is not None, required_headers=dict(API_HEADERS)
    ) as api:
        body = json.dumps({"model": "gpt-4.1", "messages": []}).encode()

        def call(headers: dict[str, str]) -> int:
            return status_of(f"{api.url}/chat/completions", {**headers, "Authorization": f"Bearer {key}"}, body)

        assert call(token["headers"]) == 200
        for name in API_HEADERS:
            assert call({k: v for k, v in token["headers"].items() if k != name}) == 400, name
