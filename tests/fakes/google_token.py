"""Google's OAuth 2.0 token endpoint (``https://oauth2.googleapis.com/token``) on loopback.

Two grants, as Google answers them:
- ``refresh_token`` (RFC 6749 §6): the client authenticates with ``client_id`` and
  ``client_secret`` (form body or HTTP Basic); the answer carries a new access token and
  **no** refresh token (Google does not rotate them); a refresh token minted for another
  client is ``unauthorized_client``, a revoked or unknown one ``invalid_grant``.
- ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (RFC 7523): the assertion is verified
  with the service account's public key (by ``kid``) using joserfc, an implementation
  independent of broker's, then ``iss``, ``aud``, ``scope``, ``iat`` and ``exp`` are checked.
Errors are RFC 6749 §5.2 bodies with Google's codes and descriptions.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, RSAKey
from werkzeug.wrappers import Request, Response

from tests.fakes.loopback import LoopbackServer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LIFETIME = 3599
MAX_ASSERTION_LIFETIME = 3600
CLOCK_SKEW = 300
SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)


@dataclass
class ServiceAccount:
    email: str
    keys: dict[str, RSAKey]
    """kid → public key."""


class GoogleTokenServer(LoopbackServer):
    def __init__(self, *, now: Callable[[], float] = time.time, lifetime: int = LIFETIME) -> None:
        super().__init__()
        self.now = now
        self.lifetime = lifetime
        self.clients: dict[str, str] = {}
        """client_id → client_secret."""
        self.refresh_tokens: dict[str, str] = {}
        """live refresh token → the client_id it was minted for."""
        self.accounts: dict[str, ServiceAccount] = {}
        self.access: dict[str, str] = {}
        """issued access token → who it was issued to (client_id or service account email)."""
        self.counts: Counter[str] = Counter()
        self.bodies: list[dict[str, str]] = []
        self.agents: list[str] = []
        """The User-Agent of each request in ``bodies``."""
        self.assertions: list[dict[str, Any]] = []
        """Header and claims of every assertion that verified."""
        self.checked: list[str] = []
        """The access token of each ``/tokeninfo`` request, in order (Gemini CLI checks its file's this way)."""

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def add_client(self, client_id: str, client_secret: str) -> None:
        with self.lock:
            self.clients[client_id] = client_secret

    def issue(self, client_id: str) -> tuple[str, str]:
        """An (access, refresh) pair as a sign-in with ``client_id`` would leave it."""
        with self.lock:
            access, refresh = f"ya29.{secrets.token_urlsafe(24)}", f"1//{secrets.token_urlsafe(24)}"
            self.access[access] = client_id
            self.refresh_tokens[refresh] = client_id
            return access, refresh

    def revoke(self, refresh_token: str) -> None:
        with self.lock:
            self.refresh_tokens.pop(refresh_token, None)

    def add_service_account(self, email: str, key_id: str, public_pem: bytes) -> None:
        with self.lock:
            account = self.accounts.setdefault(email, ServiceAccount(email, {}))
            account.keys[key_id] = RSAKey.import_key(public_pem)

    def handle(self, request: Request) -> Response:
        if request.path == "/tokeninfo":
            return self._token_info(request)
        if request.path != "/token" or request.method != "POST":
            return _error(404, "not_found", "Not Found")
        if request.mimetype != "application/x-www-form-urlencoded":
            return _error(400, "invalid_request", "Invalid request: expected a form body")
        form = request.form.to_dict()
        self.bodies.append(form)
        self.agents.append(request.user_agent.string)
        grant = form.get("grant_type", "")
        if grant == "refresh_token":
            return self._refresh(request, form)
        if grant == JWT_BEARER:
            return self._jwt_bearer(form)
        self.counts["unsupported"] += 1
        return _error(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")

    def _refresh(self, request: Request, form: dict[str, str]) -> Response:
        client_id, secret = _client_credentials(request, form)
        if not client_id:
            return _error(400, "invalid_request", "Could not determine client ID from request.")
        if client_id not in self.clients:
            self.counts["bad_client"] += 1
            return _error(401, "invalid_client", "The OAuth client was not found.")
        if secret != self.clients[client_id]:
            self.counts["bad_client"] += 1
            return _error(401, "invalid_client", "Unauthorized")
        token = form.get("refresh_token")
        if not token:
            return _error(400, "invalid_request", "Missing required parameter: refresh_token")
        owner = self.refresh_tokens.get(token)
        if owner is None:
            self.counts["invalid_grant"] += 1
            return _error(400, "invalid_grant", "Token has been expired or revoked.")
        if owner != client_id:
            self.counts["unauthorized_client"] += 1
            return _error(400, "unauthorized_client", "Unauthorized")
        self.counts["refreshed"] += 1
        access = f"ya29.{secrets.token_urlsafe(24)}"
        self.access[access] = client_id
        return _ok(
            {
                "access_token": access,
                "expires_in": self.lifetime,
                "scope": "https://www.googleapis.com/auth/cloud-platform openid",
                "token_type": "Bearer",
                "id_token": _unsigned_id_token(client_id, self.now()),
            }
        )

    def _token_info(self, request: Request) -> Response:
        """``/tokeninfo`` as google-auth-library's ``getTokenInfo`` calls it: the token as a bearer or a field."""
        bearer = request.headers.get("Authorization", "")
        token = (
            bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else request.values.get("access_token", "")
        )
        self.checked.append(token)
        client_id = self.access.get(token)
        if client_id is None:
            return _error(400, "invalid_token", "Invalid Value")
        return _ok(
            {
                "azp": client_id,
                "aud": client_id,
                "scope": "https://www.googleapis.com/auth/cloud-platform",
                "expires_in": self.lifetime,
                "access_type": "offline",
            }
        )

    def _jwt_bearer(self, form: dict[str, str]) -> Response:
        assertion = form.get("assertion")
        if not assertion:
            return _error(400, "invalid_request", "Missing required parameter: assertion")
        signer: dict[str, ServiceAccount] = {}

        def key_for(guest: GuestProtocol) -> RSAKey:
            kid = guest.headers().get("kid")
            for account in self.accounts.values():
                if kid in account.keys:
                    signer["account"] = account
                    return account.keys[kid]
            raise LookupError(kid)

        try:
            token = jwt.decode(assertion, key_for, algorithms=["RS256"])
        except (LookupError, JoseError, ValueError):  # no such key, bad signature, not a JWT
            self.counts["bad_assertion"] += 1
            return _error(400, "invalid_grant", "Invalid JWT Signature.")
        claims = token.claims
        account = signer["account"]
        problem = self._claims_problem(claims, account)
        if problem is not None:
            self.counts["bad_assertion"] += 1
            return problem
        self.assertions.append({"header": dict(token.header), "claims": dict(claims)})
        self.counts["minted"] += 1
        access = f"ya29.c.{secrets.token_urlsafe(24)}"
        self.access[access] = account.email
        return _ok({"access_token": access, "expires_in": self.lifetime, "token_type": "Bearer"})

    def _claims_problem(self, claims: dict[str, Any], account: ServiceAccount) -> Response | None:
        if claims.get("iss") != account.email:
            return _error(400, "invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != self.token_url:
            return _error(400, "invalid_grant", "Invalid JWT: Failed audience check.")
        if not claims.get("scope"):
            return _error(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        iat, exp, now = claims.get("iat"), claims.get("exp"), self.now()
        if not isinstance(iat, int) or not isinstance(exp, int):
            return _error(400, "invalid_grant", SHORT_LIVED)
        if exp - iat > MAX_ASSERTION_LIFETIME or iat > now + CLOCK_SKEW or exp < now - CLOCK_SKEW:
            return _error(400, "invalid_grant", SHORT_LIVED)
        return None


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    """client_secret_post or client_secret_basic (RFC 6749 §2.3.1); Google takes either."""
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        return auth.username, auth.password
    return form.get("client_id"), form.get("client_secret")


def _unsigned_id_token(audience: str, now: float) -> str:
    """An id_token shaped like Google's; nothing in broker verifies it, so it is unsigned."""

    def segment(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"iss": "https://accounts.google.com", "aud": audience, "iat": int(now), "exp": int(now) + 3600}
    return f"{segment({'alg': 'none'})}.{segment(claims)}.{secrets.token_urlsafe(8)}"


def _ok(body: dict[str, Any]) -> Response:
    return Response(
        json.dumps(body), status=200, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


def _error(status: int, error: str, description: str) -> Response:
    return Response(
        json.dumps({"error": error, "error_description": description}), status=status, content_type="application/json"
    )
