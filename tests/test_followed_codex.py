"""Following Codex CLI's ``auth.json`` against a fake of auth.openai.com, with a real watcher.

The file is what ``codex login`` leaves: the fake's own token answer to a device login.
Codex rewrites it by truncate+write, so the race at the end catches it half-written.
"""

from __future__ import annotations

import json
import os
import random
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker.providers.codex import CLIENT_ID
from broker.providers.jwt_claims import claims

from broker.core.errors import BrokerError
from broker.followed.codex import rfc3339
from tests.fakes.openai_auth import ALICE, CODEX_CLI_HEADERS, FakeOpenAIAuth, codex_served_headers
from tests.followed_harness import InProcess, RaceSide, SimulatedCli, post, race, start_daemon

KEY = ("codex", "codex-cli")
ROUNDS = 40


@pytest.fixture
def openai() -> Iterator[FakeOpenAIAuth]:
    with FakeOpenAIAuth() as server:
        yield server


def codex_config(openai: FakeOpenAIAuth, extra: str = "") -> str:
    return f'[providers.codex]\n{extra}\n[providers.codex.endpoints]\ntoken = "{openai.url}/oauth/token"\n'


async def start(root: Path, openai: FakeOpenAIAuth, extra: str = "", **env: str) -> InProcess:
    broker = await start_daemon(root, codex_config(openai, extra), **env)
    openai.now = broker.clock.now  # the tokens' exp and iat on broker's (fake) clock
    return broker


@pytest.fixture
async def broker(short_tmp: Path, openai: FakeOpenAIAuth) -> AsyncIterator[InProcess]:
    broker = await start(short_tmp, openai)
    yield broker
    await broker.stop()


def codex_login(openai: FakeOpenAIAuth) -> dict[str, Any]:
    """What ``codex login --device-auth`` gets: user code, approval, then the code exchange."""
    code = post(f"{openai.url}/api/accounts/deviceauth/usercode", json_body={"client_id": CLIENT_ID})
    openai.approve_device(code["user_code"])
    approval = post(
        f"{openai.url}/api/accounts/deviceauth/token",
        json_body={"device_auth_id": code["device_auth_id"], "user_code": code["user_code"]},
    )
    return dict(
        post(
            f"{openai.url}/oauth/token",
            form={
                "grant_type": "authorization_code",
                "code": approval["authorization_code"],
                "redirect_uri": f"{openai.url}/deviceauth/callback",
                "client_id": CLIENT_ID,
                "code_verifier": approval["code_verifier"],
            },
        )
    )


def auth_json(answer: dict[str, Any], now: float) -> dict[str, Any]:
    """``auth.json`` as Codex writes it after a sign-in (the account id copied from the id_token)."""
    account_id = claims(answer["id_token"])["https://api.openai.com/auth"]["chatgpt_account_id"]
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": answer["id_token"],
            "access_token": answer["access_token"],
            "refresh_token": answer["refresh_token"],
            "account_id": account_id,
        },
        "last_refresh": rfc3339(now),
    }


def write(path: Path, doc: dict[str, Any]) -> None:
    """As Codex does: truncate+write of pretty JSON without a trailing newline, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        file.write(json.dumps(doc, indent=2))
    os.chmod(path, 0o600)


def auth_path(broker: InProcess) -> Path:
    return broker.home / ".codex" / "auth.json"


async def signed_in(broker: InProcess, openai: FakeOpenAIAuth, **more: Any) -> dict[str, Any]:
    """A Codex sign-in in the file (``more`` fields beside it), once broker has read it."""
    doc = {**auth_json(codex_login(openai), broker.clock.now()), **more}
    write(auth_path(broker), doc)
    await broker.file_state(auth_path(broker), "ok")
    return doc


async def test_codex_login_in_the_file_is_served_with_its_account_header(broker: InProcess, openai: FakeOpenAIAuth):
    doc = await signed_in(broker, openai)
    token = await broker.token("codex")
    assert token["access_token"] == doc["tokens"]["access_token"]
    assert token["account"] == "codex-cli" and token["source"] == str(auth_path(broker))
    assert token["headers"] == codex_served_headers(ALICE.account_id)
    assert token["api"] == "openai-responses" and token["base_url"] == "https://chatgpt.com/backend-api/codex"
    assert token["expires_at"] == claims(doc["tokens"]["access_token"])["exp"]


async def test_codex_home_moves_the_followed_file(short_tmp: Path, openai: FakeOpenAIAuth):
    codex_home = short_tmp / "elsewhere"
    broker = await start(short_tmp, openai, CODEX_HOME=str(codex_home))
    try:
        write(codex_home / "auth.json", auth_json(codex_login(openai), broker.clock.now()))
        await broker.file_state(codex_home / "auth.json", "ok")
        assert (await broker.token("codex"))["source"] == str(codex_home / "auth.json")
    finally:
        await broker.stop()


async def test_refresh_writes_tokens_and_last_refresh_back_keeping_every_other_field(
    broker: InProcess, openai: FakeOpenAIAuth
):
    doc = await signed_in(broker, openai, agent_identity={"kept": True})
    planned = await broker.planned(KEY)
    expiry = claims(doc["tokens"]["access_token"])["exp"]
    assert planned <= expiry - 300, "refreshes well before Codex itself would"
    broker.clock.advance_to(planned)
    status = await broker.attempts(KEY, 1)
    assert status.state == "ready", status.last_error
    written = json.loads(auth_path(broker).read_text())
    tokens = written["tokens"]
    assert tokens["refresh_token"] != doc["tokens"]["refresh_token"]
    assert openai.refresh_token_state(tokens["refresh_token"]) == "live"
    assert openai.valid_access_token(tokens["access_token"])
    assert tokens["id_token"] != doc["tokens"]["id_token"] and tokens["account_id"] == ALICE.account_id
    assert written["last_refresh"] == rfc3339(broker.clock.now()) and written["last_refresh"].endswith("Z")
    assert {k: written[k] for k in ("auth_mode", "OPENAI_API_KEY", "agent_identity")} == {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "agent_identity": {"kept": True},
    }
    text = auth_path(broker).read_text()
    assert text.startswith('{\n  "auth_mode"') and not text.endswith("\n"), "Codex's own JSON style"
    assert stat.S_IMODE(auth_path(broker).stat().st_mode) == 0o600
    assert (await broker.token("codex"))["access_token"] == tokens["access_token"]
    (_, _, content_type, body) = [r for r in openai.requests if r[3].get("grant_type") == "refresh_token"][-1]
    assert content_type == "application/json" and body["client_id"] == CLIENT_ID


async def test_api_key_only_file_is_served_as_a_key_for_the_openai_api(broker: InProcess):
    write(auth_path(broker), {"OPENAI_API_KEY": "sk-proj-test-key", "tokens": None, "last_refresh": None})
    await broker.file_state(auth_path(broker), "ok")
    token = await broker.token("codex")
    assert token["access_token"] == "sk-proj-test-key"
    assert token["api"] == "openai-chat" and token["base_url"] == "https://api.openai.com/v1"
    assert token["expires_at"] is None and token["headers"] == {}
    assert not broker.daemon.refresher.refreshable(KEY)
    assert broker.daemon.refresher.status(KEY).next_refresh_at is None
    with pytest.raises(BrokerError) as raised:
        await broker.call("POST", "/v1/refresh/codex")
    assert raised.value.code == "bad_request"


async def test_spent_refresh_token_asks_for_codex_login_and_keeps_the_file(broker: InProcess, openai: FakeOpenAIAuth):
    doc = await signed_in(broker, openai)
    before = auth_path(broker).read_bytes()
    openai.redeem(doc["tokens"]["refresh_token"])  # another copy of the login refreshed and kept it elsewhere
    broker.clock.advance_to(await broker.planned(KEY))
    status = await broker.attempts(KEY, 1)
    assert status.state == "login_required"
    assert status.last_error is not None and status.last_error.hint == "run: codex login"
    assert str(auth_path(broker)) in status.last_error.message
    assert auth_path(broker).read_bytes() == before, "a dead login is never written into Codex's file"


async def test_follow_only_leaves_refreshing_to_codex(short_tmp: Path, openai: FakeOpenAIAuth):
    broker = await start(short_tmp, openai, "write_back = false")
    try:
        doc = await signed_in(broker, openai)
        assert not broker.daemon.credentials.may_refresh(KEY)
        broker.clock.advance_to(claims(doc["tokens"]["access_token"])["exp"] + 1)
        with pytest.raises(BrokerError) as raised:
            await broker.token("codex")
        assert raised.value.code == "refresh_failed" and "Codex CLI" in raised.value.hint
        assert openai.grant_counts["refresh_token"] == 0
    finally:
        await broker.stop()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"tokens": {"refresh_token": "rt_x"}}, "tokens: access_token is missing"),
        ({"OPENAI_API_KEY": None, "tokens": None}, "neither ChatGPT tokens nor an OPENAI_API_KEY"),
        ({"tokens": "eyJ"}, "tokens is not an object"),
    ],
    ids=["no-access-token", "signed-out", "tokens-not-object"],
)
async def test_unusable_auth_json_names_what_is_wrong(broker: InProcess, doc: dict[str, Any], message: str):
    write(auth_path(broker), doc)
    state = await broker.file_state(auth_path(broker), "error")
    assert state.problem is not None and message in state.problem.message
    assert "codex login" in state.problem.hint
    (entry,) = (await broker.listing("codex"))["files"]
    assert entry["state"] == "error" and entry["cli"] == "Codex CLI"


async def test_providers_listing_says_a_keyring_login_leaves_no_file(broker: InProcess):
    codex = await broker.listing("codex")
    assert "keyring" in codex["note"] and "cli_auth_credentials_store" in codex["note"]
    (entry,) = codex["files"]
    assert entry == {
        "path": str(auth_path(broker)),
        "cli": "Codex CLI",
        "mode": "lead",
        "account": "codex-cli",
        "state": "missing",
        "error": None,
    }


class SimulatedCodex(SimulatedCli):
    """Does what Codex does to ``auth.json``: truncate+write, never a rename."""

    def __init__(self, broker: InProcess, openai: FakeOpenAIAuth, rng: random.Random) -> None:
        super().__init__(auth_path(broker), rng, newline=False)
        self.broker = broker
        self.openai = openai

    def touch(self) -> None:
        """Codex saving the file again without refreshing (another field of it changed)."""
        doc = self.read()
        doc["touched"] = self.rng.random()
        self.rewrite(doc, in_place=True)

    def refresh(self) -> None:
        """Codex's own refresh (a 401 from the API, say): JSON to the token endpoint, then the file."""
        doc = self.read()
        answer = post(
            f"{self.openai.url}/oauth/token",
            json_body={
                "client_id": CLIENT_ID,
                "grant_type": "refresh_token",
                "refresh_token": doc["tokens"]["refresh_token"],
            },
            headers=CODEX_CLI_HEADERS,
        )
        doc["tokens"].update({k: answer[k] for k in ("id_token", "access_token", "refresh_token")})
        doc["last_refresh"] = rfc3339(self.broker.clock.now())
        self.rewrite(doc, in_place=True)


async def test_no_refresh_token_is_reused_while_codex_rewrites_auth_json_in_place(
    broker: InProcess, openai: FakeOpenAIAuth
):
    await signed_in(broker, openai)
    rng = random.Random(6749)
    codex = SimulatedCodex(broker, openai, rng)
    side = RaceSide(
        broker.daemon, broker.clock, KEY, auth_path(broker), lambda doc: str(doc["tokens"]["refresh_token"])
    )
    tally = await race(side, codex, rounds=ROUNDS, rng=rng, touch=codex.touch, cli_refresh=codex.refresh)
    redeemed = [r[3]["refresh_token"] for r in openai.requests if r[3].get("grant_type") == "refresh_token"]
    assert len(redeemed) == len(set(redeemed)), "a refresh token was redeemed twice"
    assert len(redeemed) == tally.cli_refreshes + tally.broker_refreshes
    assert tally.cli_refreshes > 3 and tally.broker_refreshes > 20
    final = codex.read()["tokens"]
    assert openai.refresh_token_state(final["refresh_token"]) == "live"
    assert (await broker.token("codex"))["access_token"] == final["access_token"]
