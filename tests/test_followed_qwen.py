"""Following Qwen Code's ``oauth_creds.json`` against a fake of chat.qwen.ai, with a real watcher.

Qwen Code refreshes under its lock file (exclusive create, stale after 10 s) and deletes
its credentials when a refresh fails, so broker must never redeem a refresh token while
Qwen Code holds that lock. The file is what Qwen Code's own device login leaves.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from broker.providers.qwen import CLIENT_ID

from tests.fakes.qwen import DEVICE_GRANT, FakeQwen, qwen_code_api_headers
from tests.followed_harness import InProcess, post, start_daemon
from tests.helpers import without_lasting

KEY = ("qwen", "qwen-code")
LOCK_WAIT = 15.0
"""Long enough for broker to give up on a held lock (5 s) and say so."""


@pytest.fixture
def qwen() -> Iterator[FakeQwen]:
    with FakeQwen() as server:
        yield server


def qwen_config(qwen: FakeQwen, extra: str = "") -> str:
    return (
        f"[providers.qwen]\n{extra}\n[providers.qwen.endpoints]\n"
        f'device_code = "{qwen.url}/api/v1/oauth2/device/code"\ntoken = "{qwen.url}/api/v1/oauth2/token"\n'
    )


@pytest.fixture
async def broker(short_tmp: Path, qwen: FakeQwen) -> AsyncIterator[InProcess]:
    broker = await start_daemon(short_tmp, qwen_config(qwen))
    yield broker
    await broker.stop()


def qwen_auth(qwen: FakeQwen) -> dict[str, Any]:
    """What Qwen Code's ``/auth`` gets: a device code with PKCE, the user's approval, the tokens."""
    verifier = secrets.token_urlsafe(48)
    code = post(
        f"{qwen.url}/api/v1/oauth2/device/code",
        form={
            "client_id": CLIENT_ID,
            "scope": "openid profile email model.completion",
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        },
        headers={"x-request-id": str(uuid.uuid4())},
    )
    qwen.approve(code["user_code"])
    return dict(
        post(
            f"{qwen.url}/api/v1/oauth2/token",
            form={
                "grant_type": DEVICE_GRANT,
                "client_id": CLIENT_ID,
                "device_code": code["device_code"],
                "code_verifier": verifier,
            },
        )
    )


def creds(answer: dict[str, Any], now: float) -> dict[str, Any]:
    """``oauth_creds.json`` as Qwen Code writes it from a token answer (expiry in milliseconds)."""
    return {
        "access_token": answer["access_token"],
        "token_type": answer["token_type"],
        "refresh_token": answer["refresh_token"],
        "resource_url": answer["resource_url"],
        "expiry_date": int((now + answer["expires_in"]) * 1000),
    }


def write(path: Path, doc: dict[str, Any]) -> None:
    """As Qwen Code does: 2-space JSON to a temp file, mode 0600, renamed over the file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.tmp.{secrets.token_hex(4)}")
    temp.write_text(json.dumps(doc, indent=2))
    os.chmod(temp, 0o600)
    temp.replace(path)


def creds_path(broker: InProcess) -> Path:
    return broker.home / ".qwen" / "oauth_creds.json"


def lock_path(broker: InProcess) -> Path:
    return broker.home / ".qwen" / "oauth_creds.lock"


async def signed_in(broker: InProcess, qwen: FakeQwen, **more: Any) -> dict[str, Any]:
    doc = {**creds(qwen_auth(qwen), broker.clock.now()), **more}
    write(creds_path(broker), doc)
    await broker.file_state(creds_path(broker), "ok")
    return doc


def refreshes(qwen: FakeQwen) -> list[str]:
    """Every refresh token posted to the fake, by anyone, in order."""
    return [form["refresh_token"] for _, _, _, form in qwen.requests if form.get("grant_type") == "refresh_token"]


async def test_qwen_code_login_is_served_at_its_resource_url(broker: InProcess, qwen: FakeQwen):
    doc = await signed_in(broker, qwen)
    token = await broker.token("qwen")
    assert token["access_token"] == doc["access_token"]
    assert token["account"] == "qwen-code" and token["source"] == str(creds_path(broker))
    assert token["base_url"] == "https://portal.qwen.ai/v1" and token["api"] == "openai-chat"
    assert token["headers"] == qwen_code_api_headers()
    assert token["expires_at"] == doc["expiry_date"] // 1000


async def test_qwen_home_moves_the_file_and_its_lock(short_tmp: Path, qwen: FakeQwen):
    qwen_home = short_tmp / "qwen-home"
    broker = await start_daemon(short_tmp, qwen_config(qwen), QWEN_HOME=str(qwen_home))
    try:
        path = qwen_home / "oauth_creds.json"
        write(path, creds(qwen_auth(qwen), broker.clock.now()))
        state = await broker.file_state(path, "ok")
        assert [lock.path for lock in state.spec.refresh_locks] == [qwen_home / "oauth_creds.lock"]
        assert (await broker.token("qwen"))["source"] == str(path)
    finally:
        await broker.stop()


async def test_refresh_writes_back_in_qwen_codes_format_and_leaves_no_lock(broker: InProcess, qwen: FakeQwen):
    doc = await signed_in(broker, qwen, id_token="kept-as-it-was")
    qwen.resource_url = "portal-intl.qwen.ai"  # the refresh answer moves the API host
    broker.clock.advance_to(await broker.planned(KEY))
    status = await broker.attempts(KEY, 1)
    assert status.state == "ready", status.last_error
    written = json.loads(creds_path(broker).read_text())
    assert written["refresh_token"] != doc["refresh_token"] and qwen.valid_refresh_token(written["refresh_token"])
    assert qwen.valid_access_token(written["access_token"])
    assert written["expiry_date"] == int((broker.clock.now() + 3600) * 1000)
    assert written["resource_url"] == "portal-intl.qwen.ai" and written["token_type"] == "Bearer"
    assert written["id_token"] == "kept-as-it-was"
    assert stat.S_IMODE(creds_path(broker).stat().st_mode) == 0o600
    assert not lock_path(broker).exists(), "broker's lock is removed after the write"
    token = await broker.token("qwen")
    assert token["access_token"] == written["access_token"] and token["base_url"] == "https://portal-intl.qwen.ai/v1"
    (form,) = [f for _, _, _, f in qwen.requests if f.get("grant_type") == "refresh_token"]
    assert form == {"grant_type": "refresh_token", "refresh_token": doc["refresh_token"], "client_id": CLIENT_ID}


async def test_broker_never_redeems_while_qwen_code_holds_its_lock(broker: InProcess, qwen: FakeQwen):
    doc = await signed_in(broker, qwen)
    planned = await broker.planned(KEY)
    owner = secrets.token_hex(16)
    lock_path(broker).write_text(owner)  # Qwen Code's exclusive create: it is refreshing now
    broker.clock.advance_to(planned)
    status = await asyncio.wait_for(broker.daemon.refresher.wait_attempts(KEY, 1), LOCK_WAIT)
    assert status.state == "error" and status.last_error is not None
    assert "oauth_creds.lock" in status.last_error.message
    assert refreshes(qwen) == [], "broker redeemed the token Qwen Code is refreshing"
    assert lock_path(broker).read_text() == owner, "broker neither broke nor took a live lock"
    # Qwen Code's refresh under its lock succeeds: the token is still unspent.
    answer = post(
        f"{qwen.url}/api/v1/oauth2/token",
        form={"grant_type": "refresh_token", "refresh_token": doc["refresh_token"], "client_id": CLIENT_ID},
    )
    write(creds_path(broker), creds(answer, broker.clock.now()))
    lock_path(broker).unlink()
    await broker.until(lambda: (broker.daemon.credentials.get(KEY) or doc).refresh_token == answer["refresh_token"])
    assert (await broker.token("qwen"))["access_token"] == answer["access_token"]
    # broker's next refresh redeems what Qwen Code wrote, under the lock, and writes it back.
    broker.clock.advance_to(await broker.planned(KEY))
    state = broker.daemon.credentials.followed.states[creds_path(broker)]
    spent = {doc["refresh_token"], answer["refresh_token"]}
    await broker.until(lambda: (broker.daemon.credentials.get(KEY) or doc).refresh_token not in spent)
    # The new tokens are live once written; the lock is released after that, when the attempt ends.
    await asyncio.wait_for(broker.daemon.refresher.wait_status(KEY, lambda s: s.refreshes >= 1), LOCK_WAIT)
    assert state.owed is None
    assert refreshes(qwen) == [doc["refresh_token"], answer["refresh_token"]]
    written = json.loads(creds_path(broker).read_text())
    assert qwen.valid_refresh_token(written["refresh_token"]) and not lock_path(broker).exists()
    assert (await broker.token("qwen"))["access_token"] == written["access_token"]


async def test_stale_lock_of_a_crashed_qwen_code_is_broken(broker: InProcess, qwen: FakeQwen):
    doc = await signed_in(broker, qwen)
    planned = await broker.planned(KEY)
    lock_path(broker).write_text("left by a crashed qwen")
    old = time.time() - 11
    os.utime(lock_path(broker), (old, old))
    broker.clock.advance_to(planned)
    status = await broker.attempts(KEY, 1)
    assert status.state == "ready", status.last_error
    assert json.loads(creds_path(broker).read_text())["refresh_token"] != doc["refresh_token"]
    assert not lock_path(broker).exists()


@pytest.mark.parametrize(("prefer", "default"), [("login", "default"), ("file", "qwen-code")])
async def test_prefer_decides_whether_the_login_or_the_file_is_the_default(
    short_tmp: Path, qwen: FakeQwen, prefer: str, default: str
):
    broker = await start_daemon(short_tmp, qwen_config(qwen, f'prefer = "{prefer}"'))
    try:
        file_doc = await signed_in(broker, qwen)
        qwen.approve_all = True
        events = await broker.call("POST", "/v1/login/qwen", {})
        assert without_lasting(events[-1]) == {"event": "done", "provider": "qwen", "account": "default"}
        token = await broker.token("qwen")
        assert token["account"] == default
        assert (token["source"] == "login") == (default == "default")
        named = await broker.token("qwen", "?account=qwen-code")
        assert named["access_token"] == file_doc["access_token"]
        accounts = [a["account"] for a in (await broker.listing("qwen"))["accounts"]]
        assert accounts[0] == default and sorted(accounts) == ["default", "qwen-code"]
    finally:
        await broker.stop()
