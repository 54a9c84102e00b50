"""Broker and the real Gemini CLI share ``~/.gemini/oauth_creds.json``.

Gemini CLI 0.61.0 (pinned in tests/peers/npm.txt) sends its refresh and its check of a
cached login to fixed hosts (``oauth2.googleapis.com``); it honours ``HTTPS_PROXY`` and
``NODE_EXTRA_CA_CERTS``, so a test CA and a loopback HTTPS proxy (tests/fakes/tls_intercept)
bring both to the Google fake. At start it loads the file and POSTs the access token to
``/tokeninfo``: a token Google does not know ends in "Manual authorization is required"
(exit 41), an accepted one goes on to Code Assist's ``loadCodeAssist``. Google does not
rotate refresh tokens, so no refresh token can be spent twice here; what is checked is
that every file broker writes back is one the CLI accepts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from broker.providers.gemini import CLIENT_ID

from tests.fakes.tls_intercept import InterceptingProxy, TestCA
from tests.peers import npm_program
from tests.test_followed_gemini import Gemini, start

ROUNDS = 3
NOT_ACCEPTED = 41
"""Gemini CLI's exit code when no cached login is valid and it may not ask for one."""


@pytest.fixture
async def gemini(short_tmp: Path) -> AsyncIterator[Gemini]:
    harness, google = await start(short_tmp)
    harness.write(harness.doc(*google.issue(CLIENT_ID), 3600))
    await harness.changed()
    yield harness
    await harness.daemon.stop()
    google.stop()


def run_gemini(gemini: Gemini) -> subprocess.CompletedProcess[str]:
    """``gemini -p`` on the file broker wrote, its Google hosts played by the fake."""
    home = gemini.path.parent.parent
    (home / ".gemini" / "settings.json").write_text(
        json.dumps({"security": {"auth": {"selectedType": "oauth-personal"}}})
    )
    routes = {"oauth2.googleapis.com": gemini.google.url, "www.googleapis.com": gemini.google.url}
    with InterceptingProxy(TestCA(home), routes) as proxy:
        return subprocess.run(
            [str(npm_program("gemini")), "-p", "hi"],
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": str(home),
                "CODE_ASSIST_ENDPOINT": gemini.google.url,
                "GEMINI_CLI_TRUST_WORKSPACE": "true",
                **proxy.env(),
            },
            capture_output=True,
            text=True,
            cwd=home,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )


async def test_every_write_back_is_a_login_gemini_cli_accepts(gemini: Gemini):
    for attempt in range(1, ROUNDS + 1):
        gemini.advance_to_refresh()
        await gemini.refreshed(attempt)
        written = json.loads(gemini.path.read_text())
        done = await asyncio.to_thread(run_gemini, gemini)
        assert gemini.google.checked[-1] == written["access_token"], done.stderr
        assert done.returncode != NOT_ACCEPTED and "Manual authorization" not in done.stderr, done.stderr
        assert "loadCodeAssist" in done.stderr, "signed in, it went on to its API (a 404 from the fake here)"
        assert json.loads(gemini.path.read_text())["refresh_token"] == written["refresh_token"]
    assert gemini.google.counts["refreshed"] == ROUNDS, "the CLI found a fresh token each time: it refreshed none"


async def test_a_login_google_does_not_know_is_refused_by_gemini_cli(gemini: Gemini):
    """The check above can fail: a file whose access token Google never issued is not accepted."""
    doc = json.loads(gemini.path.read_text())
    gemini.write({**doc, "access_token": "ya29.unknown"})
    await gemini.changed()
    done = await asyncio.to_thread(run_gemini, gemini)
    assert gemini.google.checked[0] == "ya29.unknown"
    assert done.returncode == NOT_ACCEPTED, done.stderr
