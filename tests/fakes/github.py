"""A loopback fake of GitHub's device flow, its REST ``/user`` and Copilot's token endpoint.

Written from GitHub's device-flow documentation, RFC 8628 and providers.md:

- ``POST /login/device/code`` (form ``client_id``, ``scope``): ``device_code``, ``user_code``,
  ``verification_uri``, ``expires_in``, ``interval``; JSON when ``Accept`` asks for it,
  form-encoded otherwise, as GitHub does.
- ``POST /login/oauth/access_token`` (``client_id``, ``device_code``, ``grant_type``): every
  error is HTTP 200 with an ``error`` field: ``authorization_pending``, ``slow_down`` (the
  interval grows by 5 s and the body carries the new ``interval``), ``expired_token``,
  ``access_denied``, ``incorrect_device_code``, ``incorrect_client_credentials``,
  ``unsupported_grant_type``. A poll sooner than the interval after the previous one is
  ``slow_down``. Success: ``ghu_`` tokens for GitHub App ids (``Iv1.``/``Iv23``), ``gho_``
  for OAuth apps, ``token_type`` ``bearer``, no ``expires_in``; a code is redeemed once.
- ``GET /user`` with ``Authorization: token|Bearer``: ``{"login", "id"}``, or 401 Bad credentials.
- ``GET /copilot_internal/v2/token``: ``{token, expires_at, refresh_in, endpoints{api}, sku}``;
  401 for an unknown or revoked GitHub token; 403 with ``error_details`` for a user without
  Copilot.
- As GitHub's REST API documents for every request: 403 without a ``User-Agent``, 400 for
  an ``X-GitHub-Api-Version`` it does not know.

``EXCHANGE_HEADERS`` and ``API_HEADERS`` are what VS Code Copilot Chat 0.38.0 sends on the
token exchange and on Copilot API calls (``copilotTokenManager.ts``, ``networking.ts``).

Every request is recorded with its ``Host``: reached as an HTTP proxy, the fake serves any
host name, so a test can tell ``ghe.example.test`` from ``api.ghe.example.test``. Time comes
from ``now`` (a FakeClock's in tests that move time by hand).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, request
from werkzeug.datastructures import Headers

from tests.fakes.loopback import ServedOnLoopback

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5.0
POLL_TOLERANCE = 0.01
"""A poll this much early is still on time: the client's timer may fire a hair before."""
DOCS = "https://docs.github.com/developers/apps/authorizing-oauth-apps#error-codes-for-the-device-flow"
API_VERSIONS = frozenset({"2022-11-28", "2025-04-01", "2025-05-01"})
VSCODE_CHAT = {
    "Editor-Version": "vscode/1.109.0",
    "Editor-Plugin-Version": "copilot-chat/0.38.0",
    "User-Agent": "GitHubCopilotChat/0.38.0",
}
EXCHANGE_HEADERS = {**VSCODE_CHAT, "X-GitHub-Api-Version": "2025-04-01"}
API_HEADERS = {
    "Copilot-Integration-Id": "vscode-chat",
    **VSCODE_CHAT,
    "OpenAI-Intent": "conversation-panel",
    "X-GitHub-Api-Version": "2025-05-01",
}


@dataclass
class DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    interval: float
    last_poll: float | None = None
    polls: int = 0
    decision: tuple[str | None, bool] | None = None


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    host: str
    path: str
    headers: Headers
    """Case-insensitive, as HTTP header names are."""
    form: dict[str, str]
    at: float


@dataclass
class CopilotToken:
    user: str
    github_token: str
    expires_at: float


@dataclass
class Poll:
    at: float
    answer: str
    interval: float


@dataclass
class FakeGitHub(ServedOnLoopback):
    now: Callable[[], float] = time.time
    device_interval: float = 0.05
    device_code_lifetime: int = 900
    copilot_lifetime: int = 1800
    copilot_refresh_in: int = 1500
    copilot_api: str = "https://api.individual.githubcopilot.com"
    user: str = "octocat"
    requests: list[Seen] = field(default_factory=list)
    polls: list[Poll] = field(default_factory=list)
    copilot_tokens: dict[str, CopilotToken] = field(default_factory=dict)
    _devices: dict[str, DeviceCode] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)
    """GitHub token -> user."""
    _no_copilot: set[str] = field(default_factory=set)
    _force_slow_down: int = 0
    _slow_down_step: float = SLOW_DOWN_STEP
    _approve_on_poll: tuple[int, str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- knobs (thread-safe) -----------------------------------------------------------------

    def approve(self, user_code: str, user: str | None = None) -> None:
        with self._lock:
            self._device_by_user_code(user_code).decision = (user or self.user, True)

    def deny(self, user_code: str) -> None:
        with self._lock:
            self._device_by_user_code(user_code).decision = (None, False)

    def expire(self, user_code: str) -> None:
        with self._lock:
            self._device_by_user_code(user_code).expires_at = float("-inf")

    def approve_on_poll(self, poll: int, user: str | None = None) -> None:
        """The user approves just before the ``poll``-th poll of the next device code is answered."""
        with self._lock:
            self._approve_on_poll = (poll, user or self.user)

    def slow_down_next(self, count: int = 1, *, step: float = SLOW_DOWN_STEP) -> None:
        """Answer the next ``count`` polls with ``slow_down``, as GitHub does when it deems them too fast.

        ``step``: how much the interval grows each time; GitHub documents 5 s, and its
        body's ``interval`` is the authority where the two differ.
        """
        with self._lock:
            self._force_slow_down += count
            self._slow_down_step = step

    def revoke(self, user: str) -> None:
        """The user revokes the app: every GitHub token of theirs stops working."""
        with self._lock:
            for token in [t for t, u in self._tokens.items() if u == user]:
                del self._tokens[token]

    def set_copilot(self, user: str, enabled: bool) -> None:
        with self._lock:
            (self._no_copilot.discard if enabled else self._no_copilot.add)(user)

    # -- observations --------------------------------------------------------------------------

    def seen(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def github_tokens(self, user: str) -> list[str]:
        with self._lock:
            return [t for t, u in self._tokens.items() if u == user]

    def copilot_token(self, token: str) -> CopilotToken | None:
        """The record of a Copilot token this fake issued and that has not expired."""
        with self._lock:
            record = self.copilot_tokens.get(token)
            return record if record is not None and record.expires_at > self.now() else None

    # -- HTTP ------------------------------------------------------------------------------------

    def _device_by_user_code(self, user_code: str) -> DeviceCode:
        return next(d for d in self._devices.values() if d.user_code == user_code)

    def _user_of(self, authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            return None
        return self._tokens.get(token.strip())

    def _answer(self, body: dict[str, Any], status: int = 200) -> Response:
        """JSON when the client accepts it, else form-encoded: GitHub's content negotiation."""
        if "application/json" in request.headers.get("Accept", ""):
            response = jsonify(body)
            response.status_code = status
            return response
        return Response(urlencode(body), status=status, mimetype="application/x-www-form-urlencoded")

    def _error(self, error: str, description: str, **more: Any) -> Response:
        return self._answer({"error": error, "error_description": description, "error_uri": DOCS, **more})

    def wsgi_app(self) -> Flask:
        app = Flask(__name__)
        lock = self._lock

        @app.before_request
        def record() -> Response | None:
            with lock:
                self.requests.append(
                    Seen(
                        request.method,
                        request.host,
                        request.path,
                        Headers(request.headers),
                        request.form.to_dict(),
                        self.now(),
                    )
                )
            return _rest_rules()

        @app.post("/login/device/code")
        def device_code() -> Response:
            client_id = request.form.get("client_id", "")
            if not client_id:
                return self._answer({"error": "Not Found"}, 404)
            with lock:
                code = DeviceCode(
                    device_code=secrets.token_hex(20),
                    user_code=f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}",
                    client_id=client_id,
                    scope=request.form.get("scope", ""),
                    expires_at=self.now() + self.device_code_lifetime,
                    interval=self.device_interval,
                )
                self._devices[code.device_code] = code
            return self._answer(
                {
                    "device_code": code.device_code,
                    "user_code": code.user_code,
                    "verification_uri": f"{request.host_url}login/device",
                    "expires_in": self.device_code_lifetime,
                    "interval": self.device_interval,
                }
            )

        @app.post("/login/oauth/access_token")
        def access_token() -> Response:
            form = request.form
            with lock:
                code = self._devices.get(form.get("device_code", ""))
                if form.get("grant_type") != DEVICE_GRANT:
                    return self._error("unsupported_grant_type", "The grant type is not supported.")
                if code is None:
                    return self._error("incorrect_device_code", "The device_code provided is not valid.")
                if form.get("client_id") != code.client_id:
                    return self._error("incorrect_client_credentials", "The client_id is not valid.")
                answer = self._poll(code)
                self.polls.append(Poll(self.now(), str(answer.get("error", "access_token")), code.interval))
                return self._answer(answer)

        @app.get("/user")
        def user() -> Response:
            with lock:
                login = self._user_of(request.headers.get("Authorization", ""))
            if login is None:
                return _bad_credentials()
            return jsonify({"login": login, "id": abs(hash(login)) % 10**8, "type": "User"})

        @app.get("/copilot_internal/v2/token")
        def copilot_token() -> Response:
            with lock:
                authorization = request.headers.get("Authorization", "")
                login = self._user_of(authorization)
                if login is None:
                    return _bad_credentials()
                if login in self._no_copilot:
                    message = f"No access to GitHub Copilot found. You are currently logged in as {login}."
                    response = jsonify(
                        {
                            "error_details": {
                                "url": "https://github.com/features/copilot",
                                "message": message,
                                "title": "Copilot access",
                                "notification_id": "no_copilot_access",
                            },
                            "message": message,
                        }
                    )
                    response.status_code = 403
                    return response
                now = self.now()
                expires_at = int(now) + self.copilot_lifetime
                sku = "copilot_for_individuals"
                token = f"tid={secrets.token_hex(16)};exp={expires_at};sku={sku};chat=1:{secrets.token_hex(32)}"
                self.copilot_tokens[token] = CopilotToken(login, authorization.split(" ", 1)[1], expires_at)
            return jsonify(
                {
                    "token": token,
                    "expires_at": expires_at,
                    "refresh_in": self.copilot_refresh_in,
                    "endpoints": {"api": self.copilot_api, "proxy": "https://proxy.individual.githubcopilot.com"},
                    "sku": sku,
                    "chat_enabled": True,
                }
            )

        return app

    def _poll(self, code: DeviceCode) -> dict[str, Any]:
        """One poll of a device code (the lock is held): RFC 8628 §3.5 with GitHub's codes."""
        now = self.now()
        code.polls += 1
        too_soon = code.last_poll is not None and now - code.last_poll < code.interval - POLL_TOLERANCE
        code.last_poll = now
        if self._approve_on_poll is not None and code.polls >= self._approve_on_poll[0]:
            code.decision = (self._approve_on_poll[1], True)
            self._approve_on_poll = None
        if now >= code.expires_at:
            return {"error": "expired_token", "error_description": "The device_code has expired.", "error_uri": DOCS}
        if too_soon or self._force_slow_down:
            step = self._slow_down_step if self._force_slow_down else SLOW_DOWN_STEP
            self._force_slow_down = max(0, self._force_slow_down - 1)
            code.interval += step
            return {
                "error": "slow_down",
                "error_description": "Too many requests have been made in the same timeframe.",
                "error_uri": DOCS,
                "interval": code.interval,
            }
        if code.decision is None:
            return {
                "error": "authorization_pending",
                "error_description": "The authorization request is still pending.",
                "error_uri": DOCS,
            }
        user, approved = code.decision
        if not approved or user is None:
            return {
                "error": "access_denied",
                "error_description": "The authorization request was denied.",
                "error_uri": DOCS,
            }
        del self._devices[code.device_code]
        prefix = "ghu_" if code.client_id.startswith(("Iv1.", "Iv23")) else "gho_"
        token = prefix + secrets.token_urlsafe(27)
        self._tokens[token] = user
        return {"access_token": token, "token_type": "bearer", "scope": code.scope}


def _rest_rules() -> Response | None:
    """What GitHub's REST API refuses before it looks at a request."""
    if not request.headers.get("User-Agent"):
        message = (
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header "
            "(https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required)."
        )
        return Response(message, status=403, mimetype="text/plain")
    version = request.headers.get("X-GitHub-Api-Version")
    if version is not None and version not in API_VERSIONS:
        response = jsonify(
            {
                "message": f"Unsupported 'X-GitHub-Api-Version' header: {version}",
                "documentation_url": "https://docs.github.com/rest/overview/api-versions",
            }
        )
        response.status_code = 400
        return response
    return None


def _bad_credentials() -> Response:
    response = jsonify({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
    response.status_code = 401
    return response
