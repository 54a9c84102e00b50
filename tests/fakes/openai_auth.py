"""A fake of OpenAI's sign-in server (auth.openai.com) as Codex meets it, on loopback.

Written from ../shared/providers.md (codex), providers-reference.md §2, RFC 6749/7636 and
the official client (openai/codex ``codex-rs/login``: ``server.rs``, ``auth/manager.rs``,
``auth/default_client.rs``); it refuses what the real service refuses or is reported to:

- ``GET /oauth/authorize`` (RFC 6749 §4.1.1, RFC 7636 §4.3): ``response_type=code``, the
  client id, a redirect URI on the allow-list (``http://localhost:PORT/auth/callback`` for the
  registered ports only; anything else is a 400 page, never a redirect), an S256 challenge,
  ``state``, and an ``originator`` on the client's allow-list (a missing or unlisted one is
  a 400 ``missing_required_parameter`` page, as auth.openai.com is reported to answer). The
  signed-in ``user`` approves: 302 to the redirect URI with ``code`` and ``state``; with
  ``deny_authorizations``, ``error=access_denied`` and ``state``.
- ``POST /oauth/token``:
  - ``authorization_code`` (form-encoded): single-use code, same redirect URI, same client,
    ``code_verifier`` whose S256 is the challenge; errors are RFC 6749 §5.2 (``invalid_grant``).
  - ``refresh_token``: JSON only (a form body is a 400), sent with Codex's identifying headers
    (``originator`` on the allow-list and a ``User-Agent`` starting ``<originator>/``;
    without them Cloudflare's 403 page, as reported from server IPs). Refresh tokens are
    single-use. Redeeming one returns a new id, access and refresh token; redeeming a used
    one gets ``reuse_answer`` (by default HTTP 401 ``{"error": {"code":
    "refresh_token_reused", ...}}``) and revokes the whole chain: its newest token then gets
    ``refresh_token_invalidated``. ``error_shape`` picks which of the three shapes Codex reads
    every refresh error comes in: ``object`` ``{"error": {"code"}}``, ``string`` ``{"error":
    "..."}`` or ``code`` (a top-level ``{"code": ...}``).
  - The answer has ``id_token``, ``access_token``, ``refresh_token`` and no ``expires_in``
    unless ``send_expires_in``: the expiry is the access token's ``exp``.
- Device login (not RFC 8628): ``POST /api/accounts/deviceauth/usercode`` JSON ``{client_id}``
  gives ``device_auth_id``, ``user_code`` and ``interval`` as a string (HTTP 404 when
  ``device_login_enabled`` is off); ``POST /api/accounts/deviceauth/token`` JSON
  ``{device_auth_id, user_code}`` answers 403 until ``approve_device``, then 200 with an
  ``authorization_code`` and the PKCE pair the server made, for redirect URI
  ``{issuer}/deviceauth/callback``. ``GET /codex/device`` is the page where the code is entered.
- Access and id tokens are HS256 JWTs carrying the ``https://api.openai.com/auth`` claim
  (``chatgpt_account_id``, ``chatgpt_plan_type``, ``chatgpt_user_id``) and ``email``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from broker.providers.codex import CLIENT_ID
from broker.providers.wire import platform_facts
from werkzeug.wrappers import Request, Response

from tests.fakes.llm_upstream import CLOUDFLARE_PAGE, CODEX_ORIGINATORS
from tests.fakes.loopback import LoopbackServer

ERROR_SHAPES = ("object", "string", "code")
CODEX_CLI_HEADERS = {"originator": "codex_cli_rs", "User-Agent": "codex_cli_rs/0.171.0 (Ubuntu 24.4.0; x86_64) xterm"}
"""What a Codex CLI in a terminal sends on its refresh (``default_client.rs``), for simulated CLIs."""


def codex_served_headers(account_id: str) -> dict[str, str]:
    """What broker must serve for Codex API calls: the CLI's identity, its version and the account."""
    facts = platform_facts()
    agent = f"codex_cli_rs/0.171.0 ({facts['os']} {facts['os_version']}; {facts['arch']}) unknown"
    return {"ChatGPT-Account-ID": account_id, "originator": "codex_cli_rs", "User-Agent": agent, "version": "0.171.0"}


REUSED = (
    401,
    {
        "error": {
            "message": "Your refresh token has already been used to generate a new access token. "
            "Please try signing in again.",
            "type": "invalid_request_error",
            "param": None,
            "code": "refresh_token_reused",
        }
    },
)
INVALIDATED = (
    401,
    {
        "error": {
            "message": "Your refresh token was revoked. Please try signing in again.",
            "type": "invalid_request_error",
            "param": None,
            "code": "refresh_token_invalidated",
        }
    },
)


@dataclass(frozen=True)
class ChatGPTUser:
    email: str
    account_id: str
    plan: str = "plus"
    user_id: str = field(default_factory=lambda: "user-" + secrets.token_hex(6))


ALICE = ChatGPTUser("alice@example.com", "acct-alice-0001")
BOB = ChatGPTUser("bob@example.com", "acct-bob-0002", plan="pro")


@dataclass
class _Code:
    user: ChatGPTUser
    redirect_uri: str
    challenge: str
    scope: str


@dataclass
class _Refresh:
    user: ChatGPTUser
    chain: str
    used: bool = False


@dataclass
class _Device:
    device_auth_id: str
    user_code: str
    user: ChatGPTUser | None = None


class FakeOpenAIAuth(LoopbackServer):
    def __init__(
        self,
        *,
        redirect_ports: tuple[int, ...] = (1455, 1457),
        access_token_lifetime: int = 3600,
        send_expires_in: bool = False,
        device_interval: str = "5",
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.client_id = CLIENT_ID
        self.redirect_ports = redirect_ports
        self.access_token_lifetime = access_token_lifetime
        self.send_expires_in = send_expires_in
        self.device_interval = device_interval
        self.now = now
        self.user = ALICE
        self.deny_authorizations = False
        self.device_login_enabled = True
        self.reuse_answer: tuple[int, dict[str, Any] | str] = REUSED
        """A str is sent as an HTML page (a proxy's or a firewall's)."""
        self.error_shape = "object"
        self.requests: list[tuple[str, str, str, dict[str, Any]]] = []
        """(method, path, content type, body or query) of every request."""
        self.request_headers: list[dict[str, str]] = []
        """The headers of every request, in the same order."""
        self.grant_counts: Counter[str] = Counter()
        self._key = secrets.token_bytes(32)
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._revoked_chains: set[str] = set()
        self._access: dict[str, float] = {}
        self._devices: dict[str, _Device] = {}

    # -- knobs -------------------------------------------------------------------------------

    def approve_device(self, user_code: str, user: ChatGPTUser | None = None) -> None:
        with self.lock:
            device = next(d for d in self._devices.values() if d.user_code == user_code)
            device.user = user or self.user

    def redeem(self, refresh_token: str) -> None:
        """Another client (the Codex CLI, say) redeems this refresh token first."""
        with self.lock:
            status, _ = self._refresh_grant(refresh_token)
            assert status == 200, "the token was not redeemable"

    def newest_refresh_token(self, user: ChatGPTUser) -> str:
        with self.lock:
            return [token for token, record in self._refresh.items() if record.user == user][-1]

    def refresh_token_state(self, token: str) -> str:
        """``live``, ``used``, ``revoked`` or ``unknown``."""
        with self.lock:
            record = self._refresh.get(token)
            if record is None:
                return "unknown"
            if record.chain in self._revoked_chains:
                return "revoked"
            return "used" if record.used else "live"

    def valid_access_token(self, token: str) -> bool:
        with self.lock:
            return self._access.get(token, 0.0) > self.now()

    # -- tokens --------------------------------------------------------------------------------

    def jwt(self, claims: dict[str, Any]) -> str:
        def part(value: dict[str, Any]) -> str:
            raw = json.dumps(value, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        signing_input = part({"alg": "HS256", "typ": "JWT"}) + "." + part(claims)
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()

    def _issue(self, user: ChatGPTUser, chain: str | None = None) -> dict[str, Any]:
        now = int(self.now())
        auth = {
            "chatgpt_account_id": user.account_id,
            "chatgpt_plan_type": user.plan,
            "chatgpt_user_id": user.user_id,
            "user_id": user.user_id,
        }
        access = self.jwt(
            {
                "iss": self.url,
                "aud": ["https://api.openai.com/v1"],
                "client_id": self.client_id,
                "iat": now,
                "exp": now + self.access_token_lifetime,
                "jti": secrets.token_hex(8),
                "scp": ["openid", "profile", "email", "offline_access"],
                "https://api.openai.com/auth": auth,
                "https://api.openai.com/profile": {"email": user.email, "email_verified": True},
            }
        )
        id_token = self.jwt(
            {
                "iss": self.url,
                "aud": [self.client_id],
                "sub": user.user_id,
                "iat": now,
                "exp": now + 3600,
                "email": user.email,
                "email_verified": True,
                "https://api.openai.com/auth": {**auth, "organizations": []},
            }
        )
        refresh = "rt_" + secrets.token_urlsafe(32)
        self._refresh[refresh] = _Refresh(user, chain or secrets.token_hex(8))
        self._access[access] = now + self.access_token_lifetime
        answer: dict[str, Any] = {
            "id_token": id_token,
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "scope": "openid profile email offline_access",
        }
        if self.send_expires_in:
            answer["expires_in"] = self.access_token_lifetime
        return answer

    # -- HTTP -------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        body: dict[str, Any]
        if request.mimetype == "application/json":
            body = request.get_json(silent=True) or {}
        elif request.method == "POST":
            body = request.form.to_dict()
        else:
            body = request.args.to_dict()
        self.requests.append((request.method, request.path, request.mimetype, body))
        self.request_headers.append(dict(request.headers))
        route = (request.method, request.path)
        if route == ("GET", "/oauth/authorize"):
            return self._authorize(body)
        if route == ("POST", "/oauth/token"):
            return self._token(request, body)
        if route == ("POST", "/api/accounts/deviceauth/usercode"):
            return self._usercode(request, body)
        if route == ("POST", "/api/accounts/deviceauth/token"):
            return self._device_poll(request, body)
        if route == ("GET", "/codex/device"):
            return Response("Enter the code shown in your terminal.\n", mimetype="text/plain")
        return _json(404, {"detail": "Not Found"})

    def _authorize(self, query: dict[str, Any]) -> Response:
        redirect_uri = query.get("redirect_uri", "")
        allowed = {f"http://localhost:{port}/auth/callback" for port in self.redirect_ports}
        if query.get("client_id") != self.client_id:
            return Response("unknown client", status=400, mimetype="text/plain")
        if query.get("originator") not in CODEX_ORIGINATORS:
            return _json(400, _error_object("missing_required_parameter", "Missing required parameter: 'originator'."))
        if redirect_uri not in allowed:
            return Response("redirect_uri is not registered for this client", status=400, mimetype="text/plain")
        state = query.get("state", "")

        def back(**params: str) -> Response:
            return Response(status=302, headers={"Location": f"{redirect_uri}?{urlencode({**params, 'state': state})}"})

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return back(error="invalid_request", error_description="PKCE with S256 is required")
        if self.deny_authorizations:
            return back(error="access_denied", error_description="the user declined")
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(self.user, redirect_uri, query["code_challenge"], query.get("scope", ""))
        return back(code=code, scope=query.get("scope", ""))

    def _token(self, request: Request, body: dict[str, Any]) -> Response:
        grant = str(body.get("grant_type", ""))
        self.grant_counts[grant] += 1
        if body.get("client_id") != self.client_id:
            return _json(401, {"error": "invalid_client", "error_description": "unknown client"})
        if grant == "authorization_code":
            if request.mimetype != "application/x-www-form-urlencoded":
                return _json(400, {"error": "invalid_request", "error_description": "form-encoded body expected"})
            return self._code_grant(body)
        if grant == "refresh_token":
            if request.mimetype != "application/json":
                return _json(400, _error_object("invalid_request", "The refresh request must be JSON."))
            originator = request.headers.get("originator", "")
            if originator not in CODEX_ORIGINATORS or not request.user_agent.string.startswith(originator + "/"):
                return Response(CLOUDFLARE_PAGE, status=403, mimetype="text/html")
            status, answer = self._refresh_grant(str(body.get("refresh_token", "")))
            if isinstance(answer, str):
                return Response(answer, status=status, mimetype="text/html")
            return _json(status, self._shaped(answer) if status >= 400 else answer)
        return _json(400, {"error": "unsupported_grant_type"})

    def _code_grant(self, body: dict[str, Any]) -> Response:
        code = self._codes.pop(str(body.get("code", "")), None)
        if code is None:
            return _json(400, {"error": "invalid_grant", "error_description": "unknown or used code"})
        if body.get("redirect_uri") != code.redirect_uri:
            return _json(400, {"error": "invalid_grant", "error_description": "redirect_uri does not match"})
        if create_s256_code_challenge(str(body.get("code_verifier", ""))) != code.challenge:
            return _json(400, {"error": "invalid_grant", "error_description": "code_verifier does not match"})
        return _json(200, self._issue(code.user))

    def _shaped(self, answer: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI error object in the ``error_shape`` this fake answers in."""
        error = answer.get("error")
        code = error.get("code") if isinstance(error, dict) else error
        if self.error_shape == "string":
            return {"error": code}
        if self.error_shape == "code":
            message = error.get("message") if isinstance(error, dict) else None
            return {"code": code, "message": message}
        return answer

    def _refresh_grant(self, token: str) -> tuple[int, dict[str, Any] | str]:
        record = self._refresh.get(token)
        if record is None:
            return 401, {"error": {"message": "Could not validate your token.", "code": "token_expired"}}
        if record.chain in self._revoked_chains:
            return INVALIDATED
        if record.used:
            self._revoked_chains.add(record.chain)
            return self.reuse_answer
        record.used = True
        return 200, self._issue(record.user, record.chain)

    def _usercode(self, request: Request, body: dict[str, Any]) -> Response:
        if not self.device_login_enabled:
            return _json(404, {"detail": "Not Found"})
        if request.mimetype != "application/json" or body.get("client_id") != self.client_id:
            return _json(400, {"error": {"message": "client_id is required", "code": "invalid_request"}})
        device = _Device(device_auth_id="deviceauth_" + secrets.token_hex(8), user_code=_user_code())
        self._devices[device.device_auth_id] = device
        return _json(
            200,
            {"device_auth_id": device.device_auth_id, "user_code": device.user_code, "interval": self.device_interval},
        )

    def _device_poll(self, request: Request, body: dict[str, Any]) -> Response:
        device = self._devices.get(str(body.get("device_auth_id", "")))
        if request.mimetype != "application/json" or device is None or body.get("user_code") != device.user_code:
            return _json(404, {"error": {"message": "Unknown device authorization", "code": "not_found"}})
        if device.user is None:
            return _json(403, {"error": {"message": "The user has not approved yet", "code": "authorization_pending"}})
        del self._devices[device.device_auth_id]
        verifier = secrets.token_urlsafe(48)
        challenge = create_s256_code_challenge(verifier)
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(device.user, f"{self.url}/deviceauth/callback", challenge, "")
        return _json(200, {"authorization_code": code, "code_challenge": challenge, "code_verifier": verifier})


def _error_object(code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _user_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    first, second = ("".join(secrets.choice(alphabet) for _ in range(n)) for n in (4, 5))
    return f"{first}-{second}"


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
