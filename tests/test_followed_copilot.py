"""Minting Copilot tokens from the editors' ``apps.json``/``hosts.json``, against a fake GitHub.

The files hold what an editor's own device sign-in got from the fake; broker exchanges
that GitHub token for Copilot tokens itself, renews them, and never writes the files.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker.providers.copilot import CLIENT_ID

from broker.core.errors import BrokerError
from tests.fakes.github import API_HEADERS, DEVICE_GRANT, EXCHANGE_HEADERS, FakeGitHub
from tests.followed_harness import InProcess, post, start_daemon

APPS = ("copilot", "editor-apps")
HOSTS = ("copilot", "editor-hosts")
TOKEN_PATH = "/copilot_internal/v2/token"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        yield server


def copilot_config(github: FakeGitHub, extra: str = "") -> str:
    return f"""
[providers.copilot]
{extra}

[providers.copilot.endpoints]
device_code = "{github.url}/login/device/code"
access_token = "{github.url}/login/oauth/access_token"
api = "{github.url}"
"""


async def start(root: Path, github: FakeGitHub, extra: str = "") -> InProcess:
    broker = await start_daemon(root, copilot_config(github, extra))
    github.now = broker.clock.now  # Copilot tokens expire on broker's (fake) clock
    return broker


@pytest.fixture
async def broker(short_tmp: Path, github: FakeGitHub) -> AsyncIterator[InProcess]:
    broker = await start(short_tmp, github)
    yield broker
    await broker.stop()


def editor_sign_in(github: FakeGitHub, user: str = "octocat") -> str:
    """The editor's own device sign-in with the Copilot app: its GitHub token."""
    code = post(f"{github.url}/login/device/code", form={"client_id": CLIENT_ID, "scope": "read:user"})
    github.approve(code["user_code"], user)
    answer = post(
        f"{github.url}/login/oauth/access_token",
        form={"client_id": CLIENT_ID, "device_code": code["device_code"], "grant_type": DEVICE_GRANT},
    )
    return str(answer["access_token"])


def apps_entry(host: str, token: str, user: str = "octocat") -> dict[str, Any]:
    return {f"{host}:{CLIENT_ID}": {"user": user, "oauth_token": token, "githubAppId": CLIENT_ID}}


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def editor_dir(broker: InProcess) -> Path:
    return Path(broker.env["XDG_CONFIG_HOME"]) / "github-copilot"


async def test_editor_sign_in_is_exchanged_and_the_copilot_token_served_with_editor_headers(
    broker: InProcess, github: FakeGitHub
):
    github_token = editor_sign_in(github)
    write(editor_dir(broker) / "apps.json", apps_entry("github.com", github_token))
    status = await broker.attempts(APPS, 1)
    assert status.state == "ready", status.last_error
    token = await broker.token("copilot")
    assert token["account"] == "editor-apps" and token["source"] == str(editor_dir(broker) / "apps.json")
    minted = github.copilot_token(token["access_token"])
    assert minted is not None and minted.github_token == github_token and minted.user == "octocat"
    assert token["headers"] == API_HEADERS and token["api"] == "openai-chat"
    assert token["base_url"] == github.copilot_api
    (exchange,) = github.seen(TOKEN_PATH)
    assert exchange.headers["Authorization"] == f"token {github_token}"
    assert {k: exchange.headers.get(k) for k in EXCHANGE_HEADERS} == EXCHANGE_HEADERS


async def test_hosts_json_of_older_editors_is_followed_as_its_own_account(broker: InProcess, github: FakeGitHub):
    github_token = editor_sign_in(github, "hubot")
    write(editor_dir(broker) / "hosts.json", {"github.com": {"user": "hubot", "oauth_token": github_token}})
    status = await broker.attempts(HOSTS, 1)
    assert status.state == "ready", status.last_error
    token = await broker.token("copilot", "?account=editor-hosts")
    record = github.copilot_token(token["access_token"])
    assert record is not None and record.user == "hubot"


async def test_file_for_another_host_only_says_which_entry_is_missing(broker: InProcess, github: FakeGitHub):
    path = editor_dir(broker) / "hosts.json"
    write(path, {"ghe.example.com": {"user": "octocat", "oauth_token": editor_sign_in(github)}})
    before = path.read_bytes()
    state = await broker.file_state(path, "error")
    assert state.problem is not None
    assert "no entry for github.com" in state.problem.message and "ghe.example.com" in state.problem.message
    with pytest.raises(BrokerError) as raised:
        await broker.token("copilot")
    assert raised.value.code == "not_logged_in" and "no entry for github.com" in raised.value.message
    assert github.seen(TOKEN_PATH) == [] and path.read_bytes() == before


async def test_enterprise_host_takes_its_own_entry_from_a_file_with_several(short_tmp: Path, github: FakeGitHub):
    broker = await start(short_tmp, github, 'enterprise_url = "https://ghe.example.test"')
    try:
        public, enterprise = editor_sign_in(github, "alice"), editor_sign_in(github, "octocat")
        write(
            editor_dir(broker) / "apps.json",
            {**apps_entry("github.com", public, "alice"), **apps_entry("ghe.example.test", enterprise)},
        )
        status = await broker.attempts(APPS, 1)
        assert status.state == "ready", status.last_error
        (exchange,) = github.seen(TOKEN_PATH)
        assert exchange.headers["Authorization"] == f"token {enterprise}"
        record = github.copilot_token((await broker.token("copilot"))["access_token"])
        assert record is not None and record.user == "octocat"
    finally:
        await broker.stop()


async def test_minted_token_is_renewed_when_copilot_says_and_the_files_are_never_written(
    broker: InProcess, github: FakeGitHub
):
    github.copilot_refresh_in = 900  # renew halfway through the token's 30 minutes
    github_token = editor_sign_in(github)
    write(editor_dir(broker) / "apps.json", apps_entry("github.com", github_token))
    write(editor_dir(broker) / "hosts.json", {"github.com": {"user": "octocat", "oauth_token": github_token}})
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in editor_dir(broker).iterdir()}
    await broker.attempts(APPS, 1)
    for renewal in range(3):
        first = await broker.token("copilot")
        planned = await broker.planned(APPS)
        # refresh_in counts from the fake's whole-second clock: a second of slack
        assert planned <= first["expires_at"] - 899, "renewed when refresh_in says, not just before expiry"
        broker.clock.advance_to(planned)
        status = await broker.attempts(APPS, renewal + 2)
        assert status.state == "ready", status.last_error
        assert (await broker.token("copilot"))["access_token"] != first["access_token"]
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in editor_dir(broker).iterdir()}
    assert after == before, "the editors' files are never written, and nothing is added beside them"


async def test_revoked_github_token_asks_to_sign_in_in_the_editor_again(broker: InProcess, github: FakeGitHub):
    path = editor_dir(broker) / "apps.json"
    write(path, apps_entry("github.com", editor_sign_in(github)))
    await broker.attempts(APPS, 1)
    before = path.read_bytes()
    github.revoke("octocat")
    broker.clock.advance_to(await broker.planned(APPS))
    status = await broker.attempts(APPS, 2)
    assert status.state == "login_required" and status.last_error is not None
    assert status.last_error.code == "login_required"
    assert status.last_error.hint == "sign in to Copilot in your editor again"
    assert str(path) in status.last_error.message
    assert path.read_bytes() == before


async def test_without_the_exchange_the_editor_files_are_not_followed(short_tmp: Path, github: FakeGitHub):
    broker = await start(short_tmp, github, 'exchange = false\nclient_id = "Ov23liApprovedApp"')
    try:
        write(editor_dir(broker) / "apps.json", apps_entry("github.com", editor_sign_in(github)))
        assert (await broker.listing("copilot"))["files"] == []
        assert not [s for s in broker.daemon.credentials.followed.states.values() if s.spec.provider == "copilot"]
    finally:
        await broker.stop()
