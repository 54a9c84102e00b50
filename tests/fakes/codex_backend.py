"""What the real Codex CLI talks to besides auth.openai.com, on loopback: enough for ``codex exec``.

Codex (0.171) is pointed here with ``-c chatgpt_base_url=URL/backend-api/`` and a model
provider of its own config (``wire_api = "responses"``, ``requires_openai_auth = true``)
whose base URL is ``URL/v1``: its ChatGPT access token then goes with every request.

- Every request needs ``Authorization: Bearer <access token>`` that the fake auth server
  issued and that has not expired; anything else is 401, as the real backend answers an
  expired token (Codex then re-reads ``auth.json`` and refreshes).
- ``POST /v1/responses`` streams one assistant message as server-sent events
  (``response.created``, ``response.output_item.done``, ``response.completed``).
- Everything else Codex asks at start (plugins, account checks, analytics) gets ``{}``.
"""

from __future__ import annotations

import json

from werkzeug.wrappers import Request, Response

from tests.fakes.loopback import LoopbackServer
from tests.fakes.openai_auth import FakeOpenAIAuth

REPLY = "hello from the fake backend"


class FakeCodexBackend(LoopbackServer):
    def __init__(self, auth: FakeOpenAIAuth) -> None:
        super().__init__()
        self.auth = auth
        self.refused: list[str] = []
        """Paths of requests refused for an expired or unknown access token."""
        self.answered = 0
        """``/responses`` streams sent."""

    def handle(self, request: Request) -> Response:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not self.auth.valid_access_token(bearer):
            self.refused.append(request.path)
            return Response(json.dumps({"detail": "Could not validate credentials"}), 401, mimetype="application/json")
        if request.method == "POST" and request.path.endswith("/responses"):
            self.answered += 1
            return Response(_stream(), mimetype="text/event-stream")
        return Response("{}", mimetype="application/json")


def _stream() -> str:
    message = {
        "type": "message",
        "role": "assistant",
        "id": "msg_1",
        "content": [{"type": "output_text", "text": REPLY}],
    }
    usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    events = [
        {"type": "response.created", "response": {"id": "resp_1"}},
        {"type": "response.output_item.done", "item": message},
        {"type": "response.completed", "response": {"id": "resp_1", "usage": usage}},
    ]
    return "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)
