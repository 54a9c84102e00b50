"""A fake of Qwen's OAuth server (chat.qwen.ai) on loopback.

Written from ../shared/providers.md (qwen), providers-reference.md §3, RFC 8628 and RFC 7636:

- ``POST /api/v1/oauth2/device/code`` (form): ``client_id``, ``scope``, ``code_challenge`` and
  ``code_challenge_method=S256`` are required, and an ``x-request-id`` header holding a UUID,
  as Qwen Code sends one (``qwenOAuth2.ts``); 400 ``invalid_request`` otherwise. Answer:
  ``device_code``, ``user_code``, ``verification_uri``, ``verification_uri_complete``,
  ``expires_in``, and ``interval`` only when the ``interval`` knob is set (Qwen sends none).
- ``POST /api/v1/oauth2/token`` (form):
  - device grant: ``client_id``, ``device_code`` and a ``code_verifier`` whose S256 is the
    challenge (400 ``invalid_grant`` otherwise). Until approval, HTTP 400
    ``authorization_pending``; answers queued with ``answer_polls`` come first (``slow_down``
    is sent with HTTP 429, as Qwen does); an expired code gets HTTP 401 ``expired_token``; a
    denied one 400 ``access_denied``. Success: ``access_token``, ``refresh_token``,
    ``token_type``, ``expires_in``, ``scope`` and ``resource_url``.
  - refresh: ``client_id``, ``refresh_token`` (rotated when ``rotate_refresh_tokens``); an
    unknown or used one gets 400 ``invalid_grant``. ``resource_url`` is whatever the knob holds
    now, so a test can move the API host between login and refresh.
- The firewall: a request whose User-Agent is missing or a default library one gets an HTML
  page with HTTP 200, and with ``waf`` set every request does.
- ``refuse(status, error, description)``: the token endpoint answers that error from now on,
  as the server may do since the free tier ended on 2026-04-15.

``qwen_code_api_headers()`` is what Qwen Code 0.24.4 sends to the API with an OAuth token
(``dashscope.ts`` ``buildHeaders``), for fakes of the API to require.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from broker.providers.qwen import CLIENT_ID
from broker.providers.wire import platform_facts
from werkzeug.wrappers import Request, Response

from tests.fakes.loopback import LoopbackServer

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
WAF_PAGE = (
    "<!DOCTYPE html><html><head><title>Access denied</title></head>"
    "<body><p>Sorry, your request has been blocked as it may cause potential threats to the server.</p></body></html>"
)
LIBRARY_AGENTS = ("python-requests", "python-urllib", "python/", "aiohttp", "go-http-client", "node-fetch", "axios")
RECORDED_HEADERS = ("User-Agent", "Accept", "Content-Type", "X-Request-Id")


def qwen_code_api_headers() -> dict[str, str]:
    facts = platform_facts()
    agent = f"QwenCode/0.24.4 ({facts['node_platform']}; {facts['node_arch']})"
    return {
        "User-Agent": agent,
        "X-DashScope-CacheControl": "enable",
        "X-DashScope-UserAgent": agent,
        "X-DashScope-AuthType": "qwen-oauth",
    }


@dataclass
class _Device:
    device_code: str
    user_code: str
    challenge: str
    approved: bool | None = None
    expired: bool = False


class FakeQwen(LoopbackServer):
    def __init__(self, *, interval: float | None = 0.05, access_token_lifetime: int = 3600) -> None:
        super().__init__()
        self.client_id = CLIENT_ID
        self.interval = interval
        self.access_token_lifetime = access_token_lifetime
        self.resource_url: str | None = "portal.qwen.ai"
        self.rotate_refresh_tokens = True
        self.approve_all = False
        self.waf = False
        self.requests: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        """(method, path, headers, form) of every request."""
        self.grant_counts: Counter[str] = Counter()
        self._devices: dict[str, _Device] = {}
        self._scripted: deque[str] = deque()
        self._refusal: tuple[int, dict[str, str]] | None = None
        self._access: set[str] = set()
        self._refresh: dict[str, bool] = {}
        """refresh token -> still usable"""

    # -- knobs -------------------------------------------------------------------------------

    def approve(self, user_code: str) -> None:
        with self.lock:
            self._device(user_code).approved = True

    def deny(self, user_code: str) -> None:
        with self.lock:
            self._device(user_code).approved = False

    def expire(self, user_code: str) -> None:
        with self.lock:
            self._device(user_code).expired = True

    def answer_polls(self, *errors: str) -> None:
        """The next device-grant polls get these errors, in order, whatever the user did."""
        with self.lock:
            self._scripted.extend(errors)

    def refuse(self, status: int, error: str, description: str) -> None:
        with self.lock:
            self._refusal = (status, {"error": error, "error_description": description})

    def valid_access_token(self, token: str) -> bool:
        with self.lock:
            return token in self._access

    def valid_refresh_token(self, token: str) -> bool:
        with self.lock:
            return self._refresh.get(token, False)

    def _device(self, user_code: str) -> _Device:
        return next(d for d in self._devices.values() if d.user_code == user_code)

    # -- HTTP -------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        form = request.form.to_dict()
        headers = {k: v for k, v in request.headers.items() if k in RECORDED_HEADERS}
        self.requests.append((request.method, request.path, headers, form))
        agent = request.headers.get("User-Agent", "").lower()
        if self.waf or not agent or agent.startswith(LIBRARY_AGENTS):
            return Response(WAF_PAGE, status=200, mimetype="text/html")
        if request.method != "POST" or request.mimetype != "application/x-www-form-urlencoded":
            return _json(404, {"error": "not_found"})
        if request.path == "/api/v1/oauth2/device/code":
            if not _is_uuid(request.headers.get("X-Request-Id", "")):
                return _json(400, {"error": "invalid_request", "error_description": "x-request-id is required"})
            return self._device_code(form)
        if request.path == "/api/v1/oauth2/token":
            return self._token(form)
        return _json(404, {"error": "not_found"})

    def _device_code(self, form: dict[str, str]) -> Response:
        if form.get("client_id") != self.client_id:
            return _json(400, {"error": "invalid_client", "error_description": "unknown client"})
        if form.get("code_challenge_method") != "S256" or not form.get("code_challenge"):
            return _json(400, {"error": "invalid_request", "error_description": "code_challenge (S256) is required"})
        if not form.get("scope"):
            return _json(400, {"error": "invalid_request", "error_description": "scope is required"})
        device = _Device(secrets.token_urlsafe(32), secrets.token_hex(4).upper(), form["code_challenge"])
        self._devices[device.device_code] = device
        answer: dict[str, Any] = {
            "device_code": device.device_code,
            "user_code": device.user_code,
            "verification_uri": f"{self.url}/authorize",
            "verification_uri_complete": f"{self.url}/authorize?user_code={device.user_code}&client=qwen-code",
            "expires_in": 600,
        }
        if self.interval is not None:
            answer["interval"] = self.interval
        return _json(200, answer)

    def _token(self, form: dict[str, str]) -> Response:
        grant = form.get("grant_type", "")
        self.grant_counts[grant] += 1
        if self._refusal is not None:
            return _json(*self._refusal)
        if form.get("client_id") != self.client_id:
            return _json(400, {"error": "invalid_client", "error_description": "unknown client"})
        if grant == DEVICE_GRANT:
            return self._device_grant(form)
        if grant == "refresh_token":
            return self._refresh_grant(form)
        return _json(400, {"error": "unsupported_grant_type"})

    def _device_grant(self, form: dict[str, str]) -> Response:
        device = self._devices.get(form.get("device_code", ""))
        if device is None:
            return _json(400, {"error": "invalid_grant", "error_description": "unknown device code"})
        if create_s256_code_challenge(form.get("code_verifier", "")) != device.challenge:
            return _json(400, {"error": "invalid_grant", "error_description": "code_verifier does not match"})
        if self._scripted:
            error = self._scripted.popleft()
            return _json(429 if error == "slow_down" else 400, {"error": error, "error_description": error})
        if device.expired:
            return _json(401, {"error": "expired_token", "error_description": "the device code expired"})
        if device.approved is False:
            return _json(400, {"error": "access_denied", "error_description": "the user denied the request"})
        if not (device.approved or self.approve_all):
            return _json(400, {"error": "authorization_pending", "error_description": "waiting for the user"})
        del self._devices[device.device_code]
        return _json(200, self._issue())

    def _refresh_grant(self, form: dict[str, str]) -> Response:
        token = form.get("refresh_token", "")
        if not self._refresh.get(token):
            return _json(400, {"error": "invalid_grant", "error_description": "refresh token is invalid or expired"})
        answer = self._issue(keep_refresh=None if self.rotate_refresh_tokens else token)
        if self.rotate_refresh_tokens:
            self._refresh[token] = False
        return _json(200, answer)

    def _issue(self, keep_refresh: str | None = None) -> dict[str, Any]:
        access = "qwen-at-" + secrets.token_urlsafe(24)
        self._access.add(access)
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "scope": "openid profile email model.completion",
        }
        if keep_refresh is None:
            refresh = "qwen-rt-" + secrets.token_urlsafe(24)
            self._refresh[refresh] = True
            answer["refresh_token"] = refresh
        if self.resource_url is not None:
            answer["resource_url"] = self.resource_url
        return answer


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
