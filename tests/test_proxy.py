"""The auth-injecting proxy, through the real daemon, against loopback fakes of the upstreams.

Requests are sent with ``http.client`` so every header the proxy gets is the test's own;
the fakes record what reached them, so "nothing forwarded" is an observation.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import DaemonProcess, isolated_env, read_event
from tests.fakes.github import API_HEADERS, FakeGitHub
from tests.fakes.llm_upstream import FakeLLM

KEY = "sk-upstream-0123456789"
PROXY = "[proxy]\nport = 0\n"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


# --- helpers shared with test_sdk_clients --------------------------------------------------------


def proxy_answer(daemon: DaemonProcess, provider: str) -> dict[str, Any]:
    """``GET /v1/proxy/NAME``: the proxy's base URL for the provider and its key."""
    answer: dict[str, Any] = daemon.request("GET", f"/v1/proxy/{provider}")
    return answer


def streamed_chat(base_url: str, key: str) -> bytes:
    """A streamed chat completion request to the proxy, as raw bytes."""
    parts = urlsplit(base_url)
    body = json.dumps({**CHAT, "stream": True}).encode()
    head = (
        f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def read_then_hang_up(base_url: str, raw: bytes, until: bytes) -> bytes:
    """``raw`` sent to the proxy, its answer read up to ``until``; then the client hangs up."""
    parts = urlsplit(base_url)
    received = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as client:
        client.sendall(raw)
        while until not in received:
            piece = client.recv(65536)
            assert piece, f"the proxy closed the stream before {until!r}"
            received += piece
    return received


def call(
    url: str, method: str = "POST", body: Any = CHAT, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these headers (plus Host and Content-Length); status, headers, body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    payload = json.dumps(body).encode() if body is not None else None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    try:
        connection.request(method, target, body=payload, headers=all_headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def login_key(daemon: DaemonProcess, provider: str, key: str = KEY) -> None:
    result = daemon.cli("login", provider, "--key-stdin", input=key + "\n")
    assert result.returncode == 0, result.stderr


def copilot_login(daemon: DaemonProcess, github: FakeGitHub) -> None:
    process = daemon.popen("login", "copilot", "--no-browser", "--json")
    github.approve(read_event(process)["user_code"])
    assert read_event(process)["event"] == "done"
    assert process.wait(timeout=10) == 0


def copilot_config(github: FakeGitHub) -> str:
    return f"""
[providers.copilot.endpoints]
device_code = "{github.url}/login/device/code"
access_token = "{github.url}/login/oauth/access_token"
api = "{github.url}"
"""


def copilot_upstream(github: FakeGitHub) -> FakeLLM:
    """Copilot's chat API: ``/chat/completions`` at the token's ``endpoints.api``, VS Code's headers required."""
    return FakeLLM(
        style="openai",
        prefix="",
        key=lambda token: github.copilot_token(token) is not None,
        required_headers=dict(API_HEADERS),
    )


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, held for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@dataclass
class Proxied:
    """A daemon with the proxy on and ``openai`` logged in at a fake upstream."""

    daemon: DaemonProcess
    llm: FakeLLM
    answer: dict[str, Any]


@pytest.fixture(scope="module")
def shared_proxy() -> Iterator[Proxied]:
    """One daemon for the tests that only send requests: each starts with the fake's record empty."""
    root = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))
    daemon = DaemonProcess(root, isolated_env(root))
    try:
        with FakeLLM(style="openai", key=KEY) as llm:
            daemon.write_config(f'{PROXY}\n[providers.openai]\nbase_url = "{llm.url}/v1"\n')
            daemon.start()
            login_key(daemon, "openai")
            yield Proxied(daemon, llm, proxy_answer(daemon, "openai"))
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def proxied(shared_proxy: Proxied) -> Proxied:
    shared_proxy.llm.requests.clear()
    return shared_proxy


# --- forwarding ------------------------------------------------------------------------------------


def test_proxy_swaps_its_key_for_the_providers_and_keeps_path_and_query(proxied: Proxied):
    key = proxied.answer["access_token"]
    status, _, body = call(
        proxied.answer["base_url"] + "/chat/completions?trace=on&x=%2F",
        headers={
            "Authorization": f"Bearer {key}",
            "X-Client": "kept",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
            "Proxy-Authorization": "Basic c2VjcmV0",
        },
    )
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hello from the fake"
    [seen] = proxied.llm.requests
    assert (seen.path, seen.query) == ("/v1/chat/completions", {"trace": "on", "x": "/"})
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.headers["X-Client"] == "kept"
    assert "X-Hop" not in seen.headers and "Proxy-Authorization" not in seen.headers
    assert not any(key in value for value in seen.headers.values())
    assert seen.body == CHAT


def test_proxy_answer_is_loopback_and_shaped_for_the_clients_sdk(proxied: Proxied):
    answer = proxied.answer
    assert urlsplit(answer["base_url"]).hostname == "127.0.0.1"
    assert urlsplit(answer["base_url"]).path == "/openai"
    assert answer["access_token"].startswith("brk-proxy-")
    assert (answer["api"], answer["auth"], answer["headers"]) == ("openai-chat", "bearer", {})


def test_anthropic_clients_send_the_proxy_key_as_x_api_key_and_upstream_gets_the_providers(daemon: DaemonProcess):
    with FakeLLM(style="anthropic", key=KEY, prefix="", required_headers={"anthropic-version": None}) as llm:
        daemon.write_config(f'{PROXY}\n[providers.anthropic]\nbase_url = "{llm.url}"\n')
        daemon.start()
        login_key(daemon, "anthropic")
        answer = proxy_answer(daemon, "anthropic")
        assert answer["auth"] == "x-api-key"
        status, _, body = call(
            answer["base_url"] + "/v1/messages",
            headers={"x-api-key": answer["access_token"], "anthropic-version": "2023-06-01"},
        )
        assert status == 200, body
        [seen] = llm.requests
        assert seen.headers["x-api-key"] == KEY and "Authorization" not in seen.headers


def test_azure_through_the_proxy_gets_the_api_key_header_and_api_version(daemon: DaemonProcess):
    with FakeLLM(style="azure", key=KEY, prefix="/openai/deployments/gpt-4o-prod", api_version="2025-01-01") as llm:
        daemon.write_config(
            f'{PROXY}\n[providers.azure]\nbase_url = "{llm.url}/openai/deployments/gpt-4o-prod"\n'
            'api_version = "2025-01-01"\n'
        )
        daemon.start()
        login_key(daemon, "azure")
        answer = proxy_answer(daemon, "azure")
        status, _, body = call(answer["base_url"] + "/chat/completions", headers={"api-key": answer["access_token"]})
        assert status == 200, body
        [seen] = llm.requests
        assert seen.path == "/openai/deployments/gpt-4o-prod/chat/completions"
        assert seen.query == {"api-version": "2025-01-01"}
        assert seen.headers["api-key"] == KEY


def test_every_request_gets_a_fresh_subscription_token(daemon: DaemonProcess):
    with FakeGitHub(device_interval=0.05) as github, copilot_upstream(github) as llm:
        github.copilot_api = llm.url
        daemon.write_config(PROXY + copilot_config(github))
        daemon.start()
        copilot_login(daemon, github)
        answer = proxy_answer(daemon, "copilot")
        auth = {"Authorization": f"Bearer {answer['access_token']}"}
        assert call(answer["base_url"] + "/chat/completions", headers=auth)[0] == 200
        assert daemon.cli("refresh", "copilot").returncode == 0
        assert call(answer["base_url"] + "/chat/completions", headers=auth)[0] == 200
        first, second = (seen.headers["Authorization"] for seen in llm.requests)
        assert first != second
        assert second.removeprefix("Bearer ") == daemon.request("GET", "/v1/token/copilot")["access_token"]
        assert llm.requests[1].headers["Copilot-Integration-Id"] == "vscode-chat"


def test_name_at_account_pins_an_account_and_the_bare_name_follows_the_default(daemon: DaemonProcess):
    work = "sk-work-9876543210"
    with FakeLLM(style="openai", key=lambda token: token in (KEY, work)) as llm:
        daemon.write_config(f'{PROXY}\n[providers.openai]\nbase_url = "{llm.url}/v1"\n')
        daemon.start()
        login_key(daemon, "openai")
        result = daemon.cli("login", "openai", "--account", "work@example.com", "--key-stdin", input=work + "\n")
        assert result.returncode == 0, result.stderr
        pinned = daemon.request("GET", "/v1/proxy/openai?account=work%40example.com")
        assert urlsplit(pinned["base_url"]).path == "/openai@work@example.com"
        assert pinned["account"] == "work@example.com"
        auth = {"Authorization": f"Bearer {pinned['access_token']}"}
        assert call(pinned["base_url"] + "/chat/completions", headers=auth)[0] == 200
        assert call(proxy_answer(daemon, "openai")["base_url"] + "/chat/completions", headers=auth)[0] == 200
        assert [seen.headers["Authorization"] for seen in llm.requests] == [f"Bearer {work}", f"Bearer {KEY}"]

        exported = daemon.cli("env", "openai", "--proxy", "--account", "work@example.com", "--json")
        assert exported.returncode == 0, exported.stderr
        assert "/openai@work@example.com" in exported.stdout
        missing = daemon.cli("env", "openai", "--proxy", "--account", "nobody")
        assert missing.returncode == 3 and "no login for account 'nobody'" in missing.stderr


def test_the_daemons_http_proxy_setting_is_honoured_and_no_proxy_too(daemon: DaemonProcess):
    # The proxy reads HTTP(S)_PROXY and NO_PROXY once per upstream host, not per request.
    with FakeLLM(style="openai", key=KEY) as forward, FakeLLM(style="openai", key=KEY) as direct:
        daemon.write_config(
            f'{PROXY}\n[providers.openai]\nbase_url = "http://upstream.invalid/v1"\n'
            f'[providers.gateway]\ntype = "apikey"\napi = "openai-chat"\nbase_url = "{direct.url}/v1"\n'
        )
        daemon.start(extra_env={"HTTP_PROXY": forward.url, "NO_PROXY": "127.0.0.1"})
        login_key(daemon, "openai")
        login_key(daemon, "gateway")
        for provider in ("openai", "gateway", "openai"):
            answer = proxy_answer(daemon, provider)
            status, _, body = call(answer["base_url"] + "/chat/completions",
                                   headers={"Authorization": f"Bearer {answer['access_token']}"})  # fmt: skip
            assert status == 200, body
        assert [r.headers["Host"] for r in forward.requests] == ["upstream.invalid", "upstream.invalid"]
        assert [r.headers["Authorization"] for r in forward.requests] == [f"Bearer {KEY}"] * 2
        assert len(direct.requests) == 1  # NO_PROXY: straight there


def test_one_log_line_per_request_names_provider_path_and_status_but_no_secret(proxied: Proxied):
    key = proxied.answer["access_token"]
    url = proxied.answer["base_url"] + "/models?session=s3cr3t"
    assert call(url, method="GET", body=None, headers={"Authorization": f"Bearer {key}"})[0] == 200
    lines = [line for line in proxied.daemon.log().splitlines() if "proxy GET /openai/models" in line]
    assert len(lines) == 1
    assert "/openai/models account=default -> 200" in lines[0]
    log = proxied.daemon.log()
    assert key not in log and KEY not in log and "s3cr3t" not in log


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer brk-proxy-wrong"},
        {"x-api-key": "brk-proxy-wrong"},
        {"Authorization": f"Bearer {KEY}"},  # the upstream's own key is not the proxy's
        {"Authorization": "Basic YnJrOnByb3h5"},
    ],
    ids=["missing", "wrong-bearer", "wrong-x-api-key", "upstream-key", "basic"],
)
def test_a_wrong_or_missing_proxy_key_is_401_and_nothing_is_forwarded(proxied: Proxied, headers: dict[str, str]):
    status, _, body = call(proxied.answer["base_url"] + "/chat/completions", headers=headers)
    assert status == 401
    error = json.loads(body)["error"]
    assert error["code"] == "unauthorized"
    assert "the proxy needs its key" in error["message"] and "broker env openai --proxy" in error["hint"]
    assert proxied.llm.requests == []


def test_an_unknown_provider_is_404_with_a_hint(proxied: Proxied):
    base = proxied.answer["base_url"].removesuffix("/openai")
    status, _, body = call(base + "/opanai/chat/completions", headers={"x-api-key": proxied.answer["access_token"]})
    assert status == 404
    error = json.loads(body)["error"]
    assert error["code"] == "unknown_provider" and "did you mean openai?" in error["hint"]
    assert proxied.llm.requests == []


def test_an_upstream_that_is_down_is_502_with_a_clear_body(daemon: DaemonProcess, refused_port: int):
    daemon.write_config(f'{PROXY}\n[providers.openai]\nbase_url = "http://127.0.0.1:{refused_port}/v1"\n')
    daemon.start()
    login_key(daemon, "openai")
    answer = proxy_answer(daemon, "openai")
    status, headers, body = call(
        answer["base_url"] + "/chat/completions", headers={"Authorization": f"Bearer {answer['access_token']}"}
    )
    assert status == 502 and headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "upstream_unavailable"
    assert error["message"].startswith("openai: the upstream at 127.0.0.1 did not answer (")
    assert "reachable" in error["hint"]


def test_a_client_hanging_up_mid_stream_cancels_the_upstream_request(daemon: DaemonProcess):
    with FakeLLM(style="none", gate=True) as llm:
        daemon.write_config(f'{PROXY}\n[providers.ollama]\nbase_url = "{llm.url}/v1"\n')
        daemon.start()
        answer = proxy_answer(daemon, "ollama")
        stream = streamed_chat(answer["base_url"], answer["access_token"])
        received = read_then_hang_up(answer["base_url"], stream, b"data: ")
        assert llm.disconnected.wait(15), "the upstream request was not cancelled"
        assert llm.sent == 1 and llm.gate_timeouts == 0
        assert b" 200 OK" in received.split(b"\r\n", 1)[0]


def test_providers_whose_terms_allow_only_their_own_client_are_refused(proxied: Proxied):
    base = proxied.answer["base_url"].removesuffix("/openai")
    status, _, body = call(base + "/claude/v1/messages", headers={"x-api-key": proxied.answer["access_token"]})
    assert status == 403
    assert "not served through the proxy" in json.loads(body)["error"]["message"]


def test_env_proxy_refuses_such_providers_too(daemon: DaemonProcess):
    daemon.write_config(PROXY)
    daemon.start()
    result = daemon.cli("env", "claude", "--proxy")
    assert result.returncode == 1 and "not served through the proxy" in result.stderr


def test_a_path_that_climbs_out_of_the_base_url_is_refused(proxied: Proxied):
    key = proxied.answer["access_token"]
    status, _, _ = call(proxied.answer["base_url"] + "/%2E%2E/admin", headers={"Authorization": f"Bearer {key}"})
    assert status == 400 and proxied.llm.requests == []


# --- turning it on ----------------------------------------------------------------------------------


def test_the_proxy_listens_on_127_0_0_1_only(proxied: Proxied):
    port = urlsplit(proxied.answer["base_url"]).port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5).close()


def test_the_proxy_key_is_kept_in_the_store_across_restarts(daemon: DaemonProcess):
    daemon.write_config(PROXY)
    daemon.start()
    key = proxy_answer(daemon, "ollama")["access_token"]
    daemon.restart()
    assert proxy_answer(daemon, "ollama")["access_token"] == key
    assert key not in (daemon.state_dir / "credentials.enc").read_bytes().decode("latin-1")  # encrypted there


def test_serve_proxy_port_turns_the_proxy_on(daemon: DaemonProcess):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon.start(args=("--proxy-port", str(port)))
    assert proxy_answer(daemon, "ollama")["base_url"] == f"http://127.0.0.1:{port}/ollama"


def test_without_a_port_the_proxy_is_off_and_env_says_how_to_turn_it_on(daemon: DaemonProcess):
    daemon.start()
    result = daemon.cli("env", "ollama", "--proxy")
    assert result.returncode == 2
    assert "the auth proxy is off" in result.stderr and "--proxy-port" in result.stderr


def test_env_proxy_before_a_login_says_to_log_in(daemon: DaemonProcess):
    daemon.write_config(PROXY)
    daemon.start()
    result = daemon.cli("env", "openai", "--proxy")
    assert result.returncode == 3 and "broker login openai" in result.stderr


def test_a_proxy_host_off_loopback_is_a_config_error(daemon: DaemonProcess):
    daemon.write_config('[proxy]\nport = 8787\nhost = "0.0.0.0"\n')
    result = daemon.cli("serve")
    assert result.returncode == 78
    assert 'proxy.host: must be one of "127.0.0.1", "::1"' in result.stderr
