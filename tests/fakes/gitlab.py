"""A loopback fake of the GitLab REST endpoints a GitLab Duo client uses with a PAT.

Written from GitLab's REST documentation (``api/code_suggestions``, ``api/users``) and
providers.md:

- Tokens go in ``Authorization: Bearer`` or ``PRIVATE-TOKEN``. An unknown or revoked one is
  401 ``{"message": "401 Unauthorized"}``; one without a scope the endpoint allows is 403
  ``{"error": "insufficient_scope", "error_description", "scope"}`` (GitLab's OAuth-style body).
- ``GET /api/v4/user`` (scopes ``api``, ``read_api``, ``read_user``): the token's user.
- ``POST /api/v4/code_suggestions/direct_access`` (scopes ``api``, ``ai_features``): 201
  ``{base_url, token, expires_at, headers{X-Gitlab-*}}``; 403 ``{"message": "403 Forbidden"}``
  for a user without Duo; 429 after ``rate_limit`` calls per user in ``rate_window``
  seconds (10 per 5 minutes, as documented).
- ``POST /api/v4/ai/third_party_agents/direct_access`` (same scopes, JSON body): 201
  ``{token, expires_at, headers}`` whose headers include an ``x-api-key`` clients must drop.
  A body without ``{"feature_flags": {"DuoAgentPlatformNext": true}}``, which GitLab's own
  AI provider package sends (gitlab-ai-provider ``createAgenticChatModel``), is a 400: not
  reported of the real instance; the fake holds broker to the official client's body.

``refuse_pats_at_direct_access`` makes both exchanges answer 401 to a PAT that ``/user``
accepts, the way an instance that takes only OAuth tokens there would (unverified).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request

from tests.fakes.loopback import ServedOnLoopback

USER_SCOPES = frozenset({"api", "read_api", "read_user"})
AI_SCOPES = frozenset({"api", "ai_features"})


@dataclass
class Pat:
    user: str
    scopes: frozenset[str]
    revoked: bool = False


@dataclass
class Exchange:
    """One direct-access answer the fake gave."""

    path: str
    user: str
    token: str
    expires_at: int
    body: Any
    user_agent: str = ""


@dataclass
class FakeGitLab(ServedOnLoopback):
    now: Callable[[], float] = time.time
    token_lifetime: int = 3600
    gateway_url: str = "https://cloud.gitlab.com/ai"
    rate_limit: int = 10
    rate_window: float = 300.0
    refuse_pats_at_direct_access: bool = False
    exchanges: list[Exchange] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _pats: dict[str, Pat] = field(default_factory=dict)
    _no_duo: set[str] = field(default_factory=set)
    _calls: dict[str, list[float]] = field(default_factory=dict)
    _instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- knobs and observations ------------------------------------------------------------------

    def add_pat(self, user: str, scopes: tuple[str, ...] = ("api",)) -> str:
        token = "glpat-" + secrets.token_urlsafe(15)
        with self._lock:
            self._pats[token] = Pat(user, frozenset(scopes))
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._pats[token].revoked = True

    def set_duo(self, user: str, enabled: bool) -> None:
        with self._lock:
            (self._no_duo.discard if enabled else self._no_duo.add)(user)

    def exchanges_at(self, path: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.path == path]

    def valid_gateway_token(self, token: str) -> bool:
        with self._lock:
            return any(e.token == token and e.expires_at > self.now() for e in self.exchanges)

    # -- HTTP ------------------------------------------------------------------------------------

    def _authenticate(self, allowed: frozenset[str]) -> tuple[Pat | None, Response | None]:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else request.headers.get("PRIVATE-TOKEN", "")
        pat = self._pats.get(token.strip())
        if pat is None or pat.revoked:
            return None, _json({"message": "401 Unauthorized"}, 401)
        if not pat.scopes & allowed:
            body = {
                "error": "insufficient_scope",
                "error_description": "The request requires higher privileges than provided by the access token.",
                "scope": " ".join(sorted(allowed)),
            }
            response = _json(body, 403)
            response.headers["WWW-Authenticate"] = 'Bearer realm="Protected by OAuth 2.0", error="insufficient_scope"'
            return None, response
        return pat, None

    def _rate_limited(self, user: str) -> bool:
        now = self.now()
        calls = [t for t in self._calls.get(user, []) if now - t < self.rate_window]
        calls.append(now)
        self._calls[user] = calls
        return len(calls) > self.rate_limit

    def _exchange(self, *, agents: bool) -> Response:
        with self._lock:
            pat, refused = self._authenticate(AI_SCOPES)
            if refused is not None or pat is None:
                return refused or _json({"message": "401 Unauthorized"}, 401)
            if self.refuse_pats_at_direct_access:
                return _json({"message": "401 Unauthorized"}, 401)
            if self._rate_limited(pat.user):
                message = {"error": "This endpoint has been requested too many times. Try again later."}
                return _json({"message": message}, 429)
            if pat.user in self._no_duo:
                return _json({"message": "403 Forbidden"}, 403)
            body = request.get_json(silent=True) if agents else None
            if agents and not isinstance(body, dict):
                return _json({"error": "body is invalid"}, 400)
            if agents and (body.get("feature_flags") or {}).get("DuoAgentPlatformNext") is not True:
                return _json({"error": "feature_flags.DuoAgentPlatformNext is missing"}, 400)
            expires_at = int(self.now()) + self.token_lifetime
            token = secrets.token_urlsafe(32)
            agent = request.headers.get("User-Agent", "")
            self.exchanges.append(Exchange(request.path, pat.user, token, expires_at, body, agent))
            headers = {
                "X-Gitlab-Instance-Id": self._instance_id,
                "X-Gitlab-Realm": "saas",
                "X-Gitlab-Global-User-Id": f"global-{pat.user}",
                "X-Gitlab-Host-Name": request.host.split(":")[0],
            }
            if agents:
                answer: dict[str, Any] = {
                    "token": token,
                    "expires_at": expires_at,
                    "headers": {**{k.lower(): v for k, v in headers.items()}, "x-api-key": "gateway-internal"},
                }
            else:
                answer = {"base_url": self.gateway_url, "token": token, "expires_at": expires_at, "headers": headers}
        return _json(answer, 201)

    def wsgi_app(self) -> Flask:
        app = Flask(__name__)

        @app.before_request
        def record() -> None:
            with self._lock:
                self.requests.append((request.method, request.path))

        @app.get("/api/v4/user")
        def user() -> Response:
            with self._lock:
                pat, refused = self._authenticate(USER_SCOPES)
            if refused is not None or pat is None:
                return refused or _json({"message": "401 Unauthorized"}, 401)
            return _json({"id": abs(hash(pat.user)) % 10**6, "username": pat.user, "name": pat.user.title()}, 200)

        @app.post("/api/v4/code_suggestions/direct_access")
        def direct_access() -> Response:
            return self._exchange(agents=False)

        @app.post("/api/v4/ai/third_party_agents/direct_access")
        def agents_direct_access() -> Response:
            return self._exchange(agents=True)

        return app


def _json(body: dict[str, Any], status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response
