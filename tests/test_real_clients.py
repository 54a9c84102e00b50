"""README's "Use it with" recipes, run with the real clients (pinned in tests/peers/) against loopback fakes.

Each fake upstream checks the provider's credential and its headers; each test then checks that
nothing else arrived: not the user's own keys and base URLs left in the caller's environment
(``DECOYS``), not the proxy's key or a ``broker exec`` lease.
"""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess
from tests.fakes.llm_upstream import FakeLLM, Seen
from tests.peers import npm_program, pypi_program
from tests.test_exec_lease import short_lived_tokens, wait_for
from tests.test_proxy import CHAT, KEY, call, login_key

TEAM = {"X-Team": "ml"}
"""A header the provider's config adds: it must reach the upstream whatever the client does with headers."""
DECOYS = {
    "OPENAI_API_KEY": "sk-decoy-users-own",
    "OPENAI_API_BASE": "http://127.0.0.1:9/decoy",
    "OPENAI_ORG_ID": "org-decoy",
    "ANTHROPIC_API_KEY": "sk-ant-decoy",
    "ANTHROPIC_AUTH_TOKEN": "sk-ant-oat-decoy",
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/decoy",
    "GEMINI_API_KEY": "decoy-gemini",
}
"""What a user's ~/.bashrc may hold: a client that picked any of it up would send it, or go elsewhere."""


def openai_config(url: str) -> str:
    return f'[providers.openai]\nbase_url = "{url}/v1"\nheaders = {{ "X-Team" = "ml" }}\n'


def only_the_providers_credential(seen: Seen, key: str = KEY) -> None:
    """The provider's key in the place its API takes it, its headers, and nothing of anyone else's."""
    presented = seen.headers.get("x-api-key") or seen.headers.get("Authorization", "").removeprefix("Bearer ")
    assert presented == key
    assert seen.headers.get("X-Team") == "ml"
    everything = json.dumps([dict(seen.headers), seen.query])
    assert "decoy" not in everything and "brk-" not in everything, everything


def caller_env(daemon: DaemonProcess, **extra: str) -> dict[str, str]:
    return {**daemon.env, **DECOYS, **extra}


def run(command: list[str | Path], env: dict[str, str], timeout: float = 90, **kwargs: object) -> str:
    result = subprocess.run(
        [str(part) for part in command], env=env, capture_output=True, text=True, timeout=timeout, **kwargs
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def broker(*args: str) -> list[str]:
    return [sys.executable, "-m", "broker", *args]


@pytest.fixture
def openai_at(daemon: DaemonProcess) -> Iterator[tuple[DaemonProcess, FakeLLM]]:
    """``openai`` logged in, at a fake that takes ``KEY`` and serves chat completions and the Responses API."""
    with FakeLLM(style="openai", key=KEY, required_headers=dict(TEAM)) as llm:
        daemon.write_config(openai_config(llm.url))
        daemon.start()
        login_key(daemon, "openai")
        yield daemon, llm


# --- Claude Code ---------------------------------------------------------------------------------------


@pytest.fixture
def anthropic_at(daemon: DaemonProcess) -> Iterator[tuple[DaemonProcess, FakeLLM]]:
    """``anthropic`` logged in, at a fake Messages API that takes ``KEY`` and wants the provider's header."""
    with FakeLLM(style="anthropic", key=KEY, prefix="", required_headers=dict(TEAM)) as llm:
        daemon.write_config(f'[providers.anthropic]\nbase_url = "{llm.url}"\nheaders = {{ "X-Team" = "ml" }}\n')
        daemon.start()
        login_key(daemon, "anthropic")
        yield daemon, llm


def test_claude_code_calls_broker_token_through_api_key_helper(anthropic_at: tuple[DaemonProcess, FakeLLM]):
    daemon, llm = anthropic_at
    claude = npm_program("claude")
    settings = Path(daemon.env["HOME"]) / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    helper = f"{sys.executable} -m broker token anthropic"
    settings.write_text(json.dumps({"apiKeyHelper": helper}))
    env = caller_env(daemon, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    env.update(json.loads(run(broker("env", "anthropic", "--json"), daemon.env)))  # base URL, headers
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        env.pop(name)  # the recipe: the key comes from the helper only
    assert "Hello from the fake" in run([claude, "-p", "say hi"], env)
    assert llm.requests
    for seen in llm.requests:
        only_the_providers_credential(seen)


def test_claude_code_runs_under_broker_exec(anthropic_at: tuple[DaemonProcess, FakeLLM]):
    daemon, llm = anthropic_at
    claude = npm_program("claude")
    env = caller_env(daemon, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    assert "Hello from the fake" in run(broker("exec", "anthropic", "--", str(claude), "-p", "say hi"), env)
    assert llm.requests
    for seen in llm.requests:
        only_the_providers_credential(seen)


# --- Codex -----------------------------------------------------------------------------------------------


def test_codex_reaches_the_provider_through_a_model_providers_block(daemon: DaemonProcess):
    codex = npm_program("codex")
    with FakeLLM(style="openai", key=KEY, required_headers=dict(TEAM)) as llm:
        port = free_port()
        daemon.write_config(f"[proxy]\nport = {port}\n" + openai_config(llm.url))
        daemon.start()
        login_key(daemon, "openai")
        home = Path(daemon.env["HOME"]) / ".codex"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            'model = "fake-model"\nmodel_provider = "broker"\n\n[model_providers.broker]\nname = "broker"\n'
            f'base_url = "http://127.0.0.1:{port}/openai"\nenv_key = "OPENAI_API_KEY"\nwire_api = "responses"\n'
        )
        out = run(
            broker("exec", "openai", "--", str(codex), "exec", "--skip-git-repo-check", "say hi"), caller_env(daemon)
        )
        assert "Hello from the fake" in out
    assert [seen.path for seen in llm.requests] == ["/v1/responses"]
    only_the_providers_credential(llm.requests[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Python SDKs and frameworks --------------------------------------------------------------------------

AGENTS = """
from agents import Agent, Runner
print(Runner.run_sync(Agent(name="a", instructions="be brief", model="fake-model"), "say hi").final_output)
"""


class ConnectRecorder(socketserver.ThreadingTCPServer):
    """An HTTPS proxy that records every CONNECT target and refuses it: where a client tried to go."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.targets: list[str] = []
        recorder = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode(errors="replace").split()
                if len(line) >= 2 and line[0] == "CONNECT":
                    recorder.targets.append(line[1])
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        super().__exit__(*exc)


@pytest.mark.parametrize("through_broker", [True, False], ids=["broker-exec", "plain-env"])
def test_the_agents_sdk_sends_nothing_to_openais_trace_endpoint(
    openai_at: tuple[DaemonProcess, FakeLLM], through_broker: bool
):
    daemon, llm = openai_at
    python = pypi_program("python")
    with ConnectRecorder() as recorder:
        env = caller_env(daemon, HTTPS_PROXY=recorder.url, NO_PROXY="127.0.0.1,localhost")
        if through_broker:
            out = run(broker("exec", "openai", "--", str(python), "-c", AGENTS), env)
        else:  # the same client given the same base URL by hand: the control that the recorder sees tracing
            env.update(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=f"{llm.url}/v1", OPENAI_CUSTOM_HEADERS="X-Team: ml")
            env.pop("OPENAI_API_BASE")
            out = run([python, "-c", AGENTS], env)
        assert "Hello from the fake" in out
        targets = list(recorder.targets)
    assert ("api.openai.com:443" in targets) is not through_broker, targets
    if through_broker:
        only_the_providers_credential(llm.requests[-1])


def test_llm_uses_the_provider_under_broker_exec(openai_at: tuple[DaemonProcess, FakeLLM], tmp_path: Path):
    daemon, llm = openai_at
    env = caller_env(daemon, LLM_USER_PATH=str(tmp_path))
    out = run(broker("exec", "openai", "--", str(pypi_program("llm")), "-m", "gpt-4o-mini", "say hi"), env)
    assert "Hello from the fake" in out
    only_the_providers_credential(llm.requests[-1])


LANGCHAIN = """
from langchain_openai import ChatOpenAI
print(ChatOpenAI(model="fake-model", max_retries=0).invoke("say hi").content)
"""
PYDANTIC_AI = """
import sys
from pydantic_ai import Agent
print(Agent(sys.argv[1]).run_sync("say hi").output)
"""
LITELLM = """
import litellm
reply = litellm.completion(model="openai/fake-model", messages=[{"role": "user", "content": "say hi"}])
print(reply.choices[0].message.content)
"""


@pytest.mark.parametrize(
    ("script", "args"),
    [(LANGCHAIN, ()), (PYDANTIC_AI, ("openai:fake-model",)), (LITELLM, ())],
    ids=["langchain-openai", "pydantic-ai", "litellm-sdk"],
)
def test_python_frameworks_use_the_provider_under_broker_exec(
    openai_at: tuple[DaemonProcess, FakeLLM], script: str, args: tuple[str, ...]
):
    daemon, llm = openai_at
    command = broker("exec", "openai", "--", str(pypi_program("python")), "-c", script, *args)
    assert "Hello from the fake" in run(command, caller_env(daemon))
    only_the_providers_credential(llm.requests[-1])


def test_pydantic_ai_reaches_a_bearer_anthropic_endpoint_though_it_reads_only_anthropic_api_key(
    daemon: DaemonProcess,
):
    python = pypi_program("python")
    with FakeLLM(style="anthropic", key=KEY, prefix="", required_headers=dict(TEAM)) as llm:
        daemon.write_config(
            f'[providers.gateway]\ntype = "apikey"\nbase_url = "{llm.url}"\napi = "anthropic"\n'
            'auth_header = "bearer"\nheaders = { "X-Team" = "ml" }\n'
        )
        daemon.start()
        login_key(daemon, "gateway")
        command = broker("exec", "gateway", "--", str(python), "-c", PYDANTIC_AI, "anthropic:claude-fake")
        assert "Hello from the fake" in run(command, caller_env(daemon))
    [seen] = llm.requests
    assert seen.headers["Authorization"] == f"Bearer {KEY}" and "x-api-key" not in seen.headers
    only_the_providers_credential(seen)


MASTER_KEY = "sk-litellm-master-for-this-test"
"""LiteLLM's proxy server refuses to start without a key of its own for its clients."""
LITELLM_CONFIG = """
model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake-model
      api_base: os.environ/OPENAI_BASE_URL
      api_key: os.environ/OPENAI_API_KEY
"""


def test_a_litellm_proxy_server_outlives_the_token_it_started_with(daemon: DaemonProcess, tmp_path: Path):
    litellm = pypi_program("litellm")
    with short_lived_tokens(daemon) as (oauth, llm):
        (tmp_path / "litellm.yaml").write_text(LITELLM_CONFIG)
        port = free_port()
        server = subprocess.Popen(
            broker("exec", "acme", "--", str(litellm), "--config", str(tmp_path / "litellm.yaml"), "--port", str(port)),
            env=caller_env(daemon, LITELLM_MASTER_KEY=MASTER_KEY),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        try:
            url, master = f"http://127.0.0.1:{port}/chat/completions", {"Authorization": f"Bearer {MASTER_KEY}"}
            wait_for(lambda: _answers(port) or server.poll() is not None, timeout=60)
            assert server.poll() is None, server.communicate()[1].decode(errors="replace")[-2000:]
            assert call(url, body={**CHAT, "model": "fake"}, headers=master)[0] == 200
            first = llm.requests[-1].headers["Authorization"].removeprefix("Bearer ")
            wait_for(lambda: not oauth.valid_access_token(first))
            status, _, body = call(url, body={**CHAT, "model": "fake"}, headers=master)
            assert status == 200, body
            assert oauth.valid_access_token(llm.requests[-1].headers["Authorization"].removeprefix("Bearer "))
        finally:
            server.terminate()
            server.communicate(timeout=20)
    assert not any(
        "decoy" in json.dumps(dict(seen.headers)) or MASTER_KEY in json.dumps(dict(seen.headers))
        for seen in llm.requests
    )


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- opencode and aider --------------------------------------------------------------------------------

OPENCODE_CONFIG = {
    "$schema": "https://opencode.ai/config.json",
    "provider": {
        "broker": {
            "npm": "@ai-sdk/openai-compatible",
            "name": "broker",
            "options": {"baseURL": "{env:OPENAI_BASE_URL}", "apiKey": "{env:OPENAI_API_KEY}"},
            "models": {"fake-model": {"name": "fake-model"}},
        }
    },
}


def test_opencode_reads_the_exec_variables_through_its_config(openai_at: tuple[DaemonProcess, FakeLLM], tmp_path: Path):
    daemon, llm = openai_at
    opencode = npm_program("opencode")
    config = Path(daemon.env["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(OPENCODE_CONFIG))
    command = broker("exec", "openai", "--", str(opencode), "run", "-m", "broker/fake-model", "say hi")
    assert "Hello from the fake" in run(command, caller_env(daemon), cwd=tmp_path)
    only_the_providers_credential(llm.requests[-1])


def test_aider_uses_the_provider_under_broker_exec(openai_at: tuple[DaemonProcess, FakeLLM], tmp_path: Path):
    daemon, llm = openai_at
    aider = pypi_program("aider", "aider")
    flags = ["--no-git", "--yes-always", "--no-check-update", "--no-show-model-warnings", "--analytics-disable"]
    flags += ["--no-show-release-notes", "--no-pretty", "--no-stream", "--model", "openai/fake-model"]
    command = broker("exec", "openai", "--", str(aider), *flags, "--message", "say hi")
    assert "Hello from the fake" in run(command, caller_env(daemon), cwd=tmp_path)
    only_the_providers_credential(llm.requests[-1])
