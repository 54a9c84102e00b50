"""What an upstream says reaches the log, ``broker status`` and the terminal only cleaned.

A server may echo the token it was sent, or answer with terminal escape sequences and
line breaks that would forge log lines; broker keeps its words, minus those.
"""

from __future__ import annotations

import json

import pytest

from broker.core.sanitize import printable, upstream_text
from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login

ESCAPES = "\x1b]0;owned\x07\x1b[2J"
FORGED = "ERROR broker.daemon: forged line"


def test_an_echoed_token_and_escapes_never_reach_log_status_or_terminal(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    token = daemon.cli("token", "acme").stdout.strip()
    description = f"refresh token {token} was reused {ESCAPES}\n{FORGED}"
    oauth.fail_next("/token", status=400, body=json.dumps({"error": "invalid_grant", "error_description": description}))

    refreshed = daemon.cli("refresh", "acme")
    status = daemon.cli("status")
    status_json = daemon.cli("status", "--json")

    assert refreshed.returncode == 3, refreshed.stderr
    assert "was reused" in refreshed.stderr and f"{token[:4]}***" in refreshed.stderr
    assert "was reused" in status.stdout
    for output in (refreshed.stderr, status.stdout, status_json.stdout, daemon.log()):
        assert token not in output
        assert "\x1b" not in output and "\x07" not in output
    assert not any(line.startswith(FORGED) for line in daemon.log().splitlines())


@pytest.mark.parametrize(
    "secret",
    ["sk-ant-ort01-" + "a1B2" * 12, "ghu_" + "x9" * 18, "ya29.a0AfB_" + "Zz0" * 15, "eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl"],
)
def test_well_known_token_shapes_are_masked(secret: str):
    shown = upstream_text(f"the server says: {secret} is wrong")
    assert secret not in shown and shown.endswith("*** is wrong")


@pytest.mark.parametrize(
    "text",
    [
        "https://us-east5-aiplatform.googleapis.com/v1/projects/my-project-123456/locations/us-east5 answered HTTP 500",
        "refresh_token_invalidated: the login was revoked",
        "http://127.0.0.1:41234/token did not answer within 30 s",
    ],
)
def test_urls_and_error_codes_are_kept(text: str):
    assert upstream_text(text) == text


def test_control_characters_go_and_line_breaks_become_spaces():
    assert printable("a\x1b[31mb\nc\td\u202e") == "a[31mb c d"
    assert len(upstream_text("x" * 1000)) == 300
