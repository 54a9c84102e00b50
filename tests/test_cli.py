"""The CLI as a person and a shell use it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login

CLIENT_COMMANDS = [
    ["token", "acme"],
    ["token", "acme", "--json"],
    ["env", "acme"],
    ["exec", "acme", "--", "true"],
    ["status"],
    ["providers"],
    ["refresh", "acme"],
    ["logout", "acme"],
    ["login", "acme", "--json", "--no-browser"],
]


@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=lambda a: " ".join(a))
def test_every_client_command_says_when_no_daemon_answers(daemon: DaemonProcess, args: list[str]):
    result = daemon.cli(*args)
    assert result.returncode == 69
    assert f"no broker daemon answers on {daemon.socket_path}" in result.stderr
    assert "broker serve" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def logged_in(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    return daemon


def test_token_prints_only_the_access_token(logged_in: DaemonProcess, oauth: FakeOAuthServer):
    result = logged_in.cli("token", "acme")
    assert result.stdout.count("\n") == 1
    assert oauth.valid_access_token(result.stdout.strip())


def test_token_json_has_the_documented_fields(logged_in: DaemonProcess):
    token = json.loads(logged_in.cli("token", "acme", "--json").stdout)
    assert set(token) >= {
        "provider", "account", "access_token", "token_type", "expires_at", "expires_in",
        "base_url", "api", "headers", "source",
    }  # fmt: skip
    assert token["base_url"] == "https://llm.acme.example/v1"
    assert token["api"] == "openai-chat"
    assert token["source"] == "login"
    assert 3500 < token["expires_in"] <= 3600


def test_env_prints_export_lines_a_shell_can_eval(logged_in: DaemonProcess):
    result = logged_in.cli("env", "acme")
    token = logged_in.cli("token", "acme").stdout.strip()
    script = result.stdout + 'printf "%s\\n%s" "$OPENAI_API_KEY" "$OPENAI_BASE_URL"'
    shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={})
    assert shell.stdout.splitlines() == [token, "https://llm.acme.example/v1"]
    first, *rest = result.stdout.splitlines()
    assert first.startswith("unset ") and all(line.startswith("export ") for line in rest)


def test_exec_direct_sets_the_token_in_the_child_not_its_argv(logged_in: DaemonProcess):
    probe = (
        "import os, sys, json; print(json.dumps([os.environ['OPENAI_API_KEY'], os.environ['BROKER_API'], sys.argv]))"
    )
    result = logged_in.cli("exec", "acme", "--direct", "--", sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    key, api, argv = json.loads(result.stdout)
    assert key == logged_in.cli("token", "acme").stdout.strip()
    assert api == "openai-chat"
    assert key not in " ".join(argv)


def test_exec_passes_the_child_exit_status_through(logged_in: DaemonProcess):
    assert logged_in.cli("exec", "acme", "--", "sh", "-c", "exit 7").returncode == 7


def test_exec_without_a_command_starts_the_users_shell(logged_in: DaemonProcess):
    env = {**logged_in.env, "SHELL": "/bin/sh"}
    shell = subprocess.run(
        [sys.executable, "-m", "broker", "exec", "acme"],
        env=env,
        input='echo "$BROKER_PROVIDER $0"\n',
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (shell.returncode, shell.stdout.strip()) == (0, "acme /bin/sh"), shell.stderr


def test_exec_of_a_missing_command_exits_127_as_a_shell_does(logged_in: DaemonProcess):
    result = logged_in.cli("exec", "acme", "--", "no-such-command-here")
    assert result.returncode == 127
    assert "no-such-command-here: command not found" in result.stderr


def test_status_shows_state_expiry_and_source(logged_in: DaemonProcess):
    out = logged_in.cli("status").stdout
    assert "acme" in out and "alice@example.com" in out and "ready" in out
    assert "source: login" in out
    assert "store: file" in out


def test_providers_lists_configured_providers(logged_in: DaemonProcess):
    listed = json.loads(logged_in.cli("providers", "--json").stdout)
    acme = next(p for p in listed if p["name"] == "acme")
    assert acme["flows"] == ["device"] and acme["api"] == "openai-chat"
    assert acme["login"] == "broker login acme"


def test_python_dash_m_broker_is_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "broker", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("serve", "login", "logout", "status", "token", "env", "exec", "refresh", "providers"):
        assert command in result.stdout


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "broker")
    assert os.access(script, os.X_OK), "pip install -e . provides the broker console script"
    assert subprocess.run([script, "--version"], capture_output=True, text=True).stdout.startswith("broker ")


def test_env_values_are_shell_quoted(logged_in: DaemonProcess):
    for line in logged_in.cli("env", "acme").stdout.splitlines()[1:]:
        name, _, value = line.removeprefix("export ").partition("=")
        assert shlex.split(value) and name.isidentifier()
