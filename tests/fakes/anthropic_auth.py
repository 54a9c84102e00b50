"""Anthropic's token endpoint (``/v1/oauth/token``) as Claude Code's refresh meets it.

A ``RefreshServer`` (single-use rotating refresh tokens) that also refuses what Claude
Code 2.1.332 would never send, field for field from its shipped bundle:

- A body that is not JSON: 400 ``invalid_request`` (Claude Code posts JSON).
- A refresh without ``scope``: 400 ``invalid_request``. Not reported of the real server;
  the fake holds broker to Claude Code's body, which always carries the scopes.
- A User-Agent Claude Code does not send: 429 ``rate_limit_error``, as the endpoint is
  reported to answer some agents. Claude Code's refresh goes out with axios's own
  ``axios/<version>``; its other requests say ``claude-cli/<version>``.

Answers record the headers too (``headers``), in the order of ``bodies``.
"""

from __future__ import annotations

import json

from werkzeug.wrappers import Request, Response

from tests.fakes.refresh_server import RefreshServer

CLAUDE_CODE_AGENTS = ("axios/", "claude-cli/")
RATE_LIMITED = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited. Please try again."}}


class AnthropicTokenServer(RefreshServer):
    def __init__(self, *, lifetime: int = 3600, client_id: str | None = None) -> None:
        super().__init__(lifetime=lifetime, rotate=True, client_id=client_id)
        self.headers: list[dict[str, str]] = []

    def handle(self, request: Request) -> Response:
        if request.path == "/token" and request.method == "POST":
            self.headers.append(dict(request.headers))
            if not request.user_agent.string.startswith(CLAUDE_CODE_AGENTS):
                return _json(RATE_LIMITED, 429)
            body = request.get_json(silent=True) if request.is_json else None
            if not isinstance(body, dict):
                return _json({"error": "invalid_request", "error_description": "expected a JSON body"}, 400)
            if body.get("grant_type") == "refresh_token" and not body.get("scope"):
                return _json({"error": "invalid_request", "error_description": "scope is required"}, 400)
        return super().handle(request)


def _json(body: object, status: int) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
