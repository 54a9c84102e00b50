"""Following Gemini CLI's ``oauth_creds.json`` with a real watchdog observer on a temp HOME.

The daemon runs in-process (its real socket, its real watcher) so the test can wait on
its change events and move its clock; the fake of Google's token endpoint answers
refreshes without a refresh token, as Google does.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from broker.providers.gemini import CLIENT_ID, CLIENT_SECRET

from broker.client import Client
from broker.core.config import load_settings
from broker.core.errors import BrokerError
from broker.daemon.main import Daemon
from broker.daemon.refresher import Status
from broker.daemon.refresher.timing import refresh_lead
from tests.conftest import TEST_RUN_CALLERS, isolated_env
from tests.fakes.clock import FakeClock
from tests.fakes.google_token import GoogleTokenServer

KEY = ("gemini", "gemini-cli")
CHANGE_TIMEOUT = 5.0
GOOGLE_VARIABLES = (
    "GEMINI_CLI_HOME",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
)
SCOPE = "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email openid"


@dataclass
class Gemini:
    daemon: Daemon
    clock: FakeClock
    google: GoogleTokenServer
    path: Path
    socket: Path
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8))

    def write(self, doc: dict[str, Any]) -> None:
        """As Gemini CLI writes it: a plain write of compact JSON, mode 0600."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as file:
            file.write(json.dumps(doc, indent=2))
        os.chmod(self.path, 0o600)

    def doc(self, access: str, refresh: str, expires_in: float) -> dict[str, Any]:
        return {
            "access_token": access,
            "refresh_token": refresh,
            "scope": SCOPE,
            "token_type": "Bearer",
            "id_token": "eyJhbGciOiJub25lIn0.e30.first",
            "expiry_date": int((self.clock.now() + expires_in) * 1000),
        }

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=30) as client:
                if path.startswith("/v1/login/"):
                    return list(client.stream(method, path, body or {}))
                return client.request(method, path, body)

        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def token(self, query: str = "") -> Any:
        return await self.call("GET", f"/v1/token/gemini{query}")

    async def changed(self) -> None:
        await asyncio.wait_for(self.daemon.credentials.wait_changed(), CHANGE_TIMEOUT)

    async def refreshed(self, count: int) -> Status:
        return await asyncio.wait_for(self.daemon.refresher.wait_attempts(KEY, count), CHANGE_TIMEOUT)

    def advance_to_refresh(self) -> float:
        """Move the clock to the latest instant the refresh timer may be due at; the time left then."""
        credential = self.daemon.credentials.get(KEY)
        assert credential is not None and credential.expires_at is not None
        due = credential.expires_at - refresh_lead(credential, self.daemon.refresher.margin)
        self.clock.advance_to(due)
        return credential.expires_at - due


async def start(root: Path, settings: str = "", **env_extra: str) -> tuple[Gemini, GoogleTokenServer]:
    clock = FakeClock()
    google = GoogleTokenServer(now=clock.now).start()
    google.add_client(CLIENT_ID, CLIENT_SECRET)
    env = {k: v for k, v in isolated_env(root).items() if k not in GOOGLE_VARIABLES}
    env.update(env_extra)
    Path(env["BROKER_CONFIG"]).write_text(
        f"[providers.gemini]\n{TEST_RUN_CALLERS}\n{settings}"
        f'[providers.gemini.endpoints]\ntoken = "{google.token_url}"\n'
    )
    daemon = Daemon(load_settings(env), clock=clock, env=env)
    await daemon.start()
    cli_home = Path(env.get("GEMINI_CLI_HOME") or env["HOME"])
    path = cli_home / ".gemini" / "oauth_creds.json"
    return Gemini(daemon, clock, google, path, Path(env["BROKER_SOCKET"])), google


@pytest.fixture
async def gemini(short_tmp: Path) -> AsyncIterator[Gemini]:
    harness, google = await start(short_tmp)
    yield harness
    await harness.daemon.stop()
    google.stop()


async def test_file_written_after_start_is_served_for_gemini_cli(gemini: Gemini):
    access, refresh = gemini.google.issue(CLIENT_ID)
    gemini.write(gemini.doc(access, refresh, 3600))
    await gemini.changed()
    token = await gemini.token()
    assert token["access_token"] == access
    assert token["account"] == "gemini-cli"
    assert token["source"] == str(gemini.path)
    assert token["api"] == "gemini-code-assist"
    assert token["base_url"] == "https://cloudcode-pa.googleapis.com/v1internal"


async def test_refresh_writes_back_and_keeps_the_refresh_token_google_does_not_resend(gemini: Gemini):
    access, refresh = gemini.google.issue(CLIENT_ID)
    doc = {**gemini.doc(access, refresh, 3600), "kept_by_broker": {"unknown": True}}
    gemini.write(doc)
    await gemini.changed()
    assert gemini.advance_to_refresh() >= 600, "refreshes 10 min ahead, before Gemini CLI would (5 min)"
    status = await gemini.refreshed(1)
    assert status.state == "ready", status.last_error
    written = json.loads(gemini.path.read_text())
    assert written["refresh_token"] == refresh, "a merge, not the refresh answer written over the file"
    assert written["access_token"] != access and written["access_token"] in gemini.google.access
    assert written["expiry_date"] == int((gemini.clock.now() + 3599) * 1000)
    assert written["id_token"] != doc["id_token"], "the new id_token Google sent"
    assert written["token_type"] == "Bearer" and written["kept_by_broker"] == {"unknown": True}
    assert stat.S_IMODE(gemini.path.stat().st_mode) == 0o600
    assert (await gemini.token())["access_token"] == written["access_token"]
    # The kept refresh token still works: the login survives its second hour (gemini-cli#21691).
    second = await gemini.token("?min_ttl=3600")
    assert second["access_token"] not in (access, written["access_token"])
    assert json.loads(gemini.path.read_text())["refresh_token"] == refresh
    assert gemini.google.counts["refreshed"] == 2


async def test_refresh_sends_gemini_clis_client_id_and_secret_in_the_form(gemini: Gemini):
    gemini.write(gemini.doc(*gemini.google.issue(CLIENT_ID), 1800))
    await gemini.changed()
    await gemini.token("?min_ttl=3000")  # less than that left: refreshes first
    (body,) = gemini.google.bodies
    assert set(body) == {"refresh_token", "client_id", "client_secret", "grant_type"}, "google-auth-library's form"
    assert body["grant_type"] == "refresh_token"
    assert body["client_id"] == CLIENT_ID and body["client_secret"] == CLIENT_SECRET
    assert gemini.google.agents == ["google-api-nodejs-client/10.9.0"]
    assert gemini.google.counts["refreshed"] == 1 and gemini.google.counts["bad_client"] == 0


async def test_a_login_made_by_another_app_needs_gemini_clis_login_and_the_file_is_kept(gemini: Gemini):
    gemini.write(gemini.doc(*gemini.google.issue("another-app.apps.googleusercontent.com"), 3600))
    await gemini.changed()
    before = gemini.path.read_bytes()
    gemini.advance_to_refresh()
    status = await gemini.refreshed(1)
    assert status.state == "login_required" and status.last_error is not None
    assert "another app" in status.last_error.message and status.last_error.hint.startswith("run: gemini")
    assert gemini.google.counts["unauthorized_client"] == 1
    assert gemini.path.read_bytes() == before, "a logged-out state is never written into the CLI's file"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b'{"access_token": "ya29.x", "expiry_da', "not valid JSON"),
        (b'{"refresh_token": "1//x", "expiry_date": 1800000000000}', "access_token"),
        (b'{"access_token": "ya29.x", "refresh_token": "1//x"}', "expiry_date"),
        (b'{"access_token": "ya29.x", "expiry_date": "tomorrow"}', "expiry_date"),
        (b'["ya29.x"]', "not an object"),
    ],
    ids=["empty", "truncated", "no-access-token", "no-expiry", "expiry-not-a-number", "not-object"],
)
async def test_malformed_files_give_a_clear_error_and_are_never_modified(gemini: Gemini, content: bytes, message: str):
    gemini.path.parent.mkdir(parents=True)
    gemini.path.write_bytes(content)
    await asyncio.wait_for(_file_state(gemini, "error"), CHANGE_TIMEOUT)
    (entry,) = (await _listing(gemini))["files"]
    assert message in entry["error"]["message"] and str(gemini.path) in entry["error"]["message"]
    assert "Gemini CLI" in entry["error"]["hint"]
    with pytest.raises(BrokerError) as raised:
        await gemini.token()
    assert message in raised.value.message
    gemini.clock.advance(7200)
    assert gemini.path.read_bytes() == content


async def test_follow_only_never_refreshes_but_serves_what_gemini_cli_writes(short_tmp: Path):
    gemini, google = await start(short_tmp, "write_back = false\n")
    try:
        gemini.write(gemini.doc(*google.issue(CLIENT_ID), 3600))
        await gemini.changed()
        before = gemini.path.read_bytes()
        assert gemini.daemon.refresher.status(KEY).next_refresh_at is None
        gemini.clock.advance(3601)
        with pytest.raises(BrokerError) as raised:
            await gemini.token()
        assert raised.value.code == "refresh_failed"
        assert "Gemini CLI" in raised.value.hint and "write_back = true" in raised.value.hint
        assert gemini.path.read_bytes() == before
        assert google.counts["refreshed"] == 0
        access, refresh = google.issue(CLIENT_ID)  # Gemini CLI refreshed by itself
        gemini.write(gemini.doc(access, refresh, 3600))
        await gemini.changed()
        assert (await gemini.token())["access_token"] == access
    finally:
        await gemini.daemon.stop()
        google.stop()


async def test_gemini_cli_home_replaces_the_home_directory(short_tmp: Path):
    other_home = short_tmp / "gemini-home"
    gemini, google = await start(short_tmp, GEMINI_CLI_HOME=str(other_home))
    try:
        assert gemini.path == other_home / ".gemini" / "oauth_creds.json"
        access, refresh = google.issue(CLIENT_ID)
        gemini.write(gemini.doc(access, refresh, 3600))
        await gemini.changed()
        assert (await gemini.token())["source"] == str(gemini.path)
    finally:
        await gemini.daemon.stop()
        google.stop()


async def test_login_points_to_gemini_cli_and_the_listing_says_whose_login_it_is(gemini: Gemini):
    (event,) = await gemini.call("POST", "/v1/login/gemini")
    assert event["event"] == "error" and event["code"] == "bad_request"
    assert "gemini" in event["hint"] and "~/.gemini/oauth_creds.json" in event["hint"]
    listing = await _listing(gemini)
    assert "only in Gemini CLI" in listing["note"] and "proxy does not serve it" in listing["note"]
    assert listing["flows"] == ["file"]
    assert not gemini.daemon.registry().get("gemini").proxy_allowed


async def _listing(gemini: Gemini) -> dict[str, Any]:
    listing = await gemini.call("GET", "/v1/providers")
    return dict(next(p for p in listing["providers"] if p["name"] == "gemini"))


async def _file_state(gemini: Gemini, wanted: str) -> None:
    while True:
        state = gemini.daemon.credentials.followed.states[gemini.path]
        if (wanted == "error") == (state.problem is not None):
            return
        await gemini.daemon.credentials.wait_changed()
