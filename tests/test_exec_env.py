"""``broker exec`` and ``broker env`` hand a tool exactly one credential: variables of every API style
left in the caller's environment are removed (exec) or unset (env), whichever family they belong to."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.cli.envvars import AGENTS_TRACING_OFF, FAMILIES, variables
from tests.conftest import DaemonProcess, isolated_env
from tests.test_proxy import KEY, login_key

DECOY = "decoy-from-bashrc"
PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


def caller_env(daemon: DaemonProcess, family: str) -> dict[str, str]:
    """The daemon's environment plus every variable of ``family`` set to a decoy, as ``~/.bashrc`` might."""
    return {**daemon.env, **{name: f"{DECOY}-{name}" for name in FAMILIES[family]}}


def exec_env(daemon: DaemonProcess, env: dict[str, str], provider: str, *flags: str) -> dict[str, str]:
    argv = [sys.executable, "-m", "broker", "exec", provider, *flags, "--", sys.executable, "-c", PRINT_ENV]
    return environment_of(argv, env)


def eval_env(daemon: DaemonProcess, env: dict[str, str], *providers: str) -> dict[str, str]:
    """``eval "$(broker env A)"; eval "$(broker env B)"; ...`` in sh, then the shell's environment."""
    evals = "".join(f'eval "$("{sys.executable}" -m broker env {name})" || exit 9\n' for name in providers)
    return environment_of(["sh", "-c", evals + f'exec "{sys.executable}" -c "{PRINT_ENV}"'], env)


def environment_of(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """What ``argv`` started in ``env`` printed as its environment (``PRINT_ENV`` ends it)."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen: dict[str, str] = json.loads(result.stdout)
    return seen


def decoys(environ: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if DECOY in value}


@pytest.fixture(scope="module")
def providers() -> Iterator[DaemonProcess]:
    """One daemon: ``openai`` (bearer), ``anthropic`` (x-api-key), ``bearer-claude`` (Anthropic-style, bearer)."""
    root = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))
    daemon = DaemonProcess(root, isolated_env(root))
    daemon.write_config(
        '[providers.bearer-claude]\ntype = "apikey"\nbase_url = "https://gw.example/anthropic"\n'
        'api = "anthropic"\nauth_header = "bearer"\n'
    )
    try:
        daemon.start()
        for name in ("openai", "anthropic", "bearer-claude"):
            login_key(daemon, name, f"{KEY}-{name}")
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("via", ["--proxy", "--direct"])
def test_exec_removes_every_variable_of_the_family_from_the_callers_environment(
    providers: DaemonProcess, family: str, via: str
):
    child = exec_env(providers, caller_env(providers, family), "openai", via)
    assert decoys(child) == {}
    assert child["BROKER_PROVIDER"] == "openai" and child["OPENAI_API_KEY"].startswith(
        "brk-exec-" if via == "--proxy" else f"{KEY}-openai"
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_env_unsets_every_variable_of_the_family_in_the_callers_shell(providers: DaemonProcess, family: str):
    shell = eval_env(providers, caller_env(providers, family), "anthropic")
    assert decoys(shell) == {}
    assert shell["ANTHROPIC_API_KEY"] == f"{KEY}-anthropic"


def test_a_bearer_anthropic_provider_does_not_travel_with_the_users_own_api_key(providers: DaemonProcess):
    env = {**providers.env, "ANTHROPIC_API_KEY": "sk-ant-users-own"}
    child = exec_env(providers, env, "bearer-claude", "--direct")
    assert child["ANTHROPIC_AUTH_TOKEN"] == f"{KEY}-bearer-claude" and "ANTHROPIC_API_KEY" not in child
    shell = eval_env(providers, env, "bearer-claude")
    assert shell["ANTHROPIC_AUTH_TOKEN"] == f"{KEY}-bearer-claude" and "ANTHROPIC_API_KEY" not in shell


def test_an_x_api_key_provider_does_not_travel_with_a_leftover_bearer_token(providers: DaemonProcess):
    env = {**providers.env, "ANTHROPIC_AUTH_TOKEN": "sk-ant-oat-leftover"}
    child = exec_env(providers, env, "anthropic", "--direct")
    assert child["ANTHROPIC_API_KEY"] == f"{KEY}-anthropic" and "ANTHROPIC_AUTH_TOKEN" not in child


def test_one_providers_eval_after_anothers_leaves_nothing_of_the_first(providers: DaemonProcess):
    shell = eval_env(providers, providers.env, "anthropic", "bearer-claude", "openai")
    assert "ANTHROPIC_API_KEY" not in shell and "ANTHROPIC_AUTH_TOKEN" not in shell
    assert "ANTHROPIC_BASE_URL" not in shell
    assert shell["OPENAI_API_KEY"] == f"{KEY}-openai" and shell["BROKER_PROVIDER"] == "openai"


def test_a_users_openai_api_base_does_not_take_brokers_token_elsewhere(providers: DaemonProcess):
    env = {**providers.env, "OPENAI_API_BASE": "https://elsewhere.example/v1"}
    assert "OPENAI_API_BASE" not in exec_env(providers, env, "openai")
    assert "OPENAI_API_BASE" not in eval_env(providers, env, "openai")


BASE = {"provider": "p", "access_token": "tok", "headers": {}, "api": "openai-chat", "auth": "bearer"}


@pytest.mark.parametrize(
    ("answer", "tracing_off"),
    [
        ({"base_url": "https://api.openai.com/v1"}, False),
        ({"base_url": "https://API.OpenAI.com:443/v1"}, False),
        ({"base_url": "https://openrouter.ai/api/v1"}, True),
        ({"base_url": "http://127.0.0.1:8787/openai"}, True),  # the proxy: its key must not go to OpenAI either
        ({"base_url": "https://api.openai.com.evil.example/v1"}, True),
        ({"base_url": "https://api.anthropic.com", "api": "anthropic", "auth": "x-api-key"}, True),
    ],
)
def test_agents_sdk_tracing_is_off_whenever_the_base_url_is_not_openais(answer: dict[str, Any], tracing_off: bool):
    values = variables({**BASE, **answer})
    assert (values.get(AGENTS_TRACING_OFF) == "1") is tracing_off


def test_exec_turns_tracing_off_over_a_callers_own_setting(providers: DaemonProcess):
    child = exec_env(providers, {**providers.env, AGENTS_TRACING_OFF: "false"}, "openai")
    assert child[AGENTS_TRACING_OFF] == "1"
