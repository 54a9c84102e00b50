"""The real ``openai`` and ``anthropic`` SDKs, pointed by ``broker exec`` or the proxy at loopback fakes.

Each fake checks what the real service would: the key and the header it travels in,
the headers the service requires, and the path (Azure: also ``api-version``). The SDKs
run with ``max_retries=0`` so a refusal fails the test at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from openai import OpenAI

from broker.client import aget_token, get_token
from broker.core.errors import NotLoggedIn
from tests.conftest import DaemonProcess
from tests.fakes.github import FakeGitHub
from tests.fakes.llm_upstream import FakeLLM
from tests.test_proxy import KEY, PROXY, copilot_config, copilot_login, copilot_upstream, login_key

MESSAGES = '[{"role": "user", "content": "hi"}]'
OPENAI_SCRIPT = f"""
import pytest
from openai import OpenAI
reply = OpenAI(max_retries=0).chat.completions.create(model="fake-model", messages={MESSAGES})
print(reply.choices[0].message.content)
"""
AZURE_SCRIPT = f"""
from openai import AzureOpenAI
reply = AzureOpenAI(max_retries=0).chat.completions.create(model="gpt-4o-prod", messages={MESSAGES})
print(reply.choices[0].message.content)
"""
ANTHROPIC_SCRIPT = f"""
from anthropic import Anthropic
reply = Anthropic(max_retries=0).messages.create(model="claude-test", max_tokens=16, messages={MESSAGES})
print(reply.content[0].text)
"""


def run_python(daemon: DaemonProcess, provider: str, script: str, *flags: str) -> str:
    """``broker exec PROVIDER [flags] -- python -c SCRIPT``; its stdout."""
    result = daemon.cli("exec", provider, *flags, "--", sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_openai_sdk_reaches_an_api_key_provider_through_broker_exec(daemon: DaemonProcess):
    with FakeLLM(style="openai", key=KEY) as llm:
        daemon.write_config(f'[providers.openai]\nbase_url = "{llm.url}/v1"\n')
        daemon.start()
        login_key(daemon, "openai")
        assert run_python(daemon, "openai", OPENAI_SCRIPT) == "Hello from the fake"
        [seen] = llm.requests
        assert seen.path == "/v1/chat/completions"
        assert seen.headers["Authorization"] == f"Bearer {KEY}"


def test_anthropic_sdk_reaches_an_x_api_key_provider_through_broker_exec(daemon: DaemonProcess):
    with FakeLLM(style="anthropic", key=KEY, prefix="", required_headers={"anthropic-version": None}) as llm:
        daemon.write_config(f'[providers.minimax]\nbase_url = "{llm.url}/anthropic"\n')
        llm.prefix = "/anthropic"
        daemon.start()
        login_key(daemon, "minimax")
        assert run_python(daemon, "minimax", ANTHROPIC_SCRIPT) == "Hello from the fake"
        [seen] = llm.requests
        assert seen.path == "/anthropic/v1/messages"
        # anthropic 2.x sends an API key as a bearer token, older releases as x-api-key; the API takes both
        assert KEY in (seen.headers.get("x-api-key"), seen.headers.get("Authorization", "").removeprefix("Bearer "))


def test_azure_openai_sdk_reaches_azure_with_its_header_and_api_version_through_broker_exec(daemon: DaemonProcess):
    with FakeLLM(style="azure", key=KEY, prefix="/openai/deployments/gpt-4o-prod", api_version="2025-01-01") as llm:
        daemon.write_config(
            f'[providers.azure]\nbase_url = "{llm.url}/openai/deployments/gpt-4o-prod"\napi_version = "2025-01-01"\n'
        )
        daemon.start()
        login_key(daemon, "azure")
        assert run_python(daemon, "azure", AZURE_SCRIPT) == "Hello from the fake"
        [seen] = llm.requests
        assert seen.path == "/openai/deployments/gpt-4o-prod/chat/completions"
        assert seen.query == {"api-version": "2025-01-01"}
        assert seen.headers["api-key"] == KEY and "Authorization" not in seen.headers


def test_openai_sdk_reaches_a_local_server_without_auth_through_broker_exec(daemon: DaemonProcess):
    with FakeLLM(style="none") as llm:
        daemon.write_config(f'[providers.ollama]\nbase_url = "{llm.url}/v1"\n')
        daemon.start()
        assert run_python(daemon, "ollama", OPENAI_SCRIPT) == "Hello from the fake"
        [seen] = llm.requests
        assert seen.path == "/v1/chat/completions"
        assert seen.headers["Authorization"] == "Bearer none"  # the placeholder the SDK insists on


def test_a_local_server_behind_the_proxy_gets_no_key_at_all(daemon: DaemonProcess):
    with FakeLLM(style="none") as llm:
        daemon.write_config(f'{PROXY}\n[providers.ollama]\nbase_url = "{llm.url}/v1"\n')
        daemon.start()
        assert run_python(daemon, "ollama", OPENAI_SCRIPT, "--proxy") == "Hello from the fake"
        [seen] = llm.requests
        assert seen.path == "/v1/chat/completions"
        assert "Authorization" not in seen.headers


def test_anthropic_sdk_through_exec_proxy_sends_the_proxy_key_and_upstream_gets_the_real_one(daemon: DaemonProcess):
    with FakeLLM(style="anthropic", key=KEY, prefix="", required_headers={"anthropic-version": None}) as llm:
        daemon.write_config(f'{PROXY}\n[providers.anthropic]\nbase_url = "{llm.url}"\n')
        daemon.start()
        login_key(daemon, "anthropic")
        assert run_python(daemon, "anthropic", ANTHROPIC_SCRIPT, "--proxy") == "Hello from the fake"
        [seen] = llm.requests
        assert seen.path == "/v1/messages" and seen.headers["x-api-key"] == KEY


def test_a_subscription_provider_streams_through_the_proxy_chunk_by_chunk(daemon: DaemonProcess):
    with FakeGitHub(device_interval=0.05) as github, copilot_upstream(github) as llm:
        github.copilot_api = llm.url
        llm.gate = True
        daemon.write_config(PROXY + copilot_config(github))
        daemon.start()
        copilot_login(daemon, github)
        env = json.loads(daemon.cli("env", "copilot", "--proxy", "--json").stdout)
        client = OpenAI(api_key=env["OPENAI_API_KEY"], base_url=env["OPENAI_BASE_URL"], max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        received: list[str] = []
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
            assert llm.sent == len(received), "a piece arrived only after the upstream sent more"
            llm.release()  # only now may the upstream send the next piece
        assert received == llm.chunks
        assert llm.gate_timeouts == 0
        [seen] = llm.requests
        assert seen.path == "/chat/completions"
        assert github.copilot_token(seen.headers["Authorization"].removeprefix("Bearer ")) is not None
        assert seen.headers["Copilot-Integration-Id"] == "vscode-chat"


def test_the_python_client_has_a_sync_and_an_async_call_with_token_base_url_and_headers(daemon: DaemonProcess):
    daemon.write_config('[providers.openai]\nheaders = {"OpenAI-Organization" = "org-1"}\n')
    daemon.start()
    login_key(daemon, "openai")
    sync = get_token("openai", socket_path=daemon.socket_path)
    answer: dict[str, Any] = asyncio.run(aget_token("openai", socket_path=daemon.socket_path))
    for token in (sync, answer):
        assert token["access_token"] == KEY
        assert token["base_url"] == "https://api.openai.com/v1"
        assert token["headers"] == {"OpenAI-Organization": "org-1"}


def test_the_async_client_raises_the_daemons_error(daemon: DaemonProcess):
    daemon.start()
    with pytest.raises(NotLoggedIn) as raised:
        asyncio.run(aget_token("openai", socket_path=daemon.socket_path))
    assert "broker login openai" in raised.value.hint
