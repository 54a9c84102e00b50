"""The CLI's shape: help everywhere, global options anywhere, a man page and completion from the same
parser, and no traceback in front of a person."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli.manpage import PAGE, render
from broker.cli.parser import build_parser, subcommands
from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login

COMMANDS = list(subcommands(build_parser()))


def broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


# --- help ---------------------------------------------------------------------------------------


def test_bare_broker_shows_the_help():
    result = broker()
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: broker") and all(command in result.stdout for command in COMMANDS)


def test_version():
    from broker import __version__

    assert broker("--version").stdout == f"broker {__version__}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_command_shows_what_dash_dash_help_shows(command: str):
    by_help = broker("help", command)
    assert by_help.returncode == 0
    assert by_help.stdout == broker(command, "--help").stdout
    assert by_help.stdout.startswith(f"usage: broker {command}")


def test_help_of_an_unknown_command_suggests_one():
    result = broker("help", "statsu")
    assert result.returncode == 2 and "did you mean: broker help status?" in result.stderr


def test_every_command_and_argument_has_help_text():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"broker {action.option_strings or action.dest} has no help"
    for name, sub in subcommands(parser).items():
        assert sub.description, f"broker {name} has no description"
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"broker {name} {action.dest} has no help"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_module_that_runs_it(command: str):
    import importlib

    from broker.cli.main import MODULES

    module = importlib.import_module(f"broker.cli.cmd_{MODULES.get(command, command)}")
    assert callable(module.run), f"broker {command}"


# --- global options -------------------------------------------------------------------------------


@pytest.fixture
def elsewhere(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    """A logged-in daemon whose socket clients cannot find without --socket."""
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    daemon.env["BROKER_SOCKET"] = str(daemon.root / "nothing-here.sock")
    return daemon


@pytest.mark.parametrize(
    "args",
    [
        ["--socket", "{sock}", "token", "acme"],
        ["token", "acme", "--socket", "{sock}"],
        ["token", "--socket={sock}", "acme", "--json"],
        ["status", "--socket", "{sock}"],
        ["--socket", "{sock}", "providers", "--json"],
        ["env", "acme", "--no-color", "--socket", "{sock}"],
        ["exec", "acme", "--socket", "{sock}", "--", "true"],
        ["refresh", "--socket", "{sock}", "acme"],
    ],
    ids=lambda a: " ".join(a),
)
def test_global_options_are_accepted_before_and_after_the_command(elsewhere: DaemonProcess, args: list[str]):
    assert elsewhere.cli(*args[:1]).returncode in (69, 2, 0)
    result = elsewhere.cli(*(arg.replace("{sock}", str(elsewhere.socket_path)) for arg in args))
    assert result.returncode == 0, result.stderr


def test_config_option_names_the_file_to_read(elsewhere: DaemonProcess, tmp_path: Path):
    config = tmp_path / "other.toml"
    config.write_text(f'[daemon]\nsocket = "{elsewhere.socket_path}"\n')
    env = {k: v for k, v in elsewhere.env.items() if k != "BROKER_SOCKET"}
    result = subprocess.run(
        [sys.executable, "-m", "broker", "token", "acme", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- nothing but a message reaches a person ---------------------------------------------------------


def test_a_closed_pipe_ends_quietly(elsewhere: DaemonProcess):
    for args in (["providers", "--socket", str(elsewhere.socket_path)], ["completion", "bash"], ["help"]):
        process = subprocess.Popen(
            [sys.executable, "-m", "broker", *args],
            env=elsewhere.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # the reader went away (| head) before anything was written
        err = process.stderr.read().decode()
        assert process.wait(timeout=60) == 141, args
        assert err == "", f"broker {args[0]} wrote: {err}"


@pytest.mark.parametrize(
    ("args", "env", "code"),
    [
        (["nosuchcommand"], {}, 2),
        (["token"], {}, 2),
        (["token", "x", "--min-ttl", "soon"], {}, 2),
        (["token", "x"], {"BROKER_SOCKET": "relative.sock"}, 78),
        (["token", "x"], {"BROKER_SOCKET": "", "BROKER_CONFIG": "/nonexistent/config.toml"}, 78),
        (["status"], {}, 69),
        (["doctor", "--json"], {"BROKER_CONFIG": "/nonexistent/config.toml"}, 1),
        (["login", "x", "--flow"], {}, 2),
        (["exec", "x", "--proxy", "--direct"], {}, 2),
        (["completion", "tcsh"], {}, 2),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_no_traceback_reaches_a_person(daemon: DaemonProcess, args: list[str], env: dict[str, str], code: int):
    result = subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env={**daemon.env, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == code, result.stderr


# --- the man page --------------------------------------------------------------------------------


def test_the_man_page_is_the_one_the_parser_generates():
    assert PAGE.read_text() == render(), "docs/broker.1 is stale: run python -m broker.cli.manpage"


def test_the_man_page_documents_every_command_and_option():
    page = render()
    parser = build_parser()
    for name, sub in subcommands(parser).items():
        assert f".SS broker {name}".replace("-", "\\-") in page
        for action in sub._actions:
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, f"broker {name} {option}"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_man_page_renders_without_warnings():
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(PAGE)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""


# --- completion ------------------------------------------------------------------------------------


def completion_env(daemon: DaemonProcess) -> dict[str, str]:
    """The daemon's environment with this interpreter's ``broker`` first on PATH, as an installed one is."""
    return {**daemon.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def bash_complete(daemon: DaemonProcess, *words: str) -> list[str]:
    script = daemon.cli("completion", "bash").stdout
    line = " ".join(f"'{w}'" for w in words)
    program = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _broker; printf "%s\\n" "${{COMPREPLY[@]}}"'
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=completion_env(daemon))
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def fish_complete(daemon: DaemonProcess, line: str) -> list[str]:
    script = daemon.root / "broker.fish"
    script.write_text(daemon.cli("completion", "fish").stdout)
    program = f"source {script}; complete -C'{line}'"
    done = subprocess.run(["fish", "-c", program], capture_output=True, text=True, env=completion_env(daemon))
    assert done.returncode == 0, done.stderr
    return [candidate.split("\t")[0] for candidate in done.stdout.splitlines()]


def zsh_complete(daemon: DaemonProcess, *words: str) -> list[str]:
    script = daemon.root / "broker.zsh"
    script.write_text(daemon.cli("completion", "zsh").stdout)
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"autoload -U compinit; compinit -u -d {daemon.root}/zcompdump; source {script}; setopt ksharrays; "
        f'_broker_candidates {len(words) - 1} {line}; print -rl -- "${{_broker_reply[@]}}"'
    )
    done = subprocess.run(["zsh", "-c", program], capture_output=True, text=True, env=completion_env(daemon))
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.split() if w.startswith(words[-1])]


@pytest.fixture
def two_accounts(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    device_login(daemon, oauth, "acme", "--account", "bob")
    return daemon


def test_bash_completes_commands_options_and_names_from_the_daemon(two_accounts: DaemonProcess):
    assert bash_complete(two_accounts, "broker", "lo") == ["login", "logout"]
    assert bash_complete(two_accounts, "broker", "token", "ac") == ["acme"], "a configured provider"
    assert bash_complete(two_accounts, "broker", "token", "acme", "--account", "") == ["alice@example.com", "bob"]
    assert bash_complete(two_accounts, "broker", "--socket", "x", "login", "--de") == ["--device"]
    assert bash_complete(two_accounts, "broker", "serve", "--log-level", "w") == ["warning"]
    assert bash_complete(two_accounts, "broker", "completion", "") == ["bash", "zsh", "fish"]


def test_bash_falls_back_to_the_built_in_names_without_a_daemon(daemon: DaemonProcess):
    assert bash_complete(daemon, "broker", "login", "co") == ["codex", "copilot"]
    assert bash_complete(daemon, "broker", "login", "ac") == [], "configured names need the daemon"


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_from_the_daemon_and_the_built_ins(two_accounts: DaemonProcess):
    assert fish_complete(two_accounts, "broker lo") == ["login", "logout"]
    assert fish_complete(two_accounts, "broker token ac") == ["acme"]
    assert fish_complete(two_accounts, "broker token acme --account ") == ["alice@example.com", "bob"]
    two_accounts.stop()
    assert fish_complete(two_accounts, "broker login co") == ["codex", "copilot"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_from_the_daemon_and_the_built_ins(two_accounts: DaemonProcess):
    script = two_accounts.cli("completion", "zsh").stdout
    assert subprocess.run(["zsh", "-n"], input=script, text=True, check=False).returncode == 0
    assert zsh_complete(two_accounts, "broker", "lo") == ["login", "logout"]
    assert zsh_complete(two_accounts, "broker", "token", "ac") == ["acme"]
    assert zsh_complete(two_accounts, "broker", "token", "acme", "--account", "b") == ["bob"]
    two_accounts.stop()
    assert zsh_complete(two_accounts, "broker", "login", "co") == ["codex", "copilot"]


def test_a_second_serve_is_refused_in_one_message(daemon: DaemonProcess):
    daemon.start()
    second = daemon.cli("serve", timeout=30)
    assert second.returncode != 0
    assert "another broker daemon already listens" in second.stderr
    assert "Unclosed" not in second.stderr and "Traceback" not in second.stderr, second.stderr


def test_a_mistake_elsewhere_in_the_config_never_stops_broker_token(daemon: DaemonProcess):
    daemon.start()
    assert daemon.cli("login", "openai", "--key-stdin", input="sk-key\n").returncode == 0
    daemon.write_config(  # the daemon refuses this file and keeps its config; clients read only [daemon] socket
        f'[daemon]\nsocket = "{daemon.socket_path}"  # the socket\n\n'
        '[store]\nbackend = "vault"\n\n[providers.acme\ntype = "oauth"\n'
    )
    env = {k: v for k, v in daemon.env.items() if k != "BROKER_SOCKET"}
    result = subprocess.run(
        [sys.executable, "-m", "broker", "token", "openai"], env=env, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout) == (0, "sk-key\n"), result.stderr
