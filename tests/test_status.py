"""``broker status``: every credential and followed file, what is wrong, the fix, and an exit status to match.

The daemon runs in this process (real socket, real watcher, fake clock), and ``broker
status`` runs as the person runs it: a process reading that socket.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.followed_harness import InProcess, start_daemon
from tests.test_openapi import validator

CODEX_KEY_FILE = {"OPENAI_API_KEY": "sk-from-codex", "tokens": None, "last_refresh": None}


async def cli(broker: InProcess, *args: str) -> tuple[int, str, str]:
    """``broker ARGS`` as a process, while this loop keeps serving it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        *args,
        env=broker.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
async def broker(short_tmp: Path) -> AsyncIterator[InProcess]:
    home = short_tmp / "h"
    home.mkdir(mode=0o700)
    write(home / ".qwen" / "oauth_creds.json", '{"access_token": "abc", "refresh_tok')  # cut off mid-write
    write(home / ".codex" / "auth.json", json.dumps(CODEX_KEY_FILE))
    started = await start_daemon(short_tmp, "", HOME=str(home))
    yield started
    await started.stop()


async def test_a_truncated_file_is_listed_with_its_problem_and_fix(broker: InProcess):
    status, out, err = await cli(broker, "status")
    qwen = out[out.index("qwen ") :]
    assert "qwen-code" in qwen and "no credential" in qwen
    assert str(broker.home / ".qwen" / "oauth_creds.json") in qwen
    assert "not valid JSON" in qwen and "truncated" in qwen
    assert "\n                let Qwen Code rewrite it (qwen, then /auth)" in qwen
    assert status == 1, "a broken file needs the user"
    assert err == ""


async def test_a_file_broken_after_a_good_read_shows_beside_the_token_still_served(broker: InProcess):
    write(broker.home / ".qwen" / "oauth_creds.json", "")  # out of the way: empty reads as a problem too
    path = broker.home / ".codex" / "auth.json"
    path.write_text(json.dumps(CODEX_KEY_FILE)[:20])
    await broker.file_state(path, "error")
    status, out, _ = await cli(broker, "status")
    codex = out[out.index("codex ") :].split("\n\n")[0]
    assert "codex-cli (default)" in codex and "ready" in codex, "the last good token is still served"
    assert "not valid JSON" in codex and "\n                let Codex CLI rewrite it (codex login)" in codex
    assert status == 1


async def test_the_default_account_is_marked_in_text_and_json(broker: InProcess):
    for account in ("work", "home"):
        await broker.call("POST", "/v1/login/openai", {"account": account, "secret": f"sk-{account}"})
    _, out, _ = await cli(broker, "status")
    lines = [line for line in out.splitlines() if line.startswith("openai ")]
    assert [line.split()[1:3] for line in lines] == [["work", "(default)"], ["home", "ready"]]
    _, raw, _ = await cli(broker, "status", "--json")
    openai = next(p for p in json.loads(raw)["providers"] if p["name"] == "openai")
    assert openai["default_account"] == "work"
    assert [(a["account"], a["default"]) for a in openai["accounts"]] == [("work", True), ("home", False)]
    assert (await broker.token("openai"))["account"] == "work", "the marked account is the one served"


async def test_a_login_that_needs_the_user_exits_3_with_the_command_that_fixes_it(short_tmp: Path):
    home = short_tmp / "h"
    home.mkdir(mode=0o700)
    creds = {"access_token": "abc", "refresh_token": "r", "token_type": "Bearer", "resource_url": "portal.qwen.ai"}
    broker = await start_daemon(short_tmp, "[providers.qwen]\nwrite_back = false\n", HOME=str(home))
    try:
        path = write(
            home / ".qwen" / "oauth_creds.json", json.dumps({**creds, "expiry_date": 1000 * (broker.clock.now() + 600)})
        )
        await broker.file_state(path, "ok")
        assert (await cli(broker, "status"))[0] == 0, "all is well while the token lives"
        broker.clock.advance(601)
        status, out, _ = await cli(broker, "status")
        assert status == 3
        qwen = out[out.index("qwen ") :]
        assert "expired" in qwen and "\n                run: qwen, then /auth" in qwen
    finally:
        await broker.stop()


async def test_status_json_and_providers_json_are_one_schema(broker: InProcess):
    await broker.call("POST", "/v1/login/openai", {"secret": "sk-one"})
    _, status_json, _ = await cli(broker, "status", "--json")
    _, providers_json, _ = await cli(broker, "providers", "--json")
    listing: dict[str, Any] = json.loads(status_json)
    validator("#/components/schemas/ProviderList").validate(listing)
    for provider in json.loads(providers_json):
        validator("#/components/schemas/Provider").validate(provider)
    assert json.loads(providers_json) == listing["providers"], "the same objects, field for field"
