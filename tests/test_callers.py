"""Claude's and Gemini CLI's logins go only to their own CLIs and what those start; ``callers`` decides.

Every caller here is a real process the daemon identifies through the kernel: a program
named ``claude`` (a link to the interpreter, the way Claude Code's native installer
links ``~/.local/bin/claude``), a script named ``claude`` that runs ``broker token`` as
Claude Code runs its ``apiKeyHelper`` (through a shell), a script of another name, and
a process moved into a cgroup named like a systemd service.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess
from tests.test_proxy import PROXY, call, login_key, proxy_answer

CLAUDE_TOKEN = "sk-ant-oat01-" + secrets.token_urlsafe(24)
GEMINI_TOKEN = "ya29.test-" + secrets.token_urlsafe(24)


def write_cli_files(daemon: DaemonProcess) -> None:
    """Claude Code's and Gemini CLI's logins, valid for an hour, where those CLIs keep them."""
    home = Path(daemon.env["HOME"])
    expires = int((time.time() + 3600) * 1000)
    claude = {"claudeAiOauth": {"accessToken": CLAUDE_TOKEN, "refreshToken": "sk-ant-ort01-r", "expiresAt": expires}}
    gemini = {"access_token": GEMINI_TOKEN, "refresh_token": "1//r", "token_type": "Bearer", "expiry_date": expires}
    files = {home / ".claude" / ".credentials.json": claude, home / ".gemini" / "oauth_creds.json": gemini}
    for path, doc in files.items():
        path.parent.mkdir(mode=0o700, parents=True)
        path.write_text(json.dumps(doc))
        os.chmod(path, 0o600)


@pytest.fixture
def clis(daemon: DaemonProcess) -> DaemonProcess:
    """A daemon following both CLIs' files, with the default ``callers``."""
    for name in ("CLAUDE_CONFIG_DIR", "GEMINI_CLI_HOME"):
        daemon.env.pop(name, None)
    write_cli_files(daemon)
    return daemon


def broker_token(provider: str) -> str:
    """The command line of ``broker token PROVIDER`` with this test's interpreter."""
    return shlex.join([sys.executable, "-m", "broker", "token", provider])


def program(daemon: DaemonProcess, name: str, body: str) -> Path:
    """An executable shell script called ``name``."""
    path = daemon.root / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def run(daemon: DaemonProcess, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], env=daemon.env, capture_output=True, text=True, timeout=60)


def assert_refused(result: subprocess.CompletedProcess[str], provider: str, setting: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert f"broker: forbidden: {provider} is not served to this caller (pid " in result.stderr
    assert f"[providers.{provider}] callers = {setting}" in result.stderr


def test_a_program_of_another_name_is_refused_claude_and_gemini(clis: DaemonProcess):
    clis.start()
    agent = program(clis, "my-agent", f"{broker_token('claude')}\n{broker_token('gemini')}")
    result = run(clis, agent)
    assert_refused(result, "claude", '["claude"]')
    assert "Anthropic allows this login only in Claude Code" in result.stderr
    assert CLAUDE_TOKEN not in result.stderr + clis.log() and GEMINI_TOKEN not in result.stderr
    direct = clis.cli("token", "gemini")
    assert_refused(direct, "gemini", '["gemini"]')


def test_claude_code_running_broker_token_as_its_api_key_helper_gets_the_token(clis: DaemonProcess):
    """Claude Code runs ``apiKeyHelper`` through a shell: broker token's parents include ``claude``."""
    clis.start()
    claude = program(clis, "claude", f"sh -c {shlex.quote(broker_token('claude'))}")
    result = run(clis, claude)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == CLAUDE_TOKEN


def test_a_program_linked_as_claude_or_gemini_gets_its_own_token_only(clis: DaemonProcess):
    clis.start()
    bin_dir = clis.root / "bin"
    bin_dir.mkdir()
    for name in ("claude", "gemini"):
        (bin_dir / name).symlink_to(os.path.realpath(sys.executable))
    claude = run(clis, bin_dir / "claude", "-m", "broker", "token", "claude")
    gemini = run(clis, bin_dir / "gemini", "-m", "broker", "token", "gemini")
    crossed = run(clis, bin_dir / "gemini", "-m", "broker", "token", "claude")
    assert claude.stdout.strip() == CLAUDE_TOKEN, claude.stderr
    assert gemini.stdout.strip() == GEMINI_TOKEN, gemini.stderr
    assert_refused(crossed, "claude", '["claude"]')


def test_status_still_shows_them_and_providers_names_their_callers(clis: DaemonProcess):
    clis.start()
    status = json.loads(clis.cli("status", "--json").stdout)
    listed = {p["name"]: p for p in status["providers"]}
    for name in ("claude", "gemini"):
        assert listed[name]["state"] == "ready"
        assert listed[name]["callers"] == [name]
    assert listed["openai"]["callers"] is None
    shown = clis.cli("status").stdout
    assert "claude-code" in shown and "served only to: claude" in shown
    assert CLAUDE_TOKEN not in shown


def test_callers_in_the_config_replace_the_default(clis: DaemonProcess):
    clis.write_config('[providers.claude]\ncallers = ["my-agent"]\n')
    clis.start()
    agent = run(clis, program(clis, "my-agent", broker_token("claude")))
    claude = run(clis, program(clis, "claude", broker_token("claude")))
    assert agent.stdout.strip() == CLAUDE_TOKEN, agent.stderr
    assert_refused(claude, "claude", '["my-agent"]')


def test_star_lets_every_process_of_the_user_in(clis: DaemonProcess):
    clis.write_config('[providers.gemini]\ncallers = ["*"]\n')
    clis.start()
    assert clis.cli("token", "gemini").stdout.strip() == GEMINI_TOKEN


@pytest.mark.parametrize("entry", ["", "unit:", "cgroup:user.slice"])
def test_a_callers_entry_that_names_nobody_is_a_config_error(clis: DaemonProcess, entry: str):
    clis.write_config(f"[providers.claude]\ncallers = [{json.dumps(entry)}]\n")
    started = subprocess.run(
        [sys.executable, "-m", "broker", "serve"], env=clis.env, capture_output=True, text=True, timeout=30
    )
    assert started.returncode == 78
    assert "config.toml:2: providers.claude.callers: " in started.stderr


def test_the_proxy_serves_no_provider_whose_callers_are_limited(daemon: DaemonProcess):
    daemon.write_config(f'{PROXY}\n[providers.openai]\ncallers = ["my-agent"]\n')
    daemon.start()
    login_key(daemon, "openai")
    refused = daemon.cli("env", "openai", "--proxy")
    assert refused.returncode == 1 and "its callers are limited" in refused.stderr
    key = proxy_answer(daemon, "ollama")["access_token"]
    base = proxy_answer(daemon, "ollama")["base_url"].removesuffix("/ollama")
    status, _, body = call(base + "/openai/chat/completions", headers={"x-api-key": key})
    assert status == 403 and "callers under [providers.openai]" in json.loads(body)["error"]["hint"]


# --- systemd units, told by the cgroup ---------------------------------------------------------------


def cgroup_roots() -> list[Path]:
    """Where this machine's cgroup trees are mounted: the unified one (pure or hybrid), then systemd's v1 one."""
    return [
        root
        for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
        if (root / "cgroup.procs").exists()
    ]


@pytest.fixture
def unit_cgroup() -> Iterator[tuple[str, Path]]:
    """A real cgroup named like a systemd service, and the ``cgroup.procs`` file that moves a process into it."""
    if os.geteuid() != 0:
        pytest.skip("only root may make a cgroup here (systemd-run --user needs a user manager)")
    unit = f"broker-test-{secrets.token_hex(4)}.service"
    for root in cgroup_roots():
        directory = root / unit
        try:
            directory.mkdir()
        except OSError:
            continue
        try:
            yield unit, directory / "cgroup.procs"
        finally:
            directory.rmdir()
        return
    pytest.skip("no cgroup tree here lets a cgroup be made")


def test_callers_can_name_a_systemd_unit(clis: DaemonProcess, unit_cgroup: tuple[str, Path]):
    unit, procs = unit_cgroup
    clis.write_config(f'[providers.claude]\ncallers = ["unit:{unit}"]\n')
    clis.start()
    inside = run(clis, "sh", "-c", f"echo $$ > {shlex.quote(str(procs))} && exec {broker_token('claude')}")
    outside = clis.cli("token", "claude")
    assert inside.returncode == 0 and inside.stdout.strip() == CLAUDE_TOKEN, inside.stderr
    assert_refused(outside, "claude", f'["unit:{unit}"]')
    assert f"unit {unit}" not in outside.stderr
