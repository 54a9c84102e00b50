"""Every error's hint leads to a command that works for that provider and that account.

Each test makes the daemon answer one error code the way a person meets it, takes the
command its hint names (``run: broker ...``) and runs it as the person would (a device
login approved at the fake, an API key typed at a real terminal), then checks that the
original request works. A hint may instead name another CLI's own login (Claude Code's,
Codex CLI's): then it must be that provider's, and never the ``broker login`` that would
refuse it.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login
from tests.test_cli_login import key_login, on_terminal

RUN = re.compile(r"\brun: ((?:broker|mv) [^;()]*?)\s*(?=[;()]|$)")


def failing(daemon: DaemonProcess, *args: str, code: str) -> str:
    """Run ``broker ARGS``, which must fail with ``code``; its hint."""
    result = daemon.cli(*args)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    first, _, hint = result.stderr.partition("\n")
    assert first.startswith(f"broker: {code}: "), result.stderr
    return hint.strip()


def command_of(hint: str) -> list[str]:
    """The one command a hint names, as argv."""
    commands = RUN.findall(hint)
    assert len(commands) == 1, f"one command to run in: {hint!r}"
    return commands[0].split()


def run_device_login(daemon: DaemonProcess, oauth: FakeOAuthServer, argv: list[str], user: str | None = None) -> None:
    """A ``broker login`` the hint named, run as a person runs it: read the code, approve it."""
    assert argv[:2] == ["broker", "login"], argv
    login = daemon.popen(*argv[1:], "--no-browser")
    assert login.stderr is not None
    line = ""
    while not line.startswith("    "):
        line = login.stderr.readline()
        assert line, "the login ended before showing a code"
    oauth.approve(line.strip(), user)
    assert login.wait(timeout=30) == 0, login.stderr.read()


def run_key_login(daemon: DaemonProcess, argv: list[str], key: str) -> None:
    """A ``broker login`` of an API key the hint named, typed at a terminal."""
    assert argv[:2] == ["broker", "login"], argv
    status, seen = on_terminal(daemon, *argv[1:], answers={b"API key: ": key.encode() + b"\n"})
    assert status == 0, seen


@pytest.fixture
def acme(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    daemon.write_config(acme_config(oauth))
    return daemon.start()


# --- unknown_provider ---------------------------------------------------------------------------


def test_unknown_provider_points_at_the_list_and_the_file_the_daemon_reads(acme: DaemonProcess):
    hint = failing(acme, "token", "opnai", code="unknown_provider")
    assert hint.startswith("did you mean openai?")
    assert f"[providers.opnai] to {acme.config_path}" in hint
    argv = command_of(hint)
    assert argv == ["broker", "providers"] and acme.cli(*argv[1:]).returncode == 0


def test_a_provider_added_to_the_config_works_without_a_reload(acme: DaemonProcess, oauth: FakeOAuthServer):
    acme.write_config(acme_config(oauth) + acme_config(oauth).replace("[providers.acme]", "[providers.beta]"))
    run_device_login(acme, oauth, ["broker", "login", "beta"])
    assert acme.cli("token", "beta").returncode == 0


def test_a_config_that_does_not_load_says_so_and_a_fixed_one_is_picked_up(acme: DaemonProcess, oauth: FakeOAuthServer):
    beta = acme_config(oauth).replace("[providers.acme]", "[providers.beta]")
    acme.write_config(acme_config(oauth) + beta.replace("client_id", "client_ib"))
    hint = failing(acme, "login", "beta", code="unknown_provider")
    assert "does not load" in hint and f"{acme.config_path}:" in hint and "providers.beta.client_ib" in hint
    assert "reloads it by itself" in hint
    assert acme.cli("token", "acme").returncode == 3, "the previous config still serves"
    acme.write_config(acme_config(oauth) + beta)
    run_device_login(acme, oauth, ["broker", "login", "beta"])


def test_the_daemon_notices_an_edited_config_by_itself(acme: DaemonProcess, oauth: FakeOAuthServer):
    acme.write_config(acme_config(oauth) + acme_config(oauth).replace("[providers.acme]", "[providers.beta]"))
    for _ in range(200):  # each try is a round trip to the daemon; the watcher reloads within its debounce
        names = [p["name"] for p in acme.request("GET", "/v1/providers?probe=0")["providers"]]
        if "beta" in names:
            break
    assert "beta" in names, "the watcher did not reload the edited config"


# --- not_logged_in ------------------------------------------------------------------------------


def test_not_logged_in_to_a_key_provider_leads_to_a_login_that_works(daemon: DaemonProcess):
    daemon.start()
    hint = failing(daemon, "token", "openai", code="not_logged_in")
    run_key_login(daemon, command_of(hint), "sk-typed")
    assert daemon.cli("token", "openai").stdout.strip() == "sk-typed"


def test_not_logged_in_to_an_oauth_provider_leads_to_a_login_that_works(acme: DaemonProcess, oauth: FakeOAuthServer):
    hint = failing(acme, "env", "acme", code="not_logged_in")
    run_device_login(acme, oauth, command_of(hint))
    assert acme.cli("env", "acme").returncode == 0


def test_an_account_that_does_not_exist_is_answered_with_those_that_do(daemon: DaemonProcess):
    daemon.start()
    key_login(daemon, "sk-default")
    hint = failing(daemon, "token", "openai", "--account", "work", code="not_logged_in")
    assert "openai's accounts: default (pass one with --account)" in hint
    argv = command_of(hint)
    assert argv == ["broker", "login", "openai", "--account", "work"]
    run_key_login(daemon, argv, "sk-work")
    assert daemon.cli("token", "openai", "--account", "work").stdout.strip() == "sk-work"
    assert daemon.cli("token", "openai").stdout.strip() == "sk-default"


@pytest.mark.parametrize(
    ("provider", "cli_login"),
    [
        ("claude", "run: claude, then /login"),
        ("gemini", "run: gemini, then choose Login with Google"),
        ("vertex", "run: gcloud auth application-default login"),
    ],
)
def test_a_login_only_its_cli_can_make_names_that_cli_never_broker_login(
    daemon: DaemonProcess, provider: str, cli_login: str
):
    daemon.start()
    hint = failing(daemon, "refresh", provider, code="not_logged_in")  # (its token goes only to its CLI)
    assert hint == cli_login and not RUN.findall(hint)
    refused = failing(daemon, "login", provider, code="bad_request")
    assert refused.startswith(cli_login), "broker login says the same instead of leading back"
    listed = next(p for p in daemon.request("GET", "/v1/providers")["providers"] if p["name"] == provider)
    assert listed["login"] == cli_login.removeprefix("run: ")


# --- login_required, login_failed -----------------------------------------------------------------


def test_a_dead_login_of_a_second_account_is_revived_by_naming_that_account(
    acme: DaemonProcess, oauth: FakeOAuthServer
):
    device_login(acme, oauth)
    run_device_login(acme, oauth, ["broker", "login", "acme", "--account", "bob"], user="bob@example.com")
    oauth.revoke_all_refresh_tokens()
    hint = failing(acme, "refresh", "acme", "--account", "bob", code="login_required")
    argv = command_of(hint)
    assert argv == ["broker", "login", "acme", "--account", "bob"]
    run_device_login(acme, oauth, argv, user="bob@example.com")
    assert acme.cli("refresh", "acme", "--account", "bob").returncode == 0


def test_a_denied_login_leads_to_a_login_that_works(acme: DaemonProcess, oauth: FakeOAuthServer):
    login = acme.popen("login", "acme", "--no-browser")
    assert login.stderr is not None
    line = ""
    while not line.startswith("    "):
        line = login.stderr.readline()
    oauth.deny(line.strip())
    assert login.wait(timeout=30) == 1
    hint = login.stderr.read().split("broker: login_failed: ", 1)[1].split("\n", 1)[1].strip()
    run_device_login(acme, oauth, command_of(hint))
    assert acme.cli("token", "acme").returncode == 0


# --- bad_request -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["refresh", "ollama"], ["refresh", "openai"]], ids=lambda a: " ".join(a))
def test_nothing_to_refresh_leads_to_a_command_that_works(daemon: DaemonProcess, args: list[str]):
    daemon.start()
    key_login(daemon, "sk-key")
    hint = failing(daemon, *args, code="bad_request")
    assert "login" not in hint, "a key or a local server is not fixed by logging in"
    argv = command_of(hint)
    assert daemon.cli(*argv[1:]).returncode == 0, argv


def test_logout_of_several_accounts_names_one(daemon: DaemonProcess):
    daemon.start()
    key_login(daemon, "sk-a", "--account", "a")
    key_login(daemon, "sk-b", "--account", "b")
    argv = command_of(failing(daemon, "logout", "openai", code="bad_request"))
    assert daemon.cli(*argv[1:]).returncode == 0
    assert daemon.cli("token", "openai", "--account", "b").returncode == 0, "only the named account went"


def test_options_refused_name_what_the_provider_takes(daemon: DaemonProcess):
    daemon.start()
    hint = failing(daemon, "login", "openai", "--enterprise-url", "https://ghe.example.com", code="bad_request")
    taken = hint.removeprefix("openai takes: ").split(", ")
    assert "--token-stdin (--key-stdin)" in taken and "--enterprise-url URL" not in taken
    assert key_login(daemon, "sk-x", "--account", "x").returncode == 0, "what it takes works"


# --- daemon_unavailable, store_error ----------------------------------------------------------------


def test_no_daemon_leads_to_starting_one(daemon: DaemonProcess):
    hint = failing(daemon, "token", "ollama", code="daemon_unavailable")
    assert command_of(hint) == ["broker", "serve"]
    daemon.start()  # what the hint says: broker serve (the fixture runs exactly that)
    assert daemon.cli("token", "ollama").returncode == 0


def test_a_damaged_store_leads_to_moving_it_aside(daemon: DaemonProcess):
    daemon.start()
    key_login(daemon, "sk-key")
    daemon.stop()
    store = daemon.state_dir / "credentials.enc"
    store.write_text("{not json")
    daemon.start()
    hint = failing(daemon, "token", "openai", code="store_error")
    move, login = (command.split() for command in RUN.findall(hint))
    assert move[0] == "mv" and login == ["broker", "login", "openai"], hint
    subprocess.run(move, check=True)
    run_key_login(daemon, login, "sk-again")
    assert daemon.cli("token", "openai").stdout.strip() == "sk-again"
