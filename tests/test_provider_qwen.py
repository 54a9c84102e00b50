"""Qwen (device flow with PKCE) through the CLI and the real daemon, against a fake of chat.qwen.ai."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from broker.providers.qwen import CLIENT_ID, base_url_for

from broker.client import Client
from broker.core.config import load_settings
from broker.daemon.main import Daemon
from tests.conftest import DaemonProcess, isolated_env, read_event
from tests.fakes.clock import FakeClock
from tests.fakes.llm_upstream import FakeLLM
from tests.fakes.qwen import DEVICE_GRANT, FakeQwen, qwen_code_api_headers

FREE_TIER_END = "Qwen OAuth free tier has been discontinued. To continue using Qwen Code, switch to a paid plan."


@pytest.fixture
def qwen_server() -> Iterator[FakeQwen]:
    with FakeQwen() as server:
        yield server


def qwen_config(server: FakeQwen, extra: str = "") -> str:
    return f"""
[providers.qwen]
{extra}

[providers.qwen.endpoints]
device_code = "{server.url}/api/v1/oauth2/device/code"
token = "{server.url}/api/v1/oauth2/token"
"""


@pytest.fixture
def qwen(daemon: DaemonProcess, qwen_server: FakeQwen) -> DaemonProcess:
    """A daemon polling every 50 ms (``poll_interval``): the real clock runs here; Qwen Code's 2 s is tested below."""
    daemon.write_config(qwen_config(qwen_server, "poll_interval = 0.05"))
    return daemon.start()


def login(daemon: DaemonProcess, server: FakeQwen, *extra: str) -> dict[str, Any]:
    """A whole device login; the ``verify`` event it showed."""
    process = daemon.popen("login", "qwen", "--no-browser", "--json", *extra)
    verify = read_event(process)
    assert verify["event"] == "verify", verify
    server.approve(verify["user_code"])
    done = read_event(process)
    assert done["event"] == "done", done
    assert process.wait(timeout=10) == 0
    return verify


def token_json(daemon: DaemonProcess, *args: str) -> dict[str, Any]:
    result = daemon.cli("token", "qwen", "--json", *args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_device_login_sends_an_s256_challenge_and_its_verifier_on_every_poll(
    qwen: DaemonProcess, qwen_server: FakeQwen
):
    qwen_server.answer_polls("authorization_pending", "authorization_pending")
    verify = login(qwen, qwen_server)
    assert verify["verification_uri"] == f"{qwen_server.url}/authorize"
    assert verify["verification_uri_complete"].startswith(f"{qwen_server.url}/authorize?user_code=")

    ((headers, authorization),) = [(h, form) for _, path, h, form in qwen_server.requests if path.endswith("/code")]
    assert set(authorization) == {"client_id", "scope", "code_challenge", "code_challenge_method"}
    assert str(uuid.UUID(headers["X-Request-Id"])) == headers["X-Request-Id"], "qwenOAuth2.ts sends a fresh UUID"
    assert authorization["client_id"] == CLIENT_ID == "f0304373b74a44d2b584a3fb70ca9e56"
    assert authorization["scope"] == "openid profile email model.completion"
    assert authorization["code_challenge_method"] == "S256"
    polls = [form for _, path, _, form in qwen_server.requests if path.endswith("/token")]
    assert len(polls) >= 3
    for poll in polls:
        assert poll["grant_type"] == DEVICE_GRANT and poll["client_id"] == CLIENT_ID
        assert create_s256_code_challenge(poll["code_verifier"]) == authorization["code_challenge"]


def test_login_serves_the_token_at_the_resource_url_with_qwen_headers(qwen: DaemonProcess, qwen_server: FakeQwen):
    login(qwen, qwen_server)
    token = token_json(qwen)
    assert token["account"] == "default"
    assert qwen_server.valid_access_token(token["access_token"])
    assert token["base_url"] == "https://portal.qwen.ai/v1"
    assert token["api"] == "openai-chat"
    assert token["headers"] == qwen_code_api_headers()
    assert 3500 < token["expires_in"] <= 3600
    agents = {headers.get("User-Agent", "") for _, _, headers, _ in qwen_server.requests}
    assert agents == {"node"}, "Qwen Code's OAuth requests carry Node fetch's own User-Agent"


def test_login_without_resource_url_serves_the_dashscope_default(qwen: DaemonProcess, qwen_server: FakeQwen):
    qwen_server.resource_url = None
    login(qwen, qwen_server)
    assert token_json(qwen)["base_url"] == "https://dashscope.aliyuncs.com/compatible-mode/v1"


@pytest.mark.parametrize(
    ("resource_url", "base_url"),
    [
        ("portal.qwen.ai", "https://portal.qwen.ai/v1"),
        ("portal.qwen.ai/", "https://portal.qwen.ai/v1"),
        ("https://portal.qwen.ai", "https://portal.qwen.ai/v1"),
        (
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        ),
        ("", None),
        (None, None),
    ],
)
def test_resource_url_becomes_an_https_v1_base_url(resource_url: str | None, base_url: str | None):
    assert base_url_for(resource_url) == base_url


def test_refresh_is_a_form_grant_and_follows_a_moved_resource_url(qwen: DaemonProcess, qwen_server: FakeQwen):
    login(qwen, qwen_server)
    before = token_json(qwen)
    qwen_server.resource_url = "https://portal-b.qwen.ai/"
    assert qwen.cli("refresh", "qwen").returncode == 0

    _, _, headers, form = qwen_server.requests[-1]
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert set(form) == {"grant_type", "refresh_token", "client_id"}
    assert form["grant_type"] == "refresh_token" and form["client_id"] == CLIENT_ID
    assert not qwen_server.valid_refresh_token(form["refresh_token"]), "rotated"
    after = token_json(qwen)
    assert after["access_token"] != before["access_token"] and qwen_server.valid_access_token(after["access_token"])
    assert after["base_url"] == "https://portal-b.qwen.ai/v1"


def test_refresh_without_resource_url_keeps_the_login_api_host(qwen: DaemonProcess, qwen_server: FakeQwen):
    login(qwen, qwen_server)
    qwen_server.resource_url = None
    qwen_server.rotate_refresh_tokens = False
    assert qwen.cli("refresh", "qwen").returncode == 0
    assert token_json(qwen)["base_url"] == "https://portal.qwen.ai/v1"
    assert qwen.cli("refresh", "qwen").returncode == 0, "a refresh answer without a refresh token keeps the old one"


def test_two_accounts_side_by_side_the_first_is_the_default(qwen: DaemonProcess, qwen_server: FakeQwen):
    login(qwen, qwen_server)
    login(qwen, qwen_server, "--account", "work")
    default, work = token_json(qwen), token_json(qwen, "--account", "work")
    assert (default["account"], work["account"]) == ("default", "work")
    assert default["access_token"] != work["access_token"]
    assert qwen.request("GET", "/v1/token/qwen?account=work")["access_token"] == work["access_token"]
    assert all(qwen_server.valid_access_token(t["access_token"]) for t in (default, work))


def test_denied_login_says_so(qwen: DaemonProcess, qwen_server: FakeQwen):
    process = qwen.popen("login", "qwen", "--no-browser", "--json")
    qwen_server.deny(read_event(process)["user_code"])
    error = read_event(process)
    assert process.wait(timeout=10) == 1
    assert error["code"] == "login_failed" and "denied" in error["message"]


def test_expired_device_code_ends_the_login(qwen: DaemonProcess, qwen_server: FakeQwen):
    process = qwen.popen("login", "qwen", "--no-browser", "--json")
    qwen_server.expire(read_event(process)["user_code"])
    error = read_event(process)
    assert process.wait(timeout=10) == 1
    assert error["code"] == "login_failed" and "expired" in error["message"]


def test_firewall_page_is_reported_as_the_firewall(qwen: DaemonProcess, qwen_server: FakeQwen):
    qwen_server.waf = True
    process = qwen.popen("login", "qwen", "--no-browser", "--json")
    error = read_event(process)
    assert process.wait(timeout=10) == 1
    assert error["code"] == "upstream_unavailable"
    assert "HTTP 200 with an HTML page instead of JSON" in error["message"]
    assert "firewall" in error["hint"] and "proxy" in error["hint"]


def test_refused_login_reports_the_upstream_message_and_the_free_tier_end(qwen: DaemonProcess, qwen_server: FakeQwen):
    qwen_server.refuse(403, "access_denied_free_tier", FREE_TIER_END)
    process = qwen.popen("login", "qwen", "--no-browser", "--json")
    assert read_event(process)["event"] == "verify"
    error = read_event(process)
    assert process.wait(timeout=10) == 1
    assert error["code"] == "login_failed"
    assert FREE_TIER_END in error["message"]
    assert "2026-04-15" in error["hint"]


def test_refused_refresh_reports_the_upstream_message_and_the_free_tier_end(qwen: DaemonProcess, qwen_server: FakeQwen):
    login(qwen, qwen_server)
    qwen_server.refuse(403, "access_denied_free_tier", FREE_TIER_END)
    result = qwen.cli("refresh", "qwen")
    assert result.returncode == 1
    assert FREE_TIER_END in result.stderr and "2026-04-15" in result.stderr
    status = json.loads(qwen.cli("status", "--json").stdout)
    (account,) = next(p for p in status["providers"] if p["name"] == "qwen")["accounts"]
    assert account["last_error"]["code"] == "refresh_failed"
    assert FREE_TIER_END in account["last_error"]["message"]


def test_providers_json_shows_effective_endpoints_flows_and_api(daemon: DaemonProcess):
    daemon.write_config('[providers.qwen.endpoints]\ndevice_code = "http://127.0.0.1:9/device/code"\n')
    daemon.start()
    listed = {p["name"]: p for p in json.loads(daemon.cli("providers", "--json").stdout)}
    qwen = listed["qwen"]
    assert qwen["endpoints"] == {
        "device_code": "http://127.0.0.1:9/device/code",
        "token": "https://chat.qwen.ai/api/v1/oauth2/token",
    }
    assert qwen["flows"] == ["device"]
    assert qwen["api"] == "openai-chat"
    assert qwen["base_url"] == "https://dashscope.aliyuncs.com/compatible-mode/v1"


async def poll_waits(short_tmp: Path, *answers: str) -> list[float]:
    """The waits of a whole Qwen login whose polls get ``answers`` first, on an injected clock."""
    with FakeQwen(interval=1.0) as server:  # an interval Qwen Code does not read
        server.answer_polls(*answers)
        server.approve_all = True
        env = isolated_env(short_tmp)
        Path(env["BROKER_CONFIG"]).write_text(qwen_config(server))
        clock = FakeClock(autojump_below=60.0)
        daemon = Daemon(load_settings(env), clock=clock)
        await daemon.start()
        try:

            def run() -> list[dict[str, Any]]:
                with Client(env["BROKER_SOCKET"], timeout=60) as client:
                    return list(client.stream("POST", "/v1/login/qwen", {}))

            events = await asyncio.wait_for(asyncio.to_thread(run), 60)
        finally:
            await daemon.stop()
    assert [event["event"] for event in events] == ["verify", "done"]
    assert server.grant_counts[DEVICE_GRANT] == len(answers) + 1
    return clock.jumped


async def test_polls_at_once_then_every_two_seconds_and_slow_down_waits_half_as_long_again(short_tmp: Path):
    """Qwen Code's rhythm (qwenOAuth2.ts): 2 s, x1.5 per slow_down (HTTP 429), 2 s again after plain pending."""
    waits = await poll_waits(short_tmp, "authorization_pending", "slow_down", "authorization_pending")
    assert waits == [2.0, 3.0, 2.0]


async def test_slow_down_grows_to_ten_seconds_at_most(short_tmp: Path):
    waits = await poll_waits(short_tmp, *["slow_down"] * 5, "authorization_pending")
    assert waits == [3.0, 4.5, 6.75, 10.0, 10.0, 2.0]


def test_api_headers_are_what_the_qwen_api_fake_requires(qwen: DaemonProcess, qwen_server: FakeQwen):
    """Served as Qwen Code sends them; the API fake refuses a call that lacks any of them."""
    login(qwen, qwen_server)
    token = token_json(qwen)
    required = qwen_code_api_headers()
    with FakeLLM(key=token["access_token"], required_headers=dict(required)) as api:

        def post(headers: dict[str, str]) -> int:
            request = urllib.request.Request(
                f"{api.url}/v1/chat/completions",
                data=json.dumps({"model": "qwen3-coder-plus", "messages": []}).encode(),
                headers={**headers, "Authorization": f"Bearer {token['access_token']}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert post(token["headers"]) == 200
        for name in required:
            assert post({k: v for k, v in token["headers"].items() if k != name}) == 400, name


def test_the_qwen_fake_refuses_a_device_request_without_a_request_id(qwen_server: FakeQwen):
    form = {"client_id": CLIENT_ID, "scope": "openid", "code_challenge": "x" * 43, "code_challenge_method": "S256"}
    request = urllib.request.Request(
        f"{qwen_server.url}/api/v1/oauth2/device/code",
        data=urllib.parse.urlencode(form).encode(),
        headers={"User-Agent": "node", "Content-Type": "application/x-www-form-urlencoded"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and json.loads(refused.value.read())["error"] == "invalid_request"
