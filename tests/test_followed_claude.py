"""Following Claude Code's credential file with a real watchdog observer on a temp HOME.

The daemon runs in-process (its real socket, its real watcher) so the test can wait on
its change events and move its clock; the fake token endpoint rotates refresh tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.client import Client
from broker.core.config import load_settings
from broker.core.errors import BrokerError, NotLoggedIn
from broker.daemon.main import Daemon
from tests.conftest import TEST_RUN_CALLERS, isolated_env
from tests.fakes.anthropic_auth import RATE_LIMITED, AnthropicTokenServer
from tests.fakes.clock import FakeClock
from tests.fakes.refresh_server import RefreshServer

KEY = ("claude", "claude-code")
CHANGE_TIMEOUT = 5.0


@dataclass
class Claude:
    daemon: Daemon
    clock: FakeClock
    server: RefreshServer
    path: Path
    socket: Path
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8))

    def write(self, doc: dict[str, Any], *, by_rename: bool = True) -> None:
        data = json.dumps(doc, indent=2) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if by_rename:
            temp = self.path.with_name(".credentials.json.tmp")
            temp.write_text(data)
            os.chmod(temp, 0o600)
            temp.replace(self.path)
        else:
            with open(self.path, "w") as file:
                file.write(data)

    def doc(self, access: str, refresh: str, expires_in: float) -> dict[str, Any]:
        return {
            "claudeAiOauth": {
                "accessToken": access,
                "refreshToken": refresh,
                "expiresAt": int((self.clock.now() + expires_in) * 1000),
                "scopes": ["user:inference", "user:profile"],
                "subscriptionType": "max",
            },
            "mcpOAuth": {"kept": True},
        }

    async def token(self, query: str = "") -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=30) as client:
                return client.request("GET", f"/v1/token/claude{query}")

        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def changed(self) -> None:
        await asyncio.wait_for(self.daemon.credentials.wait_changed(), CHANGE_TIMEOUT)


async def start(root: Path, settings: str = "", clock: FakeClock | None = None) -> tuple[Claude, RefreshServer]:
    server = AnthropicTokenServer(client_id="9d1c250a-e61b-44d9-88ed-5944d1962f5e").start()
    env = isolated_env(root)
    Path(env["BROKER_CONFIG"]).write_text(
        f"[providers.claude]\n{TEST_RUN_CALLERS}\n{settings}"
        f'[providers.claude.endpoints]\ntoken = "{server.url}/token"\n'
    )
    clock = clock or FakeClock()
    daemon = Daemon(load_settings(env), clock=clock, env=env)
    await daemon.start()
    path = Path(env["HOME"]) / ".claude" / ".credentials.json"
    return Claude(daemon, clock, server, path, Path(env["BROKER_SOCKET"])), server


@pytest.fixture
async def claude(short_tmp: Path) -> AsyncIterator[Claude]:
    harness, server = await start(short_tmp)
    yield harness
    await harness.daemon.stop()
    server.stop()


async def test_file_written_after_start_is_served_with_its_source(claude: Claude):
    access, refresh = claude.server.issue()
    claude.write(claude.doc(access, refresh, 3600))
    await claude.changed()
    token = await claude.token()
    assert token["access_token"] == access
    assert token["account"] == "claude-code"
    assert token["source"] == str(claude.path)
    assert token["api"] == "anthropic"
    assert token["headers"] == {"anthropic-beta": "oauth-2025-04-20"}


async def test_in_place_write_and_rename_are_both_seen(claude: Claude):
    first = claude.server.issue()
    claude.write(claude.doc(*first, 3600), by_rename=False)
    await claude.changed()
    second = claude.server.issue()
    claude.write(claude.doc(*second, 3600), by_rename=True)
    await claude.changed()
    assert (await claude.token())["access_token"] == second[0]


async def test_deleted_file_makes_the_credential_disappear(claude: Claude):
    claude.write(claude.doc(*claude.server.issue(), 3600))
    await claude.changed()
    claude.path.unlink()
    await claude.changed()
    with pytest.raises(NotLoggedIn):
        await claude.token()


async def test_refresh_writes_back_in_claude_codes_format_keeping_everything_else(claude: Claude):
    access, refresh = claude.server.issue()
    claude.write(claude.doc(access, refresh, 3600))
    os.chmod(claude.path, 0o640)
    await claude.changed()
    planned = claude.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None and planned <= claude.clock.now() + 3600 - 600, "refreshes before the CLI would"
    claude.clock.advance_to(planned)
    status = await asyncio.wait_for(claude.daemon.refresher.wait_attempts(KEY, 1), CHANGE_TIMEOUT)
    assert status.state == "ready", status.last_error
    written = json.loads(claude.path.read_text())
    oauth = written["claudeAiOauth"]
    assert oauth["refreshToken"] != refresh and oauth["refreshToken"] in claude.server.live
    assert oauth["accessToken"] != access
    assert oauth["expiresAt"] == int((claude.clock.now() + 3600) * 1000)
    assert oauth["subscriptionType"] == "max" and written["mcpOAuth"] == {"kept": True}
    assert stat.S_IMODE(claude.path.stat().st_mode) == 0o640
    assert claude.path.read_text().startswith('{\n  "claudeAiOauth"'), "the file's own JSON style"
    assert (await claude.token())["access_token"] == oauth["accessToken"]
    assert claude.server.bodies[-1]["client_id"] == "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    assert not list(claude.path.parent.glob(".*.tmp")), "no temp file left behind"


async def test_when_the_cli_refreshed_first_its_tokens_win(claude: Claude):
    claude.write(claude.doc(*claude.server.issue(), 3600))
    await claude.changed()
    planned = claude.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    cli_tokens = claude.server.issue()  # the CLI refreshed on its own
    claude.write(claude.doc(*cli_tokens, 3600))
    await claude.changed()
    claude.clock.advance_to(planned)
    assert (await claude.token())["access_token"] == cli_tokens[0]
    assert json.loads(claude.path.read_text())["claudeAiOauth"]["refreshToken"] == cli_tokens[1]
    assert claude.server.counts["reused"] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b'{"claudeAiOauth": {"accessToken": "x", "expir', "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"claudeAiOauth": {"accessToken": "x"}}', "expiresAt"),
        (b'{"other": 1}', "claudeAiOauth"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b" " * (1 << 20) + b"{}", "over the"),
    ],
    ids=["empty", "truncated", "not-object", "no-expiry", "no-oauth", "binary", "oversized"],
)
async def test_unusable_files_give_a_clear_error_and_are_never_modified(claude: Claude, content: bytes, message: str):
    claude.path.parent.mkdir(parents=True)
    claude.path.write_bytes(content)
    await asyncio.wait_for(_file_state(claude, "error"), CHANGE_TIMEOUT)
    listing = await _providers(claude)
    (entry,) = listing["files"]
    assert message in entry["error"]["message"] and str(claude.path) in entry["error"]["message"]
    assert listing["state"] == "error"
    with pytest.raises(BrokerError) as raised:
        await claude.token()
    assert message in raised.value.message
    claude.clock.advance(7200)
    assert claude.path.read_bytes() == content
    assert claude.daemon.credentials.load_error is None


async def test_symlinked_file_is_refused_and_left_alone(claude: Claude, short_tmp: Path):
    target = short_tmp / "elsewhere.json"
    target.write_text(json.dumps(claude.doc(*claude.server.issue(), 3600)))
    claude.path.parent.mkdir(parents=True)
    claude.path.symlink_to(target)
    await asyncio.wait_for(_file_state(claude, "error"), CHANGE_TIMEOUT)
    (entry,) = (await _providers(claude))["files"]
    assert "symlink" in entry["error"]["message"]
    assert claude.path.is_symlink() and json.loads(target.read_text())


async def test_follow_only_never_writes_and_says_who_must_refresh(short_tmp: Path):
    claude, server = await start(short_tmp, "write_back = false\n")
    try:
        claude.write(claude.doc(*server.issue(), 3600))
        await claude.changed()
        before = claude.path.read_bytes()
        assert claude.daemon.refresher.status(KEY).next_refresh_at is None
        claude.clock.advance(3601)
        with pytest.raises(BrokerError) as raised:
            await claude.token()
        assert raised.value.code == "refresh_failed"
        assert "Claude Code" in raised.value.hint and "write_back = true" in raised.value.hint
        assert claude.path.read_bytes() == before
        assert server.counts["refreshed"] == 0
    finally:
        await claude.daemon.stop()
        server.stop()


async def test_dead_refresh_token_reports_the_clis_login_and_keeps_the_file(claude: Claude):
    claude.write(claude.doc("at-revoked", "rt-unknown-to-server", 3600))
    await claude.changed()
    before = claude.path.read_bytes()
    planned = claude.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    claude.clock.advance_to(planned)
    status = await asyncio.wait_for(claude.daemon.refresher.wait_attempts(KEY, 1), CHANGE_TIMEOUT)
    assert status.state == "login_required"
    assert status.last_error is not None and status.last_error.hint == "run: claude, then /login"
    assert claude.path.read_bytes() == before, "a logged-out state is never written into the CLI's file"


async def _providers(claude: Claude) -> dict[str, Any]:
    def call() -> Any:
        with Client(claude.socket, timeout=30) as client:
            return client.request("GET", "/v1/providers")

    listing = await asyncio.get_running_loop().run_in_executor(claude.pool, call)
    return dict(next(p for p in listing["providers"] if p["name"] == "claude"))


async def _file_state(claude: Claude, wanted: str) -> None:
    while True:
        state = claude.daemon.credentials.followed.states[claude.path]
        if (wanted == "error") == (state.problem is not None):
            return
        await claude.daemon.credentials.wait_changed()


async def reloaded(claude: Claude) -> None:
    """What SIGHUP does, awaited to its end."""
    task = claude.daemon.reload()
    assert task is not None, "the config was refused"
    await task


async def test_a_config_reload_starts_and_stops_following_the_file(short_tmp: Path):
    claude, server = await start(short_tmp, "follow = false\n")
    config = Path(claude.daemon.env["BROKER_CONFIG"])
    try:
        access, refresh = server.issue()
        claude.write(claude.doc(access, refresh, 3600))
        with pytest.raises(NotLoggedIn):
            await claude.token()

        config.write_text(config.read_text().replace("follow = false", "follow = true"))
        await asyncio.wait_for(reloaded(claude), CHANGE_TIMEOUT)
        assert (await claude.token())["access_token"] == access
        assert claude.daemon.refresher.status(KEY).next_refresh_at is not None, "its refresh is planned"

        second = server.issue()
        claude.write(claude.doc(*second, 3600))
        await claude.changed()
        assert (await claude.token())["access_token"] == second[0], "the new watcher sees the file change"

        config.write_text(config.read_text().replace("follow = true", "follow = false"))
        await asyncio.wait_for(reloaded(claude), CHANGE_TIMEOUT)
        with pytest.raises(NotLoggedIn):
            await claude.token()
        assert json.loads(claude.path.read_text())["claudeAiOauth"]["accessToken"] == second[0], "file untouched"
    finally:
        await claude.daemon.stop()
        server.stop()


# --- Claude Code's refresh, field for field (the fake refuses anything else) -----------------------


async def refreshed(claude: Claude) -> None:
    access, refresh = claude.server.issue()
    claude.write(claude.doc(access, refresh, 3600))
    await claude.changed()
    planned = claude.daemon.refresher.status(KEY).next_refresh_at
    assert planned is not None
    claude.clock.advance_to(planned)
    status = await asyncio.wait_for(claude.daemon.refresher.wait_attempts(KEY, 1), CHANGE_TIMEOUT)
    assert status.state == "ready", status.last_error


async def test_refresh_is_claude_codes_json_with_the_logins_scopes_and_axioss_user_agent(claude: Claude):
    await refreshed(claude)
    body, headers = claude.server.bodies[-1], claude.server.headers[-1]
    assert set(body) == {"grant_type", "refresh_token", "client_id", "scope"}
    assert body["scope"] == "user:inference user:profile", "the scopes the file's login has"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "axios/1.15.2"


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        (
            {"User-Agent": "axios/1.15.2", "Content-Type": "application/x-www-form-urlencoded"},
            "grant_type=refresh_token",
            400,
        ),
        ({"User-Agent": "axios/1.15.2", "Content-Type": "application/json"}, '{"grant_type": "refresh_token"}', 400),
        ({"User-Agent": "python-requests/2.32", "Content-Type": "application/json"}, "{}", 429),
    ],
    ids=["form body", "no scope", "another agent"],
)
def test_the_fake_refuses_a_refresh_claude_code_would_not_send(headers: dict[str, str], body: str, status: int):
    with AnthropicTokenServer() as server:
        request = urllib.request.Request(f"{server.url}/token", data=body.encode(), headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == status
    answer = json.loads(refused.value.read())
    assert answer == RATE_LIMITED if status == 429 else answer["error"] == "invalid_request"


async def test_config_moves_the_user_agent_and_the_beta_header(short_tmp: Path):
    config = (
        '[providers.claude.versions]\naxios = "1.16.0"\n'
        '[providers.claude.headers]\nanthropic-beta = "oauth-2026-01-01"\n'
    )
    claude, server = await start(short_tmp, config)
    try:
        await refreshed(claude)
        assert server.headers[-1]["User-Agent"] == "axios/1.16.0"
        assert (await claude.token())["headers"] == {"anthropic-beta": "oauth-2026-01-01"}
    finally:
        await claude.daemon.stop()
        server.stop()
