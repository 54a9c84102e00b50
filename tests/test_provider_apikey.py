"""API-key providers, Azure, ``type = "apikey"`` entries and keyless local servers, through the real daemon.

The expected rows are providers.md's compatibility table, written out here on their
own so the code's table is checked against the documented facts, not against itself.
"""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker.providers.registry import build_registry

from broker.core.config import ConfigSource, Section, parse
from broker.core.errors import ConfigError
from tests.conftest import DaemonProcess
from tests.fakes.llm_upstream import FakeLLM

KEY = "sk-test-0123456789abcdef"
DOCUMENTED = {
    "anthropic": ("https://api.anthropic.com", "anthropic", "x-api-key"),
    "minimax": ("https://api.minimax.io/anthropic", "anthropic", "x-api-key"),
    "openrouter": ("https://openrouter.ai/api/v1", "openai-chat", "bearer"),
    "xai": ("https://api.x.ai/v1", "openai-chat", "bearer"),
    "openai": ("https://api.openai.com/v1", "openai-chat", "bearer"),
    "deepseek": ("https://api.deepseek.com", "openai-chat", "bearer"),
    "moonshot": ("https://api.moonshot.ai/v1", "openai-chat", "bearer"),
    "glm": ("https://api.z.ai/api/paas/v4", "openai-chat", "bearer"),
    "groq": ("https://api.groq.com/openai/v1", "openai-chat", "bearer"),
    "mistral": ("https://api.mistral.ai/v1", "openai-chat", "bearer"),
    "together": ("https://api.together.xyz/v1", "openai-chat", "bearer"),
    "perplexity": ("https://api.perplexity.ai", "openai-chat", "bearer"),
    "cerebras": ("https://api.cerebras.ai/v1", "openai-chat", "bearer"),
    "gemini-api": ("https://generativelanguage.googleapis.com/v1beta/openai", "openai-chat", "bearer"),
    "dashscope": ("https://dashscope.aliyuncs.com/compatible-mode/v1", "openai-chat", "bearer"),
    "bedrock": ("http://localhost:4000/v1", "openai-chat", "bearer"),
}
LOCAL = {
    "ollama": "http://localhost:11434/v1",
    "vllm": "http://localhost:8000/v1",
    "lmstudio": "http://localhost:1234/v1",
}


def login_key(daemon: DaemonProcess, provider: str, key: str = KEY, *extra: str) -> None:
    result = daemon.cli("login", provider, "--key-stdin", *extra, input=key + "\n")
    assert result.returncode == 0, result.stderr


def login_over_socket(daemon: DaemonProcess, provider: str, key: str) -> None:
    """The socket API's login with the key in the body (what --key-stdin sends), without a CLI process."""
    with daemon.client() as client:
        events = list(client.stream("POST", f"/v1/login/{provider}", {"secret": key}))
    assert events[-1]["event"] == "done", events


def token(daemon: DaemonProcess, provider: str) -> dict[str, Any]:
    result = daemon.cli("token", provider, "--json")
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def listed(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    provider: dict[str, Any] = next(p for p in daemon.request("GET", "/v1/providers")["providers"] if p["name"] == name)
    return provider


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, held for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# --- the table ----------------------------------------------------------------------------------


def test_every_api_key_provider_serves_its_key_at_the_documented_base_url_and_header(daemon: DaemonProcess):
    daemon.start()
    for name, (base_url, api, auth) in DOCUMENTED.items():
        login_over_socket(daemon, name, f"{KEY}-{name}")
        answer = daemon.request("GET", f"/v1/token/{name}")
        assert answer["access_token"] == f"{KEY}-{name}", name
        assert (answer["base_url"], answer["api"], answer["auth"]) == (base_url, api, auth), name
        assert answer["expires_at"] is None and answer["headers"] == {}, name
        assert "query" not in answer, name


def test_keys_survive_a_restart_and_never_reach_the_log(daemon: DaemonProcess):
    daemon.start()
    login_key(daemon, "openai")
    daemon.restart()
    assert token(daemon, "openai")["access_token"] == KEY
    status = daemon.cli("status", "--json").stdout
    assert KEY not in status and KEY not in daemon.log()
    assert "login done provider=openai" in daemon.log()


def test_login_prompts_for_the_key_on_a_terminal_without_echoing_it(daemon: DaemonProcess):
    daemon.start()
    pid, master = pty.fork()
    if pid == 0:  # the child: broker login on a real terminal
        os.execve(sys.executable, [sys.executable, "-m", "broker", "login", "openai"], daemon.env)
    output = b""
    try:
        while b"OpenAI API key:" not in output:
            output += _read(master)
        os.write(master, KEY.encode() + b"\n")
        while True:
            try:
                piece = _read(master)
            except OSError:  # EIO: the child closed the terminal
                break
            if not piece:
                break
            output += piece
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    assert KEY.encode() not in output
    assert b"logged in to openai" in output
    assert token(daemon, "openai")["access_token"] == KEY


def _read(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 20)
    assert ready, "the login printed nothing for 20 s"
    return os.read(fd, 4096)


def test_login_never_takes_the_key_from_the_providers_environment_variable(daemon: DaemonProcess):
    daemon.start()
    daemon.env["OPENAI_API_KEY"] = "sk-exported-for-another-tool"
    result = daemon.cli("login", "openai")  # stdin is not a terminal and no --key-stdin
    assert result.returncode == 2
    assert "openai asks for its OpenAI API key" in result.stderr and "--token-stdin" in result.stderr
    assert "sk-exported-for-another-tool" not in daemon.cli("status", "--json").stdout
    login_key(daemon, "openai")
    assert token(daemon, "openai")["access_token"] == KEY


@pytest.mark.parametrize("key", ["sk-with space", "sk-\x01control", "sk-non-ascii-\u00e9"])
def test_a_key_that_cannot_travel_in_a_header_is_refused_without_being_shown(daemon: DaemonProcess, key: str):
    daemon.start()
    result = daemon.cli("login", "openai", "--key-stdin", input=key + "\n")
    assert result.returncode == 2
    assert "spaces, control or non-ASCII" in result.stderr
    assert key not in result.stderr and key not in daemon.log()


def test_an_empty_key_is_refused(daemon: DaemonProcess):
    daemon.start()
    result = daemon.cli("login", "openai", "--key-stdin", input="\n")
    assert result.returncode == 2 and "nothing on standard input" in result.stderr


def test_a_base_url_changed_in_the_config_applies_to_an_existing_login(daemon: DaemonProcess):
    daemon.start()
    login_key(daemon, "openai")
    daemon.write_config('[providers.openai]\nbase_url = "https://gateway.example.com/v1"\nheaders = {X-Team = "ml"}\n')
    daemon.restart()
    answer = token(daemon, "openai")
    assert answer["base_url"] == "https://gateway.example.com/v1"
    assert answer["headers"] == {"X-Team": "ml"}


# --- Azure ---------------------------------------------------------------------------------------


def test_azure_base_url_is_built_from_resource_and_deployment_and_answers_carry_api_version(daemon: DaemonProcess):
    daemon.write_config(
        '[providers.azure]\nresource = "contoso"\ndeployment = "gpt-4o-prod"\napi_version = "2025-01-01"\n'
    )
    daemon.start()
    login_key(daemon, "azure")
    answer = token(daemon, "azure")
    assert answer["base_url"] == "https://contoso.openai.azure.com/openai/deployments/gpt-4o-prod"
    assert answer["auth"] == "api-key"
    assert answer["query"] == {"api-version": "2025-01-01"}
    env = json.loads(daemon.cli("env", "azure", "--json").stdout)
    assert env["AZURE_OPENAI_API_KEY"] == KEY
    assert env["AZURE_OPENAI_ENDPOINT"] == "https://contoso.openai.azure.com"
    assert env["OPENAI_API_VERSION"] == "2025-01-01"
    assert "OPENAI_API_KEY" not in env  # a plain OpenAI client would send it as a bearer token


def test_azure_without_resource_and_deployment_says_what_to_configure(daemon: DaemonProcess):
    daemon.start()
    result = daemon.cli("login", "azure", "--key-stdin", input=KEY + "\n")
    assert result.returncode == 2
    assert "set resource and deployment" in result.stderr
    assert listed(daemon, "azure")["query"] == {"api-version": "2024-10-21"}


def test_an_azure_name_that_would_change_the_url_is_a_config_error():
    with pytest.raises(ConfigError, match=r"providers\.azure\.resource: must be an Azure name"):
        registry_of('[providers.azure]\nresource = "evil.com/x"\n')


# --- type = "apikey" entries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "auth_header"),
    [("openai-chat", "bearer"), ("anthropic", "x-api-key"), ("openai-chat", "api-key")],
)
def test_a_config_entry_of_type_apikey_is_served_with_its_api_and_header(
    daemon: DaemonProcess, api: str, auth_header: str
):
    daemon.write_config(f"""
[providers.mygateway]
type = "apikey"
base_url = "https://llm.example.com/v1"
api = "{api}"
auth_header = "{auth_header}"
""")
    daemon.start()
    assert listed(daemon, "mygateway")["flows"] == ["apikey"]
    login_key(daemon, "mygateway", KEY, "--account", "team")
    answer = token(daemon, "mygateway")
    assert (answer["account"], answer["access_token"]) == ("team", KEY)
    assert (answer["base_url"], answer["api"], answer["auth"]) == ("https://llm.example.com/v1", api, auth_header)


def test_a_config_entry_names_a_wrong_header_style_with_file_line_and_key():
    text = '[providers.mygateway]\ntype = "apikey"\nbase_url = "https://llm.example.com/v1"\nauth_header = "basic"\n'
    with pytest.raises(
        ConfigError, match=r"config\.toml:4: providers\.mygateway\.auth_header: must be one of \"bearer\""
    ):
        registry_of(text)


def test_a_config_entry_without_base_url_is_a_config_error():
    with pytest.raises(ConfigError, match=r"providers\.mygateway\.base_url: is required"):
        registry_of('[providers.mygateway]\ntype = "apikey"\n')


def registry_of(text: str) -> Any:
    source = ConfigSource(Path("/etc/broker/config.toml"), text)
    root = Section((), parse(source), source)
    return build_registry(root.section("providers"))


# --- local servers ---------------------------------------------------------------------------------


def test_local_servers_are_served_without_a_login(daemon: DaemonProcess):
    daemon.start()
    for name, base_url in LOCAL.items():
        answer = daemon.request("GET", f"/v1/token/{name}")
        assert (answer["base_url"], answer["auth"], answer["access_token"]) == (base_url, "none", ""), name
    env = json.loads(daemon.cli("env", "ollama", "--json").stdout)
    assert env["OPENAI_BASE_URL"] == LOCAL["ollama"] and env["OPENAI_API_KEY"] == "none"


def test_local_servers_have_no_login(daemon: DaemonProcess):
    daemon.start()
    result = daemon.cli("login", "ollama")
    assert result.returncode == 2 and "ollama needs no login" in result.stderr


def test_status_says_whether_each_local_server_answers(daemon: DaemonProcess, refused_port: int):
    with FakeLLM(style="none") as ollama:
        daemon.write_config(f"""
[providers.ollama]
base_url = "{ollama.url}/v1"

[providers.vllm]
base_url = "http://127.0.0.1:{refused_port}/v1"
""")
        daemon.start()
        assert listed(daemon, "ollama")["state"] == "ready"
        assert listed(daemon, "vllm")["state"] == "unreachable"
        assert ollama.seen("/v1/models"), "the probe asks GET /models"
        lines = daemon.cli("status").stdout.splitlines()
        assert any(line.startswith("vllm") and "unreachable" in line for line in lines)
        assert any(line.startswith("ollama") and "ready" in line and ollama.url in line for line in lines)
