"""A token endpoint that only refreshes, with single-use rotating refresh tokens.

Enough of Anthropic's ``/v1/oauth/token`` (JSON body) or Google's and Qwen's (form
body) for followed CLI files: RFC 6749 §6 with rotation. It counts every attempt to
redeem a spent refresh token, which is what the followed-file tests assert never happens.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter

from werkzeug.wrappers import Request, Response

from tests.fakes.loopback import LoopbackServer


class RefreshServer(LoopbackServer):
    token_paths: tuple[str, ...] = ("/token",)

    def __init__(self, *, lifetime: int = 3600, rotate: bool = True, client_id: str | None = None) -> None:
        super().__init__()
        self.lifetime = lifetime
        self.rotate = rotate
        self.client_id = client_id
        self.live: set[str] = set()
        self.spent: set[str] = set()
        self.access: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.bodies: list[dict[str, str]] = []
        self.revoke_on_reuse = False
        """Like OpenAI: a reused refresh token ends the whole login, every token of it refused."""

    def issue(self) -> tuple[str, str]:
        """A fresh (access, refresh) pair, as a CLI's own login would leave in its file."""
        with self.lock:
            access, refresh = f"at-{secrets.token_urlsafe(16)}", f"rt-{secrets.token_urlsafe(16)}"
            self.access.add(access)
            self.live.add(refresh)
            return access, refresh

    def redeem(self, refresh_token: str) -> tuple[str, str]:
        """A client of the server (a simulated CLI) refreshes directly: (access, refresh)."""
        with self.lock:
            if refresh_token in self.spent:
                self.counts["reused"] += 1
                raise AssertionError("the simulated CLI redeemed a spent refresh token")
            assert refresh_token in self.live, "the simulated CLI holds a refresh token the server never issued"
            self.counts["refreshed"] += 1
            self.live.discard(refresh_token)
            self.spent.add(refresh_token)
            access, fresh = f"at-{secrets.token_urlsafe(16)}", f"rt-{secrets.token_urlsafe(16)}"
            self.access.add(access)
            self.live.add(fresh)
            return access, fresh

    def handle(self, request: Request) -> Response:
        if request.path not in self.token_paths or request.method != "POST":
            return _json({"error": "not_found"}, 404)
        body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        if not isinstance(body, dict):
            return _json({"error": "invalid_request"}, 400)
        self.bodies.append({k: str(v) for k, v in body.items()})
        if body.get("grant_type") != "refresh_token":
            return _json({"error": "unsupported_grant_type"}, 400)
        if self.client_id is not None and body.get("client_id") != self.client_id:
            return _json({"error": "invalid_client"}, 401)
        token = str(body.get("refresh_token", ""))
        if token in self.spent:
            self.counts["reused"] += 1
            if self.revoke_on_reuse:
                self.live.clear()
                self.access.clear()
            return _json({"error": "invalid_grant", "error_description": "refresh token already used"}, 400)
        if token not in self.live:
            self.counts["unknown"] += 1
            return _json({"error": "invalid_grant"}, 400)
        self.counts["refreshed"] += 1
        access = f"at-{secrets.token_urlsafe(16)}"
        self.access.add(access)
        answer: dict[str, object] = {"access_token": access, "token_type": "Bearer", "expires_in": self.lifetime}
        if self.rotate:
            self.live.discard(token)
            self.spent.add(token)
            fresh = f"rt-{secrets.token_urlsafe(16)}"
            self.live.add(fresh)
            answer["refresh_token"] = fresh
        return _json(answer, 200)


def _json(body: object, status: int) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
