"""Anthropic's token endpoint (``/v1/oauth/token``) as Claude Code's refresh meets it.

A ``RefreshServer`` (single-use rotating refresh tokens) that also refuses what Claude
Code 2.1.332 would never send, field for field from its shipped bundle:

- A body that is not JSON: 400 ``invalid_request`` (Claude Code posts JSON).
- A refresh without ``scope``: 400 ``invalid_request``. Not reported of the real server;
  the fake holds broker to Claude Code's body, which always carries the scopes.
- A User-Agent Claude Code does not send: 429 ``rate_limit_error``, as the endpoint is
  reported to answer some agents. Claude Code's refresh goes out with axios's own
  ``axios/<version>``; its other requests say ``claude-cli/<version>``.

Claude Code takes a refresh as good only once the answer parses and the account's profile
comes back: the answer carries ``scope`` (the granted scopes, which Claude Code writes to
the file), ``account`` (``uuid``, ``email_address``) and ``organization`` (``uuid``) beside
the tokens, and ``GET /api/oauth/profile`` with the new access token answers ``account``
(``uuid``, ``email``) and ``organization`` (``uuid``, ``organization_type`` for the plan),
the shape its validator requires; an unknown bearer gets 401 ``authentication_error``.

Answers record the headers too (``headers``), in the order of ``bodies``; ``paths`` lists
every request. ``slow`` holds the answer of a POST to a path after the server redeemed it
(a refresh in flight); ``answering`` is set when such an answer is held.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes.refresh_server import RefreshServer

CLAUDE_CODE_AGENTS = ("axios/", "claude-cli/")
PROFILE = "/api/oauth/profile"
ACCOUNT = {
    "uuid": "0b0b0b0b-0000-4000-8000-000000000001",
    "email": "user@example.com",
    "display_name": "User",
    "full_name": "Test User",
    "created_at": "2025-01-01T00:00:00Z",
}
ORGANIZATION = {
    "uuid": "0c0c0c0c-0000-4000-8000-000000000002",
    "organization_type": "claude_max",
    "rate_limit_tier": "default_claude_max_20x",
    "billing_type": "stripe_subscription",
    "has_extra_usage_enabled": False,
    "subscription_created_at": "2025-01-01T00:00:00Z",
}
UNAUTHENTICATED = {"type": "error", "error": {"type": "authentication_error", "message": "Invalid bearer token"}}
RATE_LIMITED = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited. Please try again."}}


class AnthropicTokenServer(RefreshServer):
    token_paths = ("/token", "/v1/oauth/token")
    """The second is the real one, which Claude Code reaches through tests/fakes/tls_intercept."""

    def __init__(self, *, lifetime: int = 3600, client_id: str | None = None) -> None:
        super().__init__(lifetime=lifetime, rotate=True, client_id=client_id)
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.slow: dict[str, float] = {}
        self.answering = threading.Event()

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        answer = super()._wsgi(environ, start_response)
        delay = self.slow.get(environ.get("PATH_INFO", ""), 0.0) if environ["REQUEST_METHOD"] == "POST" else 0.0
        if delay:
            self.answering.set()
            time.sleep(delay)  # the upstream's latency, outside the lock: the other side's requests go on
        return answer

    def handle(self, request: Request) -> Response:
        self.paths.append(f"{request.method} {request.path}")
        if request.path == PROFILE and request.method == "GET":
            return self.profile(request)
        if request.path not in self.token_paths or request.method != "POST":
            return super().handle(request)
        self.headers.append(dict(request.headers))
        if not request.user_agent.string.startswith(CLAUDE_CODE_AGENTS):
            return _json(RATE_LIMITED, 429)
        body = request.get_json(silent=True) if request.is_json else None
        if not isinstance(body, dict):
            return _json({"error": "invalid_request", "error_description": "expected a JSON body"}, 400)
        if body.get("grant_type") == "refresh_token" and not body.get("scope"):
            return _json({"error": "invalid_request", "error_description": "scope is required"}, 400)
        answer = super().handle(request)
        if answer.status_code != 200:
            return answer
        tokens = json.loads(answer.get_data())
        tokens.update(
            scope=body["scope"],  # granted as asked
            account={"uuid": ACCOUNT["uuid"], "email_address": ACCOUNT["email"]},
            organization={"uuid": ORGANIZATION["uuid"]},
        )
        return _json(tokens, 200)

    def profile(self, request: Request) -> Response:
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.access:
            return _json(UNAUTHENTICATED, 401)
        return _json({"account": ACCOUNT, "organization": ORGANIZATION}, 200)


def _json(body: object, status: int) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
